"""The relmon worker: a Faust app that runs :class:`~streams.processor.ImpressionProcessor`.

The agent takes raw bytes in batches, whole fetches at a time (:mod:`streams.fetches`: Faust's
consumer hands them over without its per-message path), and acks each record by hand, only after
its dead letters and review requests were delivered and its row written, so Faust commits an
offset only once everything before it is done. The processor decodes and samples a batch while
the one before it is scored and stored (:meth:`ImpressionProcessor.submit`); inference and
ClickHouse round trips run in worker threads and never block the event loop. Exactly-once
*effect* on the store comes from at-least-once delivery plus idempotent writes
(``scored_impressions`` keeps one row per impression_id, roll-ups are recomputed from the
deduplicated rows, the impression ledger says what is done); review requests are at least once,
repeated only after a crash between their delivery and the ledger write (see
:mod:`streams.processor`). Faust's exactly-once mode is not used (tansu lacks transactional
producers: aiokafka's InitProducerId fails against it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import faust
import numpy as np
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.client import Client
from faust.exceptions import ConsumerNotStarted, ProducerSendError

from relmon import db
from relmon.errors import broker_error
from relmon.kafka import ensure_topics, kafka_connection, producer, ssl_context
from relmon.runtime import GcPauses, settle_heap
from relmon.settings import Settings
from schemas.models import DeadLetter, ReviewRequest
from scoring.page import PageContext, PageRef
from streams.budget import BudgetController
from streams.catalog import Catalog, CatalogFollower, load_catalog_file
from streams.enrich import EventTimeWindow
from streams.fetches import BatchApp, Inbox, ack
from streams.metrics import Metrics, RecentRate
from streams.plans import Planner
from streams.processor import ImpressionProcessor
from streams.prometheus import CachedLag, LatencyHistogram, MetricsServer, exposition
from streams.records import RawRecord, dead_letter
from streams.route import Routing
from streams.storage import ClickHouseStorePorts
from streams.vectors import ClickHouseVectors

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_LOOK_S = 2.0
"""seconds a fresh worker with the automatic budget measures its input before its first batch"""


_WARM_UP_TEXT = (
    "solid oak writing desk with two drawers and a steel frame for the home office in walnut "
    "brown finish brand acme colour brown category furniture office desks computer desks"
)
WARM_UP_PAGE_SIZE = 10
"""results per synthetic page when the capacity of the page tier is measured"""


def _warm_up_text(r: int, i: int) -> str:
    """A distinct synthetic product text about as long as a real one (title, brand, category).

    Three texts in ten keep the one "for" (about as many as real titles have), each at another
    place, so the page tier embeds title heads (:func:`scoring.text.title_head`) as often as on
    real pages.
    """
    words = [w if w != "for" or i % 10 < 3 else "near" for w in _WARM_UP_TEXT.split()]
    shift = (r * 31 + i) % len(words)
    return f"relmon warm-up product {r} {i} " + " ".join(words[shift:] + words[:shift])


def measure_capacity(
    scorer: ScorerLike, batch_size: int, budget: BudgetController, rounds: int = 2
) -> float | None:
    """Seed the budget with the scorer's speed on this host, before the first plan is made.

    Without it the first plans of a worker that starts behind (a backlog, a restart after an
    outage) would be made blind, at factor 1. One untimed batch warms the model up, then
    ``rounds`` batches of distinct synthetic pairs are timed. The products' texts are about as
    long as real ones (about 45 tokens; short ones made the first plans' budget several times
    too generous), and a scorer with a page tier is timed on pages of
    :data:`WARM_UP_PAGE_SIZE` results, each text embedded for the first time: its cost on a
    cold cache, which the worker's own measurements then correct. Returns pairs/s.
    """
    page_tier = getattr(scorer, "page", None) is not None
    for r in range(rounds + 1):
        queries = [f"relmon warm-up query {r} {i // WARM_UP_PAGE_SIZE}" for i in range(batch_size)]
        texts = [_warm_up_text(r, i) for i in range(batch_size)]
        pairs = list(zip(queries, texts, strict=True))
        started = time.perf_counter()
        if page_tier:
            refs: list[PageRef | None] = []
            for start in range(0, batch_size, WARM_UP_PAGE_SIZE):
                chunk = texts[start : start + WARM_UP_PAGE_SIZE]
                page = PageContext.of(chunk, [""] * len(chunk), chunk)
                refs.extend((page, j) for j in range(len(chunk)))
            paged: Any = scorer  # only scoring.Scorer serves the page tier
            paged.predict(pairs, batch_size, pages=refs)
        else:
            scorer.predict(pairs, batch_size)
        if r:  # the first round pays for lazy initialisation
            budget.observe_scoring(len(pairs), time.perf_counter() - started, time.monotonic())
    return budget.capacity_pps


class ScorerLike(Protocol):
    """What the worker needs of a scorer (``scoring.Scorer`` or an in-package fake)."""

    model_version: str
    provider: str

    def predict(
        self, pairs: list[tuple[str, str]], batch_size: int = 32, keys: list[str] | None = None
    ) -> np.ndarray:
        """Scores in [0, 1]; ``keys`` (product ids) let the scorer cache head-query pairs."""


def metrics_path(settings: Settings, pid: int | None = None) -> Path:
    """Where the worker process ``pid`` (default: this one) publishes its counters."""
    return (
        settings.home / "run" / f"worker-{settings.kafka.consumer_group}-{pid or os.getpid()}.json"
    )


async def send_all(topic: faust.types.TopicT, items: list[tuple[bytes, bytes]]) -> None:
    """Send ``(key, value)`` pairs to ``topic`` and await their delivery.

    The Kafka client's failures become :class:`~relmon.errors.BrokerError` (retried by the
    processor) or :class:`~relmon.errors.MessageRefused` (refused for good); anything else is a
    bug and is raised as it is.
    """
    try:
        futures = [await topic.send(key=key, value=value) for key, value in items]
        await asyncio.gather(*futures)
    except (KafkaError, ProducerSendError, OSError) as exc:
        raise broker_error(exc, f"send to {topic.get_topic_name()}") from exc


class _FaustPorts(ClickHouseStorePorts):
    """Ports of the processor backed by Faust topics, ClickHouse and the scorer."""

    def __init__(self, worker: RelmonWorker) -> None:
        super().__init__(worker.clickhouse)
        self._w = worker
        self._infer = ThreadPoolExecutor(1, thread_name_prefix="relmon-infer")

    async def score(
        self,
        pairs: list[tuple[str, str]],
        keys: list[str],
        pages: list[PageRef | None] | None = None,
    ) -> np.ndarray:
        loop = asyncio.get_running_loop()
        scorer, size = self._w.scorer, self._w.settings.scorer.batch_size
        started = time.perf_counter()
        if pages is None:
            scores = await loop.run_in_executor(
                self._infer, lambda: scorer.predict(pairs, size, keys=keys)
            )
        else:
            paged: Any = scorer  # only scoring.Scorer serves the page tier
            scores = await loop.run_in_executor(
                self._infer, lambda: paged.predict(pairs, size, keys=keys, pages=pages)
            )
        self._w.score_latency.observe(time.perf_counter() - started)
        return scores

    async def send_dead_letters(self, letters: list[DeadLetter]) -> None:
        await send_all(
            self._w.dlq_topic,
            [(f"{x.topic}:{x.partition}".encode(), x.to_bytes()) for x in letters],
        )

    async def send_reviews(self, reviews: list[ReviewRequest]) -> None:
        await send_all(
            self._w.review_topic, [(r.impression_id.encode(), r.to_bytes()) for r in reviews]
        )

    async def ack(self, records: list[RawRecord]) -> None:
        ack(self._w.app, [record.handle for record in records])

    def close(self) -> None:
        self._infer.shutdown(wait=False, cancel_futures=True)
        super().close()


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The worker's Faust credentials for ``settings``' cluster (None: plaintext).

    The same TLS context and SASL user as every other relmon client
    (:func:`relmon.kafka.kafka_connection`).
    """
    k = settings.kafka
    context = ssl_context(settings)
    if k.uses_sasl:
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=k.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def set_fetch_max_wait(app: faust.App, max_wait_ms: int) -> bool:
    """Let the broker hold the worker's fetches at most ``max_wait_ms`` when no record is there.

    Faust creates its aiokafka consumer with a fixed ``fetch_max_wait_ms`` of 1.5 s and has no
    setting for it. Apache Kafka answers a waiting fetch as soon as a record arrives, so there
    the wait only paces idle polls; tansu answers when the wait ends, records or not, which
    delayed each record by up to three quarters of a second (measured: a record produced 0.1 s
    after the last one reached an aiokafka consumer 0.65 s later with 1,500 ms, 0.05 s later
    with 500 ms). The value is set on the consumer Faust created and on its fetcher once
    started (aiokafka reads it for each fetch request). Returns whether it could be set: False
    while the consumer is not started, or when this Faust or aiokafka keeps it elsewhere
    (``tests/unit/test_fetch_wait.py`` checks the installed aiokafka).
    """
    try:
        delegate: Any = app.consumer  # Faust's aiokafka consumer hands its work to a thread
        consumer = delegate._thread._ensure_consumer()
    except (AttributeError, ConsumerNotStarted):
        return False
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None:
        return False
    targets = (consumer, fetcher)
    if not all(hasattr(target, "_fetch_max_wait_ms") for target in targets):
        return False
    for target in targets:
        target._fetch_max_wait_ms = max_wait_ms
    return True


