"""Sampling plans per (topic, partition, event-time epoch), persisted before first use.

A plan freezes what the sampler needs besides the record itself: the query tiers (from the
partition's popularity sketch) and the scoring-budget factor. The first time a worker meets a
record of epoch E on partition P it loads plan (P, E) from the store, or creates and stores it,
and only then decides. A record replayed after a crash therefore meets the same plan and gets the
same decision, whichever worker owns the partition by then. Each stored plan carries its sketch,
so a new owner of the partition continues from the popularity seen so far.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from streams.sampling import SamplingPlan
from streams.sketch import SpaceSaving, normalise_query, tiers_from

PlanKey = tuple[str, int, int]
"""(topic, partition, epoch index)"""


@dataclass(frozen=True)
class StoredPlan:
    """A plan as stored: its key, the plan, and the sketch state it was made from."""

    key: PlanKey
    plan: SamplingPlan
    sketch: str


class PlanStore(Protocol):
    """Where plans live (ClickHouse in the worker, a dict in tests)."""

    async def load_plans(self, keys: list[PlanKey]) -> dict[PlanKey, StoredPlan]:
        """Stored plans for ``keys`` (missing keys absent)."""

    async def latest_plan(self, topic: str, partition: int) -> StoredPlan | None:
        """The newest stored plan of a partition, to resume its sketch."""

    async def save_plans(self, plans: list[StoredPlan]) -> None:
        """Store new plans (before they are used)."""


@dataclass(frozen=True)
class PlannerConfig:
    """Tiering and budget parameters."""

    epoch_s: int = 60
    head_share: float = 0.01
    torso_share: float = 0.0015
    sketch_capacity: int = 5000
    sketch_decay: float = 0.7
    budget_pps: float = 0.0
    sketch_keep: int = 2000


@dataclass
class _Partition:
    sketch: SpaceSaving
    last_epoch: int = -1
    resumed: bool = False


class Planner:
    """Keeps per-partition sketches and the plans in force."""

    def __init__(self, config: PlannerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._plans: dict[PlanKey, SamplingPlan] = {}
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._demand_ewma = 0.0
        self._demand_at = clock()

    def epoch(self, event_time: datetime) -> int:
        """Epoch index of an event time."""
        return int(event_time.timestamp() // self.config.epoch_s)

    def _part(self, topic: str, partition: int) -> _Partition:
        part = self._parts.get((topic, partition))
        if part is None:
            part = self._parts[(topic, partition)] = _Partition(self._new_sketch())
        return part

    def observe(self, topic: str, partition: int, queries: Iterable[str]) -> None:
        """Count query texts seen on a partition (every impression, sampled or not)."""
        sketch = self._part(topic, partition).sketch
        for query in queries:
            sketch.add(normalise_query(query))

    def note_demand(self, pairs: int) -> None:
        """Record how many pairs the base rates asked to score (for the budget factor)."""
        now = self._clock()
        elapsed = max(now - self._demand_at, 1e-3)
        self._demand_at = now
        alpha = min(1.0, elapsed / 30.0)
        self._demand_ewma = (1 - alpha) * self._demand_ewma + alpha * (pairs / elapsed)

    def budget_factor(self) -> float:
        """Factor that keeps expected scoring within the budget (1 when within it)."""
        if self.config.budget_pps <= 0 or self._demand_ewma <= self.config.budget_pps:
            return 1.0
        return round(self.config.budget_pps / self._demand_ewma, 4)

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop state of revoked partitions."""
        gone = set(partitions)
        self._plans = {k: v for k, v in self._plans.items() if (k[0], k[1]) not in gone}
        for tp in gone:
            self._parts.pop(tp, None)

    def _new_sketch(self) -> SpaceSaving:
        return SpaceSaving(self.config.sketch_capacity, self.config.sketch_decay)

    async def plans_for(self, keys: set[PlanKey], store: PlanStore) -> dict[PlanKey, SamplingPlan]:
        """The plan of every key: cached, stored, or created and stored now."""
        missing = sorted(k for k in keys if k not in self._plans)
        if missing:
            for key, stored in (await store.load_plans(missing)).items():
                self._plans[key] = stored.plan
            created = []
            for key in sorted(k for k in missing if k not in self._plans):
                created.append(await self._create(key, store))
            if created:
                await store.save_plans(created)
                for stored in created:
                    self._plans[stored.key] = stored.plan
        return {k: self._plans[k] for k in keys}

    async def _resume(self, part: _Partition, topic: str, partition: int, store: PlanStore) -> None:
        """Continue from the sketch of the partition's newest stored plan, adding local counts."""
        part.resumed = True
        latest = await store.latest_plan(topic, partition)
        if latest is None:
            return
        cfg = self.config
        sketch = SpaceSaving.from_state(
            json.loads(latest.sketch), cfg.sketch_capacity, cfg.sketch_decay
        )
        for item, count in part.sketch.top(cfg.sketch_capacity):
            sketch.add(item, count)
        part.sketch, part.last_epoch = sketch, max(part.last_epoch, latest.key[2])

    async def _create(self, key: PlanKey, store: PlanStore) -> StoredPlan:
        topic, partition, epoch = key
        part = self._part(topic, partition)
        if not part.resumed:
            await self._resume(part, topic, partition, store)
        if 0 <= part.last_epoch < epoch:
            for _ in range(min(epoch - part.last_epoch, 20)):
                part.sketch.decay_step()
        part.last_epoch = max(epoch, part.last_epoch)
        cfg = self.config
        plan = SamplingPlan(
            plan_id=f"{topic}/{partition}/{epoch}/{uuid.uuid4().hex[:8]}",
            tiers=tiers_from(part.sketch, cfg.head_share, cfg.torso_share),
            budget_factor=self.budget_factor(),
        )
        return StoredPlan(key, plan, json.dumps(part.sketch.state(cfg.sketch_keep)))


class MemoryPlanStore:
    """Plans in a dict (tests, and a stand-in when no store is configured)."""

    def __init__(self) -> None:
        self.plans: dict[PlanKey, StoredPlan] = {}

    async def load_plans(self, keys: list[PlanKey]) -> dict[PlanKey, StoredPlan]:
        """Stored plans for ``keys``."""
        return {k: self.plans[k] for k in keys if k in self.plans}

    async def latest_plan(self, topic: str, partition: int) -> StoredPlan | None:
        """The newest plan of a partition."""
        mine = [p for k, p in self.plans.items() if (k[0], k[1]) == (topic, partition)]
        return max(mine, key=lambda p: p.key[2]) if mine else None

    async def save_plans(self, plans: list[StoredPlan]) -> None:
        """Keep new plans."""
        for plan in plans:
            self.plans[plan.key] = plan
