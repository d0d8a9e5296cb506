"""ClickHouse reads and writes of the teacher loop (bound parameters only).

Tables (``schemas/migrations/0003_teacher.sql``): ``review_queue`` (review requests, one row per
impression) and ``verdicts`` (teacher and human grades, one row per impression, judge, judge id
and prompt version). Both are ReplacingMergeTrees read with FINAL, so replays are idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import pandas as pd
from clickhouse_connect.driver.client import Client

from relmon.teacher.agreement import Reviewed
from relmon.teacher.judge import CachedGrade, CacheKey, normalise_query
from relmon.teacher.verdict import Verdict
from schemas.models import ReviewRequest

__all__ = [
    "QUEUE_COLUMNS",
    "VERDICT_COLUMNS",
    "Segment",
    "count_verdicts",
    "insert_queue",
    "insert_verdicts",
    "lookup_cached",
    "queue_frame",
    "queue_request",
    "requests_spent_today",
    "reviewed_cases",
    "student_sums",
    "verdict_frame",
]

QUEUE_COLUMNS = [
    "impression_id",
    "query_id",
    "query",
    "product_id",
    "title",
    "category",
    "score",
    "threshold",
    "model_version",
    "reason",
    "priority",
    "sample_weight",
    "review_weight",
    "tier",
    "locale",
    "position",
    "event_time",
    "received_at",
]
VERDICT_COLUMNS = [c for c in Verdict.model_fields if c != "schema_version"]


def insert_queue(client: Client, requests: Sequence[ReviewRequest]) -> None:
    """Store review requests in the queue (idempotent by impression id)."""
    if not requests:
        return
    now = datetime.now(UTC)
    data = [[getattr(r, c) for c in QUEUE_COLUMNS[:-1]] + [now] for r in requests]
    client.insert("review_queue", data, column_names=QUEUE_COLUMNS)


def insert_verdicts(client: Client, verdicts: Sequence[Verdict]) -> None:
    """Store verdicts (idempotent by impression, judge, judge id and prompt version)."""
    if not verdicts:
        return
    data = [[getattr(v, c) for c in VERDICT_COLUMNS] for v in verdicts]
    client.insert("verdicts", data, column_names=VERDICT_COLUMNS)


def lookup_cached(client: Client, keys: Sequence[CacheKey]) -> dict[CacheKey, CachedGrade]:
    """Earlier teacher verdicts of (normalised query, product id, prompt version) keys.

    The store is asked for every teacher verdict of the keys' (product, prompt version) pairs
    and their queries are normalised here, with the same :func:`normalise_query` that made the
    keys (SQL's lower() folds ASCII letters only, so "CAFÉ" never met "café" there).
    """
    if not keys:
        return {}
    result = client.query(
        "SELECT query, product_id, prompt_version, argMax(grade, judged_at), "
        "argMax(rationale, judged_at), max(judged_at) FROM verdicts FINAL "
        "WHERE judge = 'teacher' AND (product_id, prompt_version) IN "
        "{pairs:Array(Tuple(String, String))} "
        "GROUP BY query, product_id, prompt_version",
        parameters={"pairs": sorted({(k[1], k[2]) for k in keys})},
    )
    wanted = set(keys)
    found: dict[CacheKey, tuple[datetime, CachedGrade]] = {}
    for query, pid, version, grade, rationale, judged_at in result.result_rows:
        key = (normalise_query(str(query)), str(pid), str(version))
        if key in wanted and (key not in found or judged_at > found[key][0]):
            found[key] = (judged_at, CachedGrade(grade, str(rationale)))
    return {key: grade for key, (_, grade) in found.items()}


def insert_spend(client: Client, spent: Sequence[tuple[str, str, int]]) -> None:
    """Record chat requests spent on cases left without a verdict.

    ``spent`` holds (impression id, status, calls). Every attempt is a row: a replayed case that
    is asked again really spends again.
    """
    if not spent:
        return
    now = datetime.now(UTC)
    client.insert(
        "teacher_spend",
        [[iid, status, calls, now] for iid, status, calls in spent],
        column_names=["impression_id", "status", "calls", "spent_at"],
    )


def requests_spent_today(client: Client) -> int:
    """Chat requests the teacher made today (UTC), to seed the daily budget after a restart.

    Those behind today's verdicts plus those spent on cases that got none (malformed answers).
    """
    value = client.command(
        "SELECT (SELECT sum(calls) FROM verdicts FINAL WHERE judge = 'teacher' "
        "AND toDate(judged_at, 'UTC') = toDate(now(), 'UTC')) + (SELECT sum(calls) "
        "FROM teacher_spend WHERE toDate(spent_at, 'UTC') = toDate(now(), 'UTC'))"
    )
    return int(value or 0)  # type: ignore[arg-type]


def count_verdicts(client: Client, judge: str | None = None) -> int:
    """Number of stored verdicts (of one judge kind, if given)."""
    result = client.query(
        "SELECT count() FROM verdicts FINAL WHERE {judge:String} = '' OR judge = {judge:String}",
        parameters={"judge": judge or ""},
    )
    return int(result.result_rows[0][0])


def queue_frame(client: Client, *, pending_only: bool = True, limit: int = 200) -> pd.DataFrame:
    """The review queue by priority, with the latest teacher verdict of each case.

    ``pending_only`` leaves out cases a person has graded already.
    """
    result = client.query(
        "SELECT q.impression_id AS impression_id, q.priority AS priority, q.reason AS reason, "
        "q.query AS query, q.title AS title, q.category AS category, q.score AS score, "
        "q.threshold AS threshold, q.model_version AS model_version, q.tier AS tier, "
        "q.locale AS locale, q.event_time AS event_time, "
        "t.grade AS teacher_grade, t.rationale AS teacher_rationale, t.judge_id AS teacher "
        "FROM review_queue AS q FINAL "
        "LEFT JOIN (SELECT impression_id, argMax(grade, judged_at) AS grade, "
        "argMax(rationale, judged_at) AS rationale, argMax(judge_id, judged_at) AS judge_id "
        "FROM verdicts FINAL WHERE judge = 'teacher' GROUP BY impression_id) AS t "
        "ON t.impression_id = q.impression_id "
        "WHERE NOT {pending:Bool} OR q.impression_id NOT IN "
        "(SELECT impression_id FROM verdicts WHERE judge = 'human') "
        "ORDER BY q.priority DESC, q.event_time DESC, q.impression_id "
        "LIMIT {limit:UInt32} SETTINGS join_use_nulls = 1",
        parameters={"pending": pending_only, "limit": limit},
    )
    return pd.DataFrame(result.result_rows, columns=list(result.column_names))


def queue_request(client: Client, impression_id: str) -> ReviewRequest | None:
    """The stored review request of one impression."""
    cols = QUEUE_COLUMNS[:-1]
    result = client.query(
        f"SELECT {', '.join(cols)} FROM review_queue FINAL "
        "WHERE impression_id = {id:String} LIMIT 1",
        parameters={"id": impression_id},
    )
    for row in result.result_rows:
        data = dict(zip(cols, row, strict=True))
        data["score"] = float(data["score"])
        data["threshold"] = float(data["threshold"])
        return ReviewRequest(**data)
    return None


def verdict_frame(client: Client, since: datetime | None = None) -> pd.DataFrame:
    """All verdicts (optionally judged since ``since``), one row each."""
    result = client.query(
        "SELECT * EXCEPT (rationale) FROM verdicts FINAL "
        "WHERE judged_at >= {since:DateTime64(3, 'UTC')} ORDER BY judged_at",
        parameters={"since": since or datetime(1970, 1, 1, tzinfo=UTC)},
    )
    return pd.DataFrame(result.result_rows, columns=list(result.column_names))


Segment = Literal["all", "category", "tier", "locale"]
_SEGMENT_SQL = {"all": "'all'", "category": "category", "tier": "tier", "locale": "locale"}


def student_sums(client: Client, segment: Segment, since: datetime) -> pd.DataFrame:
    """The scored rows' sums per segment (``segment, sampled, bad, sum_w, sum_w_bad, sum_w2``)."""
    expr = _SEGMENT_SQL[segment]  # a fixed expression chosen from a whitelist, never user text
    result = client.query(
        f"SELECT toString({expr}) AS segment, count() AS sampled, sum(is_bad) AS bad, "
        "sum(sample_weight) AS sum_w, sum(sample_weight * is_bad) AS sum_w_bad, "
        "sum(sample_weight * sample_weight) AS sum_w2 FROM scored_impressions FINAL "
        "WHERE event_time >= {since:DateTime64(3, 'UTC')} GROUP BY segment ORDER BY segment",
        parameters={"since": since},
    )
    return pd.DataFrame(result.result_rows, columns=list(result.column_names))


def reviewed_cases(client: Client, segment: Segment, since: datetime) -> list[Reviewed]:
    """Verified review cases since ``since``: a person's latest grade, else the teacher's."""
    expr = _SEGMENT_SQL[segment]
    result = client.query(
        f"SELECT toString({expr}) AS segment, student_bad, "
        "argMax(is_bad, (judge = 'human', judged_at)) AS ref_bad, "
        "any(sample_weight * review_weight) AS w FROM verdicts FINAL "
        "WHERE event_time >= {since:DateTime64(3, 'UTC')} "
        "GROUP BY impression_id, segment, student_bad",
        parameters={"since": since},
    )
    return [
        Reviewed(bool(sb), bool(rb), float(w), str(seg)) for seg, sb, rb, w in result.result_rows
    ]
