"""ClickHouse access shared by every component: clients, errors, ordered migrations.

Every component reaches ClickHouse through clickhouse-connect's HTTP client: the local store in
the embedded setup, a ClickHouse server in production. SQL takes its values as server-side bound
parameters (``{name:Type}``); identifiers come only from validated settings. Each component keeps
its own SQL (the worker's in :mod:`streams.repository`), so this module knows none of them.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import clickhouse_connect
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


def migrate(settings: Settings) -> list[str]:
    """Create the database and apply pending migrations, idempotently; return the applied ones."""
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
        done = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
        for version, name, statements in migrations():
            if version in done:
                continue
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
        client.close()
    return applied
