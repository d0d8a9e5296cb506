"""Shared fixtures. Integration fixtures start REAL servers (tansu broker, local ClickHouse store)
and fail, never skip, when they cannot."""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from relmon import db
from relmon.demo import env_of, store_process, worker_process
from relmon.kafka import broker_process, ensure_topics
from relmon.runtime import ManagedProcess, free_port
from relmon.settings import Settings, load_settings
from relmon.store import StoreServer
from schemas import Impression, ScoredImpression

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "relmon-minilm-ce"


def isolated_settings(base: Settings, **overrides: object) -> Settings:
    """``base`` with its own topics, consumer group, database and home (shared servers)."""
    uid = uuid.uuid4().hex[:10]
    return base.with_overrides(
        topic_impressions=f"t{uid}.impressions",
        topic_catalog=f"t{uid}.catalog",
        topic_review=f"t{uid}.teacher-review",
        topic_dlq=f"t{uid}.dlq",
        consumer_group=f"g{uid}",
        clickhouse_database=f"test_{uid}",
        home=base.home / uid,
        **overrides,
    )


@contextmanager
def migrated_store(home: Path) -> Iterator[Settings]:
    """Settings of a migrated local store served from this process, its data under ``home``.

    A process hosts one chdb directory at a time: close one before opening another.
    """
    with StoreServer(home / "store") as server:
        settings = load_settings(home=home, clickhouse_port=server.port, clickhouse_password="")
        db.migrate(settings)
        yield settings


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("relmon-home")


@pytest.fixture(scope="session")
def base_settings(session_home: Path) -> Settings:
    return load_settings(
        home=session_home,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        clickhouse_port=free_port(),
        model_dir=MODEL_DIR,
        store_dir=session_home / "store",
    )


@pytest.fixture(scope="session")
def broker(base_settings: Settings) -> Iterator[ManagedProcess]:
    port = int(base_settings.kafka.bootstrap.rsplit(":", 1)[1])
    with broker_process(base_settings, port) as proc:
        yield proc


@pytest.fixture(scope="session")
def store(base_settings: Settings) -> Iterator[ManagedProcess]:
    with store_process(base_settings) as proc:
        yield proc


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not (MODEL_DIR / "card.json").is_file():
        pytest.fail(
            f"no built model at {MODEL_DIR}: run `relmon model build` (the README's test "
            "command does it first)"
        )
    return MODEL_DIR


@pytest.fixture
def settings(
    base_settings: Settings,
    broker: ManagedProcess,
    store: ManagedProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """Fresh topics, consumer group and database for one test, on the shared servers."""
    s = isolated_settings(base_settings)
    ensure_topics(s)
    # Settings read from the environment alone (dashboard pages' get_settings(), with this
    # test's RELMON_HOME) cannot find the password file beside the shared store's data.
    monkeypatch.setenv("RELMON_CLICKHOUSE_PASSWORD", s.clickhouse_password_value())
    return s


@pytest.fixture
def start_worker(settings: Settings, model_dir: Path) -> Iterator[object]:
    """Start real ``relmon worker`` processes for the test; all are stopped at the end."""
    started: list[ManagedProcess] = []

    def start(name: str = "worker", s: Settings | None = None) -> ManagedProcess:
        proc = worker_process(s or settings, name)
        started.append(proc)
        return proc.start()

    yield start
    for proc in reversed(started):
        proc.stop()


def make_scored_rows(n_good: int, n_bad: int) -> list[ScoredImpression]:
    """Rows of an oak-desk query: ``n_good`` relevant desks (0.9), then ``n_bad`` rugs (0.1)."""
    now = datetime.now(UTC) - timedelta(minutes=2)
    out = []
    for i in range(n_good + n_bad):
        imp = Impression(
            impression_id=f"d{i}",
            query_id=f"q{i}",
            query="oak desk",
            product_id=f"p{i}",
            title="Oak Writing Desk" if i < n_good else "Shag Rug",
            category="Desks",
            position=1 + i % 10,
            event_time=now,
        )
        out.append(
            ScoredImpression.of(
                imp,
                score=0.9 if i < n_good else 0.1,
                threshold=0.5,
                model_version="m-test",
                sample_rate=1.0,
                scored_at=now,
            )
        )
    return out


@pytest.fixture
def scored_rows() -> object:
    """:func:`make_scored_rows`, for tests that seed the store with known rows."""
    return make_scored_rows


__all__ = ["env_of"]


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict]] = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    """A Slack-style webhook receiver on 127.0.0.1: its URL and the JSON bodies it got."""
    _Receiver.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/slack", _Receiver.bodies
    server.shutdown()
    server.server_close()


@pytest.fixture
def dashboard_page(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Render one dashboard page with AppTest against the store and home of ``settings``."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from relmon import get_settings

    def render(name: str, settings: Settings) -> AppTest:
        monkeypatch.setenv("RELMON_CLICKHOUSE_PORT", str(settings.clickhouse.port))
        monkeypatch.setenv("RELMON_CLICKHOUSE_DATABASE", settings.clickhouse.database)
        monkeypatch.setenv("RELMON_HOME", str(settings.home))
        get_settings.cache_clear()
        st.cache_data.clear()
        st.cache_resource.clear()
        return AppTest.from_string(
            f"from dashboards import {name}\n{name}.render()", default_timeout=30
        ).run()

    yield render
    get_settings.cache_clear()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use the built model, so `make test` can run the rest during its build.

    They are slow too (a model build when it is missing, then minutes of real scoring), as are
    the chaos runs.
    """
    for item in items:
        if "model_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_model)
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("chaos"):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The fast tier (``-m "not slow"``, ``make test-fast``) runs without torch, or fails."""
    if session.config.option.markexpr == "not slow" and "torch" in sys.modules:
        print("\nthe fast tier imported torch: mark the test that needs it `slow`", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
