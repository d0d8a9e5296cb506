"""Pure helpers of the store's HTTP front (no chdb, no sockets)."""

from __future__ import annotations

import base64
import gzip
import zlib

import lz4.frame
import pytest
import zstandard

from relmon.store import protocol
from relmon.store.protocol import StoreError


def test_split_params_separates_settings_bound_params_and_http_options() -> None:
    options = protocol.split_params(
        {
            "query": "SELECT {x:String}",
            "database": "relmon",
            "param_x": "it's",
            "max_threads": "1",
            "session_id": "abc",
            "wait_end_of_query": "1",
            "query_id": "q1",
            "client_protocol_version": "0",
            "enable_http_compression": "1",
        }
    )
    assert options.query == "SELECT {x:String}"
    assert options.database == "relmon"
    assert options.query_id == "q1"
    assert options.params == {"x": "it's"}
    assert options.settings == {"max_threads": "1"}


@pytest.mark.parametrize(
    "params",
    [{"compress": "1"}, {"decompress": "1"}, {"client_protocol_version": "54405"}],
)
def test_split_params_refuses_what_the_store_cannot_honour(params: dict[str, str]) -> None:
    with pytest.raises(StoreError) as err:
        protocol.split_params(params)
    assert err.value.code == protocol.NOT_IMPLEMENTED


def test_split_params_rejects_setting_names_that_are_not_identifiers() -> None:
    with pytest.raises(StoreError) as err:
        protocol.split_params({"max_threads = 1; DROP": "x"})
    assert err.value.code == protocol.UNKNOWN_SETTING


def test_credentials_from_basic_auth_headers_and_url() -> None:
    basic = "Basic " + base64.b64encode(b"alice:p:w").decode()
    assert protocol.credentials({"Authorization": basic}, {}) == ("alice", "p:w")
    headers = {"X-ClickHouse-User": "bob", "X-ClickHouse-Key": "k"}
    assert protocol.credentials(headers, {}) == ("bob", "k")
    assert protocol.credentials({}, {"user": "carol", "password": "z"}) == ("carol", "z")
    assert protocol.credentials({}, {}) == ("default", "")


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "gzip", "deflate"])
def test_compress_roundtrip(encoding: str) -> None:
    data = b"native bytes \x00\x01" * 1000
    assert protocol.decompress(protocol.compress(data, encoding), encoding) == data


def test_decompress_accepts_concatenated_frames_like_clickhouse_connect_sends() -> None:
    blocks = [b"block-one" * 50, b"block-two" * 70]
    lz4_body = b"".join(lz4.frame.compress(b) for b in blocks)
    zstd_body = b"".join(zstandard.ZstdCompressor().compress(b) for b in blocks)
    gzip_body = b"".join(gzip.compress(b) for b in blocks)
    for body, encoding in ((lz4_body, "lz4"), (zstd_body, "zstd"), (gzip_body, "gzip")):
        assert protocol.decompress(body, encoding) == b"".join(blocks)
    assert protocol.decompress(zlib.compress(b"x"), "deflate") == b"x"
    assert protocol.decompress(b"plain", None) == b"plain"


def test_decompress_errors() -> None:
    with pytest.raises(StoreError) as err:
        protocol.decompress(b"abc", "snappy")
    assert err.value.code == protocol.NOT_IMPLEMENTED
    with pytest.raises(StoreError) as err:
        protocol.decompress(lz4.frame.compress(b"x" * 100)[:-6], "lz4")
    assert err.value.code == protocol.BAD_ARGUMENTS
    with pytest.raises(StoreError):
        protocol.decompress(b"not gzip", "gzip")


def test_choose_encoding_follows_client_order_among_supported() -> None:
    assert protocol.choose_encoding("br, zstd;q=1, gzip") == "zstd"
    assert protocol.choose_encoding("lz4,zstd,gzip,deflate") == "lz4"
    assert protocol.choose_encoding("br") is None
    assert protocol.choose_encoding(None) is None


def test_engine_error_unwraps_nested_chdb_messages() -> None:
    message = (
        "Code: 73. DB::Exception: Code: 73. DB::Exception: Code: 73. DB::Exception: Unknown "
        "format Nope. Maybe you meant: ['One']. (UNKNOWN_FORMAT) (version 26.9.2.1). "
        "(UNKNOWN_FORMAT) (version 26.9.2.1). (UNKNOWN_FORMAT)"
    )
    error = protocol.engine_error(message)
    assert (error.code, error.name, error.http_status) == (73, "UNKNOWN_FORMAT", 400)
    assert error.body() == (
        b"Code: 73. DB::Exception: Unknown format Nope. Maybe you meant: ['One']. "
        b"(UNKNOWN_FORMAT) (version 26.9)\n"
    )
    plain = protocol.engine_error("Failed to create connection")
    assert (plain.code, plain.name, plain.http_status) == (1001, "STD_EXCEPTION", 500)


