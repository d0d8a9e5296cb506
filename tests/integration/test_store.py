"""The local ClickHouse store, exercised through the unmodified clickhouse-connect HTTP client.

chdb hosts one engine per process, so each test starts its own StoreServer (never two at
once in this process); other processes are real subprocesses of the venv's python.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import clickhouse_connect
import lz4.frame
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from clickhouse_connect.driver.summary import QuerySummary

import relmon.store
from relmon.errors import ServiceError
from relmon.store import StoreServer

pytestmark = pytest.mark.integration

COLUMNS = ["id", "ts", "kind", "score", "tags", "attrs"]
CREATE_TABLE = """
    CREATE TABLE events (
        id UInt64,
        ts DateTime64(3),
        kind LowCardinality(String),
        score Nullable(Float64),
        tags Array(String),
        attrs Map(String, Int32)
    ) ENGINE = MergeTree ORDER BY id
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StoreServer]:
    with StoreServer(tmp_path / "store") as server:
        yield server


def connect(server: StoreServer, **kwargs: Any) -> Client:
    kwargs.setdefault("password", server.password)
    return clickhouse_connect.get_client(host="127.0.0.1", port=server.port, **kwargs)


def auth(server: StoreServer) -> dict[str, str]:
    return {"X-ClickHouse-User": "default", "X-ClickHouse-Key": server.password}


