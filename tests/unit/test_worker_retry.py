"""The worker after a store outage: short backoff, one INFO line on recovery; counters' types."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from aiokafka.errors import MessageSizeTooLargeError as AiokafkaMessageSizeTooLargeError
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError
from faust.exceptions import ProducerSendError

import streams.processor
from relmon import db
from relmon.errors import (
    BrokerError,
    MessageRefused,
    ServiceError,
    StoreUnavailable,
    refused_for_good,
)
from relmon.runtime import free_port
from relmon.settings import PlannerConfig, SamplingRates, load_settings
from schemas.models import CatalogProduct, Impression, ReviewRequest, ScoredImpression
from schemas.ubi import UbiQuery
from streams import ImpressionProcessor, RawRecord, Routing
from streams.app import send_all
from streams.catalog import Catalog
from streams.metrics import COUNTERS, Metrics
from streams.plans import Planner, StoredPlan
from streams.processor import error_counter
from streams.prometheus import exposition
from streams.storage import ClickHouseStorePorts
from streams.testing import MemoryPorts, memory_processor

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def processor(ports: MemoryPorts, clock: Clock, metrics: Metrics) -> ImpressionProcessor:
    return memory_processor(
        ports=ports,
        catalog=Catalog([CatalogProduct(product_id="p1", title="Blue Velvet Sofa")]),
        planner=Planner(PlannerConfig(checkpoint_interval_s=0), clock=clock),
        rates=SamplingRates.uniform_at(1.0),
        routing=Routing(0.5),
        model_version="fake",
        metrics=metrics,
        clock=clock,
        backoff_max_s=5.0,  # the worker's default backoff cap
    )


def impression() -> RawRecord:
    value = Impression(
        impression_id="i1",
        query_id="q1",
        query="blue velvet sofa",
        product_id="p1",
        title="Blue Velvet Sofa",
        position=1,
        event_time=datetime(2024, 5, 1, 12, tzinfo=UTC),
    ).to_bytes()
    return RawRecord("relmon.impressions", 0, 0, b"k", value, 1714564800000)


def test_backoff_is_capped_and_recovery_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock, metrics = Clock(), Metrics()
    ports = MemoryPorts(fail_writes=8)  # the store is down for 8 tries
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:  # time passes for the processor, not the test
        waits.append(seconds)
        clock.t += seconds
        await real_sleep(0)

    monkeypatch.setattr(streams.processor.asyncio, "sleep", sleep)
    with caplog.at_level(logging.INFO, logger="streams.processor"):
        asyncio.run(processor(ports, clock, metrics).process([impression()]))
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]  # was 6.4, 12.8, 25.6 (cap 30 s)
    assert len(ports.rows) == 1 and metrics.get("store_errors") == 8
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1 and recovered[0].levelno == logging.INFO
    assert recovered[0].getMessage() == "ClickHouse write recovered after 21.2 s (8 failed tries)"


def test_the_cap_is_a_setting() -> None:
    assert load_settings().ingest.retry_backoff_max_s == 5.0
    assert load_settings(retry_backoff_max_s=1.5).ingest.retry_backoff_max_s == 1.5
    app = (ROOT / "streams" / "app.py").read_text()
    assert "backoff_max_s=settings.ingest.retry_backoff_max_s" in app


def test_every_counter_the_processor_increments_is_exported_as_a_counter() -> None:
    source = (ROOT / "streams" / "processor.py").read_text()
    incremented = set(re.findall(r'\.inc\(\s*"([a-z_]+)"', source))
    incremented |= {"store_errors", "send_errors", "service_errors"}  # by type: error_counter
    assert "already_stored" in incremented
    assert incremented <= set(COUNTERS), incremented - set(COUNTERS)
    metrics = Metrics()
    metrics.inc("already_stored", 5)
    lines = exposition(metrics.snapshot()).splitlines()
    assert "# TYPE relmon_already_stored_total counter" in lines
    assert "relmon_already_stored_total 5" in lines
    assert not any(line.startswith("relmon_already_stored ") for line in lines)


# --- the error policy: service errors are retried, by type; anything else stops the worker ------


def fast_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(streams.processor.asyncio, "sleep", sleep)


def within(coro: Coroutine[Any, Any, T], seconds: float = 10.0) -> T:
    """Run ``coro``; a retry loop that never ends fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(coro, seconds))


class ScorerBug(MemoryPorts):
    async def score(self, pairs: list[tuple[str, str]], keys: list[str]) -> np.ndarray:
        raise IndexError("a bug in the scorer (fake)")


class WriteBug(MemoryPorts):
    async def write(self, rows: list[ScoredImpression], queries: list[UbiQuery]) -> None:
        raise TypeError("a bug in the store adapter (fake)")


