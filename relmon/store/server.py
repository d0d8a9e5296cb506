"""The store's HTTP front: the part of ClickHouse's HTTP interface clickhouse-connect uses.

Served: ``GET /ping``; ``GET``/``POST /`` with the query in the ``query`` URL parameter,
the body, or both (ClickHouse joins them with a newline, so ``INSERT ... FORMAT Native``
may come in the URL and its data in the body); chunked and lz4/zstd/gzip/deflate request
bodies; ``multipart/form-data`` query and ``param_*`` fields; ``param_*`` bound by the
engine; other URL parameters applied as settings; compressed responses when
``enable_http_compression=1``; the ``X-ClickHouse-*`` headers clickhouse-connect reads.
Anything else is answered with a ClickHouse-style error. Sessions are not kept: every
request runs on a fresh engine handle.

Every query needs the password (by default generated at first start and kept in
:func:`~relmon.settings.password_file_of` the data directory). Requests naming a foreign
``Host`` or coming from a foreign web page (``Origin``) are refused, GET queries run read-only
whatever their URL says, and the engine refuses statements that reach outside the store
(:mod:`relmon.store.policy`).
"""

from __future__ import annotations

import hmac
import json
import logging
import signal
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from relmon.errors import ServiceError
from relmon.settings import password_file_of
from relmon.store import policy, protocol
from relmon.store.engine import Engine, QueryResult
from relmon.store.protocol import StoreError

logger = logging.getLogger(__name__)

_BINARY_FORMATS = ("Native", "RowBinary", "Arrow", "Parquet", "ORC", "Avro", "Npy")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    timeout = 30  # seconds an idle keep-alive connection stays open, like ClickHouse
    # Headers and body go out as separate writes; with Nagle's algorithm the body waited for
    # the client's delayed ACK (~40 ms per query).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        try:
            self._check_caller()
            if url.path == "/ping" and self.command in ("GET", "HEAD"):
                self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            elif url.path != "/" or self.command not in ("GET", "POST"):
                self.close_connection = True
                raise StoreError(
                    protocol.NOT_IMPLEMENTED,
                    f"There is no handle {self.command} {url.path}: use / for queries, /ping "
                    "for health checks",
                    status=404,
                )
            else:
                self._query(dict(parse_qsl(url.query, keep_blank_values=True)))
        except StoreError as ex:
            logger.debug("request failed: %s", ex.message)
            self._send_error(ex)
        except Exception as ex:
            logger.exception("unexpected store error")
            self.close_connection = True
            self._send_error(StoreError(protocol.STD_EXCEPTION, f"{type(ex).__name__}: {ex}"))

    def _check_caller(self) -> None:
        """Refuse requests addressed to a foreign host name or sent by a foreign web page."""
        host = self.headers.get("Host")
        if not policy.host_allowed(host, self.server.bind_host):
            self.close_connection = True
            raise StoreError(
                protocol.ACCESS_DENIED,
                f"Host {host!r} is not this store's address: it answers to loopback names and "
                "addresses only",
            )
        origin = self.headers.get("Origin")
        if not policy.origin_allowed(origin):
            self.close_connection = True
            raise StoreError(
                protocol.ACCESS_DENIED,
                f"Requests from web pages of {origin!r} are not allowed",
            )

    def _query(self, url_params: dict[str, str]) -> None:
        raw_body = self._read_body()  # read first, so the connection stays usable on errors
        user, password = protocol.credentials(self.headers, url_params)
        expected = self.server.password.encode()
        if user != "default" or not hmac.compare_digest(password.encode(), expected):
            raise StoreError(
                protocol.AUTHENTICATION_FAILED,
                f"{user}: Authentication failed: password is incorrect, or there is no user "
                "with such name",
            )
        body = protocol.decompress(raw_body, self.headers.get("Content-Encoding"))
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            url_params.update(protocol.form_fields(content_type, body))
            body = b""
        options = protocol.split_params(url_params)
        query = options.query.encode()
        sql = query + b"\n" + body if query and body else query or body
        if not sql.strip():
            raise StoreError(protocol.SYNTAX_ERROR, "Empty query")
        settings = dict(options.settings)
        readonly = 0
        if self.command == "GET":  # ClickHouse runs GET queries read-only; a URL cannot lift it
            level = settings.pop("readonly", "2") or "2"
            if level not in ("1", "2"):
                raise StoreError(
                    protocol.READONLY, "Cannot modify 'readonly' setting in readonly mode"
                )
            readonly = int(level)
        with self.server.request_slot():
            result = self.server.engine.execute(
                sql,
                database=options.database,
                settings=settings,
                params=options.params,
                default_format=options.default_format,
                readonly=readonly,
            )
        self._send_result(result, options.query_id or str(uuid.uuid4()), settings, url_params)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    size = -1
                if size < 0:
                    self.close_connection = True
                    raise StoreError(protocol.BAD_ARGUMENTS, "Malformed chunked body")
                if size == 0:
                    while self.rfile.readline(1024).strip():  # trailers
                        pass
                    return b"".join(parts)
                chunk = self.rfile.read(size)
                if len(chunk) != size or self.rfile.readline(16).strip():
                    self.close_connection = True
                    raise StoreError(protocol.BAD_ARGUMENTS, "Truncated chunked body")
                parts.append(chunk)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_result(
        self,
        result: QueryResult,
        query_id: str,
        settings: dict[str, str],
        url_params: dict[str, str],
    ) -> None:
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": settings.get("session_timezone")
            or self.server.engine.timezone,
            "X-ClickHouse-Summary": json.dumps(result.summary, separators=(",", ":")),
            "X-ClickHouse-Server-Display-Name": "relmon-store",
        }
        body = result.body
        if result.fmt:
            headers["X-ClickHouse-Format"] = result.fmt
            binary = result.fmt.startswith(_BINARY_FORMATS)
            headers["Content-Type"] = (
                "application/octet-stream" if binary else "text/plain; charset=UTF-8"
            )
        encoding = protocol.choose_encoding(self.headers.get("Accept-Encoding"))
        # chdb's enable_http_compression defaults to 1 (ClickHouse's to 0), and clients read
        # system.settings, so an Accept-Encoding is honoured unless the URL turns it off.
        if encoding and body and url_params.get("enable_http_compression") != "0":
            body = protocol.compress(body, encoding)
            headers["Content-Encoding"] = encoding
        self._send(200, body, headers)

    def _send_error(self, error: StoreError) -> None:
        self._send(
            error.http_status,
            error.body(),
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(error.code),
            },
        )

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], engine: Engine, password: str, bind_host: str
    ) -> None:
        super().__init__(address, _Handler)
        self.engine = engine
        self.password = password
        self.bind_host = bind_host
        self._active = 0
        self._closing = False
        self._idle = threading.Condition()

    def request_slot(self) -> _Slot:
        return _Slot(self)

    def drain(self) -> None:
        """Refuse new queries and wait for running ones to finish."""
        with self._idle:
            self._closing = True
            self._idle.wait_for(lambda: self._active == 0)


