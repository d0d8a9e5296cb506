"""Segments page: category x tier heatmap of the weighted bad-case rate over the range."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboards import data
from relmon.errors import RelmonError

__all__ = ["render"]


def render() -> None:
    """Render the segments page."""
    st.title("Segments")
    f = data.filters()
    top = st.sidebar.slider("categories shown (by volume)", 5, 60, 25, key="seg_top")
    try:
        cells = data.cells(f, ("tier", "category"), bucket=False)
    except RelmonError as exc:
        st.error(f"cannot read ClickHouse: {exc}")
        return
    if cells.empty:
        st.info("No scored impressions in this range.")
        return
    grid = data.rates(cells, ["category", "tier"])
    volume = grid.groupby("category")["sampled"].sum().sort_values(ascending=False)
    grid = grid[grid["category"].isin(volume.index[:top])]
    st.subheader("Bad-case rate by category and tier")
    st.caption(
        "Colour: the expected bad share (weighted mean calibrated P(bad)); cells too thin to "
        "judge are faded. Hover for the 95% interval, the flagged rate and the sample size."
    )
    chart = (
        alt.Chart(grid)
        .mark_rect()
        .encode(
            x=alt.X("tier:N", title="query tier", sort=["head", "torso", "tail"]),
            # every row named: Vega hides overlapping labels, which left every other row blank
            y=alt.Y(
                "category:N",
                title="category",
                sort=list(volume.index[:top]),
                axis=alt.Axis(labelOverlap=False, labelLimit=240),
            ),
            color=alt.Color(
                "expected:Q", title="bad-case rate", scale=alt.Scale(scheme="orangered")
            ),
            opacity=alt.condition("datum.judged", alt.value(1.0), alt.value(0.35)),
            tooltip=[
                "category",
                "tier",
                alt.Tooltip("expected:Q", format=".1%", title="expected bad share"),
                alt.Tooltip("exp_low:Q", format=".1%", title="95% low"),
                alt.Tooltip("exp_high:Q", format=".1%", title="95% high"),
                alt.Tooltip("rate:Q", format=".1%", title="flagged rate"),
                "sampled",
                alt.Tooltip("bad:Q", title="flagged"),
            ],
        )
        .properties(height=max(200, 22 * len(volume.index[:top])))
    )
    st.altair_chart(chart, width="stretch")
    st.subheader("Categories (all tiers)")
    by_cat = data.rates(cells, ["category"]).sort_values("expected", ascending=False)
    st.dataframe(by_cat, hide_index=True, width="stretch")
