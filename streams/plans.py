"""Sampling plans and popularity sketches per partition, replayable exactly after a crash.

A *plan* freezes what sampling needs besides the record itself: the query tiers (from the
partition's popularity sketch) and the scoring-budget factor, for one (topic, partition,
event-time epoch). The first record of an epoch met on a partition, in offset order, creates the
plan from the sketch as it stands just before that record; plans are stored before they are used,
and a record replayed later finds its stored plan.

The sketch of a partition is a function of the partition's records in offset order. It is saved
in *checkpoints* (topic, partition, next offset, state); the worker acks records only once a
checkpoint covers them, so the committed offset never passes the latest checkpoint. After a
restart the worker restores the latest checkpoint and does not count records below its offset
again: the sketch then evolves exactly as in a run without the crash, and so do new plans.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from relmon.settings import BudgetConfig, PlannerConfig
from streams.budget import BudgetController
from streams.sampling import SamplingPlan
from streams.sketch import SpaceSaving, normalise_query, tiers_from

PlanKey = tuple[str, int, int]
"""(topic, partition, epoch index)"""
Partition = tuple[str, int]
Seen = tuple[str, int, int, datetime, str | None, int]
"""(topic, partition, offset, event time, query text or None if not known yet, impressions):
a record that carries a result page counts its query once per hit"""


@dataclass(frozen=True)
class StoredPlan:
    """A plan and its key."""

    key: PlanKey
    plan: SamplingPlan


@dataclass(frozen=True)
class Checkpoint:
    """The sketch of a partition after counting every record below ``offset``."""

    topic: str
    partition: int
    offset: int
    last_epoch: int
    state: str
    """compressed JSON of :meth:`SpaceSaving.state`"""

    @staticmethod
    def pack(sketch: SpaceSaving) -> str:
        """Compress a sketch's exact state."""
        raw = json.dumps(sketch.state(), separators=(",", ":")).encode()
        return base64.b64encode(zlib.compress(raw, 6)).decode()

    def sketch(self, capacity: int, decay: float) -> SpaceSaving:
        """The sketch this checkpoint holds."""
        state = json.loads(zlib.decompress(base64.b64decode(self.state)))
        return SpaceSaving.from_state(state, capacity, decay)


class PlanStore(Protocol):
    """Where plans and checkpoints live (ClickHouse in the worker, dicts in tests)."""

    async def load_plans(self, keys: list[PlanKey]) -> dict[PlanKey, StoredPlan]:
        """Stored plans for ``keys`` (missing keys absent)."""

    async def save_plans(self, plans: list[StoredPlan]) -> None:
        """Store new plans (before they are used)."""

    async def latest_checkpoint(self, topic: str, partition: int) -> Checkpoint | None:
        """The newest checkpoint of a partition."""

    async def save_checkpoints(self, checkpoints: list[Checkpoint]) -> None:
        """Store checkpoints."""


@dataclass
class _Part:
    sketch: SpaceSaving
    last_epoch: int = -1
    count_from: int = 0
    """records below this offset are in the restored checkpoint already"""
    next_offset: int = 0
    checkpointed: int = 0
    checkpointed_at: float = 0.0


