"""The processor's ports: everything it needs from the outside world, as one protocol.

The Faust worker implements them over Kafka, ClickHouse and the scorer (``streams.app``,
``streams.storage``); :mod:`streams.testing` implements them in memory. Every method may raise a
:class:`~relmon.errors.ServiceError` for an outage, which the processor retries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import numpy as np

from schemas.models import DeadLetter, ReviewRequest, ScoredImpression
from schemas.ubi import UbiQuery
from scoring.page import PageRef
from streams.plans import PlanStore
from streams.records import RawRecord


class Ports(PlanStore, Protocol):
    """What the processor needs from the outside world (plans included)."""

    async def score(
        self,
        pairs: list[tuple[str, str]],
        keys: list[str],
        pages: list[PageRef | None] | None = None,
    ) -> np.ndarray:
        """Scores in [0, 1] of (query, product text) pairs; ``keys`` are their product ids.

        ``pages`` (only when the processor serves the page tier): each result's page and its
        index there, or None for a result that arrived alone (scored by the cosine tier).
        """

    async def send_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Deliver dead letters (return once the broker has them)."""

    async def send_reviews(self, reviews: list[ReviewRequest]) -> None:
        """Deliver review requests (return once the broker has them)."""

    async def write(self, rows: list[ScoredImpression], queries: list[UbiQuery]) -> None:
        """Write scored rows and UBI query records (the rows' roll-ups are refreshed apart)."""

    async def refresh_rollups(self, event_times: list[datetime]) -> None:
        """Recompute the hourly and daily roll-ups of the windows holding these event times."""

    async def lookup_queries(self, query_ids: list[str]) -> dict[str, str]:
        """Query texts of UBI query ids stored earlier."""

    async def stored(self, impression_ids: list[str]) -> tuple[set[str], list[ScoredImpression]]:
        """One lookup: the impressions the ledger records as done, and the rest's stored rows.

        Done: stored, reviews delivered. The rows are those of the other impressions that are
        stored already.
        """

    async def mark_done(self, rows: list[ScoredImpression]) -> None:
        """Record these impressions as done in the ledger."""

    async def ack(self, records: list[RawRecord]) -> None:
        """Mark records done so their offsets can be committed."""
