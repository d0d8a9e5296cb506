"""``relmon teacher``: consume review requests, judge them, store and publish the verdicts.

A kafka-python consumer group on ``RELMON_TOPIC_REVIEW``, at least once. Per polled batch:

1. every record is decoded as a :class:`~schemas.models.ReviewRequest`; records that are not
   become :class:`~schemas.models.DeadLetter` records (original bytes, reason, topic, partition,
   offset) on ``RELMON_TOPIC_DLQ``;
2. the requests are stored in ``review_queue`` (so people can grade them even without an LLM);
3. with a judge configured, the cases are judged (cache, concurrency, rate limit, budget);
   the verdicts are stored in ``verdicts`` and sent to ``RELMON_TOPIC_LABELS``, and the sends
   are awaited;
4. only then are the batch's offsets committed.

If a step fails (the chat API stays unavailable, the store or broker is down), the batch's
partitions are rewound to their first uncommitted offsets and the batch is tried again after a
backoff; stored rows and sent verdicts are idempotent by key, so a retry adds nothing twice.
The scoring path never waits for any of this: the worker only produces review requests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import ValidationError

from relmon import db
from relmon.errors import ConfigError, ServiceError
from relmon.kafka import kafka_connection
from relmon.kafka import producer as make_producer
from relmon.settings import Settings
from relmon.teacher import store
from relmon.teacher.client import ChatClient, DailyBudget, RateLimiter, backoff_delay, redact
from relmon.teacher.judge import CachedGrade, CacheKey, LlmJudge
from relmon.teacher.verdict import Verdict
from schemas.models import DeadLetter, DeadLetterKind, ReviewRequest
from streams.records import RawRecord, dead_letter

__all__ = ["BatchResult", "TeacherConsumer", "build_judge"]

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What one batch gave."""

    consumed: int = 0
    queued: int = 0
    dead_lettered: int = 0
    verdicts: int = 0
    unjudged: int = 0


@dataclass
class _Totals:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, result: BatchResult) -> None:
        for key, value in vars(result).items():
            self.counts[key] = self.counts.get(key, 0) + value


def build_judge(settings: Settings, client: Client | None = None) -> LlmJudge | None:
    """The LLM judge the settings describe, or None when no chat API is configured.

    With a store ``client`` the daily budget is kept in the store's spend ledger (its own
    connection): every request is reserved there before it is sent and every process counts
    every process's requests, so restarts and a second teacher stay within the budget.
    """
    if not settings.teacher.base_url:
        return None
    ledger = (
        store.StoreSpendLedger(lambda: db.connect(settings), judge_id=settings.teacher.model)
        if client is not None
        else None
    )
    chat = ChatClient(
        settings.teacher.base_url,
        settings.teacher.model,
        api_key=settings.teacher.api_key.get_secret_value(),
        timeout_s=settings.teacher.timeout_s,
        max_attempts=settings.teacher.max_attempts,
        backoff_s=settings.teacher.backoff_s,
        backoff_max_s=settings.teacher.backoff_max_s,
        max_tokens=settings.teacher.max_tokens,
        json_mode=settings.teacher.json_mode,
        limiter=RateLimiter(settings.teacher.rate_per_s, burst=settings.teacher.concurrency),
        budget=DailyBudget(settings.teacher.daily_budget, ledger=ledger),
        max_connections=settings.teacher.concurrency,
    )

    def lookup(keys: Sequence[CacheKey]) -> dict[CacheKey, CachedGrade]:
        # called from the consumer's thread (before the judging threads start)
        return store.lookup_cached(client, keys) if client is not None else {}

    return LlmJudge(
        chat,
        concurrency=settings.teacher.concurrency,
        parse_retries=settings.teacher.parse_retries,
        cache_size=settings.teacher.cache_size,
        lookup=lookup,
    )


def decode_review(value: bytes | None) -> ReviewRequest:
    """Decode one review record; raise ``ValueError`` with the reason otherwise."""
    if value is None:
        raise ValueError("empty record value (tombstone)")
    return ReviewRequest.model_validate_json(value)


