"""Replays with known truth through the real stream processor, as rows for the detector.

The same machinery as :mod:`relmon.sim.validation` (synthetic traffic from a
:class:`~relmon.sim.scenario.Scenario`, the real :class:`~streams.processor.ImpressionProcessor`
with in-memory ports and an oracle scorer), but what comes out is the scored rows themselves,
so they can be summed per window and segment (:func:`relmon.alerts.detect.window_sums`) or
written to ClickHouse.

Scenario shares are per *query* category (the category of the page), while stored rows carry
the *product's* category, so the catalogue is generated with ``misfiled_negatives`` (the default
here; see :meth:`~relmon.sim.synth.SyntheticCatalog.generate`): a scenario's category shift is
then a shift of that category's stored bad-case rate, which is what the alert detectors watch.
"""

from __future__ import annotations

from datetime import datetime

from relmon.settings import SamplingRates
from relmon.sim.scenario import Scenario
from relmon.sim.synth import SyntheticCatalog
from relmon.sim.validation import replay_in_memory
from schemas.models import ScoredImpression

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
    catalog = SyntheticCatalog.generate(seed=catalog_seed, misfiled_negatives=misfiled_negatives)
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
