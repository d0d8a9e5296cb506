"""The local store is not an open door: password, loopback host and origin, read-only GETs, and
nothing that reaches files, URLs or other servers. Everything through real HTTP on a real store.
"""

from __future__ import annotations

import stat
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from relmon import db
from relmon.settings import load_settings
from relmon.store import StoreServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreServer]:
    with StoreServer(tmp_path_factory.mktemp("secure") / "store") as server:
        client = connect(server)
        client.command("CREATE TABLE IF NOT EXISTS precious (n UInt32) ENGINE = Memory")
        client.command("INSERT INTO precious VALUES (1), (2)")
        yield server


def connect(server: StoreServer, **kwargs: Any) -> Client:
    kwargs.setdefault("password", server.password)
    return clickhouse_connect.get_client(host="127.0.0.1", port=server.port, **kwargs)


def request(
    server: StoreServer,
    query: str,
    *,
    method: str = "POST",
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    password: str | None = None,
) -> tuple[int, str, bytes]:
    """One raw HTTP request; (status, X-ClickHouse-Exception-Code, body)."""
    key = server.password if password is None else password
    all_params = dict(params or {})
    body: bytes | None = query.encode()
    if method == "GET":
        all_params["query"] = query
        body = None
    url = f"http://127.0.0.1:{server.port}/?{urllib.parse.urlencode(all_params)}"
    sent = {"X-ClickHouse-User": "default", "X-ClickHouse-Key": key, **(headers or {})}
    req = urllib.request.Request(url, data=body, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, "", response.read()
    except urllib.error.HTTPError as ex:
        return ex.code, ex.headers.get("X-ClickHouse-Exception-Code", ""), ex.read()


def precious_rows(server: StoreServer) -> int:
    return int(connect(server).command("SELECT count() FROM precious"))  # type: ignore[arg-type]


def test_default_store_generates_a_password_only_its_owner_can_read(tmp_path: Path) -> None:
    data_dir = tmp_path / "home" / "store"
    with StoreServer(data_dir) as server:
        password_file = tmp_path / "home" / "store.password"
        assert server.password_file == password_file
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert server.password == password_file.read_text().strip() and len(server.password) >= 32
        for anonymous in ("", "default"):
            with pytest.raises(DatabaseError) as err:
                connect(server, password=anonymous)
            assert err.value.code == 516
        # every relmon component reads it through settings and db.connect
        settings = load_settings(
            home=tmp_path / "home", clickhouse_port=server.port, clickhouse_password=""
        )
        assert settings.store_password_file == password_file
        client = db.connect(settings, database="default")
        assert client.command("SELECT 1") == 1
        # RELMON_CLICKHOUSE_PASSWORD still wins
        wrong = settings.with_overrides(clickhouse_password="not-it")
        with pytest.raises(Exception, match="516"):
            db.connect(wrong, database="default")
    with StoreServer(data_dir) as server:  # a restart keeps the password
        assert server.password == password_file.read_text().strip()


def test_get_is_read_only_whatever_the_url_says(store: StoreServer) -> None:
    for params in ({}, {"readonly": "0"}, {"readonly": ""}):
        status, code, _ = request(store, "DROP TABLE precious", method="GET", params=params)
        assert (status, code) == (403, "164")
    status, code, body = request(
        store, "SELECT 1 SETTINGS readonly = 0", method="GET", params={"readonly": "0"}
    )
    assert (status, code) == (403, "164"), body
    status, code, body = request(store, "SELECT 1 SETTINGS readonly = 0", method="GET")
    assert code == "164", body
    assert request(store, "SELECT count() FROM precious", method="GET") == (200, "", b"2\n")
    status, _, body = request(store, "SELECT 1", method="GET", params={"readonly": "1"})
    assert (status, body) == (200, b"1\n")
    assert precious_rows(store) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "attacker.example:18123"},  # DNS rebinding: a page of attacker.example
        {"Host": "192.168.1.20:18123"},
        {"Origin": "https://attacker.example"},  # a cross-site page's fetch
        {"Origin": "null"},
    ],
)
def test_foreign_host_or_origin_is_refused(store: StoreServer, headers: dict[str, str]) -> None:
    status, code, body = request(store, "DROP TABLE precious", headers=headers)
    assert (status, code) == (403, "497"), body
    status, code, _ = request(store, "SELECT 1", method="GET", headers=headers)
    assert (status, code) == (403, "497")
    assert precious_rows(store) == 2


def test_loopback_host_and_origin_are_served(store: StoreServer) -> None:
    for headers in (
        {"Host": f"localhost:{store.port}"},
        {"Host": f"[::1]:{store.port}"},
        {"Origin": "http://127.0.0.1:8501"},  # the dashboard's own pages
    ):
        assert request(store, "SELECT 7", headers=headers) == (200, "", b"7\n")