def _raw(message: Any) -> RawRecord:
    ts = getattr(message, "timestamp", None)
    return RawRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=int(ts * 1000) if ts else None,
        handle=message,
    )


class RelmonWorker:
    """Builds the Faust app, its catalogue follower and processor from settings."""

    def __init__(
        self,
        settings: Settings,
        scorer: ScorerLike,
        *,
        gauges: Callable[[], Mapping[str, float | int]] | None = None,
    ) -> None:
        """``gauges``: more figures for ``/metrics`` (the CLI's alert runner beside the worker)."""
        self.settings = settings
        self.scorer = scorer
        self.metrics = Metrics()
        self.metrics.set("model_version", scorer.model_version)
        self.metrics.set("provider", scorer.provider)
        self.score_latency = LatencyHistogram()
        self.gc_pauses = GcPauses()  # timed from serve(), once start-up is over
        self.budget = BudgetController(settings.budget)
        self.metrics.set("budget_mode", settings.budget.pps)
        self._publish_budget()
        self._rates = {name: RecentRate(60.0) for name in ("impressions", "consumed", "scored")}
        self._next_offset: dict[tuple[str, int], int] = {}
        self._looked = False
        self._taking = False
        self._fetch_wait_set = False
        self._first_high: dict[tuple[str, int], int] = {}
        # one set of kafka-python arguments (one TLS context) for the lag reader and the follower
        connection = kafka_connection(settings)
        self.lag = CachedLag(connection, settings.topics.impressions, settings.kafka.consumer_group)
        products = (
            load_catalog_file(settings.ingest.catalog_file) if settings.ingest.catalog_file else []
        )
        self.catalog = Catalog(products)
        self._client: Client | None = None
        self._vectors: ClickHouseVectors | None = None
        self._dlq_producer: Any = None
        self._gauges = gauges
        self.failure: Exception | None = None
        self.app = self._make_app()
        self.ports = _FaustPorts(self)
        page = getattr(scorer, "page", None)  # the page tier (scoring.Scorer only)
        self.processor = ImpressionProcessor(
            ports=self.ports,
            catalog=self.catalog,
            planner=Planner(settings.plans, budget=self.budget),
            rates=settings.sampling,
            routing=Routing(
                threshold=(
                    settings.routing.bad_threshold
                    if settings.routing.bad_threshold is not None
                    else getattr(scorer, "operating_threshold", 0.5)
                ),
                category_thresholds=settings.routing.category_thresholds,
                uncertain_band=settings.routing.uncertain_band,
                audit_share=settings.routing.audit_share,
                page_threshold=(
                    settings.routing.bad_threshold
                    if settings.routing.bad_threshold is not None or page is None
                    else page.operating_threshold
                ),
            ),
            model_version=scorer.model_version,
            page_model_version=None if page is None else page.model_version,
            metrics=self.metrics,
            retry_s=settings.ingest.unknown_product_retry_s,
            backoff_max_s=settings.ingest.retry_backoff_max_s,
            ubi_position_base=settings.ingest.ubi_position_base,
            rollup_refresh_s=settings.ingest.rollup_refresh_s,
            dead_letter_max_bytes=settings.ingest.dlq_max_bytes,
            event_window=EventTimeWindow(
                settings.ingest.max_event_age_s, settings.ingest.max_event_future_s
            ),
        )
        self.follower = CatalogFollower(
            self.catalog,
            connection=connection,
            topic=settings.topics.catalog,
            on_invalid=self._catalog_invalid,
            on_update=lambda: self.metrics.set("catalog_products", len(self.catalog)),
        )

    def clickhouse(self) -> Client:
        """The worker's ClickHouse client (used from the store thread only)."""
        if self._client is None:
            self._client = db.connect(self.settings)
        return self._client

    def _make_app(self) -> faust.App:
        s = self.settings
        app = BatchApp(
            s.kafka.consumer_group,
            broker=[f"kafka://{server}" for server in s.kafka.servers],
            store="memory://",
            autodiscover=False,
            topic_partitions=s.topics.partitions,
            topic_disable_leader=True,
            # no tables, so no standbys: with Faust's default of 1 its sticky assignor keeps
            # ceil(partitions / members) on the old members and a joining worker can get none
            # (4 partitions, 3 workers: 2, 2, 0); with 0 (and no changelog tables) the consumer
            # assigns round-robin and every member of the group gets its share (2, 1, 1)
            table_standby_replicas=0,
            broker_session_timeout=s.kafka.session_timeout_s,
            broker_heartbeat_interval=s.kafka.heartbeat_interval_s,
            broker_commit_interval=1.0,
            consumer_auto_offset_reset="earliest",
            processing_guarantee="at_least_once",
            producer_acks=-1,
            stream_wait_empty=False,
            web_enabled=False,
            datadir=str(s.home / "faust" / s.kafka.consumer_group),
            broker_credentials=broker_credentials(s),
        )
        # fetched, not yet taken: about two batches (then the consumer waits; a put may overshoot
        # by one fetch)
        self.inbox = Inbox([s.topics.impressions], max_records=2 * s.ingest.take_max)
        app.inbox = self.inbox
        self.impressions_topic = app.topic(
            s.topics.impressions, key_serializer="raw", value_serializer="raw"
        )
        self.review_topic = app.topic(s.topics.review, key_serializer="raw", value_serializer="raw")
        self.dlq_topic = app.topic(s.topics.dlq, key_serializer="raw", value_serializer="raw")
        app.agent(self.impressions_topic, name="relmon-impressions")(self._agent)
        app.timer(1.0)(self._tick)
        app.task(self._on_start)
        app.on_partitions_revoked.connect(self._on_revoked)
        return app

    async def _agent(self, stream: Any) -> None:
        """Take batches from the inbox; the stream itself only subscribes the topic.

        Iterating the channel registers the topic with Faust's conductor, so the consumer
        subscribes to it; its records then reach the inbox, not the stream. A batch is taken
        when ``take_max`` records are there or ``take_within_s`` after the previous one was
        taken, whichever is first (:meth:`Inbox.take`).
        """
        aiter(stream.channel)
        self._taking = True
        s = self.settings
        loop = asyncio.get_running_loop()

        def generation() -> int:
            return int(self.app.consumer_generation_id)

        taken = loop.time()
        while True:
            messages = await self.inbox.take(
                s.ingest.take_max, deadline=taken + s.ingest.take_within_s, generation=generation
            )
            taken = loop.time()
            try:
                if not self._looked:
                    if not self._fetch_wait_set:
                        self._set_fetch_wait(started=True)
                    self._looked = True
                    await self._first_look([_raw(message) for message in messages])
                    # what arrived during the look joins the first batch: one record alone
                    # would make its cold start look like every record's cost
                    messages += self.inbox.take_ready(s.ingest.take_max - len(messages), generation)
                records = [_raw(message) for message in messages]
                self._observe_lag(records)
                await self.processor.submit(records)
            except Exception as exc:
                await self._fail(exc)
                return

    def _set_fetch_wait(self, *, started: bool = False) -> None:
        """Apply RELMON_FETCH_MAX_WAIT_MS once the consumer runs (gauge ``fetch_wait_set``).

        ``started``: the consumer has delivered records, so failing now means this Faust or
        aiokafka keeps the setting elsewhere; the worker says so and runs with Faust's wait.
        """
        wait_ms = self.settings.ingest.fetch_max_wait_ms
        if set_fetch_max_wait(self.app, wait_ms):
            self._fetch_wait_set = True
            self.metrics.set("fetch_wait_set", 1)
            log.info("the broker holds an empty fetch at most %d ms", wait_ms)
        elif started:
            log.warning(
                "could not set the consumer's fetch wait (this Faust or aiokafka keeps it "
                "elsewhere): RELMON_FETCH_MAX_WAIT_MS is ignored"
            )

    def _publish_budget(self) -> None:
        """The budget's gauges, before the first batch publishes them (the processor does after)."""
        for name, value in self.budget.gauges().items():
            self.metrics.set(name, value)

    async def _first_look(self, records: list[RawRecord]) -> None:
        """Measure the input rate before the first batch makes plans (automatic budget only).

        The first plans hold for a minute of input each, and without two lag measurements the
        budget would make them as if nothing arrived: at factor 1, which for live traffic above
        the scorer's capacity queues minutes of scoring. So the lag is measured, then again
        :data:`FIRST_LOOK_S` later, once per process (the consumer keeps fetching meanwhile).
        """
        if self.budget.config.mode != "auto":
            return
        lag = self._lag_behind(records)
        if lag is not None:
            self.budget.observe_lag(lag, time.monotonic())
            await asyncio.sleep(FIRST_LOOK_S)

    def _lag_behind(self, records: list[RawRecord]) -> int | None:
        """Records waiting behind this batch (this batch included); None when unknown.

        Read from the consumer's high watermarks (updated by every fetch, no broker round trip)
        against the next offset this worker has not taken yet (a partition met for the first time:
        this batch's first offset); a partition with no record taken yet counts what arrived since
        this worker first saw its high watermark.
        """
        first: dict[tuple[str, int], int] = {}
        for r in records:
            first[(r.topic, r.partition)] = min(
                first.get((r.topic, r.partition), r.offset), r.offset
            )
        try:
            consumer = self.app.consumer
            lag = 0
            for tp in consumer.assignment():
                if tp.topic != self.settings.topics.impressions:
                    continue
                key = (tp.topic, tp.partition)
                high = int(consumer.highwater(tp) or 0)
                seen = self._first_high.setdefault(key, high)
                lag += max(high - self._next_offset.get(key, first.get(key, seen)), 0)
        except Exception as exc:  # lag is advice: the batch goes on without it
            log.debug("lag unavailable: %r", exc)
            return None
        return lag

    def _observe_lag(self, records: list[RawRecord]) -> None:
        """Tell the budget the lag behind this batch; remember the offsets it takes."""
        lag = self._lag_behind(records)
        if lag is not None:
            self.budget.observe_lag(lag, time.monotonic())
        for r in records:
            key = (r.topic, r.partition)
            self._next_offset[key] = max(self._next_offset.get(key, 0), r.offset + 1)

    async def _tick(self) -> None:
        if not self._fetch_wait_set:
            self._set_fetch_wait()
        if self._taking:
            try:
                await self.processor.retry_pending()
            except Exception as exc:
                await self._fail(exc)
                return
        self.metrics.set("catalog_products", len(self.catalog))
        self.metrics.set("inbox_records", len(self.inbox))
        self.metrics.set("inbox_stale_dropped", self.inbox.dropped_stale)
        for name, value in self.gc_pauses.gauges().items():
            self.metrics.set(name, value)
        stats = getattr(self.scorer, "stats", None)
        if callable(stats):
            for name, value in stats().items():
                self.metrics.set(name, value)
        self.metrics.set("score_latency_p50_ms", self.score_latency.quantile(0.5) * 1000)
        self.metrics.set("score_latency_p99_ms", self.score_latency.quantile(0.99) * 1000)
        now = time.monotonic()
        for name, rate in self._rates.items():
            self.metrics.set(f"{name}_per_s", round(rate.observe(now, self.metrics.get(name)), 2))
        self.metrics.write(metrics_path(self.settings))

    async def _fail(self, exc: Exception) -> None:
        """Stop the whole worker process on an error the processor does not retry.

        The processor retries service errors itself, so this is a bug (relmon's, the scorer's).
        Faust would restart the agent in the same process, with a consumer already past the
        failed batch and a processor still waiting for it: offsets would stall silently. So
        the app crashes instead: ``run`` exits non-zero and the supervisor starts a fresh
        worker, which re-reads from the committed offsets.
        """
        if self.failure is not None:
            return
        self.failure = exc
        log.critical("the worker stops on an unexpected error: %r", exc, exc_info=exc)
        await self.app.crash(exc)

    def _prometheus(self) -> str:
        snapshot: dict[str, float | int | str] = dict(self.metrics.snapshot())
        if self._gauges is not None:
            snapshot.update(self._gauges())
        return exposition(snapshot, {"relmon_score_seconds": self.score_latency}, self.lag.get())

    async def _on_start(self) -> None:
        if not self.follower.is_alive():
            self.follower.start()

    async def _on_revoked(
        self, sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:
        revoked = args[0] if args else kwargs.get("revoked", ())
        gone = [(tp.topic, tp.partition) for tp in revoked]
        for key in gone:
            self._next_offset.pop(key, None)
        self.inbox.drop(gone)
        self.processor.drop_partitions(gone)  # it logs what it left to the new owner

    def _catalog_invalid(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
    ) -> None:
        self.metrics.inc("catalog_invalid")
        letter = dead_letter(
            RawRecord(topic, partition, offset, key, value),
            "invalid",
            reason,
            self.settings.ingest.dlq_max_bytes,
        )
        if self._dlq_producer is None:
            self._dlq_producer = producer(self.settings)
        self._dlq_producer.send(self.settings.topics.dlq, key=key, value=letter.to_bytes()).get(30)
        self.metrics.inc("dead_lettered")
        self.metrics.inc("dead_lettered_invalid")

    def prepare(self) -> None:
        """Create topics and apply ClickHouse migrations (idempotent)."""
        (self.settings.home / "faust" / self.settings.kafka.consumer_group).mkdir(
            parents=True, exist_ok=True
        )
        ensure_topics(self.settings)
        db.migrate(self.settings)

    def _share_embeddings(self) -> None:
        """Give the scorer the store's shared embeddings, if it embeds and they are on.

        Called after the warm-up: its made-up texts are not worth keeping.
        """
        embedder = getattr(self.scorer, "embedder", None)  # scoring.Scorer on an embedding tier
        if not self.settings.scorer.shared_embeddings or embedder is None:
            return
        # the vectors only save time: a store that hangs is given up on after seconds (the
        # texts are then embedded here), not after the client's default five minutes
        self._vectors = ClickHouseVectors(
            lambda: db.connect(self.settings, connect_timeout=5, send_receive_timeout=10),
            embedder,
        )
        paged: Any = self.scorer
        paged.share_embeddings(self._vectors)
        log.info("shared embeddings: %s in ClickHouse table text_embeddings", embedder)

    def run(self) -> None:
        """Prepare, then serve in the foreground until SIGTERM / SIGINT."""
        self.prepare()
        self.serve()

    def serve(self) -> None:
        """Run the worker in the foreground until SIGTERM / SIGINT (after :meth:`prepare`)."""
        if self.budget.config.mode == "auto":
            try:
                capacity = measure_capacity(
                    self.scorer, self.settings.scorer.batch_size, self.budget
                )
            except Exception as exc:  # a scorer that cannot score: the same loud stop as later
                log.critical("the worker stops on an unexpected error: %r", exc, exc_info=exc)
                raise
            log.info("scoring budget: auto, scorer capacity %.0f pairs/s", capacity or 0.0)
            self._publish_budget()
        self._share_embeddings()
        settle_heap()  # after the warm-up and the model: their objects live as long as we do
        self.gc_pauses.install()
        worker = faust.Worker(self.app, loglevel="INFO", redirect_stdouts=False)
        server = None
        if self.settings.metrics_port:
            server = MetricsServer(
                self.settings.bind_host, self.settings.metrics_port, self._prometheus
            ).start()
        try:
            worker.execute_from_commandline()
        finally:
            self.gc_pauses.uninstall()
            if server is not None:
                server.stop()
            self.follower.stop()
            self.ports.close()
            if self._vectors is not None:
                self._vectors.close()
            self.metrics.write(metrics_path(self.settings))
            if self._dlq_producer is not None:
                self._dlq_producer.close()
