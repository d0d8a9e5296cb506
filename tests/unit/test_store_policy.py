"""The store's refusals and its generated password (pure helpers: no chdb, no sockets)."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from relmon.settings import load_settings, password_file_of
from relmon.store import policy

SOURCES = ["numbers", "file", "url", "s3", "remote", "mysql", "python", "MergeTree", "File", "URL"]


@pytest.mark.parametrize(
    ("host", "bind", "allowed"),
    [
        (None, "127.0.0.1", True),
        ("127.0.0.1:18123", "127.0.0.1", True),
        ("localhost:18123", "127.0.0.1", True),
        ("LOCALHOST.", "127.0.0.1", True),
        ("app.localhost:18123", "127.0.0.1", True),
        ("[::1]:18123", "127.0.0.1", True),
        ("127.5.6.7", "127.0.0.1", True),
        ("attacker.example:18123", "127.0.0.1", False),  # DNS rebinding
        ("192.168.1.5:18123", "127.0.0.1", False),
        ("10.0.0.2:18123", "10.0.0.2", True),  # its own non-loopback listen address
        ("10.0.0.2:18123", "0.0.0.0", True),
        ("store.lan:18123", "0.0.0.0", False),
    ],
)
def test_host_must_be_loopback_or_the_listen_address(
    host: str | None, bind: str, allowed: bool
) -> None:
    assert policy.host_allowed(host, bind) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser, or a same-origin GET
        ("http://127.0.0.1:8501", True),  # the dashboard
        ("http://localhost:3000", True),
        ("https://evil.example", False),
        ("http://127.0.0.1.evil.example", False),
        ("null", False),  # sandboxed frames, file:// pages
        ("file://", False),
    ],
)
def test_origin_must_be_a_loopback_page(origin: str | None, allowed: bool) -> None:
    assert policy.origin_allowed(origin) is allowed


def test_text_refusals() -> None:
    assert policy.text_refusal("SELECT 1 INTO OUTFILE '/tmp/x'")
    assert policy.text_refusal("INSERT INTO t FROM INFILE '/etc/passwd' FORMAT LineAsString")
    assert policy.text_refusal("SELECT 1 SETTINGS dialect = 'kusto'")
    assert policy.text_refusal("SELECT 1 FORMAT Template SETTINGS format_template_row = '/x'")
    assert policy.text_refusal("SET input_format_values_interpret_expressions = 1")
    assert policy.text_refusal("SELECT 1 SETTINGS output_format_schema = '/tmp/s'")
    assert policy.text_refusal("SELECT count() FROM scored_impressions FINAL") is None
    assert policy.text_refusal("SELECT infile_count, 'profile' FROM t") is None


def test_setting_refusals() -> None:
    assert policy.setting_refusal("dialect", "prql")
    assert policy.setting_refusal("dialect", "clickhouse") is None
    assert policy.setting_refusal("format_schema", "x.proto:M")
    assert policy.setting_refusal("input_format_values_interpret_expressions", "1")
    assert policy.setting_refusal("max_threads", "1") is None


def test_ast_refusals() -> None:
    denied = policy.denied_sources(SOURCES)
    assert {"file", "url", "s3", "remote", "mysql", "python", "input"} <= denied
    assert not {"numbers", "mergetree"} & denied
    select_file = (
        "SelectWithUnionQuery (children 1)\n ExpressionList (children 1)\n"
        "  SelectQuery (children 2)\n   TableExpression (children 1)\n"
        "    Function file (children 1)\n     Literal '/etc/passwd'\n"
    )
    assert policy.ast_refusal(select_file, denied) == "file()"
    engine = "CreateQuery t (children 3)\n Storage definition (children 1)\n  Function URL\n"
    assert policy.ast_refusal(engine, denied) == "URL()"
    assert policy.ast_refusal("SYSTEM query\n", denied) == "SYSTEM queries"
    assert policy.ast_refusal("BackupQuery (children 1)\n Function Disk\n", denied)
    assert policy.ast_refusal("AttachQuery x (children 3)\n", denied)
    dictionary = "CreateQuery d (children 3)\n Dictionary definition (children 4)\n"
    assert policy.ast_refusal(dictionary, denied)
    fine = "SelectWithUnionQuery\n Function numbers (children 1)\n Function sum\n"
    assert policy.ast_refusal(fine, denied) is None


def test_password_is_created_once_with_owner_only_permissions(tmp_path: Path) -> None:
    path = password_file_of(tmp_path / "home" / "store")
    assert path == tmp_path / "home" / "store.password"
    first = policy.load_or_create_password(path)
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert policy.load_or_create_password(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["store.password"]  # no temp files left


def test_password_creation_race_gives_everyone_the_same_password(tmp_path: Path) -> None:
    path = tmp_path / "store.password"
    seen: list[str] = []
    threads = [
        threading.Thread(target=lambda: seen.append(policy.load_or_create_password(path)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1 and seen[0] == path.read_text().strip()


def test_hand_written_password_file_is_kept_and_tightened(tmp_path: Path) -> None:
    path = tmp_path / "store.password"
    path.write_text("chosen\n")
    path.chmod(0o644)
    assert policy.load_or_create_password(path) == "chosen"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("")
    assert policy.load_or_create_password(path) not in ("", "chosen")


def test_every_component_reads_the_generated_password_unless_one_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELMON_CLICKHOUSE_PASSWORD", raising=False)
    settings = load_settings(home=tmp_path)
    assert settings.store_password_file == tmp_path / "store.password"
    assert settings.clickhouse_password_value() == ""  # no store started yet
    generated = policy.load_or_create_password(settings.store_password_file)
    assert settings.clickhouse_password_value() == generated
    explicit = load_settings(home=tmp_path, clickhouse_password="from-env")
    assert explicit.clickhouse_password_value() == "from-env"
    assert "from-env" not in repr(explicit)
