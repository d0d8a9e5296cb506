"""Overview page: the weighted bad-case rate over time with its 95% band, by tier, and volume.

The bad-case rate shown is the expected bad share: the weighted mean calibrated P(bad), which
matches human labels in total and per segment (README, "What the dashboard shows"). Beside it,
the flagged rate: the weighted share of rows scored below their tier's operating point, each a
case sent for review. Where a tier's scorer can, its flag is right at least 60% of the time and
so lower than the bad share (the page tier); a tier that cannot flags as many as are bad.
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data
from dashboards.charts import utc_time_tooltip, utc_time_x
from relmon.errors import RelmonError
from relmon.settings import get_settings

__all__ = ["render"]


def _share(value: float) -> str:
    """A share as a percentage; "unknown" for NaN (an hour whose P(bad) was never stored)."""
    return "unknown" if math.isnan(value) else f"{value:.1%}"


def _rate_chart(frame: pd.DataFrame, title: str, minutes: int) -> alt.LayerChart:
    base = alt.Chart(frame).encode(x=utc_time_x("window_start", title, minutes))
    band = base.mark_area(opacity=0.25).encode(
        y=alt.Y("exp_low:Q", title="bad-case rate", axis=alt.Axis(format="%")),
        y2="exp_high:Q",
    )
    line = base.mark_line(point=True).encode(
        y="expected:Q",
        color=alt.condition("datum.judged", alt.value("#1f77b4"), alt.value("#bbbbbb")),
        tooltip=[
            utc_time_tooltip("window_start", "window"),
            alt.Tooltip("expected:Q", format=".1%", title="expected bad share"),
            alt.Tooltip("exp_low:Q", format=".1%", title="95% low"),
            alt.Tooltip("exp_high:Q", format=".1%", title="95% high"),
            alt.Tooltip("sampled:Q", title="sampled"),
            alt.Tooltip("judged:N", title="enough sample to judge"),
        ],
    )
    flagged = base.mark_line(strokeDash=[4, 3], color="#ff7f0e").encode(
        y="rate:Q",
        tooltip=[
            utc_time_tooltip("window_start", "window"),
            alt.Tooltip("rate:Q", format=".1%", title="flagged rate"),
            alt.Tooltip("ci_low:Q", format=".1%", title="95% low"),
            alt.Tooltip("ci_high:Q", format=".1%", title="95% high"),
            alt.Tooltip("bad:Q", title="flagged"),
        ],
    )
    return (band + line + flagged).properties(height=260)


def _tier_chart(frame: pd.DataFrame, title: str, minutes: int) -> alt.Chart:
    return (
        alt.Chart(frame[frame["judged"]])
        .mark_line(point=True)
        .encode(
            x=utc_time_x("window_start", title, minutes),
            y=alt.Y("expected:Q", title="bad-case rate", axis=alt.Axis(format="%")),
            color=alt.Color("tier:N", title="tier"),
            tooltip=[
                utc_time_tooltip("window_start", "window"),
                "tier",
                alt.Tooltip("expected:Q", format=".1%", title="expected bad share"),
                alt.Tooltip("rate:Q", format=".1%", title="flagged rate"),
                "sampled",
            ],
        )
        .properties(height=220)
    )


def _volume_chart(frame: pd.DataFrame, title: str, minutes: int, bucket_s: int) -> alt.Chart:
    """Sampled impressions per window, stacked by tier, each bar as wide as its window.

    The stack is computed here: a bar with a time range (x to x2) is drawn by Vega-Lite as a
    ranged bar along x, so its height needs both ends (y to y2) given too.
    """
    frame = frame.sort_values(["window_start", "tier"]).assign(
        window_end=lambda d: d["window_start"] + pd.Timedelta(seconds=bucket_s),
        top=lambda d: d.groupby("window_start")["sampled"].cumsum(),
        bottom=lambda d: d["top"] - d["sampled"],
    )
    return (
        alt.Chart(frame)
        .mark_rect(stroke="white", strokeWidth=1)
        .encode(
            x=utc_time_x("window_start", title, minutes),
            x2="window_end:T",
            y=alt.Y("top:Q", title="impressions"),
            y2="bottom:Q",
            color=alt.Color("tier:N", title="tier"),
            tooltip=[
                utc_time_tooltip("window_start", "window start"),
                alt.Tooltip("tier:N"),
                alt.Tooltip("sampled:Q", title="sampled impressions"),
            ],
        )
        .properties(height=180)
    )


def render() -> None:
    """Render the overview page."""
    st.title("relmon: search relevance, live")
    f = data.filters()
    bucket = "minute" if f.bucket_s == 60 else f"{f.bucket_s // 60}-minute window"
    axis = f"{bucket} (UTC)"
    try:
        cells = data.cells(f, ("tier",))
        bad = data.bad_cases(f)
    except RelmonError as exc:
        st.error(f"cannot read ClickHouse: {exc}")
        return
    if cells.empty:
        st.info("No scored impressions yet: waiting for traffic.")
        return
    series = data.rates(cells, ["window_start"])
    by_tier = data.rates(cells, ["window_start", "tier"])
    total, bad_n = int(series["sampled"].sum()), int(series["bad"].sum())
    last = series.iloc[-1]
    whole = data.rates(cells, [])
    cols = st.columns(5)
    cols[0].metric(
        "expected bad share over the range",
        _share(whole["expected"].iloc[0]),
        help="the weighted mean calibrated P(bad) of the sampled results; 95% interval "
        f"{_share(whole['exp_low'].iloc[0])} to {_share(whole['exp_high'].iloc[0])}, "
        f"n = {total}",
    )
    cols[1].metric(
        f"latest {'minute' if f.bucket_s == 60 else 'window'}",
        _share(last["expected"]),
        help=f"expected bad share; 95% interval {_share(last['exp_low'])} to "
        f"{_share(last['exp_high'])}, n = {int(last['sampled'])}",
    )
    cols[2].metric("sampled impressions", f"{total:,}")
    cols[3].metric(
        "flagged for review",
        f"{bad_n:,}",
        help="rows below their tier's operating point, each sent for review: right at least "
        "60% of the time on real labels where the tier's scorer can be (the model card's rule "
        "'precision'), else flagging as many as are bad (rule 'rate')",
    )
    cols[4].metric(
        "flagged rate over the range",
        f"{whole['rate'].iloc[0]:.1%}",
        help=f"95% interval {whole['ci_low'].iloc[0]:.1%} to {whole['ci_high'].iloc[0]:.1%}; "
        "below the bad share where only the cases the scorer is sure of are flagged",
    )
    st.subheader(f"Bad-case rate per {bucket} (weighted, 95% interval)")
    st.caption(
        "Line and band: the expected bad share (mean calibrated P(bad)) and its 95% interval. "
        "Dashed: the flagged rate (the cases sent for review). Grey points: windows too thin "
        f"to judge (effective sample below {get_settings().min_window_sample})."
    )
    st.altair_chart(_rate_chart(series, axis, f.minutes), width="stretch")
    st.subheader("By query tier")
    st.altair_chart(_tier_chart(by_tier, axis, f.minutes), width="stretch")
    st.subheader("Traffic volume (sampled impressions)")
    st.altair_chart(_volume_chart(by_tier, axis, f.minutes, f.bucket_s), width="stretch")
    table = series.assign(
        rate=series["rate"].map("{:.1%}".format),
        interval=[
            f"{a:.1%} to {b:.1%}" for a, b in zip(series["ci_low"], series["ci_high"], strict=True)
        ],
        expected=series["expected"].map(_share),
        expected_interval=[
            f"{_share(a)} to {_share(b)}"
            for a, b in zip(series["exp_low"], series["exp_high"], strict=True)
        ],
        judged=series["judged"].map({True: "yes", False: "too thin"}),
    )[
        [
            "window_start",
            "sampled",
            "expected",
            "expected_interval",
            "bad",
            "rate",
            "interval",
            "judged",
        ]
    ]
    with st.expander("rates per window (table)"):
        st.dataframe(table.iloc[::-1], hide_index=True, width="stretch")
    st.subheader("Latest low-score cases")
    st.dataframe(bad, hide_index=True, width="stretch")
