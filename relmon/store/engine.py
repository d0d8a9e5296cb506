"""The chdb engine behind the store: one data directory, one engine per process.

chdb hosts a single engine per process and locks its data directory against other
processes. Within the process it hands out any number of connection handles; each handle
has its own session state (``USE``, ``SET``) and handles run queries in parallel, while
calls on one handle are serialised by chdb. The store keeps one *anchor* handle open for
its lifetime (closing the last handle shuts the engine down) and gives every request a
fresh handle, so a request's database and settings can never leak into another's.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chdb

from relmon.errors import ServiceError
from relmon.store import protocol
from relmon.store.protocol import (
    UNKNOWN_FORMAT,
    StoreError,
    engine_error,
    quote_identifier,
    quote_string,
    statement_kind,
)

logger = logging.getLogger(__name__)

# Format names chdb's Python layer turns into Python objects instead of bytes.
_PYTHON_ONLY_FORMATS = frozenset({"dataframe", "datastore", "arrowtable"})

_INSERT_CHUNK = 1 << 20
_open_dirs: set[Path] = set()
_open_dirs_lock = threading.Lock()


@dataclass(frozen=True)
class QueryResult:
    """One statement's output: body bytes, the output format (None if none) and statistics."""

    body: bytes
    fmt: str | None
    summary: dict[str, str]


class Engine:
    """Owns the chdb engine for one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        with _open_dirs_lock:
            if self.data_dir in _open_dirs:
                raise ServiceError(
                    f"The store data directory {self.data_dir} is already open in this process; "
                    "stop the running StoreServer first or use another directory."
                )
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._anchor = chdb.connect(str(self.data_dir))
            except RuntimeError as ex:
                raise ServiceError(_open_failure(self.data_dir, str(ex))) from ex
            _open_dirs.add(self.data_dir)
        self.version, self.timezone = self._probe()
        logger.info("chdb %s opened %s (timezone %s)", self.version, self.data_dir, self.timezone)

    def _probe(self) -> tuple[str, str]:
        raw = self._anchor.query("SELECT version(), timezone()", "TabSeparated").bytes()
        version, _, zone = raw.decode().strip().partition("\t")
        return version, zone

    def execute(
        self,
        sql: bytes,
        *,
        database: str | None = None,
        settings: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        default_format: str | None = None,
    ) -> QueryResult:
        """Run one statement (an INSERT may carry its data after ``FORMAT x``) on a fresh handle.

        Raises:
            StoreError: the engine rejected the statement, database, a setting or a parameter.

        """
        is_insert, explicit_format = statement_kind(sql)
        if default_format and default_format.lower() in _PYTHON_ONLY_FORMATS:
            raise StoreError(UNKNOWN_FORMAT, f"Unknown format {default_format}")
        conn = chdb.connect(str(self.data_dir))
        try:
            if database:
                _run(conn, f"USE {quote_identifier(database)}", "TabSeparated")
            for name, value in (settings or {}).items():
                _run(conn, f"SET {name} = {quote_string(value)}", "TabSeparated")
            parts = protocol.split_insert(sql) if is_insert else None
            if parts is not None:
                return _insert(conn, *parts)
            if explicit_format or default_format or is_insert:
                fmt = explicit_format or default_format or "TabSeparated"
                result = _run(conn, sql, default_format or "TabSeparated", params)
                return QueryResult(result.bytes(), None if is_insert else fmt, _summary(result))
            # A statement without FORMAT answers TabSeparated if it produces a result set.
            # Asking for names tells "empty result set" (a names line) from "no result set".
            result = _run(conn, sql, "TabSeparatedWithNames", params)
            body = result.bytes()
            if not body:
                return QueryResult(b"", None, _summary(result))
            return QueryResult(body[body.find(b"\n") + 1 :], "TabSeparated", _summary(result))
        finally:
            conn.close()

    def close(self) -> None:
        """Close the anchor handle: the engine shuts down and flushes its data."""
        with _open_dirs_lock:
            if self.data_dir in _open_dirs:
                self._anchor.close()
                _open_dirs.discard(self.data_dir)
                logger.info("chdb closed %s", self.data_dir)


def _run(conn: Any, sql: str | bytes, fmt: str, params: dict[str, str] | None = None) -> Any:
    try:
        return conn.query(sql, fmt, params=params or {})
    except RuntimeError as ex:  # chdb.ChdbError is a RuntimeError
        raise engine_error(str(ex)) from ex


def _insert(conn: Any, statement: str, fmt: str, data: bytes) -> QueryResult:
    """Stream inline INSERT data: chdb's query() truncates binary data inlined in SQL."""
    try:
        inserter = conn.send_insert(statement, fmt)
        with inserter:
            view = memoryview(data)
            for offset in range(0, len(view), _INSERT_CHUNK):
                inserter.append(view[offset : offset + _INSERT_CHUNK])
            done = inserter.finish()
    except RuntimeError as ex:
        raise engine_error(str(ex)) from ex
    summary = {"written_rows": str(done.rows_written), "written_bytes": str(done.bytes_written)}
    return QueryResult(b"", None, {**summary, "elapsed_ns": str(int(done.elapsed * 1e9))})


def _summary(result: Any) -> dict[str, str]:
    return {
        "read_rows": str(result.rows_read()),
        "read_bytes": str(result.bytes_read()),
        "written_rows": str(result.rows_written()),
        "written_bytes": str(result.bytes_written()),
        "total_rows_to_read": "0",
        "elapsed_ns": str(int(result.elapsed() * 1e9)),
    }


def _lock_holder(data_dir: Path) -> str | None:
    """Return the status file's text if another process holds chdb's lock on ``data_dir``."""
    status = data_dir / "status"
    try:
        with status.open("rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read(200).decode(errors="replace").replace("\n", "; ").strip("; ")
            fcntl.flock(handle, fcntl.LOCK_UN)
    except FileNotFoundError:
        pass
    return None


def _open_failure(data_dir: Path, message: str) -> str:
    holder = _lock_holder(data_dir)
    if holder is not None:
        return (
            f"The store data directory {data_dir} is locked by another process ({holder}); chdb "
            "allows one process per directory. Stop the other relmon store, or point "
            f"RELMON_STORE_DIR at another directory. chdb said: {message}"
        )
    if "already initialized with path" in message:
        return (
            f"This process already hosts a chdb engine on another directory, so it cannot open "
            f"{data_dir}. Run one store per process. chdb said: {message}"
        )
    return f"Cannot open the chdb store at {data_dir}: {message}"
