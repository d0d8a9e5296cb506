"""Pure helpers for the subset of ClickHouse's HTTP interface the store serves.

Nothing here touches chdb or sockets, so everything is unit-testable: splitting URL
parameters into settings and bound parameters, request/response (de)compression,
multipart form fields, credentials, and ClickHouse-style error bodies.
"""

from __future__ import annotations

import base64
import gzip
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP

import lz4.frame
import zstandard

from relmon.errors import RelmonError

SERVER_VERSION = "26.9"

# URL parameters the HTTP front consumes itself (or ignores): never forwarded as settings.
HTTP_ONLY_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "user",
        "password",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "quota_key",
        "role",
        "stacktrace",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "http_zlib_compression_level",
    }
)

# Content-Encodings the store can write, in its order of preference.
RESPONSE_ENCODINGS = ("lz4", "zstd", "gzip", "deflate")

_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENGINE_CODE_RE = re.compile(r"Code: (\d+)\. DB::Exception: ")
_ERROR_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")
_TRAILERS_RE = re.compile(r"(?:\.?\s*\([A-Z][A-Z0-9_]+\)|\s*\(version [^)]*\))+\.?\s*$")
_TRAILING_FORMAT_RE = re.compile(rb"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_SQL_TOKEN_RE = re.compile(
    rb"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`\\]|\\.)*`|--[^\n]*|/\*.*?\*/"
    rb"|\w+|\S",
    re.DOTALL,
)
_FORMAT_NAME_RE = re.compile(rb"\s+(\w+)")
# Tokens after which FORMAT, VALUES or SETTINGS is a name, not a keyword.
_NAME_POSITIONS = frozenset({b"INTO", b"TABLE", b"FUNCTION", b"."})
MAX_STATEMENT_BYTES = 256 * 1024  # ClickHouse's max_query_size: where inline data must start
_LEADING_COMMENTS_RE = re.compile(rb"^(?:\s+|--[^\n]*\n|/\*.*?\*/)*", re.DOTALL)

# ClickHouse error codes the front raises itself, and the HTTP status ClickHouse uses.
SYNTAX_ERROR = 62
UNKNOWN_FORMAT = 73
BAD_ARGUMENTS = 36
NOT_IMPLEMENTED = 48
UNKNOWN_SETTING = 115
READONLY = 164
ABORTED = 236
ACCESS_DENIED = 497
AUTHENTICATION_FAILED = 516
STD_EXCEPTION = 1001

_ERROR_NAMES = {
    SYNTAX_ERROR: "SYNTAX_ERROR",
    UNKNOWN_FORMAT: "UNKNOWN_FORMAT",
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    UNKNOWN_SETTING: "UNKNOWN_SETTING",
    READONLY: "READONLY",
    ABORTED: "ABORTED",
    ACCESS_DENIED: "ACCESS_DENIED",
    AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED",
    STD_EXCEPTION: "STD_EXCEPTION",
}
_BAD_REQUEST_CODES = frozenset({6, 26, 27, 36, 38, 62, 72, 73, 117, 457})
_NOT_FOUND_CODES = frozenset({46, 47, 50, 60, 81, 115})