@pytest.mark.parametrize("ports", [ScorerBug(), WriteBug()], ids=["scorer", "write"])
def test_a_bug_is_raised_not_retried(ports: MemoryPorts, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_sleep(monkeypatch)
    metrics = Metrics()
    with pytest.raises((IndexError, TypeError), match="a bug"):
        within(processor(ports, Clock(), metrics).process([impression()]))
    assert ports.acked == [] and ports.reviews == [] and ports.ledger == {}
    assert metrics.get("store_errors") == metrics.get("send_errors") == 0


def test_the_counter_is_chosen_by_the_error_type_not_by_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Flaky(MemoryPorts):
        """A plan store (no "ClickHouse" in its step's name) and a broker that fail twice."""

        plan_failures = reviews_failures = other_failures = 2

        async def save_plans(self, plans: list[StoredPlan]) -> None:
            if self.plan_failures:
                self.plan_failures -= 1
                raise StoreUnavailable("plan store away (fake)")
            await super().save_plans(plans)

        async def send_reviews(self, reviews: list[ReviewRequest]) -> None:
            if self.reviews_failures:
                self.reviews_failures -= 1
                raise BrokerError("ClickHouse in the message, broker in the type (fake)")
            await super().send_reviews(reviews)

        async def mark_done(self, rows: list[ScoredImpression]) -> None:
            if self.other_failures:
                self.other_failures -= 1
                raise ServiceError("some other service (fake)")
            await super().mark_done(rows)

    fast_sleep(monkeypatch)
    ports, metrics = Flaky(), Metrics()
    p = processor(ports, Clock(), metrics)
    bad = Impression(
        impression_id="i1",
        query_id="q1",
        query="blue velvet sofa",
        product_id="p1",
        title="Oak Dining Table",  # scored 0: reviewed
        position=1,
        event_time=datetime(2024, 5, 1, 12, tzinfo=UTC),
    ).to_bytes()
    within(p.process([RawRecord("relmon.impressions", 0, 0, b"k", bad, 1714564800000)]))
    assert len(ports.reviews) == 1 and len(ports.acked) == 1
    assert metrics.get("store_errors") == 2
    assert metrics.get("send_errors") == 2
    assert metrics.get("service_errors") == 2
    assert error_counter(StoreUnavailable("x")) == "store_errors"
    assert error_counter(MessageRefused("x")) == "send_errors"


class FakeClient:
    """A clickhouse-connect client whose every query raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def query(self, *args: object, **kwargs: object) -> object:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("Error executing HTTP request (fake)"),
        DatabaseError("Code: 241. DB::Exception: Memory limit exceeded (fake)"),
        ConnectionRefusedError("refused (fake)"),
    ],
)
def test_the_store_adapter_turns_store_failures_into_store_unavailable(error: Exception) -> None:
    ports = ClickHouseStorePorts(lambda: FakeClient(error))  # type: ignore[arg-type, return-value]
    try:
        with pytest.raises(StoreUnavailable) as caught:
            asyncio.run(ports.stored(["i1"]))
    finally:
        ports.close()
    assert caught.value.__cause__ is error


@pytest.mark.parametrize("error", [DataError("wrong type (fake)"), KeyError("bug (fake)")])
def test_the_store_adapter_lets_client_misuse_through(error: Exception) -> None:
    ports = ClickHouseStorePorts(lambda: FakeClient(error))  # type: ignore[arg-type, return-value]
    try:
        with pytest.raises(type(error)):
            asyncio.run(ports.stored(["i1"]))
    finally:
        ports.close()


def test_a_store_that_cannot_be_reached_is_unavailable() -> None:
    settings = load_settings(clickhouse_host="127.0.0.1", clickhouse_port=free_port())
    with pytest.raises(StoreUnavailable, match="cannot reach ClickHouse"):
        db.connect(settings, connect_timeout=1)


class FakeTopic:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_topic_name(self) -> str:
        return "relmon.teacher-review"

    async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (KafkaConnectionError("no broker (fake)"), BrokerError),
        (KafkaTimeoutError(), BrokerError),
        (AiokafkaMessageSizeTooLargeError(), MessageRefused),
        (ProducerSendError("wrapped"), BrokerError),
    ],
)
def test_the_broker_adapter_turns_client_errors_into_broker_errors(
    error: Exception, expected: type[BrokerError]
) -> None:
    with pytest.raises(BrokerError) as caught:
        asyncio.run(send_all(FakeTopic(error), [(b"k", b"v")]))  # type: ignore[arg-type]
    assert type(caught.value) is expected and caught.value.__cause__ is error


def test_the_broker_adapter_lets_bugs_through() -> None:
    with pytest.raises(AttributeError):
        asyncio.run(send_all(FakeTopic(AttributeError("bug (fake)")), [(b"k", b"v")]))  # type: ignore[arg-type]


def test_refused_for_good_follows_causes() -> None:
    refused = AiokafkaMessageSizeTooLargeError()
    try:
        raise RuntimeError("wrapped") from refused
    except RuntimeError as exc:
        assert refused_for_good(exc)
    assert not refused_for_good(KafkaConnectionError())
