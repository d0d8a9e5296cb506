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

import random
from dataclasses import replace
from datetime import datetime
from typing import Any

from relmon.scenario import Scenario
from relmon.synth import Product, Query, SyntheticCatalog
from relmon.validation import replay_in_memory
from schemas.models import ScoredImpression
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
    catalog = SyntheticCatalog.generate(seed=catalog_seed)
    if misfiled_negatives:
        _misfile(catalog)
    replay = replay_in_memory(
        catalog,
        minutes=minutes,
        pages_per_minute=pages_per_minute,
        seed=seed,
        scenario=scenario,
        rates=rates or SamplingRates(),
        start=start,
    )
    return sorted(replay.ports.rows.values(), key=lambda r: (r.event_time, r.impression_id))


def _misfile(catalog: SyntheticCatalog) -> None:
    """Make the catalogue's negatives carry the category of the query they are shown for."""
    original = catalog.irrelevant_for

    def irrelevant_for(query: Query, rng: random.Random, kind: Any = "any") -> Product:
        product = original(query, rng, kind)
        return replace(product, product_id=f"mis-{product.product_id}", category=query.category)

    catalog.irrelevant_for = irrelevant_for  # type: ignore[method-assign]
