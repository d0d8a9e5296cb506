"""ClickHouse access shared by every component: clients, errors, ordered migrations.

Every component reaches ClickHouse through clickhouse-connect's HTTP client: the local store in
the embedded setup, a ClickHouse server in production. SQL takes its values as server-side bound
parameters (``{name:Type}``); identifiers come only from validated settings. Each component keeps
its own SQL (the worker's in :mod:`streams.repository`), so this module knows none of them.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import clickhouse_connect
from clickhouse_connect.datatypes.base import ClickHouseType
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DataError,
    InterfaceError,
    ProgrammingError,
)

from relmon.errors import ServiceError, StoreUnavailable
from relmon.settings import Settings

log = logging.getLogger(__name__)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def connect(settings: Settings, *, database: str | None = None, **kwargs: Any) -> Client:
    """Open a clickhouse-connect client to the configured ClickHouse (or local store).

    The password is RELMON_CLICKHOUSE_PASSWORD, else the one the local store generated
    (:meth:`Settings.clickhouse_password_value`).
    """
    try:
        return clickhouse_connect.get_client(
            host=settings.clickhouse.host,
            port=settings.clickhouse.port,
            username=settings.clickhouse.user,
            password=settings.clickhouse_password_value(),
            database=database if database is not None else settings.clickhouse.database,
            secure=settings.clickhouse.secure,
            compress=False,
            autogenerate_session_id=False,
            **kwargs,
        )
    except (ClickHouseError, OSError) as exc:
        raise StoreUnavailable(
            f"cannot reach ClickHouse at {settings.clickhouse.host}:{settings.clickhouse.port}: "
            f"{exc}. Start the local store with `relmon store` or set RELMON_CLICKHOUSE_HOST/PORT."
        ) from exc


def is_store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is ClickHouse failing (worth a retry), not relmon misusing its client.

    Connections, timeouts and errors the server answers with are the store's; clickhouse-connect
    raises :class:`ProgrammingError`, :class:`DataError` and :class:`InterfaceError` itself,
    before sending, for a wrong call or a value of the wrong type: those are bugs.
    """
    if isinstance(exc, (ProgrammingError, DataError, InterfaceError)):
        return False
    return isinstance(exc, (ClickHouseError, OSError))


def store_error(exc: BaseException, what: str) -> StoreUnavailable:
    """The :class:`StoreUnavailable` of a store failure (raise it ``from exc``)."""
    return StoreUnavailable(f"ClickHouse {what} failed: {type(exc).__name__}: {exc}")


_ColumnTypes = dict[tuple[str, tuple[str, ...]], list[ClickHouseType]]
_insert_types: weakref.WeakKeyDictionary[Client, _ColumnTypes] = weakref.WeakKeyDictionary()
_insert_types_lock = threading.Lock()


def insert(
    client: Client, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]
) -> None:
    """Insert ``rows`` (values in the order of ``columns``) into ``table`` in one round trip.

    clickhouse-connect asks the server for a table's column types (``DESCRIBE TABLE``) before
    every insert it is not given them for: a second round trip per insert, on the worker's
    path of every batch. The types are asked once per client and table here and reused; a
    client opened before a migration that changes a column's type must be reopened (every
    component migrates before it opens its working clients).
    """
    key = (table, tuple(columns))
    with _insert_types_lock:
        types = _insert_types.setdefault(client, {}).get(key)
    if types is None:
        types = list(client.create_insert_context(table, list(columns)).column_types)
        with _insert_types_lock:
            _insert_types.setdefault(client, {})[key] = types
    client.insert(table, rows, column_names=list(columns), column_types=types)


def migrations() -> list[tuple[int, str, list[str]]]:
    """The ordered migrations shipped in ``schemas/migrations``: (version, name, statements)."""
    out = []
    folder = resources.files("schemas") / "migrations"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".sql"):
            continue
        version = int(entry.name.split("_", 1)[0])
        text = "\n".join(
            line for line in entry.read_text().splitlines() if not line.lstrip().startswith("--")
        )
        statements = [s.strip() for s in text.split(";") if s.strip()]
        out.append((version, entry.name, statements))
    return out


MIGRATION_LOCK = "schema_migrations_lock"
"""The table whose creation takes the migration lock (only one concurrent CREATE succeeds)."""
LOCK_STALE_S = 600.0
"""A lock older than this was left by a process that died while migrating: it is broken."""
_ALREADY_EXISTS = re.compile(r"\bCode: 57\b")


def migrate(settings: Settings, *, wait_s: float = 300.0) -> list[str]:
    """Create the database and apply pending migrations, idempotently; return the applied ones.

    Every component migrates when it starts, so several processes may start on a new database
    together (workers scaled out at once). Migrations are not safe to interleave (one drops a
    view another is recreating), so the process that applies them holds a lock: it creates the
    table :data:`MIGRATION_LOCK`, which only one concurrent ``CREATE TABLE`` can do, and drops
    it when done. The others wait up to ``wait_s`` seconds, then read what was applied. A lock
    older than :data:`LOCK_STALE_S` is broken.

    Raises:
        ServiceError: the lock stayed taken for ``wait_s`` seconds.

    """
    database = settings.clickhouse.database
    if not _IDENT.match(database):
        raise ServiceError(f"invalid database name {database!r}")
    admin = connect(settings, database="default")
    try:
        admin.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    finally:
        admin.close()
    client = connect(settings)
    applied: list[str] = []
    try:
        client.command(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
            "ENGINE = ReplacingMergeTree ORDER BY version"
        )
        if not _pending(client):
            return applied
        _lock(client, wait_s)
        try:
            for version, name, statements in _pending(client):
                for statement in statements:
                    client.command(statement)
                client.insert(
                    "schema_migrations",
                    [[version, name, datetime.now(UTC)]],
                    column_names=["version", "name", "applied_at"],
                )
                applied.append(name)
                log.info("applied migration %s", name)
        finally:
            client.command(f"DROP TABLE IF EXISTS {MIGRATION_LOCK}")
    finally:
        client.close()
    return applied


def _pending(client: Client) -> list[tuple[int, str, list[str]]]:
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
    return [m for m in migrations() if m[0] not in done]


def _lock(client: Client, wait_s: float) -> None:
    """Take the migration lock, waiting up to ``wait_s`` seconds for another holder."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.command(f"CREATE TABLE {MIGRATION_LOCK} (taken UInt8) ENGINE = Memory")
            return
        except ClickHouseError as exc:
            if not _ALREADY_EXISTS.search(str(exc)):
                raise
        rows = client.query(
            "SELECT dateDiff('second', metadata_modification_time, now()) "
            "FROM system.tables WHERE database = currentDatabase() AND name = {name:String}",
            parameters={"name": MIGRATION_LOCK},
        ).result_rows
        if not rows:
            continue  # released meanwhile: try again at once
        age = int(rows[0][0])
        if age > LOCK_STALE_S:
            log.warning("breaking a migration lock held for %d s (its holder died)", age)
            client.command(f"DROP TABLE IF EXISTS {MIGRATION_LOCK}")
            continue
        if time.monotonic() > deadline:
            raise ServiceError(
                f"another process has been migrating the database for over {wait_s:.0f} s; if "
                f"none is, drop the table {MIGRATION_LOCK} (it breaks by itself after "
                f"{LOCK_STALE_S:.0f} s)"
            )
        time.sleep(0.1)
