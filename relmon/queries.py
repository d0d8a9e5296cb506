"""Read queries behind the dashboard and the demo (bound parameters only)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from clickhouse_connect.driver.client import Client

from relmon.stats import RateEstimate


def rate_series(
    client: Client, since: datetime, window_s: int = 60, min_sample: int = 30
) -> pd.DataFrame:
    """Bad-case rate per window (all segments together) with sample size and 95% interval.

    ``judged`` is False for windows whose effective sample is below ``min_sample``.
    """
    result = client.query(
        "SELECT toStartOfInterval(event_time, toIntervalSecond({w:UInt32})) AS window_start, "
        "count() AS sampled, sum(is_bad) AS bad, sum(sample_weight) AS sum_w, "
        "sum(sample_weight * is_bad) AS sum_w_bad, sum(sample_weight * sample_weight) AS sum_w2 "
        "FROM scored_impressions FINAL WHERE event_time >= {since:DateTime64(3, 'UTC')} "
        "GROUP BY window_start ORDER BY window_start",
        parameters={"w": window_s, "since": since},
    )
    rows = []
    for window_start, sampled, bad, sum_w, sum_w_bad, sum_w2 in result.result_rows:
        est = RateEstimate.from_sums(int(sampled), int(bad), sum_w, sum_w_bad, sum_w2)
        rows.append(
            {
                "window_start": window_start,
                "sampled": est.sampled,
                "bad": est.bad,
                "rate": est.rate,
                "ci_low": est.ci_low,
                "ci_high": est.ci_high,
                "judged": est.n_eff >= min_sample,
            }
        )
    return pd.DataFrame(
        rows, columns=["window_start", "sampled", "bad", "rate", "ci_low", "ci_high", "judged"]
    )


def latest_bad_cases(client: Client, limit: int = 50) -> pd.DataFrame:
    """The most recent low-score cases."""
    result = client.query(
        "SELECT scored_at, query, title, category, position, score, model_version "
        "FROM scored_impressions FINAL WHERE is_bad = 1 "
        "ORDER BY scored_at DESC, impression_id LIMIT {limit:UInt32}",
        parameters={"limit": limit},
    )
    return pd.DataFrame(result.result_rows, columns=list(result.column_names))


def segment_rates(client: Client, since: datetime) -> pd.DataFrame:
    """Rows of the ``bad_case_rates`` view since ``since``."""
    result = client.query(
        "SELECT * FROM bad_case_rates WHERE window_start >= {since:DateTime64(3, 'UTC')} "
        "ORDER BY window_start, category, locale, model_version",
        parameters={"since": since},
    )
    return pd.DataFrame(result.result_rows, columns=list(result.column_names))
