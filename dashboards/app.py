"""relmon dashboard: overview, segments, drill-down, alerts, review queue, pipeline health.

Pages are built with ``st.navigation``; every page reads ClickHouse through clickhouse-connect
(one cached client, query results cached for a few seconds). The review queue page comes from
``dashboards.review`` when that module is installed.

Run with ``relmon dashboard`` (or ``streamlit run dashboards/app.py``).
"""

from __future__ import annotations

import importlib
import importlib.util

import streamlit as st

from dashboards import alerts_page, drilldown, health, overview, segments


def pages() -> list[st.Page]:
    """The dashboard's pages, in menu order."""
    out = [
        st.Page(overview.render, title="Overview", url_path="overview", default=True),
        st.Page(segments.render, title="Segments", url_path="segments"),
        st.Page(drilldown.render, title="Drill-down", url_path="drilldown"),
        st.Page(alerts_page.render, title="Alerts", url_path="alerts"),
    ]
    if importlib.util.find_spec("dashboards.review") is not None:
        review = importlib.import_module("dashboards.review")
        out.append(st.Page(review.render, title="Review queue", url_path="review"))
        if hasattr(review, "render_agreement"):
            out.append(st.Page(review.render_agreement, title="Agreement", url_path="agreement"))
    out.append(st.Page(health.render, title="Pipeline health", url_path="health"))
    return out


def main() -> None:
    """Build the navigation and run the selected page."""
    st.set_page_config(page_title="relmon: search relevance", layout="wide")
    st.navigation(pages()).run()


if __name__ == "__main__":
    main()
