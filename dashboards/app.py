"""relmon dashboard: overview, segments, drill-down, alerts, review queue, pipeline health.

Pages are built with ``st.navigation``; every page reads ClickHouse through clickhouse-connect
(one cached client, query results cached for a few seconds). The review queue page comes from
``dashboards.review`` when that module is installed.

Run with ``relmon dashboard`` (or ``streamlit run dashboards/app.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

import streamlit as st

from dashboards import alerts_page, drilldown, health, overview, segments

PageSpec = tuple[str, str, Callable[[], None]]


def page_specs() -> list[PageSpec]:
    """(title, url path, render function) of each page, in menu order."""
    out: list[PageSpec] = [
        ("Overview", "overview", overview.render),
        ("Segments", "segments", segments.render),
        ("Drill-down", "drilldown", drilldown.render),
        ("Alerts", "alerts", alerts_page.render),
    ]
    if importlib.util.find_spec("dashboards.review") is not None:
        review = importlib.import_module("dashboards.review")
        out.append(("Review queue", "review", review.render))
        if hasattr(review, "render_agreement"):
            out.append(("Agreement", "agreement", review.render_agreement))
    out.append(("Pipeline health", "health", health.render))
    return out


def pages() -> list[st.Page]:
    """The dashboard's pages for ``st.navigation`` (the first is the default)."""
    return [
        st.Page(render, title=title, url_path=path, default=i == 0)
        for i, (title, path, render) in enumerate(page_specs())
    ]


def main() -> None:
    """Build the navigation and run the selected page."""
    st.set_page_config(page_title="relmon: search relevance", layout="wide")
    st.navigation(pages()).run()


if __name__ == "__main__":
    main()
