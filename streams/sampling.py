"""Deterministic, stratified sampling of impressions, with inclusion probabilities.

Decision: an impression is sampled when ``unit_hash(query_id) < p``, where ``p`` is its
inclusion probability. One hash per query id means a result page is sampled together
(coordinated sampling): when the top positions have a higher rate than the rest, a page whose
hash falls below the lower rate is sampled whole, and one between the two rates has only its top
positions sampled. Every row stores ``p``, so weighted (Horvitz-Thompson) rates stay unbiased.

Strata: query tier (head / torso / tail, from a decayed space-saving sketch of recent query
popularity), position bucket (top-k or rest) and optionally category. Tiers and the scoring-budget
factor are frozen per partition and event-time epoch in a :class:`SamplingPlan` that is persisted
before first use, so a replay after a crash takes exactly the same decisions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relmon.settings import SamplingRates
from streams.sketch import Tier, normalise_query

_SCALE = float(2**64)


def unit_hash(key: str) -> float:
    """Map ``key`` to a uniform number in [0, 1) (blake2b, stable across processes)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"relmon-sample").digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class SamplingPlan:
    """Tiers and budget factor in force for one partition and event-time epoch."""

    plan_id: str
    tiers: Mapping[str, Tier]
    budget_factor: float = 1.0

    def tier(self, query: str) -> Tier:
        """The tier of a query text under this plan."""
        return self.tiers.get(normalise_query(query), "tail")

    def probability(self, rates: SamplingRates, tier: Tier, position: int) -> float:
        """Inclusion probability of an impression in this stratum."""
        p = rates.base_probability(tier, position) * self.budget_factor
        return min(1.0, max(rates.min_prob, p))

    def to_json(self) -> str:
        """Serialise the tiers (sorted, so equal plans serialise equally)."""
        return json.dumps(dict(sorted(self.tiers.items())))

    @classmethod
    def from_row(cls, plan_id: str, tiers_json: str, budget_factor: float) -> SamplingPlan:
        """Rebuild a plan stored in ClickHouse."""
        tiers: dict[str, Any] = json.loads(tiers_json) if tiers_json else {}
        return cls(plan_id=plan_id, tiers=tiers, budget_factor=budget_factor)


def sampled(query_id: str, probability: float) -> bool:
    """True if the impression of ``query_id`` with ``probability`` is in the sample."""
    return unit_hash(query_id) < probability


@dataclass(frozen=True)
class QuerySampler:
    """Uniform page sampling at ``rate`` (the simple case, and the baseline in benchmarks)."""

    rate: float

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1], got {self.rate}")

    def inclusion_probability(self, query_id: str) -> float:
        """Probability that ``query_id``'s page is sampled."""
        return self.rate

    def sampled(self, query_id: str) -> bool:
        """True if ``query_id``'s page is in the sample."""
        return sampled(query_id, self.rate)