def make_rows(n: int, start: int = 0) -> list[list[object]]:
    base = datetime(2024, 5, 1, 12, 0, 0)
    return [
        [
            i,
            base + timedelta(milliseconds=7 * i),
            ("query", "click", "purchase")[i % 3],
            None if i % 4 == 0 else i / 8,
            [f"t{i % 5}", 'it\'s "quoted"'][: i % 3],
            {"pos": i % 10, "page": i // 10},
        ]
        for i in range(start, start + n)
    ]


def create_events(server: StoreServer) -> Client:
    admin = connect(server)
    admin.command("CREATE DATABASE IF NOT EXISTS relmon")
    client = connect(server, database="relmon")
    client.command(CREATE_TABLE)
    return client


def http_get(
    server: StoreServer, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}",
        headers=auth(server) if headers is None else headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as ex:
        return ex.code, dict(ex.headers), ex.read()


def test_package_exports() -> None:
    assert relmon.store.__all__ == ["StoreServer", "serve"]


def test_ping_and_server_identity(store: StoreServer) -> None:
    assert store.port > 0
    status, _, body = http_get(store, "/ping")
    assert (status, body) == (200, b"Ok.\n")
    client = connect(store)
    assert client.ping()
    assert str(client.server_version).startswith("26.")
    assert client.command("SELECT currentDatabase()") == "default"


def test_roundtrip_10k_rows_compressed_and_uncompressed(store: StoreServer) -> None:
    plain = create_events(store)
    lz4_client = connect(store, database="relmon", compress=True)
    raw_client = connect(store, database="relmon", compress=False)
    assert lz4_client.write_compression == "lz4"
    assert raw_client.compression is None

    compressed_rows = make_rows(10_000)
    lz4_client.insert("events", compressed_rows, column_names=COLUMNS)
    plain_rows = make_rows(10_000, start=10_000)
    columns = [list(col) for col in zip(*plain_rows, strict=True)]
    summary = raw_client.insert("events", columns, column_names=COLUMNS, column_oriented=True)
    assert summary.written_rows == 10_000

    for client in (lz4_client, raw_client, plain):
        result = client.query("SELECT * FROM events ORDER BY id")
        assert [t.name for t in result.column_types] == [
            "UInt64",
            "DateTime64(3)",
            "LowCardinality(String)",
            "Nullable(Float64)",
            "Array(String)",
            "Map(String, Int32)",
        ]
        assert [list(row) for row in result.result_rows] == compressed_rows + plain_rows

    frame = lz4_client.query_df("SELECT kind, count() AS n FROM events GROUP BY kind ORDER BY kind")
    assert frame.to_dict("list") == {
        "kind": ["click", "purchase", "query"],
        "n": [6667, 6666, 6667],
    }
    assert raw_client.query_np("SELECT sum(id) FROM relmon.events").tolist() == [[199_990_000]]


def test_compressed_response_when_client_accepts_it(store: StoreServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", store.port, timeout=10)
    conn.request(
        "POST",
        "/?enable_http_compression=1",
        body=b"SELECT number FROM numbers(3)",
        headers={"Accept-Encoding": "lz4", **auth(store)},
    )
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Encoding") == "lz4"
    assert response.getheader("X-ClickHouse-Format") == "TabSeparated"
    assert lz4.frame.decompress(response.read()) == b"0\n1\n2\n"
    conn.close()


def test_bound_parameters_are_bound_by_the_engine(store: StoreServer) -> None:
    client = create_events(store)
    client.insert("events", make_rows(10), column_names=COLUMNS)
    hostile = 'x\'); DROP TABLE relmon.events; --\\ "q" \t\n'
    assert client.query("SELECT {v:String}", parameters={"v": hostile}).result_rows == [(hostile,)]
    found = client.query(
        "SELECT count() FROM events WHERE kind = {k:String} AND id < {n:UInt64}",
        parameters={"k": "click", "n": 8},
    )
    assert found.result_rows == [(3,)]
    assert client.command("SELECT count() FROM events WHERE kind = {k:String}", {"k": hostile}) == 0
    long_value = "é" * 5000  # too long for the URL: clickhouse-connect sends a multipart form
    long_result = client.query("SELECT lengthUTF8({v:String}), {v:String}", {"v": long_value})
    assert long_result.result_rows == [(5000, long_value)]
    assert client.command("EXISTS TABLE events") == 1


def test_settings_and_database_come_from_url_params(store: StoreServer) -> None:
    client = create_events(store)
    assert client.command("SELECT currentDatabase()") == "relmon"
    assert client.command("SELECT getSetting('max_threads')", settings={"max_threads": 1}) == 1
    with pytest.raises(DatabaseError) as err:
        client.query("SELECT 1", settings={"max_result_rows": 0, "no_such_setting": 1})
    assert err.value.code == 115
    # an empty result set is still a result set; DDL has none
    assert client.command("SELECT 1 WHERE 0") == ""
    ddl = client.command("CREATE TABLE empty (a Int8) ENGINE = Memory")
    assert isinstance(ddl, QuerySummary) and ddl.written_rows == 0


def test_sql_error_gives_database_error_with_code(store: StoreServer) -> None:
    client = connect(store)
    with pytest.raises(DatabaseError) as err:
        client.query("SELECT * FROM no_such_table")
    assert err.value.code == 60
    assert "UNKNOWN_TABLE" in str(err.value)
    with pytest.raises(DatabaseError) as err:
        client.command("SELEC 1")
    assert err.value.code == 62


def test_unsupported_requests_get_clean_errors(store: StoreServer) -> None:
    client = connect(store)
    with pytest.raises(DatabaseError) as err:
        client.raw_query("SELECT 1", fmt="NoSuchFormat")
    assert err.value.code == 73

    status, headers, body = http_get(store, "/no/such/endpoint")
    assert status == 404
    assert headers["X-ClickHouse-Exception-Code"] == "48"
    assert body.startswith(b"Code: 48. DB::Exception: There is no handle")

    status, headers, _ = http_get(store, "/?query=SELECT+1&compress=1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (501, "48")

    conn = http.client.HTTPConnection("127.0.0.1", store.port, timeout=10)
    conn.request(
        "POST", "/", body=b"SELECT 1", headers={"Content-Encoding": "snappy", **auth(store)}
    )
    response = conn.getresponse()
    assert (response.status, response.getheader("X-ClickHouse-Exception-Code")) == (501, "48")
    response.read()
    conn.putrequest("POST", "/")
    conn.putheader("Transfer-Encoding", "chunked")
    for name, value in auth(store).items():
        conn.putheader(name, value)
    conn.endheaders(b"zz\r\nSELECT 1\r\n0\r\n\r\n")
    response = conn.getresponse()
    assert (response.status, response.getheader("X-ClickHouse-Exception-Code")) == (400, "36")
    conn.close()
    assert client.command("SELECT 42") == 42  # the store still answers


def test_wrong_password_is_rejected(tmp_path: Path) -> None:
    with StoreServer(tmp_path / "store", password="s3cret") as server:
        with pytest.raises(DatabaseError) as err:
            connect(server, password="wrong")
        assert err.value.code == 516
        with pytest.raises(DatabaseError) as err:
            connect(server, password="")
        assert err.value.code == 516
        assert connect(server, password="s3cret").command("SELECT 1") == 1
        with pytest.raises(DatabaseError) as err:
            connect(server, password="s3crét")
        assert err.value.code == 516
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/?query=SELECT+2",
            headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": "s3cret"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == b"2\n"
        status, headers, _ = http_get(server, "/?query=SELECT+2&user=default&password=nope", {})
        assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "516")


def test_data_persists_after_stop_and_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    with StoreServer(data_dir) as server:
        create_events(server).insert("events", make_rows(1000), column_names=COLUMNS)
    with StoreServer(data_dir) as server:
        client = connect(server, database="relmon")
        assert client.query("SELECT * FROM events ORDER BY id").result_rows == [
            tuple(row) for row in make_rows(1000)
        ]


WRITER = textwrap.dedent(
    """
    import sys
    import clickhouse_connect

    port, writer, batches, size = (int(arg) for arg in sys.argv[1:5])
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=port, database="relmon", password=sys.argv[5]
    )
    print("ready", flush=True)
    sys.stdin.readline()
    for batch in range(batches):
        first = (writer * batches + batch) * size
        rows = [[i, writer, "w"] for i in range(first, first + size)]
        client.insert("writes", rows, column_names=["id", "writer", "note"])
    print("done", flush=True)
    """
)


def test_two_writer_processes_and_a_reader(store: StoreServer) -> None:
    client = connect(store)
    client.command("CREATE DATABASE relmon")
    client.command(
        "CREATE TABLE relmon.writes (id UInt64, writer UInt8, note LowCardinality(String))"
        " ENGINE = MergeTree ORDER BY id"
    )
    batches, size = 25, 400
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                *(str(arg) for arg in (store.port, w, batches, size)),
                store.password,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(2)
    ]
    try:
        for proc in writers:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in writers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.close()
        seen: list[int] = []
        while any(proc.poll() is None for proc in writers):
            seen.append(int(client.query("SELECT count() FROM relmon.writes").result_rows[0][0]))
        for proc in writers:
            assert proc.wait(timeout=60) == 0
            assert proc.stdout is not None and proc.stdout.read() == "done\n"
    finally:
        for proc in writers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    total = 2 * batches * size
    assert seen == sorted(seen), "a reader saw the row count go down"
    assert all(count % size == 0 for count in seen), "a reader saw a partial insert"
    assert any(0 < count < total for count in seen), "reads did not overlap the writes"
    result = client.query(
        "SELECT writer, count(), uniqExact(id) FROM relmon.writes GROUP BY writer ORDER BY writer"
    )
    assert result.result_rows == [
        (0, batches * size, batches * size),
        (1, batches * size, batches * size),
    ]


LOCKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from relmon.errors import ServiceError
    from relmon.store import StoreServer

    try:
        StoreServer(Path(sys.argv[1])).start()
    except ServiceError as ex:
        print(ex)
        sys.exit(3)
    """
)


def test_second_store_on_same_dir_fails_clearly(store: StoreServer) -> None:
    with pytest.raises(ServiceError, match="already open in this process"):
        StoreServer(store.data_dir).start()
    other = subprocess.run(
        [sys.executable, "-c", LOCKER, str(store.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 3, other.stderr
    assert "is locked by another process" in other.stdout
    assert "RELMON_STORE_DIR" in other.stdout
    assert connect(store).command("SELECT 1") == 1


SERVE = textwrap.dedent(
    """
    import logging
    import sys
    from pathlib import Path
    from relmon.store import serve

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    serve(Path(sys.argv[1]), "127.0.0.1", 0)
    """
)


def test_serve_runs_until_sigterm_and_flushes(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(data_dir)], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            if line.startswith("store serving"):
                port = int(line.rsplit(":", 1)[1])
                break
        assert port, "serve() never reported its port"
        password = (tmp_path / "store.password").read_text().strip()
        client = clickhouse_connect.get_client(host="127.0.0.1", port=port, password=password)
        client.command("CREATE TABLE kept (a UInt32) ENGINE = MergeTree ORDER BY a")
        client.insert("kept", [[1], [2], [3]])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "shutting down" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with StoreServer(data_dir) as server:
        assert connect(server).command("SELECT sum(a) FROM kept") == 6


def test_summary_and_query_id_headers(store: StoreServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", store.port, timeout=10)
    conn.request(
        "POST",
        "/?query_id=abc-1",
        body=b"SELECT number FROM numbers(5) FORMAT JSON",
        headers=auth(store),
    )
    response = conn.getresponse()
    body = json.loads(response.read())
    assert body["rows"] == 5
    assert response.getheader("X-ClickHouse-Query-Id") == "abc-1"
    assert response.getheader("X-ClickHouse-Format") == "JSON"
    assert response.getheader("X-ClickHouse-Timezone") == "Etc/UTC"
    assert json.loads(response.getheader("X-ClickHouse-Summary") or "{}")["read_rows"] == "5"
    conn.close()


def test_insert_the_engine_refuses_is_an_error_and_nothing_counts_as_written(
    store: StoreServer,
) -> None:
    # chdb's streaming insert reported these 150 rows written although the table refused the
    # block, and the store answered 200: a worker would have committed rows never saved.
    client = connect(store)
    client.command(
        "CREATE TABLE daily (day Date, n UInt32) ENGINE = MergeTree PARTITION BY day ORDER BY n"
    )
    rows = [[datetime(2024, 1, 1) + timedelta(days=i), i] for i in range(150)]
    with pytest.raises(DatabaseError) as err:
        client.insert("daily", rows, column_names=["day", "n"])
    assert err.value.code == 252
    assert "Too many partitions for single INSERT block (more than 100)" in str(err.value)
    assert "(TOO_MANY_PARTS)" in str(err.value)
    assert client.command("SELECT count() FROM daily") == 0

    conn = http.client.HTTPConnection("127.0.0.1", store.port, timeout=10)
    data = b"\n".join(
        f"{(datetime(2024, 1, 1) + timedelta(days=i)):%F}\t{i}".encode() for i in range(150)
    )
    conn.request("POST", "/?query=INSERT+INTO+daily+FORMAT+TSV", body=data, headers=auth(store))
    response = conn.getresponse()
    body = response.read()
    assert response.status == 500
    assert response.getheader("X-ClickHouse-Exception-Code") == "252"
    assert response.getheader("X-ClickHouse-Summary") is None
    assert body.startswith(b"Code: 252. DB::Exception: Too many partitions")
    assert body.rstrip().endswith(b"(TOO_MANY_PARTS) (version 26.9)")
    conn.close()
    assert client.insert("daily", rows[:100], column_names=["day", "n"]).written_rows == 100
    assert client.command("SELECT count() FROM daily") == 100


def test_constraint_and_materialized_view_failures_fail_the_insert(store: StoreServer) -> None:
    client = connect(store)
    client.command(
        "CREATE TABLE checked (n UInt32, CONSTRAINT small CHECK n < 10) "
        "ENGINE = MergeTree ORDER BY n"
    )
    with pytest.raises(DatabaseError) as err:
        client.insert("checked", [[1], [50]], column_names=["n"])
    assert err.value.code == 469  # VIOLATED_CONSTRAINT
    client.command("CREATE TABLE target (n UInt32) ENGINE = MergeTree ORDER BY n")
    client.command(
        "CREATE MATERIALIZED VIEW guard TO target AS "
        "SELECT n + throwIf(n > 3, 'too big') AS n FROM checked"
    )
    with pytest.raises(DatabaseError) as err:
        client.command("INSERT INTO checked VALUES (7)")
    assert err.value.code == 395  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    assert client.command("SELECT count() FROM target") == 0
    client.command("INSERT INTO checked VALUES (2), (3)")
    assert client.command("SELECT sum(n) FROM target") == 5
