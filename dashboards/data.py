"""Reads behind the dashboard pages: cached clients, filters and bound-parameter queries.

Short ranges read the raw rows (``scored_impressions FINAL``); ranges over a day read the hourly
roll-up table, so a week renders from about 170 x segments rows instead of every scored row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st
from clickhouse_connect.driver.client import Client

from relmon import db, estimate
from relmon.settings import get_settings

__all__ = [
    "RANGES",
    "Filters",
    "alerts",
    "bad_cases",
    "cells",
    "client",
    "examples",
    "filters",
    "has_table",
    "rates",
    "segment_values",
    "worst_queries",
]

RANGES = {
    "15 minutes": 15,
    "1 hour": 60,
    "3 hours": 180,
    "24 hours": 1440,
    "7 days": 7 * 1440,
}


@dataclass(frozen=True)
class Filters:
    """The sidebar's time range and segment filters (empty list = all)."""

    minutes: int = 60
    tiers: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    locales: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    @property
    def bucket_s(self) -> int:
        """Chart resolution: 1 min up to 3 h, 5 min up to a day, then 1 h."""
        if self.minutes <= 180:
            return 60
        if self.minutes <= 1440:
            return 300
        return 3600

    def params(self) -> dict[str, Any]:
        """Bound parameters of :data:`WHERE`."""
        return {
            "since": datetime.now(UTC) - timedelta(minutes=self.minutes),
            "tiers": list(self.tiers),
            "cats": list(self.categories),
            "locales": list(self.locales),
            "models": list(self.models),
        }


# Column -> bound parameter of the sidebar's segment filters (Filters.params).
FILTERS = {"tier": "tiers", "category": "cats", "locale": "locales", "model_version": "models"}
WHERE = estimate.segment_filter(FILTERS)


@st.cache_resource
def client() -> Client:
    """One ClickHouse client per dashboard process."""
    return db.connect(get_settings())


def _frame(sql: str, params: dict[str, Any]) -> pd.DataFrame:
    result = client().query(sql, parameters=params)
    return pd.DataFrame(result.result_rows, columns=list(result.column_names))


@st.cache_data(ttl=30)
def segment_values(minutes: int) -> dict[str, list[str]]:
    """Values seen per segment column in the range (for the filter widgets)."""
    since = datetime.now(UTC) - timedelta(minutes=minutes)
    table, col = (
        ("scored_impressions", "event_time")
        if minutes <= 1440
        else ("bad_case_rollup_1h", "window_start")
    )
    out = {}
    for name in ("tier", "category", "locale", "model_version"):
        frame = _frame(
            f"SELECT DISTINCT toString({name}) AS v FROM {table} "
            f"WHERE {col} >= {{since:DateTime64(3, 'UTC')}} ORDER BY v LIMIT 500",
            {"since": since},
        )
        out[name] = [str(v) for v in frame["v"]] if not frame.empty else []
    return out


def filters() -> Filters:
    """Sidebar widgets: time range and segment filters, shared by every page."""
    side = st.sidebar
    label = side.selectbox("time range", list(RANGES), index=1, key="range")
    minutes = RANGES[str(label)]
    values = segment_values(minutes)
    return Filters(
        minutes=minutes,
        tiers=tuple(side.multiselect("tier", values["tier"], key="f_tier")),
        categories=tuple(side.multiselect("category", values["category"], key="f_cat")),
        locales=tuple(side.multiselect("locale", values["locale"], key="f_locale")),
        models=tuple(side.multiselect("model version", values["model_version"], key="f_model")),
    )


@st.cache_data(ttl=5)
def cells(f: Filters, by: tuple[str, ...] = ("tier",), bucket: bool = True) -> pd.DataFrame:
    """Sums per (time bucket,) and ``by`` columns, from raw rows or the hourly roll-up."""
    source = "scored_impressions" if f.bucket_s < 3600 else "bad_case_rollup_1h"
    sql = estimate.window_sums_sql(source, by, bucket=bucket, filters=FILTERS)
    return _frame(sql, f.params() | {"w": f.bucket_s})