class StoreError(RelmonError):
    """The local store refuses or fails a request; carries what ClickHouse would answer.

    Raised inside the store server and answered to the client as ClickHouse's error body and
    HTTP status; a client sees it as a ClickHouse error (:class:`relmon.errors.StoreUnavailable`
    in the worker).
    """

    def __init__(
        self, code: int, message: str, name: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name or _ERROR_NAMES.get(code, "UNKNOWN_EXCEPTION")
        self._status = status

    @property
    def http_status(self) -> int:
        """The HTTP status ClickHouse answers with for this error code."""
        if self._status is not None:
            return self._status
        if self.code in (AUTHENTICATION_FAILED, ACCESS_DENIED, READONLY):
            return 403
        if self.code in _BAD_REQUEST_CODES:
            return 400
        if self.code in _NOT_FOUND_CODES:
            return 404
        if self.code == NOT_IMPLEMENTED:
            return 501
        if self.code == ABORTED:
            return 503
        return 500

    def body(self) -> bytes:
        """Render the response body the way ClickHouse does."""
        text = f"Code: {self.code}. DB::Exception: {self.message}. ({self.name})"
        return f"{text} (version {SERVER_VERSION})\n".encode()


def engine_error(message: str) -> StoreError:
    """Turn a chdb exception text (often nested ``Code: n. DB::Exception: ...``) into an error."""
    starts = list(_ENGINE_CODE_RE.finditer(message))
    if not starts:
        return StoreError(STD_EXCEPTION, message.strip() or "unknown chdb error")
    last = starts[-1]
    names = _ERROR_NAME_RE.findall(message)
    text = _TRAILERS_RE.sub("", message[last.end() :]).strip()
    return StoreError(int(last.group(1)), text, names[-1] if names else None)


@dataclass(frozen=True)
class QueryOptions:
    """What one request asks for, split out of its URL (and form) parameters."""

    query: str = ""
    database: str | None = None
    default_format: str | None = None
    query_id: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def split_params(params: Mapping[str, str]) -> QueryOptions:
    """Split request parameters into bound parameters, engine settings and HTTP options.

    ``param_x`` becomes bound parameter ``x``; HTTP-only parameters are consumed or ignored;
    everything else is an engine setting (an unknown one fails in the engine, like ClickHouse).
    """
    for name in ("compress", "decompress", "client_protocol_version"):
        if params.get(name, "0") not in ("", "0"):
            # Native output without block info is all the store writes; clickhouse-connect
            # probes client_protocol_version and falls back to it when the probe fails.
            raise StoreError(NOT_IMPLEMENTED, f"The store does not support {name}={params[name]}")
    settings: dict[str, str] = {}
    bound: dict[str, str] = {}
    for key, value in params.items():
        if key.startswith("param_"):
            bound[key[len("param_") :]] = value
        elif key not in HTTP_ONLY_PARAMS:
            if not _SETTING_NAME_RE.match(key):
                raise StoreError(UNKNOWN_SETTING, f"Unknown setting {key!r}")
            settings[key] = value
    return QueryOptions(
        query=params.get("query", ""),
        database=params.get("database") or None,
        default_format=params.get("default_format") or None,
        query_id=params.get("query_id") or None,
        settings=settings,
        params=bound,
    )


def credentials(headers: Mapping[str, str] | Message, params: Mapping[str, str]) -> tuple[str, str]:
    """Return the (user, password) a request presents: basic auth, X-ClickHouse-* or URL."""
    auth = headers.get("Authorization", "")
    if auth.startswith("Basic "):
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError as ex:
            raise StoreError(AUTHENTICATION_FAILED, "Malformed basic authentication") from ex
        return user or "default", password
    if "X-ClickHouse-User" in headers or "X-ClickHouse-Key" in headers:
        return headers.get("X-ClickHouse-User") or "default", headers.get("X-ClickHouse-Key", "")
    return params.get("user") or "default", params.get("password", "")


def decompress(data: bytes, encoding: str | None) -> bytes:
    """Decode a request body sent with ``Content-Encoding``; concatenated frames are allowed."""
    encoding = (encoding or "").strip().lower()
    if not data or encoding in ("", "identity"):
        return data
    try:
        if encoding == "lz4":
            return _lz4_frames(data)
        if encoding == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
            with reader:
                return reader.read()
        if encoding == "gzip":
            return gzip.decompress(data)
        if encoding == "deflate":
            return zlib.decompress(data)
    except (RuntimeError, zstandard.ZstdError, OSError, EOFError, zlib.error) as ex:
        raise StoreError(BAD_ARGUMENTS, f"Cannot decode {encoding} request body: {ex}") from ex
    raise StoreError(NOT_IMPLEMENTED, f"Unsupported Content-Encoding {encoding!r}")


def _lz4_frames(data: bytes) -> bytes:
    out = bytearray()
    while data:
        decoder = lz4.frame.LZ4FrameDecompressor()
        out += decoder.decompress(data)
        if not decoder.eof:
            raise StoreError(BAD_ARGUMENTS, "Truncated lz4 request body")
        data = decoder.unused_data
    return bytes(out)


def choose_encoding(accept_encoding: str | None) -> str | None:
    """Pick the first encoding the client accepts that the store can write, or None."""
    offered = [part.split(";")[0].strip().lower() for part in (accept_encoding or "").split(",")]
    return next((enc for enc in offered if enc in RESPONSE_ENCODINGS), None)


def compress(data: bytes, encoding: str) -> bytes:
    """Encode a response body with one of :data:`RESPONSE_ENCODINGS`."""
    if encoding == "lz4":
        return bytes(lz4.frame.compress(data))
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=3)
    if encoding == "deflate":
        return zlib.compress(data, 3)
    raise ValueError(f"unsupported response encoding {encoding!r}")


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Return the plain fields of a ``multipart/form-data`` body (query, ``param_*``)."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise StoreError(BAD_ARGUMENTS, "Malformed multipart/form-data body")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise StoreError(NOT_IMPLEMENTED, "External data (file form fields) is not supported")
        if not isinstance(name, str):
            raise StoreError(BAD_ARGUMENTS, "A multipart field has no name")
        payload = part.get_payload(decode=True)
        fields[name] = payload.decode() if isinstance(payload, bytes) else ""
    return fields


