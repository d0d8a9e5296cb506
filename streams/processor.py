"""The batch processor: decode, enrich, sample, score, route and store impressions.

Framework-free: the Faust agent (:mod:`streams.app`) feeds it raw records and provides the
:class:`Ports` (Kafka sends, ClickHouse writes, scoring, acks); tests feed it in-package fakes
(:mod:`streams.testing`).

Per batch, in this order, so that a crash at any point loses nothing:

1. every record is decoded and validated; bad ones become dead letters (original bytes kept, a
   prefix of them with size and sha256 when the letter would exceed ``dead_letter_max_bytes``).
   Any failure on one record, expected or not, dead-letters that record alone. An impression
   whose event time is outside the acceptance window (:class:`EventTimeWindow`) is dead-lettered
   as ``event_time_out_of_range``: never scored, counted or sent for review;
2. UBI query records are remembered (in memory now, in ClickHouse at step 6);
3. impressions get their query text (UBI) and product text (catalogue); an impression whose
   product or query is not known yet waits up to ``retry_s`` (its offset is not committed
   meanwhile), then becomes a dead letter;
4. impressions are sampled (:mod:`streams.sampling`: deterministic by query id, stratified by
   query tier and position, under the sampling plan of their partition and epoch; a result page
   that no position of can be sampled, its products all known, is done without building its
   hits, the same decision taken once per page instead of once per hit); sampled pairs
   not stored yet are scored off the event loop (when the page tier serves, a page's hits wait
   until the whole page is finished and are scored with it, :func:`streams.enrich.page_context`,
   built once from the page's hits known in full: a score does not depend on which hits were
   sampled or batched with it, nor on when the catalogue learnt a product; other impressions
   alone). What each call cost (records, pairs the base
   rates asked for, time busy and time scoring) goes to the scoring budget
   (:mod:`streams.budget`), which sets the budget factor of the plans created next;
5. dead letters are sent; rows are written to ClickHouse (each impression once: impressions an
   earlier try finished, or stored, are not scored again); then the review requests of the
   stored rows are sent and their delivery awaited; then the impressions are recorded as done
   in the ledger (``Ports.mark_done``);
6. the batch's UBI query records are stored (for events of other workers and after a restart),
   while step 4's scorer works in its own thread: fed 36,000 impressions/s, that is about
   4,000 rows a batch beside 50-200 scored rows, so they are not left on the batch's path;
7. the roll-ups of the hours the rows fall in are recomputed, at most once per
   ``rollup_refresh_s`` for all the batches finished since the last time (each recomputation
   reads every row of its hours, so its cost grows with the hour: about 56 ms at 100,000 rows
   in the hour and 134 ms at 1,000,000 on this project's 2-core machine, too much to pay at
   every batch, twice a second);
8. only then are the records acked, so their offsets can be committed.

Steps 1 to 3 and the sampling decision (the *front*) run in the caller's task; the rest (the
*back*: scoring, the store's round trips, sends, acks) runs in the processor's back task, one
batch after another in the order they were submitted (:meth:`ImpressionProcessor.submit`). So
while the scorer and the store work on one batch the caller decodes the next, and the worker's
throughput is that of its slower half, not of the two added up. :meth:`~ImpressionProcessor.process`
does both halves of one batch and returns when it is finished.

The two halves share the event loop, so the front lets it run every few hundred records: each
of the back's steps (a store round trip, a scoring call) goes on within milliseconds of its
answer instead of after the whole front. Fed 39,000 impressions/s, a batch's two store lookups
took 0.4-0.9 s when the front ran in one piece (they waited for it), and 0.05-0.3 s with it cut.
A partition revoked while a front runs is dropped when that front ends
(:meth:`ImpressionProcessor.drop_partitions`).

A crash between storing a row and recording it as done leaves a stored row without a ledger
entry: the replay takes the row from the store instead of scoring it again, refreshes its
roll-ups and sends its review request (so a review is never lost). A crash between the ledger
and the roll-up refresh leaves records done but not acked: the replay finds them in the ledger
and refreshes their hours' roll-ups before it acks them. A review request is sent twice
only when a crash falls between its delivery and the ledger write, or when two workers overlap
in a rebalance; the teacher keeps one case per impression_id.

Error policy: a :class:`~relmon.errors.ServiceError` from a port (the store or the broker
unavailable: the adapters translate their clients' transport errors) is retried with capped
exponential backoff until it passes (an outage stalls the batch, nothing is lost), counted by its
type (:func:`error_counter`). Dead letters the broker refuses for good
(:class:`~relmon.errors.MessageRefused`: too large) are sent again without their original bytes,
so offsets keep moving. Any other exception (a bug in relmon, in the scorer, in a port) is raised:
retrying a bug forever would stall the partition silently, so it stops the worker loudly and its
supervisor restarts it from the committed offsets. Only the per-record steps (decoding, enriching
one impression) turn any failure into that record's dead letter, so one hostile record cannot
stop the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np

from relmon.errors import BrokerError, DecodeError, MessageRefused, ServiceError, StoreUnavailable
from relmon.settings import SamplingRates
from schemas.models import (
    DEAD_LETTER_MAX_BYTES,
    CatalogProduct,
    DeadLetter,
    DeadLetterKind,
    Impression,
    ScoredImpression,
    utc,
)
from schemas.ubi import (
    UBI_POSITION_BASE,
    InputRecord,
    PageHit,
    UbiImpression,
    UbiOtherEvent,
    UbiQuery,
    decode_record,
)
from scoring.page import PageContext, PageRef
from streams.catalog import Catalog
from streams.enrich import (
    EventTimeWindow,
    Problem,
    QueryTexts,
    complete,
    impression_text,
    page_context,
)
from streams.metrics import Metrics
from streams.plans import Planner, Seen
from streams.ports import Ports
from streams.records import RawRecord, dead_letter
from streams.route import Routing
from streams.sampling import unit_hash
from streams.sketch import Tier

log = logging.getLogger(__name__)
T = TypeVar("T")

_YIELD_EVERY = 256
"""A front lets the event loop run after this many records (a few ms of work): see the module
docstring."""


async def _in_pieces(items: Iterable[T]) -> AsyncIterator[T]:
    """``items``, letting the event loop run after every :data:`_YIELD_EVERY` of them."""
    for i, item in enumerate(items):
        if i and i % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
        yield item


def _hour_of(when: datetime) -> datetime:
    """The start of the UTC hour holding ``when`` (the roll-ups' window)."""
    return utc(when).replace(minute=0, second=0, microsecond=0)


def _utc_now() -> datetime:
    return datetime.now(UTC)


_Item = Impression | UbiImpression | PageHit | UbiQuery
"""What waits to be resolved: an impression, or a result page not opened into its hits yet"""


@dataclass(slots=True)
class _Pending:
    record: RawRecord
    item: _Item
    deadline: float


@dataclass
class _Page:
    """A record that carries a whole result page: done once every one of its hits is."""

    size: int
    left: int
    problems: list[Problem] = field(default_factory=list)
    deferred: bool = False
    """the page tier serves: the page's hits wait for each other (see ``_item_done``)"""
    ready: list[tuple[RawRecord, PageHit, CatalogProduct | None]] = field(default_factory=list)
    """hits known in full, held until the page is finished (``deferred`` only)"""
    context: tuple[PageContext, dict[int, int]] | None = None
    """the page as the page tier sees it, built when one of its hits is first sampled"""


@dataclass(frozen=True)
class _Draw:
    impression: Impression
    probability: float
    tier: Tier
    plan_id: str
    page: PageRef | None = None


@dataclass
class _Load:
    """What one call of the processor cost, for the scoring budget (:mod:`streams.budget`).

    A call runs in two phases, its front (decode, resolve, sample) in the caller's task and its
    back (score, store, send, ack) in the processor's back task: ``started`` and ``waited_s``
    are the current phase's, ``front_s`` is what the front cost (retry sleeps excluded).
    """

    started: float
    base_pairs: int = 0
    scoring_s: float = 0.0
    waited_s: float = 0.0
    front_s: float = 0.0


_Job = tuple[Callable[[], Coroutine[Any, Any, None]], asyncio.Future[None], asyncio.Future[None]]
"""A back phase to run, the future the back task sets when it takes it, and the one it sets
when the phase is done"""

_LOAD: contextvars.ContextVar[_Load] = contextvars.ContextVar("relmon_processor_load")
"""The load of the phase the current task runs (each asyncio task has its own context, so a
front and a back running at the same time each count their own retry sleeps and scoring); every
phase sets it (:meth:`ImpressionProcessor._start_phase`) before it calls a port"""


@dataclass
class _Outcome:
    letters: list[DeadLetter] = field(default_factory=list)
    ready: list[tuple[RawRecord, Impression | PageHit, CatalogProduct | None]] = field(
        default_factory=list
    )
    """impressions known in full, each with the catalogue entry that completes its product text
    (None when the record carried the text): most are not sampled, so only the sampled ones
    are copied with the text filled in"""
    done: list[RawRecord] = field(default_factory=list)
    queries: list[UbiQuery] = field(default_factory=list)
    pages: dict[tuple[str, int, int], _Page] = field(default_factory=dict)
    """the pages of ready hits (a page may be finished before its hits are sampled)"""
    owners: dict[tuple[str, int], int] = field(default_factory=dict)
    """the processor's partition ownerships as the front began (``ImpressionProcessor._owner``)"""


# Which counter a retried failure increments, by the type of the error.
_ERROR_COUNTERS: tuple[tuple[type[ServiceError], str], ...] = (
    (StoreUnavailable, "store_errors"),
    (BrokerError, "send_errors"),
    (ServiceError, "service_errors"),
)


def error_counter(exc: ServiceError) -> str:
    """The counter of a retried failure: ``store_errors``, ``send_errors`` or ``service_errors``."""
    return next(name for kind, name in _ERROR_COUNTERS if isinstance(exc, kind))


class ImpressionProcessor:
    """Turns batches of raw impression records into scored rows, reviews and dead letters."""

    def __init__(
        self,
        *,
        ports: Ports,
        catalog: Catalog,
        planner: Planner,
        rates: SamplingRates,
        routing: Routing,
        model_version: str,
        page_model_version: str | None = None,
        metrics: Metrics,
        retry_s: float = 10.0,
        query_cache_size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        backoff_max_s: float = 5.0,
        ubi_position_base: int = UBI_POSITION_BASE,
        dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
        event_window: EventTimeWindow | None = None,
        wall_clock: Callable[[], datetime] = _utc_now,
        backlog: int = 0,
        rollup_refresh_s: float = 0.0,
    ) -> None:
        """``backlog``: batches :meth:`submit` lets wait behind the one the back task works on.

        ``rollup_refresh_s``: the roll-ups of the hours rows were written in are recomputed at
        most this often (0: after every batch); records wait for it before they are acked.

        With 0 (the default) :meth:`submit` returns once the back task has taken the batch, so
        the caller takes its next batch when the back task starts one, not a whole back phase
        earlier: a queued batch would add that phase to the latency of every record behind it,
        and buy no throughput while the front is the faster half.
        """
        if backlog < 0:
            raise ValueError(f"backlog must be at least 0, not {backlog}")
        if rollup_refresh_s < 0:
            raise ValueError(f"rollup_refresh_s must be at least 0, not {rollup_refresh_s}")
        self._ports = ports
        self._catalog = catalog
        self._planner = planner
        self._rates = rates
        self._routing = routing
        self._page_model_version = page_model_version
        self._page_version = page_model_version or model_version
        self._model_version = model_version
        self._metrics = metrics
        self._retry_s = retry_s
        self._clock = clock
        self._backoff_max_s = backoff_max_s
        self._ubi_position_base = ubi_position_base
        self._dead_letter_max_bytes = dead_letter_max_bytes
        self._event_window = event_window
        self._wall_clock = wall_clock
        self._queries = QueryTexts(query_cache_size)
        self._pending: list[_Pending] = []
        # Acks go out strictly in offset order per partition (Faust commits the first run of
        # acked offsets it finds, even past an unacked one): every consumed offset is queued,
        # done records wait until everything before them is done and checkpoint-covered.
        self._queue: dict[tuple[str, int], deque[int]] = defaultdict(deque)
        self._done: dict[tuple[str, int, int], RawRecord] = {}
        self._counted: set[tuple[str, int, int]] = set()  # in a sketch, maybe not checkpointed
        self._pages: dict[tuple[str, int, int], _Page] = {}  # page records with hits to finish
        # Hours whose rows changed since their roll-ups were last recomputed, and the finished
        # records that wait for that recomputation before they may be acked.
        self._rollup_refresh_s = rollup_refresh_s
        self._stale_hours: set[datetime] = set()
        self._unrefreshed: dict[tuple[str, int, int], RawRecord] = {}
        self._refreshed_at = -float("inf")
        self._lock = asyncio.Lock()  # held by a front: one batch (or retry) at a time
        self._revoked: set[tuple[str, int]] = set()  # revoked during a front, dropped after it
        # Each revocation of a partition starts a new ownership of it: a back phase that finishes
        # records of an earlier one leaves them to the partition's owner (they are re-read).
        self._owner: dict[tuple[str, int], int] = {}
        self._tally: Counter[str] = Counter()  # a front's per-record counts, added as it ends
        self._backlog = backlog
        self._jobs: asyncio.Queue[_Job] | None = None
        self._back: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    @property
    def pending(self) -> int:
        """Impressions waiting for their product or query."""
        return len(self._pending)

    async def process(self, records: Sequence[RawRecord]) -> None:
        """Process one batch end to end: :meth:`submit` it, then :meth:`drain`."""
        await self.submit(records)
        await self.drain()

    async def submit(self, records: Sequence[RawRecord]) -> None:
        """Take one batch: decode, resolve and sample it now, then queue the rest.

        The rest (score, store, send, ack: the module docstring's steps 4 to 7) runs in the
        processor's back task, batch after batch in the order they were submitted, while the
        caller decodes the next batch: the scorer and the store's round trips overlap with
        ingest instead of adding to it. Returns once the batch is queued, which waits while
        ``backlog`` batches already wait (with 0, until the back task takes it); raises what
        stopped the back task (a bug: see the module docstring), so a failed batch stops the
        caller at its next batch.
        """
        self._check()
        async with self._front():
            load = self._start_phase(_Load(self._clock()))
            self._metrics.inc("batches")
            self._metrics.inc("consumed", len(records))
            for record in records:
                self._queue[(record.topic, record.partition)].append(record.offset)
            out = _Outcome(owners=dict(self._owner))
            items = await self._decode_all(records, out)
            impressions = sum(len(i.hit_ids) if isinstance(i, UbiQuery) else 1 for _, i in items)
            self._planner.budget.expect_demand(len(records), impressions)
            deadline = self._clock() + self._retry_s
            await self._resolve([_Pending(r, i, deadline) for r, i in items], out, fresh=True)
            draws = self._sample(out.ready, out) if out.ready else []
            load.front_s = self._clock() - load.started - load.waited_s
        await self._enqueue(lambda: self._back_phase(load, out, draws, len(records)))

    @contextlib.asynccontextmanager
    async def _front(self) -> AsyncIterator[None]:
        """One front at a time; partitions revoked while it ran are dropped as it ends."""
        async with self._lock:
            try:
                yield
            finally:
                self._metrics.add(self._tally)
                self._tally.clear()
                self._forget_revoked()

    async def drain(self) -> None:
        """Wait until every submitted batch is finished (raises what stopped the back task)."""
        if self._jobs is not None and self._jobs_here():
            await self._until(self._jobs.join())
        self._check()

    async def retry_pending(self) -> None:
        """Retry impressions that wait for the catalogue or a query; expire overdue ones.

        Also stores due sketch checkpoints and acks what they cover. Returns once that is done,
        so after the batches submitted before it (not those submitted meanwhile: the worker's
        timer calls it while batches keep coming).
        """
        self._check()
        async with self._front():
            if not self._pending:
                job: Callable[[], Coroutine[Any, Any, None]] = self._release_phase
            else:
                load = self._start_phase(_Load(self._clock()))
                waiting, self._pending = self._pending, []
                out = _Outcome(owners=dict(self._owner))
                await self._resolve(waiting, out, fresh=False)
                draws = self._sample(out.ready, out) if out.ready else []
                load.front_s = self._clock() - load.started - load.waited_s
                job = lambda: self._back_phase(load, out, draws, 0)  # noqa: E731
        await self._until(await self._enqueue(job))

    async def flush(self) -> None:
        """Store every sketch checkpoint now and ack what they cover (a clean hand-over)."""
        await self._until(await self._enqueue(lambda: self._release_phase(force=True)))

    # --- the back task -------------------------------------------------------------------------

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _jobs_here(self) -> bool:
        """Whether the back task runs on the running event loop (tests run one loop per call)."""
        back = self._back
        here = asyncio.get_running_loop()
        return back is not None and not back.done() and back.get_loop() is here

    async def _enqueue(self, job: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Future[None]:
        """Queue ``job`` for the back task; the future it sets once done.

        With no backlog this returns once the back task has taken the job.
        """
        self._check()
        if not self._jobs_here():
            self._jobs = asyncio.Queue(maxsize=max(self._backlog, 1))
            self._back = asyncio.get_running_loop().create_task(
                self._run_back(self._jobs), name="relmon-processor-back"
            )
        assert self._jobs is not None
        loop = asyncio.get_running_loop()
        taken: asyncio.Future[None] = loop.create_future()
        done: asyncio.Future[None] = loop.create_future()
        await self._until(self._jobs.put((job, taken, done)))
        if self._backlog == 0:
            await self._until(taken)
        return done

    async def _until(self, step: Awaitable[None]) -> None:
        """Await ``step`` unless the back task stops first (then raise why)."""
        back = self._back
        assert back is not None
        waiting = asyncio.ensure_future(step)
        try:
            await asyncio.wait([waiting, back], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiting.done():
                waiting.cancel()
        if waiting.done():
            waiting.result()
            return
        self._check()
        raise asyncio.CancelledError()  # the back task was cancelled: the loop is closing

    async def _run_back(self, jobs: asyncio.Queue[_Job]) -> None:
        """Run the queued back phases in order; the first error stops the task for good."""
        while True:
            job, taken, done = await jobs.get()
            if not taken.done():  # a caller that stopped waiting cancels it
                taken.set_result(None)
            try:
                await job()
                if not done.done():  # a caller that stopped waiting cancels it
                    done.set_result(None)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # raised again to the caller by _check
                self._failure = exc
                log.error("a batch failed in the processor's back task: %r", exc)
                return
            finally:
                jobs.task_done()

    def _start_phase(self, load: _Load) -> _Load:
        load.started, load.waited_s = self._clock(), 0.0
        _LOAD.set(load)
        return load

    async def _back_phase(
        self, load: _Load, out: _Outcome, draws: list[_Draw], records: int
    ) -> None:
        self._start_phase(load)
        await self._finish(out, draws)
        self._report_load(load, records)

    async def _release_phase(self, force: bool = False) -> None:
        """A back phase that only stores due checkpoints and acks (its retry sleeps its own)."""
        self._start_phase(_Load(self._clock()))
        await self._refresh_rollups(force)
        await self._release(force)

    def _report_load(self, load: _Load, records: int) -> None:
        """Tell the scoring budget what this call cost, front and back; publish its gauges.

        The budget models a worker that does one thing at a time, so overlapping the two
        phases only makes its capacity estimates conservative.
        """
        now = self._clock()
        budget = self._planner.budget
        budget.observe_batch(
            records=records,
            base_pairs=load.base_pairs,
            busy_s=load.front_s + max(now - load.started - load.waited_s, 0.0),
            scoring_s=load.scoring_s,
            now=now,
        )
        for name, value in budget.gauges().items():
            self._metrics.set(name, value)

    def drop_partitions(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Forget pending records of revoked partitions (their new owner re-reads them).

        A front that runs now (it lets the back task run between records) finishes on the
        state it started with, and the partitions go when it ends: a rebalance that arrives in
        the middle of a batch cannot leave it half planned. Returns the pending impressions
        dropped now; 0 when the drop waits for a front. Either way the count is logged.
        """
        gone = set(partitions)
        if self._lock.locked():
            self._revoked |= gone
            return 0
        return self._forget(gone)

    def _forget_revoked(self) -> None:
        """Drop the partitions revoked while a front ran (call at its end, under the lock)."""
        if self._revoked:
            gone, self._revoked = self._revoked, set()
            self._forget(gone)

    def _forget(self, gone: set[tuple[str, int]]) -> int:
        self._planner.forget(gone)
        for tp in gone:
            self._queue.pop(tp, None)
            self._owner[tp] = self._owner.get(tp, 0) + 1
        self._done = {k: v for k, v in self._done.items() if k[:2] not in gone}
        self._unrefreshed = {k: v for k, v in self._unrefreshed.items() if k[:2] not in gone}
        self._counted = {c for c in self._counted if c[:2] not in gone}
        self._pages = {k: v for k, v in self._pages.items() if k[:2] not in gone}
        before = len(self._pending)
        self._pending = [
            p for p in self._pending if (p.record.topic, p.record.partition) not in gone
        ]
        dropped = before - len(self._pending)
        if dropped:
            log.info("rebalance: %d pending impressions left to the new owner", dropped)
        return dropped

    async def _decode_all(
        self, records: Sequence[RawRecord], out: _Outcome
    ) -> list[tuple[RawRecord, _Item]]:
        """Decode every record: UBI queries are remembered, other events and bad records done.

        A UBI query record with hit ids is a result page: it stays one item until its plan is
        known (:meth:`_open_or_skip`).
        """
        items: list[tuple[RawRecord, _Item]] = []
        now = self._wall_clock()
        async for record in _in_pieces(records):
            decoded = self._decode(record, out)
            if decoded is None:
                continue
            self._tally["decoded"] += 1
            if isinstance(decoded, UbiQuery):
                self._queries.remember(decoded.query_id, decoded.user_query)
                out.queries.append(decoded)
                if decoded.hit_ids:
                    self._page_arrived(record, decoded, out, now, items)
                else:
                    out.done.append(record)
            elif isinstance(decoded, UbiOtherEvent):
                self._tally["ignored_events"] += 1
                out.done.append(record)
            else:
                self._tally["impressions"] += 1
                when = (
                    decoded.timestamp if isinstance(decoded, UbiImpression) else decoded.event_time
                )
                refusal = self._event_window and self._event_window.refusal(when, now)
                if refusal:
                    self._reject(record, out, "event_time_out_of_range", refusal)
                else:
                    items.append((record, decoded))
        return items

    def _page_arrived(
        self,
        record: RawRecord,
        query: UbiQuery,
        out: _Outcome,
        now: datetime,
        items: list[tuple[RawRecord, _Item]],
    ) -> None:
        """Queue a result page (refused whole when its event time is out of range)."""
        assert query.timestamp is not None  # decode_record refuses a page without one
        refusal = self._event_window and self._event_window.refusal(query.timestamp, now)
        if refusal:
            self._reject(record, out, "event_time_out_of_range", refusal)
            return
        self._tally["ubi_pages"] += 1
        self._tally["impressions"] += len(query.hit_ids)
        items.append((record, query))

    def _open_or_skip(self, record: RawRecord, query: UbiQuery, out: _Outcome) -> list[PageHit]:
        """The hits of a result page to resolve one by one, or none when it is done already.

        A page none of whose hits can be sampled under its plan (the draw of its query id is at
        least every position's inclusion probability), and whose products are all in the
        catalogue, is done at once: counted as not sampled, its hits never built. That is most
        pages, and the same decision, hit by hit, as the general path's. Any other page is opened:
        its hits are resolved (waiting for unknown products, see the module docstring) and
        sampled one by one, and its record is done when all of them are.
        """
        assert query.timestamp is not None
        n = len(query.hit_ids)
        if self._catalog.has_all(query.hit_ids):
            plan = self._planner.plan(
                (record.topic, record.partition, self._planner.epoch(query.timestamp))
            )
            tier = plan.tier(query.user_query)
            draw = unit_hash(query.query_id)
            top = min(n, self._rates.top_positions)
            strata = [(1, top), (top + 1, n - top)]  # (first position, hits) per position bucket
            if all(
                draw >= plan.probability(self._rates, tier, first) for first, hits in strata if hits
            ):
                _LOAD.get().base_pairs += sum(
                    hits
                    for first, hits in strata
                    if hits and draw < self._rates.base_probability(tier, first)
                )
                self._tally["not_sampled"] += n
                out.done.append(record)
                return []
        key = (record.topic, record.partition, record.offset)
        self._pages[key] = _Page(n, n, deferred=self._page_model_version is not None)
        return query.page(self._ubi_position_base)

    def _item_done(
        self,
        record: RawRecord,
        out: _Outcome,
        problem: Problem | None = None,
    ) -> None:
        """One impression of ``record`` is finished: ready (no ``problem``) or refused.

        A single impression's record is done (or dead-lettered) at once. A page's record is done
        with its last hit, and dead-lettered once, with its original bytes and every hit's
        problem, when any hit was refused: the page's other hits are scored, and a re-sent page
        scores only what was refused (the rest is in the ledger). Its hits are scored meanwhile,
        or, when the page tier serves, all together once the page is finished: the page they are
        judged against is then the same whenever the catalogue learnt their products (a worker
        that starts behind the catalogue, a replay), so a replay gives the same scores.
        """
        key = (record.topic, record.partition, record.offset)
        page = self._pages.get(key)
        if page is None:
            if problem is None:
                out.done.append(record)
            else:
                self._reject(record, out, *problem)
            return
        page.left -= 1
        if problem is not None:
            page.problems.append(problem)
        if page.left > 0:
            return
        del self._pages[key]
        if page.ready:
            page.ready.sort(key=lambda known: known[1].position)  # page order, however resolved
            out.ready.extend(page.ready)
            out.pages[key] = page
        if not page.problems:
            out.done.append(record)
            return
        shown = "; ".join(reason for _, reason in page.problems[:5])
        more = len(page.problems) - 5
        reason = f"{len(page.problems)} of the page's {page.size} hits refused: {shown}" + (
            f"; and {more} more" if more > 0 else ""
        )
        self._reject(record, out, page.problems[0][0], reason)

    def _decode(self, record: RawRecord, out: _Outcome) -> InputRecord | None:
        """The decoded record, or None once it is dead-lettered (whatever went wrong)."""
        try:
            return decode_record(record.value, ubi_position_base=self._ubi_position_base)
        except DecodeError as exc:
            kind: DeadLetterKind = "malformed" if exc.kind == "malformed" else "invalid"
            self._reject(record, out, kind, str(exc))
        except Exception as exc:  # decode_record raises DecodeError only; a bug stops no batch
            log.exception("decoding %s:%d:%d failed", record.topic, record.partition, record.offset)
            self._reject(record, out, "invalid", f"decoder failed: {type(exc).__name__}: {exc}")
        return None

    def _reject(self, record: RawRecord, out: _Outcome, kind: DeadLetterKind, reason: str) -> None:
        """Dead-letter one record and mark it done."""
        out.letters.append(dead_letter(record, kind, reason, self._dead_letter_max_bytes))
        out.done.append(record)

    async def _resolve(self, waiting: list[_Pending], out: _Outcome, *, fresh: bool) -> None:
        missing = sorted(
            {
                p.item.query_id
                for p in waiting
                if isinstance(p.item, UbiImpression) and p.item.query_id not in self._queries
            }
        )
        if missing:
            found = await self._retrying(self._ports.lookup_queries, missing, what="query lookup")
            for query_id, text in found.items():
                self._queries.remember(query_id, text)
        if fresh and waiting:
            await self._prepare_plans(waiting)
        opened: list[_Pending] = []
        async for pending in _in_pieces(waiting):
            if isinstance(pending.item, UbiQuery):
                hits = self._open_or_skip(pending.record, pending.item, out)
                opened.extend(_Pending(pending.record, hit, pending.deadline) for hit in hits)
            else:
                opened.append(pending)
        now = self._clock()
        async for pending in _in_pieces(opened):
            assert not isinstance(pending.item, UbiQuery)  # pages are opened above
            try:
                item, product, problem = complete(pending.item, self._queries, self._catalog)
            except Exception as exc:  # one record's failure must not stop its batch
                log.exception("completing %s failed", pending.record)
                reason = f"cannot complete the impression: {type(exc).__name__}: {exc}"
                self._item_done(pending.record, out, ("invalid", reason))
                continue
            pending.item = item  # what is known so far: a retry does not look it up again
            if problem is None:
                assert not isinstance(item, UbiImpression)  # complete() gave it its query
                r = pending.record
                page = self._pages.get((r.topic, r.partition, r.offset))
                if page is not None and page.deferred:
                    assert isinstance(item, PageHit)
                    page.ready.append((r, item, product))
                else:
                    out.ready.append((r, item, product))
                self._item_done(r, out)
                continue
            kind, reason = problem
            if fresh:
                self._metrics.inc(f"{kind}_seen")
            if now >= pending.deadline:
                problem = (kind, f"{reason}; not found within {self._retry_s:g} s")
                self._item_done(pending.record, out, problem)
            else:
                self._pending.append(pending)

    async def _prepare_plans(self, waiting: list[_Pending]) -> None:
        """Count first-seen impressions in their partition's sketch; store missing plans.

        See :mod:`streams.plans`.
        """
        seen: list[Seen] = []
        for p in waiting:
            item, record = p.item, p.record
            hits, query = 1, None
            if isinstance(item, UbiQuery):  # a result page: its query counts once per hit
                assert item.timestamp is not None
                query, when, hits = item.user_query, item.timestamp, len(item.hit_ids)
            elif isinstance(item, UbiImpression):
                query, when = self._queries.get(item.query_id), item.timestamp
            else:
                query, when = item.query, item.event_time
            seen.append((record.topic, record.partition, record.offset, when, query, hits))
            self._counted.add((record.topic, record.partition, record.offset))
        await self._retrying(lambda s: self._planner.load(s, self._ports), seen, what="plan lookup")
        created = self._planner.advance(seen)
        if created:
            await self._retrying(self._ports.save_plans, created, what="plan store")

    def _page_of(
        self, record: RawRecord, imp: Impression | PageHit, out: _Outcome
    ) -> PageRef | None:
        """A sampled page hit's page and index, when the page tier scores it (else None)."""
        if self._page_model_version is None or not isinstance(imp, PageHit):
            return None
        page = out.pages[(record.topic, record.partition, record.offset)]
        if page.context is None:
            page.context = page_context([(hit, product) for _, hit, product in page.ready])
        context, index = page.context
        return context, index[imp.position]

    def _sample(
        self,
        ready: list[tuple[RawRecord, Impression | PageHit, CatalogProduct | None]],
        out: _Outcome,
    ) -> list[_Draw]:
        """Decide which impressions are sampled, under the plan of their partition and epoch.

        Only the sampled ones get their product text filled in from the catalogue.
        """
        draws, demand = [], 0
        # a page's impressions share their record, plan, query and draw: look them up once
        last: tuple[RawRecord, str, str] | None = None
        for record, imp, product in ready:
            if last != (record, imp.query, imp.query_id):
                plan = self._planner.plan(
                    (record.topic, record.partition, self._planner.epoch(imp.event_time))
                )
                tier = plan.tier(imp.query)
                draw = unit_hash(imp.query_id)
                last = (record, imp.query, imp.query_id)
            demand += draw < self._rates.base_probability(tier, imp.position)
            p = plan.probability(self._rates, tier, imp.position)
            if draw < p:  # streams.sampling.sampled(query_id, p), the hash computed once
                if product is not None:
                    full = imp.enriched(product)
                else:  # its record carried the text (a page hit always needs the catalogue)
                    assert isinstance(imp, Impression)
                    full = imp
                draws.append(_Draw(full, p, tier, plan.plan_id, self._page_of(record, imp, out)))
        _LOAD.get().base_pairs += demand
        return draws

    async def _finish(self, out: _Outcome, draws: list[_Draw]) -> None:
        self._metrics.inc("sampled", len(draws))
        self._metrics.inc("not_sampled", len(out.ready) - len(draws))
        fresh, recovered = await self._triage(draws)
        # The UBI query texts go to the store while the scorer works in its own thread (the
        # rows' write waits for them there); the records are acked only once both are stored.
        texts = asyncio.ensure_future(self._store_queries(out.queries)) if out.queries else None
        try:
            await self._store(out, fresh, recovered)
        except BaseException:
            if texts is not None:
                texts.cancel()
            raise
        if texts is not None:
            await texts
        for record in out.done:
            tp = (record.topic, record.partition)
            if self._owner.get(tp, 0) == out.owners.get(tp, 0):  # else revoked meanwhile
                self._unrefreshed[(*tp, record.offset)] = record
        await self._refresh_rollups()
        await self._release()
        self._metrics.set("pending", len(self._pending))

    async def _store_queries(self, queries: list[UbiQuery]) -> None:
        await self._retrying(self._write, ([], queries), what="ClickHouse write")
        self._metrics.inc("ubi_queries", len(queries))

    async def _store(
        self, out: _Outcome, fresh: list[_Draw], recovered: list[ScoredImpression]
    ) -> None:
        """Score the fresh draws; store, review and record as done every finished row."""
        rows = await self._score(fresh) if fresh else []
        if out.letters:
            await self._send_dead_letters(out.letters)
            self._metrics.inc("dead_lettered", len(out.letters))
            for letter in out.letters:
                self._metrics.inc(f"dead_lettered_{letter.kind}")
        if rows:
            await self._retrying(self._write, (rows, []), what="ClickHouse write")
            self._metrics.inc("rows_written", len(rows))
        if recovered:  # stored by a try that stopped before the ledger: roll-ups may be stale
            self._metrics.inc("rows_recovered", len(recovered))
        finished = rows + recovered
        self._stale_hours.update(_hour_of(row.event_time) for row in finished)
        reviews = [r for r in map(self._routing.review, finished) if r is not None]
        if reviews:  # only once their rows are stored
            await self._retrying(self._ports.send_reviews, reviews, what="review requests")
            self._metrics.inc("sent_to_review", len(reviews))
        if finished:
            await self._retrying(self._ports.mark_done, finished, what="ClickHouse ledger")

    async def _refresh_rollups(self, force: bool = False) -> None:
        """Recompute the stale hours' roll-ups when due (or ``force``), then release records.

        The records finished since then may be acked afterwards; with no stale hour, at once.
        """
        if self._stale_hours:
            if not force and self._clock() - self._refreshed_at < self._rollup_refresh_s:
                return
            hours = sorted(self._stale_hours)
            await self._retrying(self._ports.refresh_rollups, hours, what="ClickHouse roll-ups")
            self._stale_hours.difference_update(hours)
            self._refreshed_at = self._clock()
            self._metrics.inc("rollup_refreshes")
        self._done.update(self._unrefreshed)
        self._unrefreshed.clear()

    async def _triage(self, draws: list[_Draw]) -> tuple[list[_Draw], list[ScoredImpression]]:
        """The draws to score, and rows an earlier try stored but did not finish.

        Impressions the ledger records as done are skipped, and so are copies within the batch:
        each impression is written, rolled up and reviewed once.
        """
        if not draws:
            return [], []
        first: dict[str, _Draw] = {}
        for d in draws:
            first.setdefault(d.impression.impression_id, d)
        ids = list(first)
        done, recovered = await self._retrying(self._ports.stored, ids, what="ClickHouse lookup")
        # done by a try that may have stopped before their roll-ups were recomputed
        self._stale_hours.update(_hour_of(first[i].impression.event_time) for i in done)
        stored = {row.impression_id for row in recovered}
        fresh = [first[i] for i in ids if i not in done and i not in stored]
        self._metrics.inc("already_stored", len(draws) - len(fresh))
        return fresh, recovered

    async def _score(self, fresh: list[_Draw]) -> list[ScoredImpression]:
        """Score the draws off the event loop; their rows."""
        pairs = [(d.impression.query, impression_text(d.impression)) for d in fresh]
        keys = [d.impression.product_id for d in fresh]
        pages = [d.page for d in fresh] if self._page_model_version is not None else None
        load = _LOAD.get()
        started, waited = self._clock(), load.waited_s
        scores = await self._retrying(
            lambda p: (
                self._ports.score(p, keys) if pages is None else self._ports.score(p, keys, pages)
            ),
            pairs,
            what="scoring",
        )
        seconds = self._clock() - started - (load.waited_s - waited)
        load.scoring_s += seconds
        self._planner.budget.observe_scoring(len(pairs), seconds, self._clock())
        now = datetime.now(UTC)
        rows = [
            ScoredImpression.of(
                d.impression,
                score=float(np.clip(score, 0.0, 1.0)),
                threshold=self._routing.threshold_for(d.impression.category, d.page is not None),
                model_version=self._model_version if d.page is None else self._page_version,
                sample_rate=d.probability,
                scored_at=now,
                tier=d.tier,
                position_bucket=self._rates.position_bucket(d.impression.position),
                plan_id=d.plan_id,
            )
            for d, score in zip(fresh, scores, strict=True)
        ]
        self._metrics.inc("scored", len(rows))
        return rows

    async def _release(self, force: bool = False) -> None:
        """Store due sketch checkpoints, then ack the done records they cover.

        Records outside any sketch are acked at once; commits never pass the latest checkpoint.
        """
        checkpoints = self._planner.due_checkpoints(force)
        if checkpoints:
            await self._retrying(self._ports.save_checkpoints, checkpoints, what="checkpoints")
            self._planner.checkpointed(checkpoints)
        ready: list[RawRecord] = []
        for tp, queue in self._queue.items():
            covered = self._planner.covered(*tp)
            while queue:
                tpo = (*tp, queue[0])
                if tpo not in self._done or (tpo in self._counted and tpo[2] >= covered):
                    break
                queue.popleft()
                self._counted.discard(tpo)
                ready.append(self._done.pop(tpo))
        if ready:
            await self._ports.ack(ready)

    async def _write(self, args: tuple[list[ScoredImpression], list[UbiQuery]]) -> None:
        await self._ports.write(*args)

    async def _send_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Deliver dead letters; one the broker refuses for good goes alone, then stripped."""
        send = self._ports.send_dead_letters
        try:
            await self._retrying(send, letters, what="dead letters", give_up=MessageRefused)
        except MessageRefused as exc:
            log.error("the broker refused dead letters (%s); sending them one by one", exc)
            for letter in letters:
                await self._send_dead_letter_alone(letter)

    async def _send_dead_letter_alone(self, letter: DeadLetter) -> None:
        """Deliver one letter; refused for good, deliver it without its original bytes."""
        send = self._ports.send_dead_letters
        try:
            await self._retrying(send, [letter], what="dead letter", give_up=MessageRefused)
            return
        except MessageRefused as exc:
            stripped = letter.without_original(f"the broker refused the letter: {exc}")
        try:
            await self._retrying(send, [stripped], what="dead letter", give_up=MessageRefused)
            self._metrics.inc("dead_letters_stripped")
        except MessageRefused as exc:
            self._metrics.inc("dead_letters_unsent")
            log.error(
                "the broker refused a dead letter even without its original bytes (%s): %s",
                exc,
                stripped.to_bytes().decode(),
            )

    async def _retrying(
        self,
        fn: Callable[[T], Awaitable[Any]],
        arg: T,
        *,
        what: str,
        give_up: type[ServiceError] | None = None,
    ) -> Any:
        """Call ``fn(arg)``, retrying service errors with capped exponential backoff.

        A :class:`ServiceError` is counted by its type and retried until ``fn`` succeeds
        (at-least-once); one of type ``give_up`` is raised at once instead. Every other
        exception is raised at once: it is a bug, not an outage (see the module docstring).
        """
        delay = 0.2
        failed_since: float | None = None
        failures = 0
        while True:
            try:
                result = await fn(arg)
            except ServiceError as exc:
                if give_up is not None and isinstance(exc, give_up):
                    self._metrics.inc("send_refused")
                    raise
                self._metrics.inc(error_counter(exc))
                if failed_since is None:
                    failed_since = self._clock()
                failures += 1
                log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
                _LOAD.get().waited_s += delay
                delay = min(delay * 2, self._backoff_max_s)
                continue
            if failed_since is not None:
                outage = self._clock() - failed_since
                log.info("%s recovered after %.1f s (%d failed tries)", what, outage, failures)
            return result