def test_http_status_follows_clickhouse() -> None:
    assert StoreError(516, "x").http_status == 403
    assert StoreError(60, "x").http_status == 404
    assert StoreError(62, "x").http_status == 400
    assert StoreError(241, "x").http_status == 500
    assert StoreError(48, "x", status=404).http_status == 404
    assert StoreError(497, "x").http_status == 403  # ACCESS_DENIED
    assert StoreError(164, "x").http_status == 403  # READONLY
    assert StoreError(252, "x").http_status == 500  # TOO_MANY_PARTS


def test_split_insert_finds_format_and_data_start() -> None:
    native = b"\n\x0a\x00binary"  # Native data may itself begin with whitespace bytes
    assert protocol.split_insert(b"INSERT INTO t (a) FORMAT Native\n" + native) == (
        "INSERT INTO t (a) ",
        "Native",
        native,
    )
    assert protocol.split_insert(b"INSERT INTO format FORMAT CSV  1,2") == (
        "INSERT INTO format ",
        "CSV",
        b"1,2",
    )
    quoted = b"INSERT INTO FUNCTION file('a FORMAT b') /* FORMAT c */ FORMAT TSV\r\n1\t2"
    assert protocol.split_insert(quoted) == (
        "INSERT INTO FUNCTION file('a FORMAT b') /* FORMAT c */ ",
        "TSV",
        b"1\t2",
    )
    # VALUES data is data too: it never reaches the SQL parser, so "; DROP ..." cannot run
    assert protocol.split_insert(b"INSERT INTO t VALUES (1); DROP TABLE t") == (
        "INSERT INTO t ",
        "Values",
        b" (1); DROP TABLE t",
    )
    assert protocol.split_insert(b"INSERT INTO values (values) SETTINGS a = 1 VALUES (1)") == (
        "INSERT INTO values (values) SETTINGS a = 1 ",
        "Values",
        b" (1)",
    )
    assert protocol.split_insert(b"INSERT INTO t SELECT * FROM values('a UInt8', 1)") is None
    assert protocol.split_insert(b"INSERT INTO t WITH 1 AS x SELECT x FORMAT TSV") is None


def test_insert_from_file_puts_infile_before_the_settings_clause() -> None:
    assert protocol.insert_from_file("INSERT INTO t (a, b) ", "Native", "/s/x.data") == (
        "INSERT INTO t (a, b) FROM INFILE '/s/x.data' COMPRESSION 'none' FORMAT Native"
    )
    statement = "INSERT INTO db.settings (settings) SETTINGS async_insert = 0 "
    assert protocol.insert_from_file(statement, "Values", "/s/it's") == (
        "INSERT INTO db.settings (settings) FROM INFILE '/s/it\\'s' COMPRESSION 'none' "
        "SETTINGS async_insert = 0 FORMAT Values"
    )


def test_statement_kind() -> None:
    assert protocol.statement_kind(b"SELECT 1\n FORMAT Native") == (False, "Native")
    assert protocol.statement_kind(b"-- c\n /* x */ insert INTO t FORMAT Native\n") == (True, None)
    assert protocol.statement_kind(b"CREATE TABLE t (a Int8) ENGINE = Memory") == (False, None)


def test_form_fields_reads_plain_fields_and_refuses_files() -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\n'
        f"SELECT {{v:String}}\r\n--{boundary}\r\n"
        f'Content-Disposition: form-data; name="param_v"\r\n\r\nit\'s \u00e9\r\n--{boundary}--\r\n'
    ).encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    assert protocol.form_fields(content_type, body) == {
        "query": "SELECT {v:String}",
        "param_v": "it's \u00e9",
    }
    with_file = body.replace(b'name="param_v"', b'name="t"; filename="t.tsv"')
    with pytest.raises(StoreError) as err:
        protocol.form_fields(content_type, with_file)
    assert err.value.code == protocol.NOT_IMPLEMENTED


def test_quoting() -> None:
    assert protocol.quote_identifier("we`ird\\db") == "`we\\`ird\\\\db`"
    assert protocol.quote_string("it's \\") == "'it\\'s \\\\'"
