"""The scoring budget: lower inclusion probabilities when the scorer cannot keep up with input.

A worker that samples more pairs than its scorer can take falls behind without bound. The
:class:`BudgetController` turns what the worker measures into a *budget factor* in (0, 1] that
multiplies every inclusion probability of new sampling plans:

* the scorer's **capacity** ``C``: pairs per second actually achieved while scoring (time spent
  waiting for input does not count), from a warm-up at start and then every scoring call;
* the **demand** ``d``: pairs the base rates ask to score per consumed record;
* the **ingest cost** ``t``: seconds per record spent on everything but scoring (decode, plans,
  store writes, sends), retry sleeps excluded (an outage is not a cost of the input), and the
  worker's first batch excluded too: it pays one-off costs (connections, first writes) that a
  small first batch would otherwise spread over its few records (one record taking half a
  second once read as 0.5 s a record, and sent the first plans to the lowest factor);
* the **lag** ``L`` (records consumed by nobody yet) and the **arrival rate** ``a`` (records per
  second, from the lag's growth plus what was consumed meanwhile). A fresh worker looks at its
  input for a moment before its first batch (two lag measurements, ``streams.app``), so its
  first plans, a minute of input each, are made knowing the input rate; and until a batch has
  been measured, the demand is taken as every impression of the first batch sampled.

The worker must handle ``R = a + L / drain_s`` records per second to work its lag off within
``drain_s``; at factor ``f`` each record costs ``t + f * d / C`` seconds. The factor is lowered at
once when that load ``R * (t + f * d / C)`` exceeds 1 (the worker is falling behind), to the value
that makes it ``utilisation``; it rises again by one step per ``recover_s`` while there is
headroom (several steps at once when no plan was made for a while). Between the two nothing
changes, so measurement noise does not move the factor: under light load it stays exactly 1 and
runs stay comparable row for row. Factors come from a fixed
ladder (quarter octaves: 1, 0.84, 0.71, 0.59, 0.5, ...), so plans take few distinct values.

All measurements are smoothed with exponentially decayed sums (time constant ``smoothing_s``):
ratios of sums decayed alike do not change while nothing happens, so a pause forgets nothing.
Time is always an argument: the controller reads no clock, and tests drive it with simulated
capacity and lag.

The factor only reaches the data through :class:`~streams.plans.Planner`: it is read when a plan
is created and stored in that plan, and every row records its probability, so replays after a
crash decide the same and Horvitz-Thompson estimates stay unbiased.

Modes: ``auto`` (the default: measured as above), ``fixed`` (a configured pairs/s cap instead of
the measured capacity, compared with the demand at the current processing rate; lag is not
watched) and ``off`` (always 1).
"""

from __future__ import annotations

import logging
import math

from relmon.settings import BudgetConfig, BudgetMode

__all__ = ["BudgetConfig", "BudgetController", "BudgetMode", "ladder_floor"]

_STEPS_PER_OCTAVE = 4

log = logging.getLogger(__name__)


def ladder_floor(value: float, minimum: float) -> float:
    """The largest ladder factor ``2 ** (-k / 4)`` at most ``value``, but not below ``minimum``.

    The floor is the smallest ladder factor at least ``minimum``, so the result is always a
    ladder value in [minimum, 1].
    """
    value = min(max(value, minimum), 1.0)
    k = math.ceil(-_STEPS_PER_OCTAVE * math.log2(value) - 1e-9)
    k_max = math.floor(-_STEPS_PER_OCTAVE * math.log2(minimum) + 1e-9)
    return _level(min(max(k, 0), k_max))


def _level(k: int) -> float:
    return round(2.0 ** (-k / _STEPS_PER_OCTAVE), 4)


def _step(factor: float) -> int:
    return round(-_STEPS_PER_OCTAVE * math.log2(factor))


