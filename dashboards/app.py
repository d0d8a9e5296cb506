"""relmon dashboard: the bad-case rate and the latest low-score cases.

Shows the rate per minute with its interval and sample size, read from ClickHouse through
clickhouse-connect.

Run with ``relmon dashboard`` (or ``streamlit run dashboards/app.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import altair as alt
import pandas as pd
import streamlit as st
from clickhouse_connect.driver.client import Client

from relmon import db, queries
from relmon.errors import RelmonError
from relmon.settings import get_settings

st.set_page_config(page_title="relmon: search relevance", layout="wide")


@st.cache_resource
def _client() -> Client:
    return db.connect(get_settings())


@st.cache_data(ttl=5)
def _series(minutes: int) -> pd.DataFrame:
    since = datetime.now(UTC) - timedelta(minutes=minutes)
    return queries.rate_series(_client(), since, min_sample=get_settings().min_window_sample)


@st.cache_data(ttl=5)
def _bad_cases() -> pd.DataFrame:
    return queries.latest_bad_cases(_client(), limit=50)


def _rate_chart(frame: pd.DataFrame) -> alt.LayerChart:
    base = alt.Chart(frame).encode(x=alt.X("window_start:T", title="minute (UTC)"))
    band = base.mark_area(opacity=0.25).encode(
        y=alt.Y("ci_low:Q", title="bad-case rate", axis=alt.Axis(format="%")),
        y2="ci_high:Q",
    )
    line = base.mark_line(point=True).encode(
        y="rate:Q",
        color=alt.condition("datum.judged", alt.value("#1f77b4"), alt.value("#bbbbbb")),
        tooltip=[
            alt.Tooltip("window_start:T", title="minute"),
            alt.Tooltip("rate:Q", format=".1%", title="weighted rate"),
            alt.Tooltip("ci_low:Q", format=".1%", title="95% low"),
            alt.Tooltip("ci_high:Q", format=".1%", title="95% high"),
            alt.Tooltip("sampled:Q", title="sampled"),
            alt.Tooltip("bad:Q", title="bad"),
            alt.Tooltip("judged:N", title="enough sample to judge"),
        ],
    )
    return band + line


def _volume_chart(frame: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("window_start:T", title="minute (UTC)"),
            y=alt.Y("sampled:Q", title="sampled impressions"),
        )
        .properties(height=140)
    )


def main() -> None:
    """Render the page."""
    st.title("relmon: search relevance, live")
    minutes = st.sidebar.select_slider(
        "time range (minutes)", options=[15, 60, 180, 720, 1440], value=60
    )

    @st.fragment(run_every=5)
    def live() -> None:
        try:
            series = _series(minutes)
            bad = _bad_cases()
        except RelmonError as exc:
            st.error(f"cannot read ClickHouse: {exc}")
            return
        if series.empty:
            st.info("No scored impressions yet: waiting for traffic.")
            return
        total, bad_n = int(series["sampled"].sum()), int(series["bad"].sum())
        last = series.iloc[-1]
        cols = st.columns(3)
        cols[0].metric("sampled impressions", f"{total:,}")
        cols[1].metric("bad cases", f"{bad_n:,}")
        cols[2].metric(
            "latest minute",
            f"{last['rate']:.1%}",
            help=f"95% interval {last['ci_low']:.1%} to {last['ci_high']:.1%}, "
            f"n = {int(last['sampled'])}",
        )
        st.subheader("Bad-case rate per minute (weighted, 95% interval)")
        st.caption(
            "Band: 95% interval. Grey points: windows too thin to judge "
            f"(effective sample below {get_settings().min_window_sample})."
        )
        st.altair_chart(_rate_chart(series), use_container_width=True)
        st.altair_chart(_volume_chart(series), use_container_width=True)
        table = series.assign(
            rate=series["rate"].map("{:.1%}".format),
            interval=[
                f"{a:.1%} to {b:.1%}"
                for a, b in zip(series["ci_low"], series["ci_high"], strict=True)
            ],
            judged=series["judged"].map({True: "yes", False: "too thin"}),
        )[["window_start", "sampled", "bad", "rate", "interval", "judged"]]
        st.dataframe(table.iloc[::-1], hide_index=True, use_container_width=True)
        st.subheader("Latest low-score cases")
        st.dataframe(bad, hide_index=True, use_container_width=True)

    live()


main()
