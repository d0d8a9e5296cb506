"""Whole fetches to the worker: Faust's consumer, handing over batches instead of messages.

Faust delivers every record on its own: the consumer's drain loop awaits each message in a
``wait_first`` race against the rebalance flag (two tasks and an ``asyncio.wait`` per record),
the conductor decodes it into an event and queues it, the stream dequeues it and runs its
processors, and ``take`` appends it to a buffer. Fed 24,000 impressions/s in pages of ten
(2,400 records/s; py-spy on this project's 2-core EPYC), ``wait_first`` alone was a fifth of the
worker's event-loop time and the path as a whole a half. Worse for latency, ``take`` stops moving
records into its buffer while the agent's body runs and then waits a full ``within`` window for
more, so a record could wait two windows and a back phase before it was even taken; fed 20,000
impressions/s the worker took records 0.6 s old at best and fell behind (records 7 s old at
take) within a minute.

So the worker's Faust app uses :class:`BatchConsumer`, Faust's own aiokafka consumer with one
method replaced: ``_drain_messages`` puts each fetch's records of the batch topics into an
:class:`Inbox` in one step (other topics still go through Faust's per-message path). The agent
takes from the inbox (:meth:`Inbox.take`): everything that is there, at most ``take_max``
records, waiting for more only until ``within`` seconds after the previous batch was taken, so a
back phase longer than the window adds no wait. Everything else stays Faust's: the consumer
thread, group membership and rebalances, offset tracking and commits (a record counts as done
when :func:`ack` marks its message), the read-offset and gap bookkeeping the drain loop keeps.
Records fetched before a rebalance are not taken after it (:meth:`Inbox.take` drops a stale
generation, as Faust's streams do): the consumer seeks back to the committed offsets and reads
them again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

__all__ = ["BatchApp", "BatchConsumer", "Inbox", "ReadCommittedThread", "ack"]


class Inbox:
    """Records of the batch topics fetched and not yet taken; ``put`` waits while it is full.

    Full means ``max_records`` or more: a put into an inbox with room adds its whole fetch, so
    the inbox can hold up to one fetch more than ``max_records``.
    """

    def __init__(self, topics: Iterable[str], max_records: int) -> None:
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        self.topics = frozenset(topics)
        self.max_records = max_records
        self.dropped_stale = 0
        """records left to the consumer's next read: fetched before a rebalance, taken after"""
        self._messages: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()

    def __len__(self) -> int:
        return len(self._messages)

    async def put(self, messages: list[Message]) -> None:
        """Add one fetch's records in order, once the inbox has room (the consumer waits)."""
        while len(self._messages) >= self.max_records:
            self._room.clear()
            await self._room.wait()
        self._messages.extend(messages)
        self._arrived.set()

    async def _more(self, timeout: float | None) -> bool:
        """Wait for the next put (at most ``timeout`` seconds); whether one came."""
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def take(
        self, max_: int, deadline: float, generation: Callable[[], int] | None = None
    ) -> list[Any]:
        """The next batch: up to ``max_`` records, never none.

        Waits for the first record as long as it takes, then for more until ``max_`` are there
        or the event loop's clock passes ``deadline``. With ``generation`` (which returns the
        consumer's generation as it is when the batch is cut, not when the wait began: a
        rebalance may come meanwhile), records of an earlier generation are dropped.
        """
        loop = asyncio.get_running_loop()
        while True:
            while not self._messages:
                await self._more(None)
            while len(self._messages) < max_:
                left = deadline - loop.time()
                if left <= 0 or not await self._more(left):
                    break
            batch = self.take_ready(max_, generation)
            if batch:
                return batch

    def take_ready(self, max_: int, generation: Callable[[], int] | None = None) -> list[Any]:
        """Up to ``max_`` of the records there now, without waiting (maybe none).

        With ``generation``, records of an earlier generation are dropped (and counted).
        """
        n = min(max_, len(self._messages))
        batch = [self._messages.popleft() for _ in range(n)]
        self._room.set()
        if generation is not None:
            current = generation()
            fresh = [m for m in batch if m.generation_id == current]
            self.dropped_stale += len(batch) - len(fresh)
            batch = fresh
        return batch

    def drop(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Forget the records of ``partitions`` (revoked: their new owner reads them)."""
        gone = set(partitions)
        kept = [m for m in self._messages if (m.topic, m.partition) not in gone]
        dropped = len(self._messages) - len(kept)
        self._messages = deque(kept)
        self._room.set()
        return dropped


class ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose worker consumer reads only committed records.

    A producer writing impressions in Kafka transactions (a Flink or Kafka Streams job with
    exactly-once delivery, an exactly-once Connect source) leaves the records of aborted
    transactions in the log; a consumer reading uncommitted ones would score and count them.
    Faust reads committed records only when the app itself runs in transactions, and has no
    setting for it otherwise, so the level is set on the consumer Faust creates, before it
    starts (aiokafka hands it to the fetcher it starts: ``tests/unit/test_fetch_wait.py``).
    Records outside transactions read the same either way; the offsets of transaction markers
    and aborted records are gaps, which the drain loop below already records.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_isolation_level"):  # pragma: no cover - an aiokafka upgrade
            raise RuntimeError("this aiokafka keeps the isolation level elsewhere: update relmon")
        consumer._isolation_level = "read_committed"
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer; the records of ``app.inbox.topics`` go to the inbox per fetch.

    It reads committed records only (:class:`ReadCommittedThread`).
    """

    def _new_consumer_thread(self) -> ReadCommittedThread:
        return ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs a broker
        inbox: Inbox | None = getattr(self.app, "inbox", None)
        if inbox is None:
            await super()._drain_messages(fetcher)
            return
        try:
            while not (self.should_stop or fetcher.should_stop):
                batch: list[Message] = []
                async for tp, message in self.getmany(timeout=1.0):
                    if not await self._read(tp, message):
                        continue
                    if message.topic in inbox.topics:
                        self.track_message(message)
                        batch.append(message)
                    else:  # Faust's own path, message by message
                        await self.wait_first(self.callback(message), self.suspend_flow.wait())
                if batch:
                    self._mark_inbound(batch)
                    await self.wait_first(inbox.put(batch), self.suspend_flow.wait())
                await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def _read(self, tp: TP, message: Message) -> bool:
        """Keep Faust's read offsets and gaps; False for a record read before (a re-fetch)."""
        last = self._read_offset[tp]
        offset = message.offset
        if last is not None and offset < last:
            return False
        if last and offset - last > 1 and self.app.topics.acks_enabled_for(message.topic):
            await self._add_gap(tp, last + 1, offset)  # offsets the broker will never return
        every = self._commit_every
        if every is not None and self._n_acked >= every:
            self._n_acked = 0
            await self.commit()
        self._read_offset[tp] = offset
        return True

    def _mark_inbound(self, batch: list[Message]) -> None:
        """Tell Faust's monitor the partitions are being processed (its stall check reads it)."""
        monitor = self.app.monitor
        if monitor is None:
            return
        now = time.monotonic()
        for tp in {m.tp for m in batch}:
            monitor.stream_inbound_time[tp] = now


class _BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose consumer hands whole fetches of ``inbox.topics`` to ``inbox``."""

    inbox: Inbox | None = None

    def _new_transport(self) -> Any:
        return _BatchTransport(self.conf.broker_consumer, self)


def ack(app: faust.App, messages: Iterable[Message]) -> None:
    """Mark taken records done: Faust commits an offset once every record before it is."""
    consumer = app.consumer
    sensors = app.sensors
    for message in messages:
        if message.ack(consumer):
            sensors.on_message_out(message.tp, message.offset, message)
