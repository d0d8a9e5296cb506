"""ClickHouse reads and writes of the teacher loop (bound parameters only).

Tables (``schemas/migrations/0003_teacher.sql``): ``review_queue`` (review requests, one row per
impression) and ``verdicts`` (teacher and human grades, one row per impression, judge, judge id
and prompt version). Both are ReplacingMergeTrees read with FINAL, so replays are idempotent.

``teacher_requests`` (:data:`SPEND_LEDGER_DDL`, created by the first teacher that needs it) is
the spend ledger: one row per chat request, written before the request is sent, by every
teacher process (:class:`StoreSpendLedger`). The daily budget counts its rows of the day.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Literal

import pandas as pd
from clickhouse_connect.driver.client import Client

from relmon import db
from relmon.estimate import SUM_COLUMNS, window_sums_sql
from relmon.teacher.agreement import Reviewed
from relmon.teacher.judge import CachedGrade, CacheKey, normalise_query
from relmon.teacher.verdict import Verdict
from schemas.models import ReviewRequest

__all__ = [
    "QUEUE_COLUMNS",
    "SPEND_LEDGER_DDL",
    "VERDICT_COLUMNS",
    "Segment",
    "StoreSpendLedger",
    "count_verdicts",
    "ensure_spend_ledger",
    "insert_queue",
    "insert_verdicts",
    "lookup_cached",
    "queue_frame",
    "queue_request",
    "requests_spent_today",
    "reviewed_cases",
    "stored_teacher_keys",
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
    db.insert(client, "review_queue", data, QUEUE_COLUMNS)


def insert_verdicts(client: Client, verdicts: Sequence[Verdict]) -> None:
    """Store verdicts (idempotent by impression, judge, judge id and prompt version)."""
    if not verdicts:
        return
    data = [[getattr(v, c) for c in VERDICT_COLUMNS] for v in verdicts]
    db.insert(client, "verdicts", data, VERDICT_COLUMNS)


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


SPEND_LEDGER_DDL = """CREATE TABLE IF NOT EXISTS teacher_requests
(
    day Date,
    request_id String,
    impression_id String,
    judge_id String,
    reserved_at DateTime64(6, 'UTC'),
    granted UInt8,
    version UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (day, request_id)
TTL day + INTERVAL 35 DAY"""
"""The spend ledger: one row per chat request of a UTC ``day``, written before it is sent,
whatever becomes of it (answered, malformed, 5xx, timed out, its batch failed). A request ranked
(by ``reserved_at``, ``request_id``) at or past the budget among the day's granted rows is
withdrawn by a newer row with ``granted = 0`` and never sent."""


def ensure_spend_ledger(client: Client) -> None:
    """Create the spend ledger table if it is missing."""
    client.command(SPEND_LEDGER_DDL)


class StoreSpendLedger:
    """The :class:`~relmon.teacher.client.SpendLedger` in ClickHouse, on its own connection.

    Every teacher process reserves each request here before sending it, so the day's budget
    holds across restarts and between processes: a reservation counts the day's granted rows
    before it (every process's), and withdraws itself when they reach the budget. Two processes
    racing can exceed the budget only by a reservation whose clock ran behind the other's.
    """

    def __init__(self, connect: Callable[[], Client], judge_id: str = "") -> None:
        self._client = connect()
        self._judge_id = judge_id
        ensure_spend_ledger(self._client)

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def spent(self, day: date) -> int:
        """Requests granted on ``day`` by every process."""
        value = self._client.command(
            "SELECT count() FROM teacher_requests FINAL WHERE day = {day:Date} AND granted = 1",
            parameters={"day": day},
        )
        return int(value or 0)  # type: ignore[arg-type]

    def _write(self, day: date, request_id: str, tag: str, granted: bool) -> None:
        self._client.insert(
            "teacher_requests",
            [[day, request_id, tag, self._judge_id, datetime.now(UTC), int(granted), 1 - granted]],
            column_names=[
                "day",
                "request_id",
                "impression_id",
                "judge_id",
                "reserved_at",
                "granted",
                "version",
            ],
        )

    def reserve(self, day: date, request_id: str, tag: str, limit: int) -> bool:
        """Record one request before it is sent; False (withdrawn) if over ``limit`` (0: none)."""
        self._write(day, request_id, tag, True)
        if limit <= 0:
            return True
        before = self._client.command(
            "SELECT count() FROM teacher_requests FINAL WHERE day = {day:Date} AND granted = 1 "
            "AND (reserved_at, request_id) < (SELECT (reserved_at, request_id) "
            "FROM teacher_requests WHERE day = {day:Date} AND request_id = {id:String} LIMIT 1)",
            parameters={"day": day, "id": request_id},
        )
        if int(before or 0) < limit:  # type: ignore[arg-type]
            return True
        self._write(day, request_id, tag, False)
        return False


def requests_spent_today(client: Client) -> int:
    """Chat requests every teacher process made today (UTC): the spend ledger's count.

    Every request is in the ledger before it is sent, whether it was answered or not and
    whether its batch succeeded; verdicts re-issued from the cache add nothing.
    """
    ensure_spend_ledger(client)
    value = client.command(
        "SELECT count() FROM teacher_requests FINAL "
        "WHERE day = toDate(now(), 'UTC') AND granted = 1"
    )
    return int(value or 0)  # type: ignore[arg-type]


def stored_teacher_keys(client: Client, verdicts: Sequence[Verdict]) -> set[tuple[str, str, str]]:
    """The (impression id, judge id, prompt version) of ``verdicts`` already stored.

    A verdict re-issued from the cache for a case that has one must not replace it: the stored
    row carries the requests that verdict cost (``calls``) and when it was judged.
    """
    if not verdicts:
        return set()
    result = client.query(
        "SELECT DISTINCT impression_id, judge_id, prompt_version FROM verdicts "
        "WHERE judge = 'teacher' AND impression_id IN {ids:Array(String)}",
        parameters={"ids": sorted({v.impression_id for v in verdicts})},
    )
    return {(str(i), str(j), str(p)) for i, j, p in result.result_rows}


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
    keys = () if segment == "all" else (segment,)
    result = client.query(window_sums_sql("scored_impressions", keys), parameters={"since": since})
    frame = pd.DataFrame(result.result_rows, columns=list(result.column_names))
    frame = frame[frame["sampled"] > 0]  # no GROUP BY for "all": one row even with no rows
    labels = frame[segment].astype(str) if keys else "all"
    return frame.assign(segment=labels)[["segment", *SUM_COLUMNS]].reset_index(drop=True)


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
