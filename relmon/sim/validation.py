"""Validation of relmon's estimates against known truth, by simulation.

Synthetic traffic with known relevance (a :class:`~relmon.sim.scenario.Scenario`) runs through the
real :class:`~streams.processor.ImpressionProcessor` (decoding, sketch, sampling plans, stratified
or uniform sampling) with in-memory ports and an oracle scorer that scores bad results 0 and good
ones 1, so what is measured is the sampling and the estimator, not the model. For every one-minute
window and query tier the estimate (Horvitz-Thompson ratio with its 95% interval) is compared with
the true rate over *all* impressions of that window and tier.
"""

from __future__ import annotations

import asyncio
import statistics
import zlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from relmon.estimate import Sums, judged
from relmon.settings import PlannerConfig, SamplingRates
from relmon.sim.replay import ReplayConfig, TrafficGenerator
from relmon.sim.scenario import Scenario, Shift
from relmon.sim.synth import SyntheticCatalog
from relmon.stats import RateEstimate
from schemas.models import Impression
from streams import RawRecord, Routing, impression_text
from streams.budget import BudgetController
from streams.catalog import Catalog
from streams.metrics import Metrics
from streams.plans import Planner
from streams.sketch import normalise_query
from streams.testing import MemoryPorts, memory_processor

DEFAULT_SCENARIO = Scenario(
    tier_bad_share={"head": 0.05, "torso": 0.15, "tail": 0.3},
    category_bad_share={"Desks": 0.45, "Area Rugs": 0.1},
    shifts=(
        Shift(at_s=1800, category="Area Rugs", bad_share=0.5),
        Shift(at_s=3600, tier="head", bad_share=0.2),
    ),
)
PARTITIONS = 4
TOPIC = "sim.impressions"


class OracleScorer:
    """Scores a pair 1 if it is truly relevant, else 0 (truth recorded by the simulation)."""

    model_version = "oracle"
    provider = "none"

    def __init__(self) -> None:
        self.truth: dict[tuple[str, str], bool] = {}

    def predict(
        self, pairs: list[tuple[str, str]], batch_size: int = 32, keys: list[str] | None = None
    ) -> np.ndarray:
        """1.0 for relevant pairs, 0.0 for irrelevant ones."""
        return np.asarray([1.0 if self.truth[p] else 0.0 for p in pairs], dtype=np.float32)


@dataclass(frozen=True)
class WindowCheck:
    """One judged or unjudged (window, tier) cell."""

    window: datetime
    tier: str
    truth: float
    estimate: RateEstimate
    judged: bool

    @property
    def covered(self) -> bool:
        """True if the 95% interval holds the true rate."""
        return self.estimate.ci_low <= self.truth <= self.estimate.ci_high


@dataclass(frozen=True)
class SimulationResult:
    """What one simulated replay gave."""

    impressions: int
    sampled: int
    windows: list[WindowCheck]

    def coverage(self) -> float:
        """Share of judged windows whose interval covers the truth."""
        judged = [w for w in self.windows if w.judged]
        return sum(w.covered for w in judged) / len(judged) if judged else float("nan")

    def mean_width(self, tier: str) -> float:
        """Mean 95% interval width over the tier's windows."""
        widths = [w.estimate.ci_high - w.estimate.ci_low for w in self.windows if w.tier == tier]
        return statistics.fmean(widths) if widths else float("nan")


@dataclass
class Replay:
    """What an in-memory replay leaves behind."""

    ports: MemoryPorts
    planner: Planner
    population: list[tuple[datetime, int, str, bool]]
    """every impression: (event time, partition, query, truly bad)"""


def replay_in_memory(
    catalog: SyntheticCatalog,
    *,
    minutes: int,
    pages_per_minute: int,
    seed: int,
    scenario: Scenario,
    rates: SamplingRates,
    start: datetime | None = None,
    budget: BudgetController | None = None,
) -> Replay:
    """Push ``minutes`` of the scenario's traffic through the real processor, in memory.

    ``budget``: decides the plans' budget factors (default: none, factor 1).
    """
    return asyncio.run(
        _replay(catalog, minutes, pages_per_minute, seed, scenario, rates, start, budget)
    )


async def _replay(
    catalog: SyntheticCatalog,
    minutes: int,
    pages_per_minute: int,
    seed: int,
    scenario: Scenario,
    rates: SamplingRates,
    start: datetime | None,
    budget: BudgetController | None,
) -> Replay:
    t0 = start or datetime(2026, 1, 1, tzinfo=UTC)
    gen = TrafficGenerator(
        catalog,
        ReplayConfig.clean_impressions(seed=seed, scenario=scenario),
    )
    scorer = OracleScorer()
    ports = MemoryPorts(scorer=scorer)  # type: ignore[arg-type]
    planner = Planner(PlannerConfig(), budget=budget)
    proc = memory_processor(
        ports=ports,
        catalog=Catalog(),
        planner=planner,
        rates=rates,
        routing=Routing(0.5),
        model_version="oracle",
        metrics=Metrics(),
    )
    population: list[tuple[datetime, int, str, bool]] = []
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
                if relevant is None:
                    continue
                imp = Impression.model_validate_json(value)
                scorer.truth[(imp.query, impression_text(imp))] = relevant
                population.append((now, part, imp.query, not relevant))
        await proc.process(batch)
    return Replay(ports, planner, population)


def simulate(
    *,
    minutes: int = 60,
    pages_per_minute: int = 120,
    seed: int = 7,
    scenario: Scenario = DEFAULT_SCENARIO,
    rates: SamplingRates | None = None,
    min_window_sample: int | None = None,
    start: datetime | None = None,
) -> SimulationResult:
    """Replay ``minutes`` of simulated traffic through the processor; compare with the truth.

    A window is judged with an effective sample of ``min_window_sample`` (default:
    ``RELMON_MIN_WINDOW_SAMPLE``).
    """
    replay = replay_in_memory(
        SyntheticCatalog.generate(seed=seed),
        minutes=minutes,
        pages_per_minute=pages_per_minute,
        seed=seed,
        scenario=scenario,
        rates=rates or SamplingRates(),
        start=start,
    )
    return _compare(replay.population, replay.ports, replay.planner, min_window_sample)


def _compare(
    population: list[tuple[datetime, int, str, bool]],
    ports: MemoryPorts,
    planner: Planner,
    min_window_sample: int | None,
) -> SimulationResult:
    truth: dict[tuple[datetime, str], list[int]] = defaultdict(lambda: [0, 0])
    for when, part, query, is_bad in population:
        plan = ports.plans[(TOPIC, part, planner.epoch(when))].plan
        cell = truth[
            (when.replace(second=0, microsecond=0), plan.tiers.get(normalise_query(query), "tail"))
        ]
        cell[0] += 1
        cell[1] += int(is_bad)
    sums: dict[tuple[datetime, str], Sums] = defaultdict(Sums)
    for row in ports.rows.values():
        w, b = row.sample_weight, int(row.is_bad)
        key = (row.event_time.replace(second=0, microsecond=0), row.tier)
        sums[key] += Sums(1, b, w, w * b, w * w)
    windows = []
    for (window, tier), (total, bad) in sorted(truth.items()):
        if (window, tier) not in sums:
            continue
        est = sums[(window, tier)].estimate()
        windows.append(WindowCheck(window, tier, bad / total, est, judged(est, min_window_sample)))
    return SimulationResult(len(population), len(ports.rows), windows)