class TeacherConsumer:
    """The teacher loop's consumer; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        judge: LlmJudge | None,
        *,
        client: Client | None = None,
        max_poll_records: int = 64,
    ) -> None:
        self.settings = settings
        self.judge = judge
        self._client = client or db.connect(settings)
        self._producer: KafkaProducer = make_producer(settings)
        self._consumer = KafkaConsumer(
            settings.topics.review,
            **kafka_connection(settings),
            client_id="relmon-teacher",
            group_id=settings.teacher.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
            session_timeout_ms=int(settings.kafka.session_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.kafka.heartbeat_interval_s * 1000),
            # judging a batch may take long; the group must not drop us meanwhile
            max_poll_interval_ms=max(300_000, int(settings.teacher.timeout_s * 1000 * 10)),
        )
        self.totals = _Totals()
        self._stop = threading.Event()
        self._failures = 0

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch."""
        self._stop.set()

    def close(self) -> None:
        """Close the consumer, producer and judge."""
        self._consumer.close()
        self._producer.close()
        if self.judge is not None:
            self.judge.close()

    def run(self, until: Callable[[], bool] | None = None, poll_ms: int = 500) -> None:
        """Consume until :meth:`stop` is called (or ``until()`` is true)."""
        while not self._stop.is_set() and not (until is not None and until()):
            self.poll_once(poll_ms)

    def poll_once(self, timeout_ms: int = 500) -> BatchResult | None:
        """Poll one batch and process it; on failure rewind and back off."""
        polled = self._consumer.poll(timeout_ms=timeout_ms)
        records = [r for batch in polled.values() for r in batch]
        if not records:
            return None
        try:
            result = self.process(records)
        except Exception as exc:
            self._failures += 1
            self._rewind(records)
            if isinstance(exc, ConfigError):
                raise
            delay = backoff_delay(
                min(self._failures, 10),
                self.settings.teacher.backoff_s,
                self.settings.teacher.backoff_max_s,
            )
            secret = self.settings.teacher.api_key.get_secret_value()
            reason = redact(str(exc), [secret])
            log.warning("teacher batch failed (%s); retrying in %.1f s", reason, delay)
            self._stop.wait(delay)
            return None
        self._failures = 0
        self.totals.add(result)
        return result

    def _rewind(self, records: list[ConsumerRecord]) -> None:
        first: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        for tp, offset in first.items():
            self._consumer.seek(tp, offset)

    def process(self, records: list[ConsumerRecord]) -> BatchResult:
        """Decode, queue, judge, store, publish, then commit one batch."""
        result = BatchResult(consumed=len(records))
        requests: list[ReviewRequest] = []
        letters: list[tuple[bytes | None, DeadLetter]] = []
        for r in records:
            try:
                requests.append(decode_review(r.value))
            except (ValueError, ValidationError) as exc:
                kind: DeadLetterKind = (
                    "invalid" if isinstance(exc, ValidationError) else "malformed"
                )
                if isinstance(exc, ValidationError) and any(
                    e["type"] == "json_invalid" for e in exc.errors()
                ):
                    kind = "malformed"
                raw = RawRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                letters.append(
                    (
                        r.key,
                        dead_letter(
                            raw,
                            kind,
                            f"not a review request: {exc}",
                            self.settings.ingest.dlq_max_bytes,
                        ),
                    )
                )
        futures = [
            self._producer.send(self.settings.topics.dlq, key=key, value=letter.to_bytes())
            for key, letter in letters
        ]
        store.insert_queue(self._client, requests)
        result.queued, result.dead_lettered = len(requests), len(letters)
        verdicts: list[Verdict] = []
        if self.judge is not None and requests:
            for outcome in self.judge.judge(requests):
                if outcome.verdict is not None:
                    verdicts.append(outcome.verdict)
                else:
                    result.unjudged += 1
            # a cached re-issue of a stored verdict is published again but never replaces the
            # stored row (which carries the requests the verdict cost); spend is in the ledger
            reissued = [v for v in verdicts if v.cached]
            stored = store.stored_teacher_keys(self._client, reissued)
            store.insert_verdicts(
                self._client,
                [
                    v
                    for v in verdicts
                    if not v.cached or (v.impression_id, v.judge_id, v.prompt_version) not in stored
                ],
            )
            futures += [
                self._producer.send(
                    self.settings.topics.labels,
                    key=v.impression_id.encode(),
                    value=v.to_bytes(),
                )
                for v in verdicts
            ]
        result.verdicts = len(verdicts)
        self._producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)
        self._commit(records)
        return result

    def _commit(self, records: list[ConsumerRecord]) -> None:
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(last.get(tp, -1), r.offset)
        try:
            self._consumer.commit({tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in last.items()})
        except Exception as exc:
            raise ServiceError(f"offset commit failed: {exc}") from exc
