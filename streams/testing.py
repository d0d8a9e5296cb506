"""The processor in memory: fake ports and scorer, and the one builder tests and simulations use.

:func:`memory_processor` wires an :class:`~streams.processor.ImpressionProcessor` to
:class:`MemoryPorts` (or any ports) with test-friendly defaults: no Kafka, no ClickHouse, no
model. The unit tests, the estimation validation (``relmon.sim.validation``) and the teacher-loop
simulation all build their processor with it, so they exercise the same wiring.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np

from relmon.errors import StoreUnavailable, broker_error
from relmon.settings import PlannerConfig, SamplingRates
from schemas.models import DeadLetter, ReviewRequest, ScoredImpression
from schemas.ubi import UbiQuery
from scoring.page import PageRef
from streams.catalog import Catalog
from streams.metrics import Metrics
from streams.plans import MemoryPlanStore, Planner
from streams.ports import Ports
from streams.processor import ImpressionProcessor
from streams.records import RawRecord
from streams.route import Routing

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class OverlapScorer:
    """A deterministic stand-in scorer: the share of query words found in the title."""

    model_version = "fake-overlap-1"
    provider = "CPUExecutionProvider"

    def predict(
        self, pairs: list[tuple[str, str]], batch_size: int = 32, keys: list[str] | None = None
    ) -> np.ndarray:
        """Scores in [0, 1]."""
        out = []
        for query, title in pairs:
            q = _words(query)
            out.append(len(q & _words(title)) / len(q) if q else 0.0)
        return np.asarray(out, dtype=np.float32)


class MessageSizeTooLargeError(Exception):
    """What a Kafka producer raises for a message over the broker's size limit (same name).

    It mimics the client's error on purpose, so it is not a RelmonError: the fake ports
    translate it as the worker's adapter does (:func:`relmon.errors.broker_error`).
    """

    retriable = False


class MemoryPorts(MemoryPlanStore):
    """Processor ports that keep everything in lists; ``fail_writes`` makes writes fail N times.

    Like a Kafka broker behind the worker's adapter, they refuse a dead letter larger than
    ``max_message_bytes`` serialised with :class:`~relmon.errors.MessageRefused`; like the store
    behind it, a failing write raises :class:`~relmon.errors.StoreUnavailable`.
    Like the store, they keep one row per impression_id and a ledger of finished impressions;
    ``rollup_refreshes`` lists the event times whose roll-ups were refreshed apart from a write.
    """

    def __init__(
        self,
        scorer: OverlapScorer | None = None,
        fail_writes: int = 0,
        max_message_bytes: int = 1_048_576,
    ) -> None:
        super().__init__()
        self.max_message_bytes = max_message_bytes
        self.scorer = scorer or OverlapScorer()
        self.dead_letters: list[DeadLetter] = []
        self.reviews: list[ReviewRequest] = []
        self.rows: dict[str, ScoredImpression] = {}
        self.row_writes = 0
        self.queries: dict[str, str] = {}
        self.acked: list[RawRecord] = []
        self.fail_writes = fail_writes
        self.ledger: dict[str, datetime] = {}
        self.rollup_refreshes: list[datetime] = []
        self.pages_seen: list[PageRef | None] = []

    async def score(
        self,
        pairs: list[tuple[str, str]],
        keys: list[str],
        pages: list[PageRef | None] | None = None,
    ) -> np.ndarray:
        """Score with the fake scorer; its pages are kept in :attr:`pages_seen`."""
        self.pages_seen.extend(pages or [None] * len(pairs))
        return self.scorer.predict(pairs)

    async def send_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Keep dead letters; refuse the batch if one is over ``max_message_bytes``."""
        for letter in letters:
            size = len(letter.to_bytes())
            if size > self.max_message_bytes:
                refused = MessageSizeTooLargeError(
                    f"the message is {size} bytes, more than {self.max_message_bytes} (fake)"
                )
                raise broker_error(refused) from refused
        self.dead_letters.extend(letters)

    async def send_reviews(self, reviews: list[ReviewRequest]) -> None:
        """Keep review requests."""
        self.reviews.extend(reviews)

    async def write(self, rows: list[ScoredImpression], queries: list[UbiQuery]) -> None:
        """Keep rows by impression id (idempotent), failing ``fail_writes`` times first."""
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise StoreUnavailable("store unavailable (fake)")
        for query in queries:
            self.queries[query.query_id] = query.user_query
        for row in rows:
            self.rows[row.impression_id] = row
        self.row_writes += len(rows)

    async def lookup_queries(self, query_ids: list[str]) -> dict[str, str]:
        """Look up remembered UBI queries."""
        return {q: self.queries[q] for q in query_ids if q in self.queries}

    async def refresh_rollups(self, event_times: list[datetime]) -> None:
        """Note the refresh (the fake's roll-ups are computed from the rows when asked)."""
        self.rollup_refreshes.extend(event_times)

    async def stored(self, impression_ids: list[str]) -> tuple[set[str], list[ScoredImpression]]:
        """Ids the ledger records as done; the rows already written of the others."""
        done = {i for i in impression_ids if i in self.ledger}
        return done, [self.rows[i] for i in impression_ids if i in self.rows and i not in done]

    async def mark_done(self, rows: list[ScoredImpression]) -> None:
        """Record impressions as done."""
        for row in rows:
            self.ledger[row.impression_id] = row.event_time

    async def ack(self, records: list[RawRecord]) -> None:
        """Record acks."""
        self.acked.extend(records)


def memory_processor(
    ports: Ports | None = None,
    *,
    catalog: Catalog | None = None,
    planner: Planner | None = None,
    rates: SamplingRates | None = None,
    routing: Routing | None = None,
    model_version: str = "fake-overlap-1",
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.monotonic,
    backoff_max_s: float = 0.05,
    **options: Any,
) -> ImpressionProcessor:
    """A processor on ``ports`` (default: fresh :class:`MemoryPorts`).

    Defaults: an empty catalogue, a planner that checkpoints at once on ``clock``, every
    impression sampled, threshold 0.5, fresh metrics and a short retry backoff. ``options`` are
    the processor's other keyword arguments (``retry_s``, ``event_window``, ...).
    """
    return ImpressionProcessor(
        ports=ports if ports is not None else MemoryPorts(),
        catalog=catalog if catalog is not None else Catalog(),
        planner=planner or Planner(PlannerConfig(checkpoint_interval_s=0), clock=clock),
        rates=rates or SamplingRates.uniform_at(1.0),
        routing=routing or Routing(0.5),
        model_version=model_version,
        metrics=metrics if metrics is not None else Metrics(),
        clock=clock,
        backoff_max_s=backoff_max_s,
        **options,
    )
