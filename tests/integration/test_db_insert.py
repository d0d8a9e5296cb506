"""The worker's writes to a real local store (relmon.db against relmon's migrated schema)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relmon import db
from relmon.settings import Settings
from schemas import Impression, ScoredImpression
from streams import repository
from tests.conftest import migrated_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with migrated_store(tmp_path_factory.mktemp("db-home")) as settings:
        yield settings


def rows_on_days(days: int, prefix: str) -> list[ScoredImpression]:
    """One scored row per day (UTC), the first 29 days ago (raw rows expire after 30 days)."""
    now = datetime.now(UTC).replace(microsecond=0)
    out = []
    for i in range(days):
        imp = Impression(
            impression_id=f"{prefix}{i}",
            query_id=f"q{i}",
            query="oak desk",
            product_id=f"p{i}",
            title="Oak Writing Desk",
            category="Desks",
            position=1,
            event_time=now + timedelta(days=i - 29),
        )
        row = ScoredImpression.of(
            imp, score=0.9, threshold=0.5, model_version="m", sample_rate=1.0, scored_at=now
        )
        out.append(row)
    return out


def stored(settings: Settings, prefix: str) -> int:
    client = db.connect(settings)
    try:
        return int(
            client.command(  # type: ignore[arg-type]
                "SELECT count() FROM scored_impressions FINAL WHERE startsWith(impression_id, "
                "{p:String})",
                parameters={"p": prefix},
            )
        )
    finally:
        client.close()


def test_rows_of_150_days_are_all_stored(migrated: Settings) -> None:
    # One insert spanning more than 100 daily partitions is refused by ClickHouse ("Too many
    # partitions"); the worker would retry it forever.
    rows = rows_on_days(150, "old-and-new-")
    assert len({repository.partition_day(r.event_time) for r in rows}) == 150
    client = db.connect(migrated)
    try:
        repository.insert_scored(client, rows)
        assert stored(migrated, "old-and-new-") == 150
        rollup = client.command(
            "SELECT sum(sampled) FROM bad_case_rollup_1d WHERE model_version = 'm'"
        )
        assert rollup == 150
        repository.insert_scored(client, rows)  # a retry of the whole write adds nothing
        assert stored(migrated, "old-and-new-") == 150
        assert (
            client.command("SELECT sum(sampled) FROM bad_case_rollup_1d WHERE model_version = 'm'")
            == 150
        )
    finally:
        client.close()


def test_a_usual_batch_is_one_insert(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    client = db.connect(migrated)
    calls: list[int] = []
    insert = client.insert
    monkeypatch.setattr(
        client, "insert", lambda *a, **k: calls.append(len(a[1])) or insert(*a, **k)
    )
    repository.insert_scored(client, rows_on_days(100, "usual-"))
    assert calls == [100]
    assert stored(migrated, "usual-") == 100
    client.close()


def test_password_path_is_beside_the_store(migrated: Settings) -> None:
    assert migrated.store_password_file == Path(migrated.home) / "store.password"


def test_inserts_ask_a_table_for_its_column_types_once_per_client(
    migrated: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """db.insert asks each table's column types once per client, then inserts in one trip."""
    described: list[str] = []  # inserts that made clickhouse-connect run DESCRIBE TABLE first
    client = db.connect(migrated)
    client_type = type(client)
    original = client_type.create_insert_context

    def counting(self: object, table: str, *args: object, **kwargs: object) -> object:
        column_types = args[2] if len(args) > 2 else kwargs.get("column_types")
        if column_types is None:
            described.append(table)
        return original(self, table, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client_type, "create_insert_context", counting)
    first, second = rows_on_days(3, "types-a-"), rows_on_days(3, "types-b-")
    try:
        repository.mark_done(client, first)
        repository.mark_done(client, second)
        assert described == ["impression_ledger"]
        done = repository.done_impressions(client, [r.impression_id for r in first + second])
        assert done == {r.impression_id for r in first + second}
    finally:
        client.close()
    other = db.connect(migrated)  # a new client asks again: its server may differ
    try:
        repository.mark_done(other, rows_on_days(1, "types-c-"))
        assert described == ["impression_ledger", "impression_ledger"]
    finally:
        other.close()


def test_one_lookup_tells_done_impressions_from_rows_stored_but_not_finished(
    migrated: Settings,
) -> None:
    finished, unfinished, new = (rows_on_days(4, f"look-{k}-") for k in ("done", "stored", "new"))
    client = db.connect(migrated)
    try:
        repository.insert_rows(client, finished + unfinished)
        repository.insert_rows(client, unfinished[:2])  # stored twice (a retried write)
        repository.mark_done(client, finished)
        ids = [r.impression_id for r in finished + unfinished + new]
        done, rows = repository.stored_rows(client, ids)
    finally:
        client.close()
    assert done == {r.impression_id for r in finished}
    assert sorted(rows, key=lambda r: r.impression_id) == sorted(
        unfinished, key=lambda r: r.impression_id
    )
