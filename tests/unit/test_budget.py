"""The scoring budget controller, driven by simulated capacity, demand and lag (no clock)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from relmon.errors import ConfigError
from relmon.settings import BudgetConfig, PlannerConfig, SamplingRates, load_settings
from relmon.sim.scenario import Scenario, Shift
from relmon.sim.synth import SyntheticCatalog
from relmon.sim.validation import PARTITIONS, replay_in_memory
from schemas.models import Impression
from streams import RawRecord, Routing
from streams.budget import BudgetController, ladder_floor
from streams.catalog import Catalog
from streams.metrics import Metrics, RecentRate
from streams.plans import Planner
from streams.prometheus import exposition
from streams.testing import MemoryPorts, memory_processor

CAPACITY = 400.0  # pairs/s while scoring
DEMAND = 0.8  # pairs the base rates ask for per record
INGEST = 0.0005  # seconds per record spent on everything but scoring


class Worker:
    """A worker in discrete time: one second per step, a new plan every ``plan_every`` steps."""

    def __init__(self, controller: BudgetController, plan_every: int = 5) -> None:
        self.c = controller
        self.plan_every = plan_every
        self.now = 0.0
        self.lag = 0
        self.factor = controller.factor(self.now)
        self.lags: list[int] = []
        self.factors: list[float] = []

    def run(self, seconds: int, arrivals_per_s: int) -> None:
        for _ in range(seconds):
            self.lag += arrivals_per_s
            self.c.observe_lag(self.lag, self.now)
            per_record = INGEST + self.factor * DEMAND / CAPACITY
            done = min(self.lag, int(1.0 / per_record))
            pairs = done * self.factor * DEMAND
            self.now += 1.0
            self.c.observe_scoring(round(pairs), pairs / CAPACITY, self.now)
            self.c.observe_batch(
                records=done,
                base_pairs=round(done * DEMAND),
                busy_s=done * per_record,
                scoring_s=pairs / CAPACITY,
                now=self.now,
            )
            self.lag -= done
            if int(self.now) % self.plan_every == 0:
                self.factor = self.c.factor(self.now)
            self.lags.append(self.lag)
            self.factors.append(self.factor)


def auto() -> BudgetController:
    return BudgetController(BudgetConfig(pps="auto", drain_s=30.0, recover_s=10.0))


def test_ladder():
    assert ladder_floor(1.0, 0.01) == 1.0
    assert ladder_floor(5.0, 0.01) == 1.0
    assert ladder_floor(0.5, 0.01) == 0.5
    assert ladder_floor(0.6, 0.01) == 0.5946
    assert ladder_floor(0.58, 0.01) == 0.5
    assert ladder_floor(-3.0, 0.01) == ladder_floor(0.0, 0.01) == 0.0110  # >= the minimum


def test_light_load_keeps_factor_exactly_one():
    w = Worker(auto())
    w.run(120, arrivals_per_s=200)  # half of what the worker can take at factor 1
    assert set(w.factors) == {1.0}
    assert max(w.lags) <= 200


def test_three_times_capacity_lowers_factor_and_bounds_lag():
    w = Worker(auto())
    arrivals = int(3 * CAPACITY / DEMAND)  # 3x what the scorer can take at factor 1
    w.run(600, arrivals_per_s=arrivals)
    late = w.lags[300:]
    assert max(late) <= max(w.lags[:300])  # not growing
    assert max(late) < 30 * arrivals  # within the drain time's worth of input
    assert min(w.factors) < 0.2
    # the factor settles where the load is about the planned utilisation (0.8)
    load = arrivals * (INGEST + w.factors[-1] * DEMAND / CAPACITY)
    assert 0.6 <= load <= 1.0
    gauges = w.c.gauges()
    assert gauges["budget_factor"] == w.factors[-1]
    assert gauges["scoring_capacity_pps"] == pytest.approx(CAPACITY, rel=0.02)
    assert gauges["input_records_per_s"] == pytest.approx(arrivals, rel=0.1)


def test_backlog_at_start_is_seen_by_the_first_plan():
    c = auto()
    c.observe_scoring(64, 64 / CAPACITY, 0.0)  # the start-up warm-up
    c.observe_lag(40_000, 0.0)  # a backlog, before any batch
    assert c.factor(0.0) < 0.5


def test_live_input_at_start_is_seen_by_the_first_plan():
    """A fresh worker measures the lag twice before its first batch; pages count in full."""
    page = 10  # impressions per record: the base rates' demand is unknown before a batch
    arrivals = 3 * CAPACITY / page  # pages/s: 3x what the scorer can take, all sampled
    c = auto()
    c.observe_scoring(64, 64 / CAPACITY, 0.0)  # the start-up warm-up
    c.observe_lag(20, 0.0)  # live traffic: no backlog yet
    assert c.factor(0.0) == 1.0  # nothing known of the input yet
    c.observe_lag(20 + round(2 * arrivals), 2.0)  # the first look: two seconds later
    assert c.factor(2.0) == 1.0  # a page taken as one pair: load 0.3, nothing to lower
    c.expect_demand(records=256, impressions=256 * page)  # the first batch: result pages
    first = c.factor(2.0)
    assert 0.5 <= arrivals * first * page / CAPACITY <= 0.8  # the planned utilisation
    c.observe_batch(records=256, base_pairs=512, busy_s=0.5, scoring_s=0.4, now=3.0)
    measured = c.load(1.0)
    c.expect_demand(records=10, impressions=10 * page)  # a batch was measured: no more hints
    assert c.load(1.0) == measured


def test_a_slow_first_batch_is_not_taken_as_the_cost_of_every_record():
    """The first batch pays one-off costs; from the second on, what a batch costs counts."""
    arrivals = 60  # records/s of live input, each one impression
    c = auto()
    c.observe_scoring(64, 64 / CAPACITY, 0.0)  # the start-up warm-up
    c.observe_lag(0, 0.0)
    c.observe_lag(2 * arrivals, 2.0)  # the first look
    c.expect_demand(records=1, impressions=1)
    assert c.factor(2.0) == 1.0
    # one record in half a second: first connections and writes (as a demo's worker measured)
    c.observe_batch(records=1, base_pairs=1, busy_s=0.5, scoring_s=0.0, now=2.5)
    assert c.factor(2.5) == 1.0
    assert (c.load(1.0) or 0.0) < 0.5  # the scorer's share only (taken as 0.5 s a record: 32)
    # the same cost again is the worker's own: 60 records/s at 0.5 s each cannot keep up
    c.observe_lag(arrivals, 3.0)
    c.observe_batch(records=1, base_pairs=1, busy_s=0.5, scoring_s=0.0, now=3.0)
    assert (c.load(1.0) or 0.0) > 1.0
    assert c.factor(3.0) == ladder_floor(0.0, c.config.min_factor)


def test_recovers_one_step_per_interval_when_input_drops():
    w = Worker(auto(), plan_every=1)
    w.run(300, arrivals_per_s=int(3 * CAPACITY / DEMAND))
    low = w.factor
    assert low < 0.2
    w.run(400, arrivals_per_s=50)
    assert w.factor == 1.0
    rises = [i for i, (a, b) in enumerate(itertools.pairwise(w.factors)) if b > a]
    assert len(rises) >= 8  # step by step, not one jump
    assert all(j - i >= 10 for i, j in itertools.pairwise(rises))


def test_after_a_quiet_spell_the_first_plan_gets_every_step_earned():
    w = Worker(auto())
    w.run(120, arrivals_per_s=int(3 * CAPACITY / DEMAND))
    assert w.factor < 0.2 and w.c.gauges()["processing_lag_records"] == w.lag
    w.run(5, arrivals_per_s=0)  # the backlog is worked off, then no input: no plan is made
    w.c.observe_lag(10, w.now + 600)  # ten minutes later a little input arrives
    assert w.c.factor(w.now + 600) == 1.0


def test_no_capacity_measured_means_no_change():
    c = auto()
    c.observe_lag(10**6, 0.0)
    assert c.factor(1.0) == 1.0


def test_off_is_always_one():
    c = BudgetController(BudgetConfig(pps="0"))
    c.observe_scoring(10, 10.0, 0.0)
    c.observe_lag(10**6, 1.0)
    assert c.factor(2.0) == 1.0


def test_fixed_budget_caps_demand():
    c = BudgetController(BudgetConfig(pps="250"))
    for t in range(1, 31):  # 1,000 base pairs asked for per second
        c.observe_batch(records=1250, base_pairs=1000, busy_s=0.5, scoring_s=0.4, now=float(t))
    assert c.factor(31.0) == 0.25


@pytest.mark.parametrize(
    "bad", [{"pps": "-1"}, {"utilisation": 0.0}, {"drain_s": 0.0}, {"mode": "fixed"}]
)
def test_config_errors(bad):
    with pytest.raises(ValueError):
        BudgetConfig(**bad)


def test_settings_default_auto_number_and_errors():
    def budget(**overrides: object) -> tuple[str, float]:
        config = load_settings(**overrides).budget
        return config.mode, config.pairs_per_s

    assert budget() == ("auto", 0.0)
    assert budget(scoring_budget_pps="350") == ("fixed", 350.0)
    assert budget(scoring_budget_pps=0) == ("off", 0.0)
    with pytest.raises(ConfigError, match=r"RELMON_SCORING_BUDGET_PPS.*'auto'"):
        load_settings(scoring_budget_pps="fast")
    with pytest.raises(ConfigError, match="RELMON_SCORING_BUDGET_PPS"):
        load_settings(scoring_budget_pps="-5")


def test_recent_rate_is_the_last_minute_not_the_uptime():
    rate = RecentRate(60.0)
    assert rate.observe(0.0, 0) == 0.0
    for t in range(1, 601):  # ten minutes at 100/s
        rate.observe(float(t), 100 * t)
    for t in range(601, 661):  # then a minute at 10/s
        current = rate.observe(float(t), 60_000 + 10 * (t - 600))
    assert current == pytest.approx(10.0, rel=0.05)


class ScriptedBudget(BudgetController):
    """Factor 1 for the first ``full`` plans, then ``low`` (deterministic: counts plans)."""

    def __init__(self, full: int, low: float) -> None:
        super().__init__(BudgetConfig(pps="auto"))
        self.full, self.low, self.calls = full, low, 0

    def factor(self, now: float) -> float:
        self.calls += 1
        return 1.0 if self.calls <= self.full else self.low


def test_estimates_stay_unbiased_when_the_factor_drops():
    """The factor drops to 1/4 just as the bad share rises: unweighted, the sample would be
    dominated by the good first half; with the recorded probabilities the estimate is right."""

    minutes, shift_at = 16, 8  # 4,800 impressions: the sampling noise's sd is about 0.015
    replay = replay_in_memory(
        SyntheticCatalog.generate(seed=11),
        minutes=minutes,
        pages_per_minute=30,
        seed=1,
        scenario=Scenario(base_bad_share=0.1, shifts=(Shift(at_s=shift_at * 60, bad_share=0.5),)),
        rates=SamplingRates(),
        budget=ScriptedBudget(full=shift_at * PARTITIONS, low=0.25),
    )
    plans = {p.key[2]: p.plan.budget_factor for p in replay.ports.plans.values()}
    assert sorted(set(plans.values())) == [0.25, 1.0]
    truth = sum(bad for *_, bad in replay.population) / len(replay.population)
    rows = list(replay.ports.rows.values())
    late = [r for r in rows if plans[replay.planner.epoch(r.event_time)] == 0.25]
    early = [r for r in rows if plans[replay.planner.epoch(r.event_time)] == 1.0]
    assert len(late) < 0.5 * len(early)  # fewer rows scored after the drop
    assert max(r.sample_rate for r in late) <= 0.25  # the factor is in each row's probability
    weighted = sum(r.sample_weight * r.is_bad for r in rows) / sum(r.sample_weight for r in rows)
    naive = sum(r.is_bad for r in rows) / len(rows)
    assert abs(weighted - truth) < 0.04, (weighted, truth)
    assert truth - naive > 0.08, (naive, truth)  # what ignoring the probabilities would show


def test_a_restarted_worker_reuses_the_recorded_factor():
    """Replayed records find their stored plan: a fresh budget (factor 1) decides nothing."""

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        RawRecord(
            "t",
            0,
            i,
            None,
            Impression(
                impression_id=f"i{i}",
                query_id=f"q{i // 5}",
                query=f"query {i // 5}",
                product_id="p",
                title="Oak Desk",
                position=1 + i % 5,
                event_time=t0 + timedelta(seconds=i / 10),
            )
            .model_dump_json()
            .encode(),
        )
        for i in range(400)
    ]

    metrics = Metrics()

    def run(ports: MemoryPorts, budget: BudgetController) -> dict[str, tuple[float, str]]:
        proc = memory_processor(
            ports=ports,
            catalog=Catalog(),
            planner=Planner(PlannerConfig(), budget=budget),
            rates=SamplingRates(),
            routing=Routing(0.5),
            model_version="m",
            metrics=metrics,
        )
        asyncio.run(proc.process(records))
        return {k: (r.sample_rate, r.plan_id) for k, r in ports.rows.items()}

    first = MemoryPorts()
    before = run(first, ScriptedBudget(full=0, low=0.25))
    text = exposition(metrics.snapshot())  # the budget's gauges reach /metrics
    for name in ("budget_factor", "scoring_capacity_pps", "processing_lag_records"):
        assert f"\nrelmon_{name} " in text
    again = MemoryPorts()
    again.plans = dict(first.plans)  # the stored plans survive the crash, the rows do not
    after = run(again, BudgetController(BudgetConfig(pps="0")))
    assert before == after and 0 < len(before) < 400
