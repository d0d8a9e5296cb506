"""The worker's counters account for every consumed record (the chaos bench reads them).

Each consumed record ends as exactly one of: dead-lettered, a UBI query record remembered, a
non-impression UBI event ignored, an impression sampled (stored) or an impression not sampled.
Without a ``not_sampled`` counter the last class could only be inferred by subtraction.
"""

import asyncio
import json
from datetime import UTC, datetime

from relmon.settings import PlannerConfig, SamplingRates
from schemas.models import CatalogProduct, Impression
from streams import RawRecord, Routing
from streams.catalog import Catalog
from streams.metrics import Metrics
from streams.plans import Planner
from streams.testing import MemoryPorts, memory_processor

NOW = datetime.now(UTC).replace(microsecond=0)


def impression(i: int) -> bytes:
    return Impression(
        impression_id=f"i{i}",
        query_id=f"q{i}",
        query="blue velvet sofa",
        product_id="p1",
        position=1 + i % 10,
        event_time=NOW,
    ).to_bytes()


def test_counters_account_for_every_record() -> None:
    ports = MemoryPorts()
    metrics = Metrics()
    proc = memory_processor(
        ports=ports,
        catalog=Catalog([CatalogProduct(product_id="p1", title="Blue Velvet Sofa")]),
        planner=Planner(PlannerConfig(checkpoint_interval_s=0)),
        rates=SamplingRates.uniform_at(0.5),
        routing=Routing(0.5),
        model_version="fake-overlap-1",
        metrics=metrics,
        backoff_max_s=0.05,
    )
    values = [impression(i) for i in range(40)] + [
        b"\xff\xfe not utf-8",
        json.dumps({"query_id": "u1", "user_query": "sofa"}).encode(),
        json.dumps({"action_name": "click", "query_id": "u1"}).encode(),
    ]
    records = [RawRecord("t", 0, n, b"k", v) for n, v in enumerate(values)]
    asyncio.run(proc.process(records))

    count = metrics.get
    assert count("sampled") > 0 and count("not_sampled") > 0
    assert count("sampled") + count("not_sampled") == 40
    assert count("sampled") == len(ports.rows)
    outcomes = (
        count("dead_lettered")
        + count("ubi_queries")
        + count("ignored_events")
        + count("sampled")
        + count("not_sampled")
    )
    assert outcomes == count("consumed") == len(records)
    assert len(ports.acked) == len(records)