def rates(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Rates per group of ``frame`` (sums summed): flagged and expected, with 95% intervals.

    ``rate`` is the weighted share of rows flagged bad (``ci_low``/``ci_high`` its interval),
    ``expected`` the weighted mean P(bad) (``exp_low``/``exp_high``); ``judged`` is false for
    groups too thin to judge.
    """
    cols = [*by, "sampled", "bad", "rate", "ci_low", "ci_high", "n_eff", "judged"]
    cols += ["expected", "exp_low", "exp_high"]
    if frame.empty:
        return pd.DataFrame(columns=cols)
    min_n = get_settings().min_window_sample
    out = []
    for key, g in frame.groupby(by, sort=True) if by else [((), frame)]:
        # skipna=False: an hour without its P(bad) sum leaves the expected share unknown
        sums = estimate.Sums.from_row(g[list(estimate.SUM_COLUMNS)].sum(skipna=False))
        est, exp = sums.estimate(), sums.expected()
        key = key if isinstance(key, tuple) else (key,)
        out.append([*key, est.sampled, est.bad, est.rate, est.ci_low, est.ci_high])
        out[-1] += [est.n_eff, estimate.judged(est, min_n), exp.rate, exp.ci_low, exp.ci_high]
    return pd.DataFrame(out, columns=cols)


@st.cache_data(ttl=5)
def bad_cases(f: Filters, limit: int = 50) -> pd.DataFrame:
    """The most recent low-score cases in range."""
    return _frame(
        "SELECT scored_at, query, title, category, tier, position, score, model_version "
        "FROM scored_impressions FINAL WHERE is_bad = 1 AND "
        f"event_time >= {{since:DateTime64(3, 'UTC')}} AND {WHERE} "
        "ORDER BY scored_at DESC, impression_id LIMIT {limit:UInt32}",
        f.params() | {"limit": limit},
    )


@st.cache_data(ttl=10)
def worst_queries(f: Filters, limit: int = 20) -> pd.DataFrame:
    """Queries with the most (weighted) bad cases in range."""
    return _frame(
        "SELECT query, count() AS sampled, sum(is_bad) AS bad, "
        "sum(sample_weight * is_bad) AS weighted_bad, "
        "sum(sample_weight * is_bad) / sum(sample_weight) AS rate, avg(score) AS mean_score "
        f"FROM scored_impressions FINAL WHERE event_time >= {{since:DateTime64(3, 'UTC')}} "
        f"AND {WHERE} GROUP BY query HAVING bad > 0 "
        "ORDER BY weighted_bad DESC, query LIMIT {limit:UInt32}",
        f.params() | {"limit": limit},
    )


@st.cache_data(ttl=60)
def has_table(name: str) -> bool:
    """True if the relmon database has table ``name``."""
    result = client().query(
        "SELECT count() FROM system.tables WHERE database = currentDatabase() "
        "AND name = {name:String}",
        parameters={"name": name},
    )
    return bool(result.result_rows and int(result.result_rows[0][0]))


@st.cache_data(ttl=10)
def examples(f: Filters, query: str | None, limit: int = 30) -> pd.DataFrame:
    """Example bad pairs with scores (and the teacher's verdict where one exists)."""
    params = f.params() | {"limit": limit, "q": query or ""}
    where = (
        f"s.event_time >= {{since:DateTime64(3, 'UTC')}} AND s.is_bad = 1 AND "
        f"({{q:String}} = '' OR s.query = {{q:String}}) AND {WHERE}"
    )
    if has_table("verdicts"):
        return _frame(
            "SELECT s.query AS query, s.title AS title, s.category AS category, "
            "s.position AS position, s.score AS score, s.threshold AS threshold, "
            "v.grade AS teacher_grade, v.rationale AS teacher_rationale "
            "FROM scored_impressions AS s FINAL LEFT JOIN ("
            "SELECT impression_id, argMax(grade, judged_at) AS grade, "
            "argMax(rationale, judged_at) AS rationale FROM verdicts "
            "WHERE judge != 'human' GROUP BY impression_id) AS v "
            f"ON s.impression_id = v.impression_id WHERE {where} "
            "ORDER BY s.score, s.impression_id LIMIT {limit:UInt32}",
            params,
        )
    return _frame(
        "SELECT s.query AS query, s.title AS title, s.category AS category, "
        "s.position AS position, s.score AS score, s.threshold AS threshold "
        f"FROM scored_impressions AS s FINAL WHERE {where} "
        "ORDER BY s.score, s.impression_id LIMIT {limit:UInt32}",
        params,
    )


@st.cache_data(ttl=5)
def alerts(minutes: int) -> pd.DataFrame:
    """Open alerts (any age) and alerts started in range, newest first."""
    if not has_table("alerts"):
        return pd.DataFrame()
    return _frame(
        "SELECT alert_id, status, dimension, value, started_at, last_window, resolved_at, "
        "window_s, observed_rate, observed_low, observed_high, observed_sampled, "
        "baseline_rate, baseline_low, baseline_high, baseline_sampled, peak_rate, p_value, "
        "detectors, top_queries, examples FROM alerts FINAL "
        "WHERE status = 'firing' OR started_at >= {since:DateTime64(3, 'UTC')} "
        "ORDER BY status = 'firing' DESC, started_at DESC LIMIT 500",
        {"since": datetime.now(UTC) - timedelta(minutes=minutes)},
    )
