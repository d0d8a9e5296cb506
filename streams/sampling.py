"""Deterministic sampling of result pages by query id.

A query's whole result page is sampled or not, the same on every worker and on every replay:
the decision is a pure function of ``query_id`` and the rate. Each sampled row records its
inclusion probability so that weighted rates stay unbiased.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_SCALE = float(2**64)


def unit_hash(key: str) -> float:
    """Map ``key`` to a uniform number in [0, 1) (blake2b, stable across processes)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"relmon-sample").digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class QuerySampler:
    """Sample whole result pages at ``rate``: query ``q`` is in when ``unit_hash(q) < rate``."""

    rate: float

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1], got {self.rate}")

    def inclusion_probability(self, query_id: str) -> float:
        """Probability that ``query_id``'s page is sampled."""
        return self.rate

    def sampled(self, query_id: str) -> bool:
        """True if ``query_id``'s page is in the sample."""
        return unit_hash(query_id) < self.rate
