"""A space-saving heavy-hitter sketch with exponential decay, for query popularity tiers.

Space-saving (Metwally et al., 2005) keeps at most ``capacity`` counters; an unseen item
replaces the smallest counter and inherits its count (an overestimate bounded by that count).
Decay multiplies every count by ``decay`` each time :meth:`decay_step` is called, so the sketch
follows *recent* traffic.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Literal

Tier = Literal["head", "torso", "tail"]
_SPACE = re.compile(r"\s+")


@lru_cache(maxsize=1024)
def normalise_query(text: str) -> str:
    """The form under which query popularity is counted (case and spacing folded).

    Cached: a page's query is normalised to be counted and again to find its tier, and the most
    searched queries come back all the time (a query asked every few pages stays in the
    cache however many rare ones pass). At most 2,000 characters a query (the schema's
    limit), 1,024 entries hold at most about 16 MB.
    """
    return _SPACE.sub(" ", text.strip().lower())


class SpaceSaving:
    """Approximate counts of the most frequent items in a stream."""

    def __init__(self, capacity: int = 5000, decay: float = 0.5) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if not 0.0 < decay <= 1.0:
            raise ValueError("decay must be in (0, 1]")
        self.capacity = capacity
        self.decay = decay
        self._counts: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # lazy min-heap; stale entries skipped
        self.total = 0.0

    def _set(self, item: str, count: float) -> None:
        self._counts[item] = count
        heapq.heappush(self._heap, (count, item))
        if len(self._heap) > 4 * self.capacity:
            self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(v, k) for k, v in self._counts.items()]
        heapq.heapify(self._heap)

    def add(self, item: str, weight: float = 1.0) -> None:
        """Count one occurrence (or ``weight``) of ``item``."""
        self.total += weight
        if item in self._counts:
            self._set(item, self._counts[item] + weight)
            return
        if len(self._counts) < self.capacity:
            self._set(item, weight)
            return
        while True:
            count, victim = heapq.heappop(self._heap)
            if self._counts.get(victim) == count:
                break
        del self._counts[victim]
        self._set(item, count + weight)

    def decay_step(self) -> None:
        """Age every count by the decay factor."""
        if self.decay == 1.0:
            return
        self._counts = {k: v * self.decay for k, v in self._counts.items()}
        self.total *= self.decay
        self._rebuild()

    def share(self, item: str) -> float:
        """Estimated share of recent traffic that is ``item`` (0 if not tracked)."""
        return self._counts.get(item, 0.0) / self.total if self.total else 0.0

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` largest counters, largest first (ties by item for determinism)."""
        return heapq.nsmallest(n, self._counts.items(), key=lambda kv: (-kv[1], kv[0]))

    def state(self) -> dict[str, object]:
        """The exact state, JSON-able (counts as exact floats, so a restore is lossless)."""
        return {"total": self.total, "counts": sorted(self._counts.items())}

    @classmethod
    def from_state(
        cls, state: dict[str, object], capacity: int = 5000, decay: float = 0.5
    ) -> SpaceSaving:
        """Rebuild a sketch from :meth:`state`."""
        sketch = cls(capacity, decay)
        counts = state.get("counts", [])
        assert isinstance(counts, list)
        for item, count in counts:
            sketch._counts[str(item)] = float(count)
        sketch._rebuild()
        total = state.get("total", 0.0)
        sketch.total = float(total) if isinstance(total, int | float) else 0.0
        return sketch


def tiers_from(
    sketch: SpaceSaving, head_share: float, torso_share: float, limit: int = 2000
) -> dict[str, Tier]:
    """Queries whose estimated traffic share is >= ``head_share`` (head) or ``torso_share``."""
    out: dict[str, Tier] = {}
    for item, _ in sketch.top(limit):
        share = sketch.share(item)
        if share >= head_share:
            out[item] = "head"
        elif share >= torso_share:
            out[item] = "torso"
        else:
            break
    return out


def count_all(sketch: SpaceSaving, items: Iterable[str]) -> None:
    """Add every item once."""
    for item in items:
        sketch.add(item)