def statement_kind(sql: bytes) -> tuple[bool, str | None]:
    """Tell whether ``sql`` is an INSERT, and which output format a trailing FORMAT names.

    An INSERT's FORMAT names its input data, so it is never reported as an output format.
    """
    leading = _LEADING_COMMENTS_RE.match(sql)
    head = sql[leading.end() :] if leading else sql
    if head[:6].upper() == b"INSERT":
        return True, None
    match = _TRAILING_FORMAT_RE.search(sql)
    return False, match.group(1).decode() if match else None


def _sql_tokens(sql: bytes, limit: int) -> Iterator[tuple[re.Match[bytes], int]]:
    """Tokens of ``sql`` up to ``limit`` with their parenthesis depth; no strings or comments."""
    depth = 0
    for match in _SQL_TOKEN_RE.finditer(sql, 0, limit):
        token = match.group()
        if token[:1] in (b"'", b'"', b"`") or token[:2] in (b"--", b"/*"):
            continue
        if token == b")":
            depth -= 1
        yield match, depth
        if token == b"(":
            depth += 1


def split_insert(sql: bytes) -> tuple[str, str, bytes] | None:
    """Split an INSERT with inline data into (statement, format, data); None if it has none.

    ``INSERT ... FORMAT fmt <data>`` and ``INSERT ... VALUES <data>`` (format ``Values``) carry
    data; ``INSERT ... SELECT`` does not. Quoted strings, identifiers and comments are skipped
    while looking for FORMAT or VALUES. As in ClickHouse, FORMAT's data starts after the first
    newline following the format name, or after the whitespace if there is no newline in it.
    """
    previous = b""
    for match, depth in _sql_tokens(sql, min(len(sql), MAX_STATEMENT_BYTES)):
        word = match.group().upper()
        if depth == 0 and previous not in _NAME_POSITIONS:
            if word in (b"SELECT", b"WITH"):
                return None
            if word == b"VALUES":
                return sql[: match.start()].decode(), "Values", sql[match.end() :]
            named = _FORMAT_NAME_RE.match(sql, match.end()) if word == b"FORMAT" else None
            if named:
                rest = named.end(1)
                window = sql[rest : rest + 64]
                blank_end = rest + len(window) - len(window.lstrip())
                newline = sql.find(b"\n", rest, blank_end)
                start = newline + 1 if newline >= 0 else blank_end
                return sql[: match.start()].decode(), named.group(1).decode(), sql[start:]
        previous = word
    return None


def insert_from_file(statement: str, fmt: str, path: str) -> str:
    """``statement`` (an INSERT head from :func:`split_insert`) reading its data from ``path``.

    ``FROM INFILE`` goes before the statement's own SETTINGS clause, as ClickHouse's grammar
    wants: ``INSERT INTO t (a) FROM INFILE 'p' COMPRESSION 'none' SETTINGS ... FORMAT fmt``.
    """
    raw = statement.encode()
    previous = b""
    cut = len(raw)
    for match, depth in _sql_tokens(raw, len(raw)):
        word = match.group().upper()
        if depth == 0 and word == b"SETTINGS" and previous not in _NAME_POSITIONS:
            cut = match.start()
            break
        previous = word
    head, tail = raw[:cut].decode().rstrip(), raw[cut:].decode().strip()
    infile = f"FROM INFILE {quote_string(path)} COMPRESSION 'none'"
    return " ".join(part for part in (head, infile, tail, f"FORMAT {fmt}") if part)


def quote_identifier(name: str) -> str:
    """Back-quote an identifier for ClickHouse SQL."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    """Single-quote a string literal for ClickHouse SQL."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
