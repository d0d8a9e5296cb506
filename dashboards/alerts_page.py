"""Alerts page: open alerts with their evidence, and past alerts."""

from __future__ import annotations

import json

import streamlit as st

from dashboards import data
from relmon.errors import RelmonError

__all__ = ["render"]


def render() -> None:
    """Render the alerts page."""
    st.title("Alerts")
    f = data.filters()
    try:
        frame = data.alerts(f.minutes)
    except RelmonError as exc:
        st.error(f"cannot read ClickHouse: {exc}")
        return
    firing = frame[frame["status"] == "firing"] if not frame.empty else frame
    past = frame[frame["status"] != "firing"] if not frame.empty else frame
    cols = st.columns(2)
    cols[0].metric("open alerts", len(firing))
    cols[1].metric("resolved in range", len(past))
    st.subheader("Open alerts")
    if firing.empty:
        st.success("No open alerts.")
    for row in firing.itertuples():
        what = "overall" if row.dimension == "overall" else f"{row.dimension} = {row.value}"
        with st.expander(f"FIRING: {what} since {row.started_at:%Y-%m-%d %H:%M} UTC", True):
            c = st.columns(3)
            c[0].metric(
                "observed rate",
                f"{row.observed_rate:.1%}",
                help=f"95% {row.observed_low:.1%} to {row.observed_high:.1%}, "
                f"n = {row.observed_sampled}",
            )
            c[1].metric(
                "baseline rate",
                f"{row.baseline_rate:.1%}",
                help=f"95% {row.baseline_low:.1%} to {row.baseline_high:.1%}, "
                f"n = {row.baseline_sampled}",
            )
            c[2].metric("p-value", f"{row.p_value:.1e}")
            st.caption(f"detectors: {', '.join(row.detectors)}; alert {row.alert_id}")
            tops = json.loads(row.top_queries or "[]")
            if tops:
                st.markdown("**Top offending queries**")
                st.dataframe(tops, hide_index=True, width="stretch")
            examples = json.loads(row.examples or "[]")
            if examples:
                st.markdown("**Example bad cases**")
                st.dataframe(examples, hide_index=True, width="stretch")
    st.subheader("Past alerts")
    if past.empty:
        st.info("No resolved alerts in this range.")
    else:
        st.dataframe(
            past[
                [
                    "started_at",
                    "resolved_at",
                    "dimension",
                    "value",
                    "peak_rate",
                    "baseline_rate",
                    "detectors",
                ]
            ],
            hide_index=True,
            width="stretch",
        )