class _Recorder(BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        body = b"leaked\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def outside_server() -> Iterator[str]:
    """An HTTP server the store must never call: its URL; the paths it was asked for."""
    _Recorder.paths = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/x.csv"
    server.shutdown()
    server.server_close()


REACHING_OUT = [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT file('/etc/hostname')",
    "DESCRIBE TABLE file('/etc/passwd', 'LineAsString')",
    "INSERT INTO FUNCTION file('{tmp}/written.csv', 'CSV', 'n UInt32') VALUES (1)",
    "INSERT INTO FUNCTION file('{tmp}/written.csv', 'CSV', 'n UInt32') SELECT 1",
    "SELECT * FROM url('{url}', 'CSV', 's String')",
    "CREATE TABLE fetched (s String) ENGINE = URL('{url}', 'CSV')",
    "CREATE TABLE passwd (s String) ENGINE = File('LineAsString', '/etc/passwd')",
    "CREATE VIEW sneaky AS SELECT * FROM url('{url}', 'CSV', 's String')",
    "CREATE TABLE d (s String DEFAULT file('/etc/hostname')) ENGINE = Memory",
    "CREATE FUNCTION readit AS (p) -> file(p)",
    "SELECT * FROM s3('http://127.0.0.1:9/bucket/x.csv', 'CSV', 's String')",
    "SELECT * FROM remote('127.0.0.1:9000', system.one)",
    "SELECT * FROM remoteSecure('127.0.0.1:9440', system.one)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM mysql('127.0.0.1:3306', 'db', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:5432', 'db', 't', 'u', 'p')",
    "SELECT * FROM hdfs('hdfs://127.0.0.1:9000/x', 'CSV', 's String')",
    "SELECT * FROM executable('cat /etc/passwd', 'LineAsString', 's String')",
    "SELECT * FROM jdbc('jdbc:x', 't')",
    "SELECT * FROM odbc('DSN=x', 't')",
    "SELECT * FROM sqlite('/tmp/x.db', 't')",
    "SELECT * FROM python(df)",
    "SELECT * FROM filesystem('/etc')",
    "INSERT INTO precious SELECT * FROM input('n UInt32') FORMAT CSV\n1\n",
    "CREATE TABLE spread (n UInt32) ENGINE = Distributed('default', 'default', 'precious')",
    "CREATE DICTIONARY dct (n UInt32) PRIMARY KEY n "
    "SOURCE(FILE(path '/etc/passwd' format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)",
    "SYSTEM SHUTDOWN",
    "BACKUP TABLE precious TO File('{tmp}/backup')",
    "ATTACH TABLE stolen FROM '/etc' (s String) ENGINE = Memory",
    "SELECT 1 INTO OUTFILE '{tmp}/written.csv'",
    "INSERT INTO precious FROM INFILE '/etc/hostname' FORMAT LineAsString",
    "SELECT 1 FORMAT Template SETTINGS format_template_resultset = '/etc/hostname'",
    "SELECT 1 SETTINGS dialect = 'kusto'",
]


@pytest.mark.parametrize("sql", REACHING_OUT)
def test_nothing_reaches_files_urls_or_other_servers(
    store: StoreServer, sql: str, outside_server: str, tmp_path: Path
) -> None:
    query = sql.replace("{url}", outside_server).replace("{tmp}", str(tmp_path))
    status, code, body = request(store, query)
    assert (status, code) == (403, "497"), body
    assert body.startswith(b"Code: 497. DB::Exception: The store does not allow")
    assert _Recorder.paths == []
    assert list(tmp_path.iterdir()) == []
    assert precious_rows(store) == 2


def test_settings_that_name_files_or_another_dialect_are_refused_in_the_url(
    store: StoreServer,
) -> None:
    for name, value in (
        ("format_template_row", "/etc/hostname"),
        ("format_schema", "/etc/passwd:M"),
        ("dialect", "prql"),
        ("input_format_values_interpret_expressions", "1"),
    ):
        status, code, _ = request(store, "SELECT 1", params={name: value})
        assert (status, code) == (403, "497"), name
    assert request(store, "SELECT 1", params={"dialect": "clickhouse"})[0] == 200


def test_values_data_is_data_not_sql(store: StoreServer) -> None:
    status, code, body = request(
        store, "INSERT INTO precious VALUES (toUInt32(length(file('/etc/hostname'))))"
    )
    assert (status, code) == (500, "344"), body  # expressions in Values data are not evaluated
    status, _, _ = request(store, "INSERT INTO precious VALUES (3); DROP TABLE precious")
    assert connect(store).command("EXISTS TABLE precious") == 1
    connect(store).command("ALTER TABLE precious DELETE WHERE n = 3")
    assert precious_rows(store) == 2


def test_one_statement_per_request(store: StoreServer) -> None:
    for sql in ("SELECT 1; DROP TABLE precious", "SELECT 1;\nDROP TABLE precious -- x"):
        status, code, body = request(store, sql)
        assert (status, code) == (400, "62"), body
        assert b"Multi-statements are not allowed" in body
    assert request(store, "SELECT 1;") == (200, "", b"1\n")
    assert precious_rows(store) == 2


def test_what_relmon_does_still_works(store: StoreServer) -> None:
    client = connect(store)
    client.command("CREATE DATABASE IF NOT EXISTS ok")
    client.command(
        "CREATE TABLE ok.t (n UInt32, s String DEFAULT 'x') ENGINE = ReplacingMergeTree ORDER BY n"
    )
    client.command(
        "CREATE MATERIALIZED VIEW ok.mv ENGINE = SummingMergeTree ORDER BY n AS SELECT n FROM ok.t"
    )
    client.command("CREATE FUNCTION IF NOT EXISTS ok_twice AS (x) -> 2 * x")
    client.insert("ok.t", [[1, "a"], [2, "b"]], column_names=["n", "s"])
    client.command("INSERT INTO ok.t (n) VALUES (3)")
    query = "SELECT ok_twice(sum(n)) FROM ok.t FINAL WHERE s != {s:String}"
    assert client.query(query, parameters={"s": "a"}).result_rows == [(10,)]
    assert (
        client.command("SELECT count() FROM numbers(10) WHERE number IN (SELECT n FROM ok.mv)") == 3
    )
    assert client.command("OPTIMIZE TABLE ok.t FINAL") is not None
    client.command("DROP DATABASE ok")
