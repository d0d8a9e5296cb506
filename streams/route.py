"""Route: which scored rows are bad, and which go to the teacher for review, in what order.

The one home of the routing policy. A row is bad when its score is below its threshold (the
category's own threshold, else the global one: the served tier's operating point unless
``RELMON_BAD_THRESHOLD`` is set). Every bad row is sent for review, then every uncertain one
(within ``uncertain_band`` above its threshold), and a deterministic random ``audit_share`` of the
confident rest, so that the teacher loop can measure the scorer's misses. The audit draw hashes
the impression id: a replay sends the same audits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.models import ReviewReason, ReviewRequest, ScoredImpression
from streams.sampling import unit_hash


def review_priority(reason: ReviewReason, score: float, threshold: float) -> float:
    """Higher first: bad cases by how far below the threshold, then uncertain ones, audits last."""
    margin = threshold - score
    if reason == "below_threshold":
        return round(2.0 + margin, 6)
    if reason == "uncertain":
        return round(1.0 - abs(margin), 6)
    return 0.0


def review_request(
    row: ScoredImpression,
    reason: ReviewReason = "below_threshold",
    review_probability: float = 1.0,
) -> ReviewRequest:
    """The review request of a scored row, sent with probability ``review_probability``."""
    return ReviewRequest(
        impression_id=row.impression_id,
        query_id=row.query_id,
        query=row.query,
        product_id=row.product_id,
        title=row.title,
        category=row.category,
        score=row.score,
        threshold=row.threshold,
        model_version=row.model_version,
        reason=reason,
        priority=review_priority(reason, row.score, row.threshold),
        sample_weight=row.sample_weight,
        review_weight=1.0 / review_probability,
        tier=row.tier,
        locale=row.locale,
        position=row.position,
        event_time=row.event_time,
    )


@dataclass(frozen=True)
class Routing:
    """The routing policy: thresholds, the uncertain band and the audit share."""

    threshold: float
    category_thresholds: Mapping[str, float] = field(default_factory=dict)
    uncertain_band: float = 0.0
    audit_share: float = 0.0
    page_threshold: float | None = None
    """the threshold of results scored on their page (the page tier's operating point)"""

    def threshold_for(self, category: str | None, on_page: bool = False) -> float:
        """The threshold of a product in ``category`` (its own, else the tier's global one)."""
        default = self.threshold
        if on_page and self.page_threshold is not None:
            default = self.page_threshold
        return self.category_thresholds.get(category or "", default)

    def review(self, row: ScoredImpression) -> ReviewRequest | None:
        """The review request of a row, if it is bad, uncertain or drawn for audit."""
        if row.is_bad:
            return review_request(row, "below_threshold")
        if row.score < row.threshold + self.uncertain_band:
            return review_request(row, "uncertain")
        if self.audit_share > 0 and unit_hash("audit:" + row.impression_id) < self.audit_share:
            return review_request(row, "audit", review_probability=self.audit_share)
        return None
