"""Replays with known truth through the real stream processor, as rows for the detector.

The same machinery as :mod:`relmon.validation` (synthetic traffic from a
:class:`~relmon.scenario.Scenario`, the real :class:`~streams.processor.ImpressionProcessor`
with in-memory ports and an oracle scorer), but what comes out is the scored rows themselves,
so they can be summed per window and segment (:func:`relmon.alerts.detect.window_sums`) or
written to ClickHouse.

Scenario shares are per *query* category (the category of the page), while stored rows carry
the *product's* category. With the synthetic catalogue's own negatives (products of other
categories), a page-category shift spreads its bad rows over other product categories and no
single category's stored rate moves. ``misfiled_negatives=True`` (the default here) files every
irrelevant product shown on a page under the page's category, as a botched catalogue import or
a ranker that mixes up products within a category would: then a scenario's category shift is a
shift of that category's stored bad-case rate, which is what the alert detectors watch.
"""

from __future__ import annotations

import asyncio
import json
import random
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from relmon.replay import ReplayConfig, TrafficGenerator
from relmon.scenario import Scenario
from relmon.synth import Product, Query, SyntheticCatalog
from relmon.validation import PARTITIONS, TOPIC, OracleScorer
from schemas.models import ScoredImpression
from streams.catalog import Catalog
from streams.fakes import MemoryPorts
from streams.metrics import Metrics
from streams.plans import Planner, PlannerConfig
from streams.processor import ImpressionProcessor, RawRecord
from streams.sampling import SamplingRates

__all__ = ["simulate_rows"]


def simulate_rows(
    *,
    minutes: int,
    pages_per_minute: int = 60,
    seed: int = 7,
    scenario: Scenario,
    start: datetime | None = None,
    rates: SamplingRates | None = None,
    misfiled_negatives: bool = True,
    catalog_seed: int = 7,
) -> list[ScoredImpression]:
    """Replay ``minutes`` of simulated traffic through the processor; return the scored rows."""
    return asyncio.run(
        _simulate(
            minutes,
            pages_per_minute,
            seed,
            scenario,
            start,
            rates or SamplingRates(),
            misfiled_negatives,
            catalog_seed,
        )
    )


def _misfile(catalog: SyntheticCatalog) -> None:
    """Make the catalogue's negatives carry the category of the query they are shown for."""
    original = catalog.irrelevant_for

    def irrelevant_for(query: Query, rng: random.Random, kind: Any = "any") -> Product:
        product = original(query, rng, kind)
        return replace(product, product_id=f"mis-{product.product_id}", category=query.category)

    catalog.irrelevant_for = irrelevant_for  # type: ignore[method-assign]


async def _simulate(
    minutes: int,
    pages_per_minute: int,
    seed: int,
    scenario: Scenario,
    start: datetime | None,
    rates: SamplingRates,
    misfiled_negatives: bool,
    catalog_seed: int,
) -> list[ScoredImpression]:
    t0 = start or datetime(2026, 1, 1, tzinfo=UTC)
    catalog = SyntheticCatalog.generate(seed=catalog_seed)
    if misfiled_negatives:
        _misfile(catalog)
    gen = TrafficGenerator(
        catalog,
        ReplayConfig(
            seed=seed,
            ubi_share=0.0,
            catalog_share=0.0,
            malformed_share=0.0,
            unknown_product_share=0.0,
            scenario=scenario,
        ),
    )
    scorer = OracleScorer()
    ports = MemoryPorts(scorer=scorer)  # type: ignore[arg-type]
    proc = ImpressionProcessor(
        ports=ports,
        catalog=Catalog(),
        planner=Planner(PlannerConfig()),
        rates=rates,
        threshold=0.5,
        model_version="oracle",
        metrics=Metrics(),
    )
    offsets = [0] * PARTITIONS
    step = timedelta(minutes=1) / pages_per_minute
    for minute in range(minutes):
        batch: list[RawRecord] = []
        for i in range(pages_per_minute):
            now = t0 + minute * timedelta(minutes=1) + i * step
            for key, value, relevant in gen.labelled_page(now, (now - t0).total_seconds()):
                part = zlib.crc32(key) % PARTITIONS
                batch.append(RawRecord(TOPIC, part, offsets[part], key, value))
                offsets[part] += 1
                if relevant is not None:
                    imp = json.loads(value)
                    scorer.truth[(imp["query"], imp["title"])] = relevant
        await proc.process(batch)
    return sorted(ports.rows.values(), key=lambda r: (r.event_time, r.impression_id))
