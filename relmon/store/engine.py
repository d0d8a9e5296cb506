"""The chdb engine behind the store: one data directory, one engine per process.

chdb hosts a single engine per process and locks its data directory against other
processes. Within the process it hands out any number of connection handles; each handle
has its own session state (``USE``, ``SET``) and handles run queries in parallel, while
calls on one handle are serialised by chdb. The store keeps one *anchor* handle open for
its lifetime (closing the last handle shuts the engine down) and gives every request a
fresh handle, so a request's database and settings can never leak into another's.

Every statement is checked before it runs (:mod:`relmon.store.policy`): one statement only,
told by ClickHouse's own parser given the text as a bound value (chdb runs every statement of
a multi-statement text, where a ClickHouse server refuses them), and nothing in its
``EXPLAIN AST`` that reaches files, URLs or other servers. INSERT data never passes through
the SQL parser: it is spooled to a file the statement reads with ``FROM INFILE``, so a refused
insert raises ClickHouse's error (chdb's streaming insert reports every row written even when
the table refused the block, e.g. "Too many partitions").
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chdb

from relmon.errors import ServiceError
from relmon.store import policy, protocol
from relmon.store.protocol import (
    ACCESS_DENIED,
    BAD_ARGUMENTS,
    SYNTAX_ERROR,
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

_SPOOL_DIR = "relmon_spool"  # inside the data directory: INSERT data waiting for FROM INFILE
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
        self._denied = policy.denied_sources(self._source_names())
        self._spool = self.data_dir / _SPOOL_DIR
        self._spool.mkdir(mode=0o700, exist_ok=True)
        logger.info("chdb %s opened %s (timezone %s)", self.version, self.data_dir, self.timezone)

    def _probe(self) -> tuple[str, str]:
        raw = self._anchor.query("SELECT version(), timezone()", "TabSeparated").bytes()
        version, _, zone = raw.decode().strip().partition("\t")
        return version, zone

    def _source_names(self) -> list[str]:
        raw = self._anchor.query(
            "SELECT name FROM system.table_functions UNION ALL SELECT name FROM "
            "system.table_engines",
            "TabSeparatedRaw",
        ).bytes()
        return raw.decode().split()

    def execute(
        self,
        sql: bytes,
        *,
        database: str | None = None,
        settings: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        default_format: str | None = None,
        readonly: int = 0,
    ) -> QueryResult:
        """Check and run one statement (an INSERT may carry data after ``FORMAT x``/``VALUES``).

        ``readonly`` (1 or 2) is set before the request's own settings, so they cannot lift it.

        Raises:
            StoreError: the store refused the statement (:mod:`relmon.store.policy`), or the
                engine rejected it, its database, a setting or a parameter.

        """
        is_insert, explicit_format = statement_kind(sql)
        if default_format and default_format.lower() in _PYTHON_ONLY_FORMATS:
            raise StoreError(UNKNOWN_FORMAT, f"Unknown format {default_format}")
        for name, value in (settings or {}).items():
            refused = policy.setting_refusal(name, value)
            if refused:
                raise StoreError(ACCESS_DENIED, f"The store does not allow {refused}")
        parts = protocol.split_insert(sql) if is_insert else None
        text = _text(f"{parts[0]} FORMAT {parts[1]}".encode() if parts else sql)
        refused = policy.text_refusal(text)
        if refused:
            raise StoreError(ACCESS_DENIED, f"The store does not allow {refused}")
        conn = chdb.connect(str(self.data_dir))
        try:
            # Forced settings first: their names are refused in the request's settings and SQL.
            for name, value in policy.FORCED_SETTINGS.items():
                _run(conn, f"SET {name} = {quote_string(value)}", "TabSeparated")
            if readonly:
                _run(conn, f"SET readonly = {int(readonly)}", "TabSeparated")
            if database:
                _run(conn, f"USE {quote_identifier(database)}", "TabSeparated")
            for name, value in (settings or {}).items():
                _run(conn, f"SET {name} = {quote_string(value)}", "TabSeparated")
            self._check(conn, text, params)
            if parts is not None:
                return self._insert(conn, *parts, params)
            if explicit_format or default_format or is_insert:
                fmt = explicit_format or default_format or "TabSeparated"
                result = _run(conn, text, default_format or "TabSeparated", params)
                return QueryResult(result.bytes(), None if is_insert else fmt, _summary(result))
            # A statement without FORMAT answers TabSeparated if it produces a result set.
            # Asking for names tells "empty result set" (a names line) from "no result set".
            result = _run(conn, text, "TabSeparatedWithNames", params)
            body = result.bytes()
            if not body:
                return QueryResult(b"", None, _summary(result))
            return QueryResult(body[body.find(b"\n") + 1 :], "TabSeparated", _summary(result))
        finally:
            conn.close()

    def _check(self, conn: Any, text: str, params: dict[str, str] | None) -> None:
        """Refuse ``text`` unless it is one statement that reaches nothing outside the store."""
        try:  # the text is a bound value here: parsed, never run
            _run(conn, "SELECT formatQuery({q:String})", "Null", {"q": _escape_param(text)})
        except StoreError as ex:
            if "Multi-statements" in ex.message:
                raise StoreError(
                    SYNTAX_ERROR, "Multi-statements are not allowed: send one statement"
                ) from None
        ast = _run(conn, "EXPLAIN AST " + text, "TabSeparatedRaw", params).bytes().decode()
        refused = policy.ast_refusal(ast, self._denied)
        if refused:
            raise StoreError(
                ACCESS_DENIED,
                f"The store does not allow {refused}: it reaches only its own tables",
            )

    def _insert(
        self, conn: Any, statement: str, fmt: str, data: bytes, params: dict[str, str] | None
    ) -> QueryResult:
        """Run an INSERT whose data reaches the engine as a file, never as SQL text."""
        fd, path = tempfile.mkstemp(prefix="insert-", suffix=".data", dir=self._spool)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            result = _run(conn, protocol.insert_from_file(statement, fmt, path), "Null", params)
        finally:
            os.unlink(path)
        return QueryResult(b"", None, _summary(result))

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


def _text(sql: bytes) -> str:
    try:
        return sql.decode()
    except UnicodeDecodeError as ex:
        raise StoreError(BAD_ARGUMENTS, f"The query is not valid UTF-8: {ex}") from None


def _escape_param(value: str) -> str:
    """Escape a bound String value the way the engine parses it (TSV escaping)."""
    return (
        value.replace("\\", "\\\\")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("\r", "\\r")
        .replace("\0", "\\0")
    )


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
