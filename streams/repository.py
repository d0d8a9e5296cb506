"""The worker's SQL: scored rows, roll-ups, the impression ledger, UBI queries, sampling plans.

Plain functions over a clickhouse-connect client (:func:`relmon.db.connect`), run by
:class:`streams.storage.ClickHouseStorePorts` in the worker's store thread; tests seed the store
with :func:`insert_scored`. SQL takes its values as server-side bound parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from relmon import db
from relmon.estimate import P_BAD_SQL
from schemas.models import ScoredImpression
from schemas.ubi import UbiQuery
from streams.plans import Checkpoint, PlanKey, StoredPlan
from streams.sampling import SamplingPlan

SCORED_COLUMNS = list(ScoredImpression.model_fields)

# ClickHouse refuses an INSERT block touching more partitions than this
# (max_partitions_per_insert_block, error 252 "Too many partitions").
MAX_PARTITIONS_PER_INSERT = 100


def partition_day(event_time: datetime) -> date:
    """The UTC day of ``event_time``: ``scored_impressions``' partition (naive means UTC)."""
    if event_time.tzinfo is None:
        return event_time.date()
    return event_time.astimezone(UTC).date()


def insert_scored(client: Client, rows: Sequence[ScoredImpression]) -> None:
    """Write scored rows, then refresh the roll-ups of their hours and days.

    Idempotent: the table keeps one row per impression_id, and the roll-ups are recomputed from
    the deduplicated rows (:func:`refresh_rollups`). The table is partitioned by day of event
    time, and ClickHouse refuses one insert spanning more than :data:`MAX_PARTITIONS_PER_INSERT`
    days, so rows of more days (a replay of old traffic beside live traffic) go in one insert per
    100 days. Such an insert skips the rows stored already, so a retry after a failure in the
    middle does not store them twice.
    """
    if not rows:
        return
    insert_rows(client, rows)
    refresh_rollups(client, [row.event_time for row in rows])


def insert_rows(client: Client, rows: Sequence[ScoredImpression]) -> None:
    """Write scored rows without refreshing their roll-ups (the caller does, before it acks)."""
    by_day: dict[date, list[ScoredImpression]] = {}
    for row in rows:
        by_day.setdefault(partition_day(row.event_time), []).append(row)
    days = sorted(by_day)
    if len(days) <= MAX_PARTITIONS_PER_INSERT:  # the usual case: one insert, rows in order
        data = [[getattr(row, col) for col in SCORED_COLUMNS] for row in rows]
        db.insert(client, "scored_impressions", data, SCORED_COLUMNS)
        return
    for first in range(0, len(days), MAX_PARTITIONS_PER_INSERT):
        chunk = [
            row for day in days[first : first + MAX_PARTITIONS_PER_INSERT] for row in by_day[day]
        ]
        stored = existing_impressions(client, [row.impression_id for row in chunk])
        data = [
            [getattr(row, col) for col in SCORED_COLUMNS]
            for row in chunk
            if row.impression_id not in stored
        ]
        if data:
            db.insert(client, "scored_impressions", data, SCORED_COLUMNS)


UBI_QUERY_COLUMNS = ["query_id", "user_query", "client_hash", "application", "received_at"]


def insert_ubi_queries(client: Client, queries: Iterable[UbiQuery], client_hash: Any) -> None:
    """Remember UBI query texts so events after a restart still find their query."""
    now = datetime.now(UTC)
    data = [
        [
            q.query_id,
            q.user_query,
            client_hash(q.client_id) if q.client_id else "",
            q.application or "",
            now,
        ]
        for q in queries
    ]
    if data:
        db.insert(client, "ubi_queries", data, UBI_QUERY_COLUMNS)


def lookup_ubi_queries(client: Client, query_ids: Iterable[str]) -> dict[str, str]:
    """Return the known query texts of ``query_ids``."""
    ids = sorted(set(query_ids))
    if not ids:
        return {}
    result = client.query(
        "SELECT query_id, argMax(user_query, received_at) FROM ubi_queries "
        "WHERE query_id IN {ids:Array(String)} GROUP BY query_id",
        parameters={"ids": ids},
    )
    return {str(qid): str(text) for qid, text in result.result_rows}