class Planner:
    """Per-partition sketches, the plans in force, and their checkpoints."""

    def __init__(
        self,
        config: PlannerConfig,
        clock: Callable[[], float] = time.monotonic,
        budget: BudgetController | None = None,
    ) -> None:
        """``budget``: decides each new plan's budget factor (default: none, factor 1)."""
        self.config = config
        self._clock = clock
        self._plans: dict[PlanKey, SamplingPlan] = {}
        self._parts: dict[Partition, _Part] = {}
        self.budget = budget or BudgetController(BudgetConfig(pps="0"))

    def epoch(self, event_time: datetime) -> int:
        """Epoch index of an event time."""
        return int(event_time.timestamp() // self.config.epoch_s)

    def plan(self, key: PlanKey) -> SamplingPlan:
        """The plan of a key prepared earlier."""
        return self._plans[key]

    def budget_factor(self) -> float:
        """The budget factor a plan created now gets (:mod:`streams.budget`)."""
        return self.budget.factor(self._clock())

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop state of revoked partitions."""
        gone = set(partitions)
        self._plans = {k: v for k, v in self._plans.items() if (k[0], k[1]) not in gone}
        for tp in gone:
            self._parts.pop(tp, None)

    async def load(self, seen: Sequence[Seen], store: PlanStore) -> None:
        """Fetch what :meth:`advance` needs: stored plans and checkpoints.

        It has no side effect but caching, so it can be retried.
        """
        cfg = self.config
        for tp in sorted({(s[0], s[1]) for s in seen} - set(self._parts)):
            cp = await store.latest_checkpoint(*tp)
            part = _Part(SpaceSaving(cfg.sketch_capacity, cfg.sketch_decay))
            if cp is not None:
                part = _Part(
                    cp.sketch(cfg.sketch_capacity, cfg.sketch_decay),
                    last_epoch=cp.last_epoch,
                    count_from=cp.offset,
                    next_offset=cp.offset,
                    checkpointed=cp.offset,
                )
            part.checkpointed_at = self._clock()
            self._parts[tp] = part
        missing = sorted({(s[0], s[1], self.epoch(s[3])) for s in seen} - set(self._plans))
        if missing:
            for key, stored in (await store.load_plans(missing)).items():
                self._plans[key] = stored.plan

    def advance(self, seen: Sequence[Seen]) -> list[StoredPlan]:
        """Walk first-seen impressions in offset order, creating plans and counting queries.

        A missing plan is made from the sketch as it stands before its first record. Returns
        the new plans, to be stored before use.
        """
        created: list[StoredPlan] = []
        for topic, partition, offset, when, query, hits in sorted(seen, key=lambda s: s[:3]):
            part = self._parts[(topic, partition)]
            key = (topic, partition, self.epoch(when))
            fresh = offset >= part.count_from  # not in the restored checkpoint yet
            if fresh and 0 <= part.last_epoch < key[2]:  # age the counts once per epoch
                for _ in range(min(key[2] - part.last_epoch, 20)):
                    part.sketch.decay_step()
            if fresh:
                part.last_epoch = max(part.last_epoch, key[2])
            if key not in self._plans:
                plan = self._new_plan(part, key)
                self._plans[key] = plan
                created.append(StoredPlan(key, plan))
            if fresh:
                if query is not None:
                    part.sketch.add(normalise_query(query), hits)
                part.next_offset = max(part.next_offset, offset + 1)
        return created

    def _new_plan(self, part: _Part, key: PlanKey) -> SamplingPlan:
        epoch = key[2]
        cfg = self.config
        tiers = tiers_from(part.sketch, cfg.head_share, cfg.torso_share)
        factor = self.budget_factor()
        content = json.dumps([sorted(tiers.items()), factor]).encode()
        digest = hashlib.blake2b(content, digest_size=4).hexdigest()  # content-addressed id
        return SamplingPlan(
            plan_id=f"{key[0]}/{key[1]}/{epoch}/{digest}", tiers=tiers, budget_factor=factor
        )

    def due_checkpoints(self, force: bool = False) -> list[Checkpoint]:
        """Checkpoints of partitions that counted records since their last one."""
        now = self._clock()
        out = []
        for (topic, partition), part in sorted(self._parts.items()):
            if part.next_offset <= part.checkpointed:
                continue
            if not force and now - part.checkpointed_at < self.config.checkpoint_interval_s:
                continue
            out.append(
                Checkpoint(
                    topic,
                    partition,
                    part.next_offset,
                    part.last_epoch,
                    Checkpoint.pack(part.sketch),
                )
            )
        return out

    def checkpointed(self, checkpoints: Iterable[Checkpoint]) -> None:
        """Note that ``checkpoints`` were stored."""
        now = self._clock()
        for cp in checkpoints:
            part = self._parts.get((cp.topic, cp.partition))
            if part is not None:
                part.checkpointed = max(part.checkpointed, cp.offset)
                part.checkpointed_at = now

    def covered(self, topic: str, partition: int) -> int:
        """Records of a partition below this offset are in a stored checkpoint.

        -1: the partition has no sketch, so there is nothing to cover.
        """
        part = self._parts.get((topic, partition))
        return part.checkpointed if part is not None else -1


class MemoryPlanStore:
    """Plans and checkpoints in dicts (tests)."""

    def __init__(self) -> None:
        self.plans: dict[PlanKey, StoredPlan] = {}
        self.checkpoints: dict[Partition, Checkpoint] = {}

    async def load_plans(self, keys: list[PlanKey]) -> dict[PlanKey, StoredPlan]:
        """Stored plans for ``keys``."""
        return {k: self.plans[k] for k in keys if k in self.plans}

    async def save_plans(self, plans: list[StoredPlan]) -> None:
        """Keep new plans."""
        for plan in plans:
            self.plans[plan.key] = plan

    async def latest_checkpoint(self, topic: str, partition: int) -> Checkpoint | None:
        """The newest checkpoint of a partition."""
        return self.checkpoints.get((topic, partition))

    async def save_checkpoints(self, checkpoints: list[Checkpoint]) -> None:
        """Keep the newest checkpoint per partition."""
        for cp in checkpoints:
            old = self.checkpoints.get((cp.topic, cp.partition))
            if old is None or cp.offset >= old.offset:
                self.checkpoints[(cp.topic, cp.partition)] = cp
