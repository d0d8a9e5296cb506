"""Honest rates: every rate comes with its sample size and a 95% interval.

The bad-case rate of a window is the inverse-probability weighted (Horvitz-Thompson ratio)
estimate ``sum(w * bad) / sum(w)``, where ``w`` is the inverse inclusion probability of each
sampled impression. Its interval is a Wilson score interval computed on Kish's effective sample
size ``(sum w)^2 / sum(w^2)``, which equals the plain sample count when all weights are equal.
The SQL view ``bad_case_rates`` uses the same formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


def quantile_ms(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of sorted ``ordered`` seconds, in ms; None when empty."""
    if not ordered:
        return None
    return round(1000 * ordered[min(int(q * len(ordered)), len(ordered) - 1)], 1)


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on (effective) sample size ``n``."""
    if n <= 0:
        return (0.0, 1.0)
    p = min(max(p, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class RateEstimate:
    """A weighted bad-case rate with its sample size and 95% interval."""

    sampled: int
    bad: int
    rate: float
    n_eff: float
    ci_low: float
    ci_high: float

    @classmethod
    def from_sums(
        cls, sampled: int, bad: int, sum_w: float, sum_w_bad: float, sum_w2: float
    ) -> RateEstimate:
        """Build from the sums a GROUP BY gives."""
        if sampled == 0 or sum_w <= 0:
            return cls(sampled, bad, float("nan"), 0.0, 0.0, 1.0)
        rate = sum_w_bad / sum_w
        n_eff = sum_w * sum_w / sum_w2
        low, high = wilson(rate, n_eff)
        return cls(sampled, bad, rate, n_eff, low, high)
