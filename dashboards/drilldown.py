"""Drill-down page: worst queries and example bad pairs with scores (and teacher verdicts)."""

from __future__ import annotations

import streamlit as st

from dashboards import data
from relmon.errors import RelmonError

__all__ = ["render"]


def render() -> None:
    """Render the drill-down page."""
    st.title("Drill-down")
    f = data.filters()
    try:
        worst = data.worst_queries(f)
    except RelmonError as exc:
        st.error(f"cannot read ClickHouse: {exc}")
        return
    st.subheader("Worst queries (weighted bad cases)")
    if worst.empty:
        st.info("No bad cases in this range and segment.")
        return
    st.dataframe(worst, hide_index=True, width="stretch")
    choice = st.selectbox("query", ["(all queries)", *worst["query"].tolist()], key="dd_query")
    query = None if choice == "(all queries)" else str(choice)
    st.subheader("Example bad pairs")
    verdicts = data.has_table("verdicts")
    st.caption(
        "Lowest-scoring pairs first"
        + (", with the teacher's verdict where one exists." if verdicts else ".")
    )
    st.dataframe(data.examples(f, query), hide_index=True, width="stretch")
