"""The alert runner's SQL: the stored watermark, window sums, enrichment and the open alerts.

Plain functions over a clickhouse-connect client (:func:`relmon.db.connect`), as the worker's
:mod:`streams.repository`: the runner (:mod:`relmon.alerts.runner`) decides when to read, these
say how. Values are server-side bound parameters only; the window sums are the one SQL of
:func:`relmon.estimate.window_sums_sql`, so alerts judge the rates the dashboard shows. Alert rows
are written by the ClickHouse sink (:class:`relmon.alerts.sinks.ClickHouseSink`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from relmon.alerts.detect import SEGMENT_DIMENSIONS, rollup
from relmon.alerts.lifecycle import Alert
from relmon.estimate import Sums, window_sums_sql
from relmon.stats import RateEstimate

__all__ = ["enrich", "load_alerts", "query_window_sums", "stored_watermark"]


def stored_watermark(client: Client) -> datetime | None:
    """The newest event time in ``scored_impressions`` (None while it is empty)."""
    rows = client.query(
        "SELECT count(), max(event_time) FROM scored_impressions "
        "WHERE event_time > now64(3) - toIntervalDay(2)"
    ).result_rows
    if not rows or not rows[0][0]:
        return None
    newest: datetime = rows[0][1]
    return newest if newest.tzinfo else newest.replace(tzinfo=UTC)


def query_window_sums(
    client: Client, since: datetime, until: datetime, window_s: int
) -> dict[datetime, dict[tuple[str, str], Sums]]:
    """Per-window segment sums of ``scored_impressions`` in ``[since, until)``."""
    result = client.query(
        window_sums_sql("scored_impressions", SEGMENT_DIMENSIONS, bucket=True, until=True),
        parameters={"w": window_s, "since": since, "until": until},
    )
    cells: dict[datetime, list[tuple[dict[str, str], Sums]]] = {}
    for row in result.named_results():
        dims = {d: str(row[d]) for d in SEGMENT_DIMENSIONS}
        ws = row["window_start"]
        start = ws if ws.tzinfo else ws.replace(tzinfo=UTC)
        cells.setdefault(start, []).append((dims, Sums.from_row(row)))
    return {start: rollup(c) for start, c in cells.items()}


def _segment_filter(alert: Alert) -> tuple[str, dict[str, Any]]:
    if alert.dimension == "overall":
        return "1 = 1", {}
    if alert.dimension not in SEGMENT_DIMENSIONS:
        raise ValueError(f"unknown segment dimension {alert.dimension!r}")
    # the column name comes from the fixed list above, the value is a bound parameter
    return f"{alert.dimension} = {{v:String}}", {"v": alert.value}


def enrich(client: Client, alert: Alert, queries: int = 5, examples: int = 3) -> Alert:
    """Add the top offending queries and a few example bad cases of the alert's last window."""
    where, params = _segment_filter(alert)
    params |= {
        "a": alert.last_window,
        "b": alert.last_window + timedelta(seconds=alert.window_s),
        "k": queries,
        "e": examples,
    }
    span = (
        "event_time >= {a:DateTime64(3, 'UTC')} AND event_time < {b:DateTime64(3, 'UTC')} "
        f"AND {where}"
    )
    top = client.query(
        "SELECT query, count() AS n, sum(is_bad) AS bad, "
        "sum(sample_weight * is_bad) / sum(sample_weight) AS rate "
        f"FROM scored_impressions FINAL WHERE {span} "
        "GROUP BY query HAVING bad > 0 "
        "ORDER BY sum(sample_weight * is_bad) DESC, query LIMIT {k:UInt32}",
        parameters=params,
    )
    rows = client.query(
        "SELECT query, title, category, position, score, threshold, model_version "
        f"FROM scored_impressions FINAL WHERE {span} AND is_bad = 1 "
        "ORDER BY score, impression_id LIMIT {e:UInt32}",
        parameters=params,
    )
    return replace(
        alert,
        top_queries=tuple(
            {"query": str(q), "sampled": int(n), "bad": int(b), "rate": round(float(r), 4)}
            for q, n, b, r in top.result_rows
        ),
        examples=tuple(
            {
                "query": str(q),
                "title": str(t),
                "category": str(c),
                "position": int(p),
                "score": round(float(s), 4),
                "threshold": round(float(th), 4),
                "model_version": str(m),
            }
            for q, t, c, p, s, th, m in rows.result_rows
        ),
    )


def _rate(rate: float, low: float, high: float, sampled: int, n_eff: float) -> RateEstimate:
    return RateEstimate(int(sampled), 0, float(rate), float(n_eff), float(low), float(high))


def load_alerts(client: Client, since: datetime) -> tuple[list[Alert], set[str]]:
    """Open alerts (any age) and the ids of every alert started since ``since``."""
    result = client.query(
        "SELECT alert_id, status, dimension, value, started_at, last_window, window_s, "
        "observed_rate, observed_low, observed_high, observed_sampled, observed_n_eff, "
        "baseline_rate, baseline_low, baseline_high, baseline_sampled, baseline_n_eff, "
        "peak_rate, z, p_value, detectors, top_queries, examples "
        "FROM alerts FINAL WHERE status = 'firing' OR started_at >= {since:DateTime64(3, 'UTC')}",
        parameters={"since": since},
    )
    open_alerts, ids = [], set()
    for r in result.result_rows:
        ids.add(str(r[0]))
        if r[1] != "firing":
            continue
        open_alerts.append(
            Alert(
                alert_id=str(r[0]),
                status="firing",
                dimension=str(r[2]),
                value=str(r[3]),
                started_at=r[4].replace(tzinfo=UTC) if r[4].tzinfo is None else r[4],
                last_window=r[5].replace(tzinfo=UTC) if r[5].tzinfo is None else r[5],
                window_s=int(r[6]),
                observed=_rate(*r[7:12]),
                baseline=_rate(*r[12:17]),
                peak_rate=float(r[17]),
                z=float(r[18]),
                p_value=float(r[19]),
                detectors=tuple(r[20]),
                top_queries=tuple(json.loads(r[21] or "[]")),
                examples=tuple(json.loads(r[22] or "[]")),
            )
        )
    return open_alerts, ids
