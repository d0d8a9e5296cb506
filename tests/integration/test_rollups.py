"""Roll-ups and the impression ledger on a real local store (issue 11 items 5 and 6).

The processor runs with the worker's ClickHouse ports
(:class:`streams.storage.ClickHouseStorePorts`) and in-memory sends; no broker or model is needed.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from relmon import db
from relmon.errors import ServiceError
from relmon.estimate import Sums, window_sums_sql
from relmon.settings import PlannerConfig, SamplingRates, Settings, load_settings
from relmon.store import StoreServer
from schemas import Impression, ScoredImpression
from schemas.models import CatalogProduct, DeadLetter, ReviewRequest
from streams import EventTimeWindow, ImpressionProcessor, RawRecord, Routing, repository
from streams.catalog import Catalog
from streams.metrics import Metrics
from streams.plans import Planner
from streams.storage import ClickHouseStorePorts
from streams.testing import OverlapScorer, memory_processor

pytestmark = pytest.mark.integration

ROLLUPS = {
    "bad_case_rollup_1h": "SELECT window_start, tier, category, locale, position_bucket, "
    "model_version, sampled, bad, round(sum_w, 9), round(sum_w_bad, 9), round(sum_w2, 9), "
    "round(sum_w_pbad, 9) FROM bad_case_rollup_1h ORDER BY ALL",
    "bad_case_rollup_1d": "SELECT window_start, tier, category, locale, position_bucket, "
    "model_version, sampled, bad, round(sum_w, 9), round(sum_w_bad, 9), round(sum_w2, 9), "
    "round(sum_w_pbad, 9) FROM bad_case_rollup_1d ORDER BY ALL",
    "bad_case_rates_1h": "SELECT window_start, category, sampled, bad, round(weighted_rate, 9), "
    "round(ci_low, 9), judged, round(expected_rate, 9) FROM bad_case_rates_1h ORDER BY ALL",
    "bad_case_rates_1d": "SELECT window_start, category, sampled, bad, round(weighted_rate, 9), "
    "round(ci_low, 9), judged, round(expected_rate, 9) FROM bad_case_rates_1d ORDER BY ALL",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("rollups-home")
    with StoreServer(home / "store") as store:
        yield load_settings(home=home, clickhouse_port=store.port, clickhouse_password="")


@pytest.fixture
def fresh_db(server: Settings, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Settings of a new migrated database per call (``fresh_db("name")``)."""

    def make(name: str) -> Settings:
        s = server.with_overrides(clickhouse_database=f"{request.node.name[:40]}_{name}")
        db.migrate(s)
        return s

    yield make


class StorePorts(ClickHouseStorePorts):
    """The worker's ClickHouse ports with in-memory Kafka sends, acks and a fake scorer."""

    def __init__(self, settings: Settings, gate: asyncio.Barrier | None = None) -> None:
        self.client = db.connect(settings)
        super().__init__(lambda: self.client)
        self.gate = gate
        self.reviews: list[ReviewRequest] = []
        self.dead_letters: list[DeadLetter] = []
        self.acked: list[RawRecord] = []
        self.written: Counter[str] = Counter()

    async def stored(self, impression_ids: list[str]) -> tuple[set[str], list[ScoredImpression]]:
        found = await super().stored(impression_ids)
        if self.gate is not None:  # two workers both look before either writes
            await self.gate.wait()
        return found

    async def write(self, rows: list[ScoredImpression], queries: list[Any]) -> None:
        await super().write(rows, queries)
        self.written.update(row.impression_id for row in rows)

    async def score(self, pairs: list[tuple[str, str]], keys: list[str]) -> np.ndarray:
        return OverlapScorer().predict(pairs)

    async def send_reviews(self, reviews: list[ReviewRequest]) -> None:
        self.reviews.extend(reviews)

    async def send_dead_letters(self, letters: list[DeadLetter]) -> None:
        self.dead_letters.extend(letters)

    async def ack(self, records: list[RawRecord]) -> None:
        self.acked.extend(records)

    def close(self) -> None:
        super().close()
        self.client.close()