class _Decayed:
    """A sum whose past contributions decay (by :meth:`BudgetController._age`)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class BudgetController:
    """Measures capacity, demand, ingest cost and lag; decides the budget factor."""

    def __init__(self, config: BudgetConfig) -> None:
        self.config = config
        self._at: float | None = None
        self._score_pairs, self._score_s = _Decayed(), _Decayed()
        self._records, self._base_pairs, self._other_s = _Decayed(), _Decayed(), _Decayed()
        self._other_records = _Decayed()  # the records behind _other_s (not the first batch's)
        self._arrived, self._arrival_s = _Decayed(), _Decayed()
        # fixed mode's demand rate: base pairs per second of wall time between batches
        self._walked_pairs, self._walked_s = _Decayed(), _Decayed()
        self._last_batch_at: float | None = None
        self._lag: int | None = None
        self._lag_at = 0.0
        self._taken_since_lag = 0
        self._factor = 1.0
        self._changed_at: float | None = None
        self._first_demand = 1.0

    # --- measurements ------------------------------------------------------------------------
    def _age(self, now: float) -> None:
        if self._at is not None and now > self._at:
            keep = math.exp(-(now - self._at) / self.config.smoothing_s)
            for s in (
                self._score_pairs,
                self._score_s,
                self._records,
                self._base_pairs,
                self._other_s,
                self._other_records,
                self._arrived,
                self._arrival_s,
                self._walked_pairs,
                self._walked_s,
            ):
                s.value *= keep
        self._at = now if self._at is None else max(self._at, now)

    def observe_scoring(self, pairs: int, seconds: float, now: float) -> None:
        """One scoring call (or the start-up warm-up): ``pairs`` scored in ``seconds``."""
        if pairs <= 0 or seconds <= 0:
            return
        self._age(now)
        self._score_pairs.value += pairs
        self._score_s.value += seconds

    def observe_batch(
        self,
        *,
        records: int,
        base_pairs: int,
        busy_s: float,
        scoring_s: float,
        now: float,
    ) -> None:
        """One processed batch: records consumed, pairs the base rates asked for, time spent.

        ``busy_s`` is the batch's whole processing time without retry sleeps, ``scoring_s`` the
        part of it spent scoring (measured with :meth:`observe_scoring` too).
        """
        self._age(now)
        if self._records.value > 0:  # the first batch pays for connections and first writes
            self._other_s.value += max(busy_s - scoring_s, 0.0)
            self._other_records.value += records
        self._records.value += records
        self._base_pairs.value += base_pairs
        if self._last_batch_at is not None and now > self._last_batch_at:
            self._walked_s.value += now - self._last_batch_at
            self._walked_pairs.value += base_pairs
        self._last_batch_at = now
        self._taken_since_lag += records

    def observe_lag(self, records: int, now: float) -> None:
        """Records waiting in the input (consumed by nobody yet), measured at ``now``.

        Measure it before the batch about to be processed is counted by :meth:`observe_batch`:
        arrivals are the lag's growth plus what was processed between two measurements.
        """
        records = max(records, 0)
        self._age(now)
        if self._lag is not None and now > self._lag_at:
            arrived = records - self._lag + self._taken_since_lag
            self._arrived.value += max(arrived, 0)
            self._arrival_s.value += now - self._lag_at
        self._lag, self._lag_at, self._taken_since_lag = records, now, 0

    def expect_demand(self, records: int, impressions: int) -> None:
        """The first batch holds ``impressions`` in ``records``: the demand until one is measured.

        Before :meth:`observe_batch` has measured the pairs the base rates ask for per record,
        every impression is assumed sampled (a result page is one record of many impressions).
        """
        if self._records.value <= 0 and records > 0:
            self._first_demand = impressions / records

    # --- estimates ---------------------------------------------------------------------------
    @property
    def capacity_pps(self) -> float | None:
        """Pairs per second the scorer achieves while busy (None before any measurement)."""
        if self._score_s.value <= 0:
            return None
        return self._score_pairs.value / self._score_s.value

    @property
    def lag(self) -> int:
        """Records still behind: the last measured lag less what was processed since."""
        return max((self._lag or 0) - self._taken_since_lag, 0)

    def _per_record(self, s: _Decayed, default: float) -> float:
        return s.value / self._records.value if self._records.value > 0 else default

    @property
    def _other_per_record(self) -> float:
        """Seconds per record spent on everything but scoring (0 before a second batch)."""
        records = self._other_records.value
        return self._other_s.value / records if records > 0 else 0.0

    @property
    def arrival_rate(self) -> float:
        """Records per second arriving in the input (0 before two lag measurements)."""
        return self._arrived.value / self._arrival_s.value if self._arrival_s.value > 0 else 0.0

    def load(self, factor: float) -> float | None:
        """Share of the worker's time needed at ``factor`` to keep up and drain the lag.

        None when there is nothing to judge by yet (no capacity measured).
        """
        capacity = self.capacity_pps
        if capacity is None:
            return None
        required = self.arrival_rate + self.lag / self.config.drain_s
        demand = self._per_record(self._base_pairs, self._first_demand)
        cost = self._other_per_record + factor * demand / capacity
        return required * cost

    def _target(self) -> float | None:
        """The factor that brings the load to ``utilisation`` (auto) or demand to the cap."""
        cfg = self.config
        if cfg.mode == "fixed":
            walked, demand = self._walked_s.value, self._walked_pairs.value
            if walked <= 0 or demand <= 0:
                return None
            return cfg.pairs_per_s / (demand / walked)
        capacity = self.capacity_pps
        if capacity is None:
            return None
        required = self.arrival_rate + self.lag / cfg.drain_s
        if required <= 0:
            return 1.0
        spare = cfg.utilisation / required - self._other_per_record
        demand = self._per_record(self._base_pairs, self._first_demand)
        return spare * capacity / demand if demand > 0 else 1.0

    # --- decision ----------------------------------------------------------------------------
    def factor(self, now: float) -> float:
        """The budget factor for a plan created at ``now`` (and remember it).

        Lowered at once when the worker falls behind (fixed mode: demand over the cap), raised
        by one ladder step per ``recover_s`` elapsed while the target is above it (a factor is
        only decided when a plan is made: after an idle spell it may rise several steps).
        """
        cfg = self.config
        if cfg.mode == "off":
            return 1.0
        target = self._target()
        if target is None:
            return self._factor
        target = ladder_floor(target, cfg.min_factor)
        behind = cfg.mode == "fixed" or (self.load(self._factor) or 0.0) > 1.0
        before = self._factor
        if target < self._factor and behind:
            self._factor, self._changed_at = target, now
        elif target > self._factor:
            since = math.inf if self._changed_at is None else now - self._changed_at
            steps = int(min(since / cfg.recover_s, 1e6)) if cfg.recover_s > 0 else 10**6
            if steps > 0:  # after a quiet spell (no new plans), all the steps it earned
                self._factor = min(target, _level(max(_step(self._factor) - steps, 0)))
                self._changed_at = now
        if self._factor != before:
            log.info("scoring budget: factor %g -> %g (%s)", before, self._factor, self._why())
        return self._factor

    def _why(self) -> str:
        """The measurements behind a decision, for the worker's log."""
        capacity = self.capacity_pps or 0.0
        demand = self._per_record(self._base_pairs, self._first_demand)
        other_ms = 1000 * self._other_per_record
        return (
            f"capacity {capacity:.1f} pairs/s, demand {demand:.2f} pairs/record, "
            f"other work {other_ms:.2f} ms/record, input {self.arrival_rate:.1f} records/s, "
            f"lag {self.lag} records"
        )

    @property
    def current(self) -> float:
        """The factor most recently decided (1 before any)."""
        return self._factor

    def gauges(self) -> dict[str, float]:
        """Figures for ``/metrics`` and the health page."""
        capacity = self.capacity_pps
        load = self.load(self._factor)
        return {
            "budget_factor": self._factor,
            "scoring_capacity_pps": round(capacity, 1) if capacity is not None else 0.0,
            "processing_lag_records": float(self.lag),
            "input_records_per_s": round(self.arrival_rate, 1),
            "budget_load": round(load, 3) if load is not None else 0.0,
        }