def existing_impressions(client: Client, impression_ids: Sequence[str]) -> set[str]:
    """The ids among ``impression_ids`` that are stored already."""
    if not impression_ids:
        return set()
    result = client.query(
        "SELECT DISTINCT impression_id FROM scored_impressions "
        "WHERE impression_id IN {ids:Array(String)}",
        parameters={"ids": list(impression_ids)},
    )
    return {str(row[0]) for row in result.result_rows}


_ROLLUP_COLUMNS = (
    "window_start, tier, category, locale, position_bucket, model_version, "
    "sampled, bad, sum_w, sum_w_bad, sum_w2, sum_w_pbad, computed_at"
)
_SEGMENT = "tier, category, locale, position_bucket, model_version"
_SUMS = "sum(sampled), sum(bad), sum(sum_w), sum(sum_w_bad), sum(sum_w2), sum(sum_w_pbad), now64(9)"
_ZEROS = "toUInt64(0), toUInt64(0), 0., 0., 0., 0."
# The totals of each hour touched, recomputed from the deduplicated raw rows (FINAL); the
# segments an hour had before and no longer has get zero rows (the views leave them out).
_REFRESH_HOURS = (
    f"INSERT INTO bad_case_totals_1h ({_ROLLUP_COLUMNS}) "
    f"SELECT hour, {_SEGMENT}, {_SUMS} FROM ("
    f"SELECT toStartOfHour(event_time) AS hour, {_SEGMENT}, count() AS sampled, "
    "toUInt64(sum(is_bad)) AS bad, sum(sample_weight) AS sum_w, "
    "sum(sample_weight * is_bad) AS sum_w_bad, sum(sample_weight * sample_weight) AS sum_w2, "
    f"sum(sample_weight * {P_BAD_SQL}) AS sum_w_pbad "
    "FROM scored_impressions FINAL "
    "WHERE event_time >= {lo:DateTime64(3, 'UTC')} AND event_time < {hi:DateTime64(3, 'UTC')} "
    "AND toStartOfHour(event_time) IN {hours:Array(DateTime('UTC'))} "
    f"GROUP BY hour, {_SEGMENT} "
    f"UNION ALL SELECT window_start AS hour, {_SEGMENT}, {_ZEROS} FROM bad_case_totals_1h FINAL "
    "WHERE window_start IN {hours:Array(DateTime('UTC'))}"
    f") GROUP BY hour, {_SEGMENT}"
)


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def refresh_rollups(client: Client, event_times: Iterable[datetime]) -> None:
    """Recompute the hourly totals of the hours holding ``event_times`` (the days sum them).

    The hourly totals (``bad_case_totals_1h``, a ReplacingMergeTree keyed by window and segment,
    read through the view ``bad_case_rollup_1h``) are recomputed from the deduplicated raw rows,
    never incremented: a replay, a retry, or two workers writing the same
    impressions in a rebalance recompute the same totals, so nothing is counted twice. Each
    recomputation is versioned by the server's clock when it starts, and reads the rows as of
    then: the newest one has seen every row written before any other refresh began.

    The raw rows of a refreshed hour must all still be stored (30-day TTL): the worker only
    accepts events less than ``RELMON_MAX_EVENT_AGE_S`` (at most 29 days) old. The view
    ``bad_case_rollup_1d`` sums a day's hourly totals when read: they do not expire.
    """
    times = [_utc(t) for t in event_times]
    if not times:
        return
    hours = sorted({t.replace(minute=0, second=0, microsecond=0) for t in times})
    client.command(
        _REFRESH_HOURS,
        parameters={"hours": hours, "lo": hours[0], "hi": hours[-1] + timedelta(hours=1)},
    )


def done_impressions(client: Client, impression_ids: Sequence[str]) -> set[str]:
    """The ids among ``impression_ids`` that the ledger records as done.

    The worker reads them with its stored rows (:func:`stored_rows`).
    """
    if not impression_ids:
        return set()
    result = client.query(
        "SELECT DISTINCT impression_id FROM impression_ledger "
        "WHERE impression_id IN {ids:Array(String)}",
        parameters={"ids": list(impression_ids)},
    )
    return {str(row[0]) for row in result.result_rows}