class _Slot:
    """Counts a running query so shutdown can wait for it."""

    def __init__(self, server: _HTTPServer) -> None:
        self._server = server

    def __enter__(self) -> None:
        with self._server._idle:
            if self._server._closing:
                raise StoreError(protocol.ABORTED, "The store is shutting down")
            self._server._active += 1

    def __exit__(self, *exc: object) -> None:
        with self._server._idle:
            self._server._active -= 1
            self._server._idle.notify_all()


class StoreServer:
    """Owns a chdb data directory and serves it over ClickHouse's HTTP interface.

    Without a ``password``, the store uses the one in ``password_file`` (default
    :func:`~relmon.settings.password_file_of` the data directory), creating it at first start.

    Example::

        with StoreServer(Path("/var/lib/relmon/store")) as store:
            client = clickhouse_connect.get_client(
                host="127.0.0.1", port=store.port, password=store.password
            )
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        password: str | None = None,
        password_file: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self._port = port
        self._password = password or ""
        self.password_file = password_file or password_file_of(self.data_dir.resolve())
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def password(self) -> str:
        """The password clients must present (known once started, if generated)."""
        return self._password

    @property
    def port(self) -> int:
        """The port the store listens on (the real one once started with port 0)."""
        return self._httpd.server_address[1] if self._httpd else self._port

    def start(self) -> StoreServer:
        """Open the data directory and serve in a background thread; returns once listening.

        Raises:
            ServiceError: the directory is locked by another process, or the port is taken.

        """
        if self._httpd is not None:
            return self
        if not self._password:
            self._password = policy.load_or_create_password(self.password_file)
        engine = Engine(self.data_dir)
        try:
            httpd = _HTTPServer((self.host, self._port), engine, self._password, self.host)
        except OSError as ex:
            engine.close()
            raise ServiceError(
                f"The store cannot listen on {self.host}:{self._port} ({ex}); choose another "
                "port (RELMON_CLICKHOUSE_PORT) or stop whatever holds it."
            ) from ex
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"relmon-store:{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("store serving %s on http://%s:%d", self.data_dir, self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop listening, let running queries finish, then close the engine (flushes data)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.drain()
        httpd.engine.close()
        if self._thread is not None:
            self._thread.join()
        logger.info("store stopped (%s)", self.data_dir)

    def __enter__(self) -> StoreServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8123,
    password: str | None = None,
    password_file: Path | None = None,
) -> None:
    """Run the store in the foreground until SIGTERM or SIGINT, then shut down cleanly.

    Must be called from the main thread (it installs signal handlers). Without a password,
    the generated one in ``password_file`` is used (see :class:`StoreServer`).
    """
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("store received %s, shutting down", signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with StoreServer(data_dir, host, port, password, password_file):
            stopping.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
