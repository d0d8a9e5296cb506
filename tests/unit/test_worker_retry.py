"""The worker after a store outage: short backoff, one INFO line on recovery; counters' types."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

import streams.processor
from relmon.prometheus import exposition
from relmon.settings import load_settings
from schemas.models import CatalogProduct, Impression
from streams.catalog import Catalog
from streams.fakes import MemoryPorts
from streams.metrics import COUNTERS, Metrics
from streams.plans import Planner, PlannerConfig
from streams.processor import ImpressionProcessor, RawRecord
from streams.sampling import SamplingRates

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def processor(ports: MemoryPorts, clock: Clock, metrics: Metrics) -> ImpressionProcessor:
    return ImpressionProcessor(  # the worker's default backoff cap
        ports=ports,
        catalog=Catalog([CatalogProduct(product_id="p1", title="Blue Velvet Sofa")]),
        planner=Planner(PlannerConfig(checkpoint_interval_s=0), clock=clock),
        rates=SamplingRates(uniform=1.0),
        threshold=0.5,
        model_version="fake",
        metrics=metrics,
        clock=clock,
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
    assert load_settings().retry_backoff_max_s == 5.0
    assert load_settings(retry_backoff_max_s=1.5).retry_backoff_max_s == 1.5
    app = (ROOT / "streams" / "app.py").read_text()
    assert "backoff_max_s=settings.retry_backoff_max_s" in app


def test_every_counter_the_processor_increments_is_exported_as_a_counter() -> None:
    source = (ROOT / "streams" / "processor.py").read_text()
    incremented = set(re.findall(r'\.inc\(\s*"([a-z_]+)"', source)) | {"send_errors"}
    assert "already_stored" in incremented
    assert incremented <= set(COUNTERS), incremented - set(COUNTERS)
    metrics = Metrics()
    metrics.inc("already_stored", 5)
    lines = exposition(metrics.snapshot()).splitlines()
    assert "# TYPE relmon_already_stored_total counter" in lines
    assert "relmon_already_stored_total 5" in lines
    assert not any(line.startswith("relmon_already_stored ") for line in lines)