def mark_done(client: Client, rows: Sequence[ScoredImpression]) -> None:
    """Record the impressions of ``rows`` as done in the ledger."""
    now = datetime.now(UTC)
    data = [[row.impression_id, row.event_time, now] for row in rows]
    if data:
        db.insert(client, "impression_ledger", data, ["impression_id", "event_time", "done_at"])


def stored_rows(
    client: Client, impression_ids: Sequence[str]
) -> tuple[set[str], list[ScoredImpression]]:
    """Of ``impression_ids``, those the ledger records as done, and the stored rows of the rest.

    Done: stored and any review request delivered (``impression_ledger``, kept 35
    days of event time). One query for both, as the worker asks for both with every batch: the
    ledger is written only after a row is stored, and rows are kept 30 days of event time, a
    day longer than the worker accepts events, so every impression the ledger records as done
    that the worker can meet is stored, and the done ones are found among the stored rows.
    """
    if not impression_ids:
        return set(), []
    result = client.query(
        "SELECT impression_id IN (SELECT impression_id FROM impression_ledger "
        "WHERE impression_id IN {ids:Array(String)}) AS done, "
        f"{', '.join(SCORED_COLUMNS)} FROM scored_impressions FINAL "
        "WHERE impression_id IN {ids:Array(String)}",
        parameters={"ids": list(impression_ids)},
    )
    done: set[str] = set()
    out = []
    for is_done, *values in result.result_rows:
        if is_done:
            done.add(str(values[0]))
            continue
        row = dict(zip(SCORED_COLUMNS, values, strict=True))
        row["event_time"] = _utc(row["event_time"])
        row["scored_at"] = _utc(row["scored_at"])
        out.append(ScoredImpression.model_validate(row))
    return done, out


PLAN_COLUMNS = ["topic", "partition", "epoch", "plan_id", "budget_factor", "tiers", "created_at"]
CHECKPOINT_COLUMNS = ["topic", "partition", "offset", "last_epoch", "state", "created_at"]


def save_plans(client: Client, plans: Sequence[StoredPlan]) -> None:
    """Store sampling plans."""
    now = datetime.now(UTC)
    data = [[*p.key, p.plan.plan_id, p.plan.budget_factor, p.plan.to_json(), now] for p in plans]
    if data:
        db.insert(client, "sampling_plans", data, PLAN_COLUMNS)


def load_plans(client: Client, keys: Sequence[PlanKey]) -> dict[PlanKey, StoredPlan]:
    """Stored sampling plans of ``keys``."""
    if not keys:
        return {}
    result = client.query(
        "SELECT topic, partition, epoch, plan_id, budget_factor, tiers FROM sampling_plans FINAL "
        "WHERE (topic, partition, epoch) IN {keys:Array(Tuple(String, UInt32, Int64))}",
        parameters={"keys": [tuple(k) for k in keys]},
    )
    out = {}
    for topic, partition, epoch, plan_id, factor, tiers in result.result_rows:
        key = (str(topic), int(partition), int(epoch))
        out[key] = StoredPlan(key, SamplingPlan.from_row(str(plan_id), str(tiers), float(factor)))
    return out


def save_checkpoints(client: Client, checkpoints: Sequence[Checkpoint]) -> None:
    """Store sketch checkpoints."""
    now = datetime.now(UTC)
    data = [[c.topic, c.partition, c.offset, c.last_epoch, c.state, now] for c in checkpoints]
    if data:
        db.insert(client, "sketch_checkpoints", data, CHECKPOINT_COLUMNS)


def latest_checkpoint(client: Client, topic: str, partition: int) -> Checkpoint | None:
    """The checkpoint of a partition with the highest offset."""
    result = client.query(
        "SELECT offset, last_epoch, state FROM sketch_checkpoints "
        "WHERE topic = {topic:String} AND partition = {partition:UInt32} "
        "ORDER BY offset DESC LIMIT 1",
        parameters={"topic": topic, "partition": partition},
    )
    for offset, last_epoch, state in result.result_rows:
        return Checkpoint(topic, partition, int(offset), int(last_epoch), str(state))
    return None


def count_scored(client: Client) -> int:
    """Number of distinct scored impressions."""
    return int(client.command("SELECT count() FROM scored_impressions FINAL"))  # type: ignore[arg-type]