def processor(ports: StorePorts, threshold: float = 0.5) -> ImpressionProcessor:
    return memory_processor(
        ports=ports,
        catalog=Catalog([CatalogProduct(product_id="p1", title="Blue Velvet Sofa")]),
        planner=Planner(PlannerConfig(checkpoint_interval_s=0)),
        rates=SamplingRates.uniform_at(1.0),
        routing=Routing(threshold, uncertain_band=0.1),
        model_version="fake-overlap-1",
        metrics=Metrics(),
        backoff_max_s=0.05,
        event_window=EventTimeWindow(28 * 86400, 300),
    )


TITLES = ["Oak Dining Table", "Blue Velvet Chair", "Blue Velvet Sofa", "Velvet Sofa Bed"]
CATEGORIES = ["Sofas", "Tables", "Rugs"]


def traffic(n: int = 240) -> list[RawRecord]:
    """Impressions over the last ~31 hours (two days, many hours), most of them sampled."""
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        imp = Impression(
            impression_id=f"r{i}",
            query_id=f"q{i // 4}",
            query="blue velvet sofa",
            product_id=f"p{i % 7}",
            title=TITLES[i % 4],
            category=CATEGORIES[i % 3],
            position=1 + i % 4,
            event_time=now - timedelta(minutes=i * 31 // 4),
        )
        out.append(RawRecord("relmon.impressions", i % 2, i // 2, None, imp.to_bytes()))
    return out


def batches(records: list[RawRecord], size: int = 50) -> list[list[RawRecord]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


def snapshot(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    client = db.connect(settings)
    try:
        return {name: client.query(sql).result_rows for name, sql in ROLLUPS.items()}
    finally:
        client.close()


def physical_rows(settings: Settings) -> Counter[str]:
    """Stored rows per impression_id, not merged (no FINAL)."""
    client = db.connect(settings)
    try:
        rows = client.query("SELECT impression_id FROM scored_impressions").result_rows
    finally:
        client.close()
    return Counter(str(r[0]) for r in rows)


async def run_worker(settings: Settings, records: list[RawRecord]) -> StorePorts:
    ports = StorePorts(settings)
    try:
        proc = processor(ports)
        for batch in batches(records):
            await proc.process(batch)
    finally:
        ports.close()
    return ports


def test_a_replay_adds_nothing_to_rollups_rows_or_reviews(fresh_db: Any) -> None:
    s = fresh_db("replay")
    records = traffic()
    first = asyncio.run(run_worker(s, records))
    once = snapshot(s)
    assert len(once["bad_case_rollup_1d"]) >= 2 * len(CATEGORIES)  # two days, many hours
    assert len(once["bad_case_rollup_1h"]) > 40
    assert sum(r[6] for r in once["bad_case_rollup_1h"]) == len(records)
    assert sum(r[6] for r in once["bad_case_rollup_1d"]) == len(records)
    assert len(first.reviews) == len({r.impression_id for r in first.reviews}) == 60

    second = asyncio.run(run_worker(s, records))  # a restarted worker reads the topic again
    third = asyncio.run(run_worker(s, list(reversed(records))))
    assert snapshot(s) == once
    assert second.reviews == [] and third.reviews == []
    assert set(physical_rows(s).values()) == {1}
    assert len(second.acked) == len(records)


class Killed(Exception):
    """Stands for SIGKILL: not a service error, so the processor does not retry it."""


class KilledBeforeLedger(StorePorts):
    """Ports of a worker killed after its reviews went out, before the ledger recorded them."""

    async def mark_done(self, rows: list[ScoredImpression]) -> None:
        raise Killed


def test_a_retry_after_a_kill_repeats_the_same_review_requests(fresh_db: Any) -> None:
    """Rows recovered from the store give the requests the killed worker sent, field for field.

    The threshold and the fake scores are not float32 numbers and the event times have
    microseconds: the table keeps float32 and milliseconds, so a row must be held that way to
    read back equal.
    """
    s = fresh_db("kill")
    records = traffic(60)
    times = [Impression.model_validate_json(r.value or b"").event_time for r in records]
    assert any(t.microsecond % 1000 for t in times)

    async def killed() -> KilledBeforeLedger:
        ports = KilledBeforeLedger(s)
        try:
            with pytest.raises(Killed):
                await processor(ports, threshold=0.4237).process(records)
        finally:
            ports.close()
        return ports

    async def retry() -> StorePorts:
        ports = StorePorts(s)
        try:
            await processor(ports, threshold=0.4237).process(records)
        finally:
            ports.close()
        return ports

    first = asyncio.run(killed())
    second = asyncio.run(retry())
    assert first.reviews and first.acked == []

    def by_id(reviews: list[ReviewRequest]) -> dict[str, ReviewRequest]:
        assert len(reviews) == len({r.impression_id for r in reviews})
        return {r.impression_id: r for r in reviews}

    assert by_id(second.reviews) == by_id(first.reviews)
    assert len(second.acked) == len(records)
    assert set(physical_rows(s).values()) == {1}


def test_two_overlapping_workers_count_each_impression_once(fresh_db: Any) -> None:
    records = traffic()
    single = fresh_db("single")
    asyncio.run(run_worker(single, records))
    expected = snapshot(single)

    s = fresh_db("overlap")

    async def both() -> tuple[StorePorts, StorePorts]:
        gate = asyncio.Barrier(2)
        a, b = StorePorts(s, gate), StorePorts(s, gate)
        pa, pb = processor(a), processor(b)
        try:
            for batch in batches(records):  # a rebalance left both believing they own it all
                await asyncio.gather(pa.process(batch), pb.process(batch))
        finally:
            a.close()
            b.close()
        return a, b

    a, b = asyncio.run(both())
    # the race happened: both wrote every row (a background merge may have folded the copies)
    every = Counter(Impression.model_validate_json(r.value or b"").impression_id for r in records)
    assert a.written == b.written == every
    assert snapshot(s) == expected
    reviewed = Counter(r.impression_id for r in a.reviews + b.reviews)
    assert set(reviewed.values()) == {2}  # at least once: both sent; the teacher keeps one


def test_the_estimate_reads_the_same_sums_from_rows_and_rollups(fresh_db: Any) -> None:
    """relmon.estimate's SQL: hours and days of raw rows sum to the roll-ups' sums."""
    s = fresh_db("sums")
    asyncio.run(run_worker(s, traffic()))
    since = datetime.now(UTC) - timedelta(days=3)

    def read(source: str, window_s: int) -> dict[tuple[datetime, str], Sums]:
        sql = window_sums_sql(source, ("category",), bucket=True)
        result = client.query(sql, parameters={"since": since, "w": window_s})
        return {
            (r["window_start"].replace(tzinfo=UTC), str(r["category"])): Sums.from_row(r)
            for r in result.named_results()
        }

    client = db.connect(s)
    try:
        for rollup, window_s in (("bad_case_rollup_1h", 3600), ("bad_case_rollup_1d", 86400)):
            raw, rolled = read("scored_impressions", window_s), read(rollup, window_s)
            assert len(raw) > len(CATEGORIES) and sum(v.sampled for v in raw.values()) == 240
            assert rolled.keys() == raw.keys(), rollup
            for key, want in raw.items():
                got = rolled[key]
                assert (got.sampled, got.bad) == (want.sampled, want.bad), (rollup, key)
                floats = (got.sum_w, got.sum_w_bad, got.sum_w2, got.sum_w_pbad)
                assert floats == pytest.approx(
                    (want.sum_w, want.sum_w_bad, want.sum_w2, want.sum_w_pbad)
                )
                assert 0 <= want.sum_w_pbad <= want.sum_w  # each row's P(bad) is in [0, 1]
    finally:
        client.close()


def test_rows_past_the_window_are_refused_and_a_replay_counts_nothing(fresh_db: Any) -> None:
    # real UBI streams replay Dec 2024 - Mar 2025 traffic: scored, then deleted by the TTL at once
    s = fresh_db("old")
    old = []
    for i in range(60):
        event = {
            "action_name": "impression",
            "query_id": f"u{i // 10}",
            "timestamp": (datetime(2024, 12, 1, tzinfo=UTC) + timedelta(hours=i)).isoformat(),
            "event_attributes": {"object": {"object_id": "p1"}, "position": {"ordinal": i % 10}},
        }
        old.append(RawRecord("relmon.impressions", 0, i, None, json.dumps(event).encode()))
    for _ in range(2):
        ports = asyncio.run(run_worker(s, old))
        assert len(ports.dead_letters) == 60 and len(ports.acked) == 60
        assert {d.kind for d in ports.dead_letters} == {"event_time_out_of_range"}
    assert snapshot(s) == {name: [] for name in ROLLUPS}
    assert physical_rows(s) == Counter()


def test_a_segment_an_impression_left_drops_out_of_the_rollups(fresh_db: Any) -> None:
    s = fresh_db("moved")
    now = datetime.now(UTC)

    def row(version: str, at: datetime) -> ScoredImpression:
        return desk_row("m1", now, 0.2, at, model_version=version, sample_rate=1.0)

    client = db.connect(s)
    try:
        repository.insert_scored(client, [row("old", now)])
        repository.insert_scored(client, [row("new", now + timedelta(seconds=1))])  # replaces it
        for name in ("bad_case_rollup_1h", "bad_case_rollup_1d"):
            got = client.query(f"SELECT model_version, sampled FROM {name}").result_rows
            assert got == [("new", 1)], name
    finally:
        client.close()


def migrated_before(
    server: Settings, monkeypatch: pytest.MonkeyPatch, database: str, version: int
) -> tuple[Settings, Callable[..., list[str]]]:
    """A new database with the migrations before ``version``; call the second item for the rest.

    ``rest(through)`` applies the shipped migrations up to ``through`` only (all by default).
    """
    s = server.with_overrides(clickhouse_database=database)
    shipped = db.migrations()
    monkeypatch.setattr(db, "migrations", lambda: [m for m in shipped if m[0] < version])
    db.migrate(s)

    def rest(through: int | None = None) -> list[str]:
        last = through if through is not None else max(m[0] for m in shipped)
        monkeypatch.setattr(db, "migrations", lambda: [m for m in shipped if m[0] <= last])
        return db.migrate(s)

    return s, rest


def insert_raw(client: Any, rows: list[ScoredImpression]) -> None:
    """Insert rows into scored_impressions only, as a worker from before a migration did."""
    data = [[getattr(r, c) for c in repository.SCORED_COLUMNS] for r in rows]
    client.insert("scored_impressions", data, column_names=repository.SCORED_COLUMNS)


def desk_row(
    impression_id: str,
    at: datetime,
    score: float,
    now: datetime,
    *,
    model_version: str = "m",
    sample_rate: float = 0.5,
) -> ScoredImpression:
    """A row of an oak-desk query at ``at`` scored ``score`` at ``now`` (threshold 0.5)."""
    imp = Impression(
        impression_id=impression_id,
        query_id="q",
        query="oak desk",
        product_id="p",
        title="Oak Desk",
        category="Desks",
        position=1,
        event_time=at,
    )
    return ScoredImpression.of(
        imp,
        score=score,
        threshold=0.5,
        model_version=model_version,
        sample_rate=sample_rate,
        scored_at=now,
    )


def test_migration_recounts_double_counted_rollups_and_fills_the_ledger(
    server: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, migrate_rest = migrated_before(server, monkeypatch, "migrate_0006", 6)
    now = datetime.now(UTC)
    rows = [desk_row(f"d{i}", now - timedelta(hours=i), 0.9, now) for i in range(30)]
    client = db.connect(s)
    try:
        for _ in range(2):  # the old materialized views sum both inserts
            insert_raw(client, rows)
        doubled = "SELECT sum(sampled) FROM bad_case_rollup_1h"
        assert client.command(doubled) == 60
        assert migrate_rest()[0] == "0006_idempotent_rollups.sql"
        assert client.command(doubled) == 30
        assert client.command("SELECT sum(sampled) FROM bad_case_rollup_1d") == 30
        assert repository.done_impressions(client, [r.impression_id for r in rows]) == {
            r.impression_id for r in rows
        }
        repository.insert_scored(client, rows)  # and from now on a replay adds nothing
        assert client.command(doubled) == 30
    finally:
        client.close()


def test_migration_adds_the_expected_share_to_stored_hours(
    server: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0008: hours with raw rows get their weighted P(bad); older hours' is unknown (NaN)."""
    s, migrate_rest = migrated_before(server, monkeypatch, "migrate_0008", 8)
    now = datetime.now(UTC)
    rows = [desk_row(f"e{i}", now - timedelta(minutes=i), 0.25 * (i % 4), now) for i in range(8)]
    old_hour = (now - timedelta(days=40)).replace(minute=0, second=0, microsecond=0)
    client = db.connect(s)
    try:
        insert_raw(client, rows)
        client.insert(  # an hour whose raw rows expired long ago
            "bad_case_totals_1h",
            [[old_hour, "head", "Desks", "", "1", "m", 4, 1, 8.0, 2.0, 16.0, now]],
            column_names=[
                *("window_start", "tier", "category", "locale", "position_bucket"),
                *("model_version", "sampled", "bad", "sum_w", "sum_w_bad", "sum_w2"),
                "computed_at",
            ],
        )
        assert migrate_rest(8) == ["0008_expected_bad_share.sql"]
        since = now - timedelta(days=60)
        recent = Sums()
        old = Sums()
        sql = window_sums_sql("bad_case_rollup_1h", bucket=True)
        for r in client.query(sql, parameters={"since": since}).named_results():
            hour = r["window_start"].replace(tzinfo=UTC)
            if hour == old_hour:
                old += Sums.from_row(r)
            else:
                recent += Sums.from_row(r)
        # P(bad) = 1 - score: 1, 0.75, 0.5, 0.25 twice over, each with weight 2
        assert recent.sampled == 8 and recent.sum_w_pbad == pytest.approx(2 * 2 * 2.5)
        assert recent.expected().rate == pytest.approx(0.625)
        assert old.sampled == 4 and math.isnan(old.sum_w_pbad)
        assert math.isnan((old + recent).expected().rate)
        assert (old + recent).estimate().rate == pytest.approx((2.0 + 2 * 2 * 2) / 24.0)
    finally:
        client.close()


def test_workers_starting_together_migrate_a_new_database_together(server: Settings) -> None:
    """Each process migrates at start; several at once must all succeed (docker compose scale)."""
    s = server.with_overrides(clickhouse_database="migrate_together")
    errors: list[BaseException] = []

    def one() -> None:
        try:
            db.migrate(s)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    client = db.connect(s)
    try:
        shipped = {name for _, name, _ in db.migrations()}
        assert {r[0] for r in client.query("SELECT name FROM schema_migrations").result_rows} == (
            shipped
        )
        client.query("SELECT expected_rate FROM bad_case_rates_1h")  # the newest views exist
    finally:
        client.close()


def test_a_migration_lock_waits_for_its_holder_and_breaks_when_stale(
    server: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = server.with_overrides(clickhouse_database="migrate_locked")
    db.migrate(s)
    monkeypatch.setattr(db, "migrations", lambda: [(99, "0099_test.sql", ["SELECT 1"])])
    client = db.connect(s)
    try:
        client.command(f"CREATE TABLE {db.MIGRATION_LOCK} (taken UInt8) ENGINE = Memory")
        with pytest.raises(ServiceError, match=db.MIGRATION_LOCK):  # a live holder: wait, fail
            db.migrate(s, wait_s=0.5)
        monkeypatch.setattr(db, "LOCK_STALE_S", -1.0)  # the holder died long ago
        assert db.migrate(s) == ["0099_test.sql"]
        assert not client.command(
            "SELECT count() FROM system.tables WHERE database = currentDatabase() "
            "AND name = {name:String}",
            parameters={"name": db.MIGRATION_LOCK},
        )
    finally:
        client.close()
