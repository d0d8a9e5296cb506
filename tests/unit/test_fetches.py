"""The worker's inbox of whole fetches (streams.fetches): batches, order, room, rebalances."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP, Message
from faust.types.tuples import ConsumerMessage

from streams.fetches import BatchApp, BatchConsumer, Inbox, ack

TOPIC = "relmon.impressions"
FAR = 3600.0  # a deadline no test reaches: a take that waits for it times out the test
LIMIT = 30.0  # how long a test awaits what must happen


def msg(offset: int, partition: int = 0, generation: int = 1) -> Any:
    return SimpleNamespace(
        topic=TOPIC, partition=partition, offset=offset, generation_id=generation
    )


def offsets(batch: list[Any]) -> list[int]:
    return [m.offset for m in batch]


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(test())

    return sync


async def now() -> float:
    return asyncio.get_running_loop().time()


@run
async def test_a_full_batch_is_taken_without_waiting_for_the_deadline() -> None:
    inbox = Inbox([TOPIC], max_records=100)
    await inbox.put([msg(i) for i in range(5)])
    batch = await asyncio.wait_for(inbox.take(3, deadline=await now() + FAR), LIMIT)
    assert offsets(batch) == [0, 1, 2]
    rest = await asyncio.wait_for(inbox.take(3, deadline=await now()), LIMIT)
    assert offsets(rest) == [3, 4]
    assert len(inbox) == 0


@run
async def test_a_partial_batch_waits_for_more_until_the_deadline() -> None:
    inbox = Inbox([TOPIC], max_records=100)
    await inbox.put([msg(0)])
    take = asyncio.ensure_future(inbox.take(3, deadline=await now() + FAR))
    await asyncio.sleep(0)
    assert not take.done()  # one record and a far deadline: it waits for more
    await inbox.put([msg(1), msg(2)])
    batch = await asyncio.wait_for(take, LIMIT)
    assert offsets(batch) == [0, 1, 2]


@run
async def test_a_passed_deadline_hands_over_what_is_there() -> None:
    inbox = Inbox([TOPIC], max_records=100)
    await inbox.put([msg(0), msg(1)])
    batch = await asyncio.wait_for(inbox.take(4096, deadline=await now() - 1.0), LIMIT)
    assert offsets(batch) == [0, 1]


@run
async def test_an_empty_inbox_waits_for_the_first_record_past_the_deadline() -> None:
    inbox = Inbox([TOPIC], max_records=100)
    take = asyncio.ensure_future(inbox.take(10, deadline=await now() - 1.0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not take.done()
    await inbox.put([msg(7)])
    assert offsets(await asyncio.wait_for(take, LIMIT)) == [7]


@run
async def test_put_waits_while_the_inbox_is_full() -> None:
    inbox = Inbox([TOPIC], max_records=2)
    await inbox.put([msg(0), msg(1)])
    put = asyncio.ensure_future(inbox.put([msg(2)]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not put.done() and len(inbox) == 2
    assert offsets(await inbox.take(1, deadline=await now())) == [0]
    await asyncio.wait_for(put, LIMIT)
    assert offsets(await inbox.take(10, deadline=await now())) == [1, 2]


@run
async def test_records_of_an_earlier_generation_are_dropped_and_counted() -> None:
    inbox = Inbox([TOPIC], max_records=100)
    await inbox.put([msg(0, generation=1), msg(1, generation=2), msg(2, generation=1)])
    batch = await inbox.take(10, deadline=await now(), generation=lambda: 2)
    assert offsets(batch) == [1]
    assert inbox.dropped_stale == 2


@run
async def test_a_batch_of_only_stale_records_is_not_returned() -> None:
    inbox = Inbox([TOPIC], max_records=100)
    await inbox.put([msg(0, generation=1)])
    take = asyncio.ensure_future(inbox.take(10, deadline=await now(), generation=lambda: 2))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not take.done() and inbox.dropped_stale == 1
    await inbox.put([msg(1, generation=2)])
    assert offsets(await asyncio.wait_for(take, LIMIT)) == [1]


@run
async def test_take_ready_hands_over_what_is_there_without_waiting() -> None:
    inbox = Inbox([TOPIC], max_records=100)
    assert inbox.take_ready(10) == []  # empty: no wait for a first record
    await inbox.put([msg(0, generation=1), msg(1, generation=2), msg(2, generation=2)])
    assert offsets(inbox.take_ready(2, generation=lambda: 2)) == [1]  # the stale one dropped
    assert inbox.dropped_stale == 1
    assert offsets(inbox.take_ready(10, generation=lambda: 2)) == [2]
    assert inbox.take_ready(0) == [] and len(inbox) == 0


@run
async def test_the_generation_is_read_when_the_batch_is_cut_not_when_the_wait_began() -> None:
    inbox = Inbox([TOPIC], max_records=100)
    consumer = SimpleNamespace(generation=1)
    take = asyncio.ensure_future(
        inbox.take(10, deadline=await now(), generation=lambda: consumer.generation)
    )
    await asyncio.sleep(0)
    consumer.generation = 2  # a rebalance while the agent waits for records
    await inbox.put([msg(0, generation=2)])
    assert offsets(await asyncio.wait_for(take, LIMIT)) == [0]
    assert inbox.dropped_stale == 0


@run
async def test_revoked_partitions_are_dropped_and_make_room() -> None:
    inbox = Inbox([TOPIC], max_records=3)
    await inbox.put([msg(0, 0), msg(0, 1), msg(1, 0)])
    put = asyncio.ensure_future(inbox.put([msg(1, 1)]))
    await asyncio.sleep(0)
    assert inbox.drop([(TOPIC, 0)]) == 2
    await asyncio.wait_for(put, LIMIT)
    batch = await inbox.take(10, deadline=await now())
    assert [(m.partition, m.offset) for m in batch] == [(1, 0), (1, 1)]


def test_an_inbox_needs_room_for_a_record() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Inbox([TOPIC], max_records=0)


class _Consumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Message) -> bool:  # as Faust's Consumer.ack: once per message
        if message.acked:
            return False
        message.acked = True
        self.acked.append(message.offset)
        return True


def test_ack_marks_each_message_once_and_tells_the_sensors() -> None:
    consumer = _Consumer()
    out: list[int] = []
    app = SimpleNamespace(
        consumer=consumer,
        sensors=SimpleNamespace(on_message_out=lambda tp, offset, m: out.append(offset)),
    )
    tp = TP(TOPIC, 0)
    messages = [ConsumerMessage(TOPIC, 0, o, 0.0, 0, None, b"k", b"v", None, tp=tp) for o in (5, 6)]
    ack(app, messages)  # type: ignore[arg-type]
    ack(app, messages)  # type: ignore[arg-type]  # acked already: nothing more
    assert consumer.acked == [5, 6] and out == [5, 6]


def test_the_app_builds_the_batch_consumer() -> None:
    app = BatchApp("relmon-test-fetches", broker="kafka://127.0.0.1:9", autodiscover=False)
    assert app.transport.Consumer is BatchConsumer
    assert issubclass(BatchConsumer, faust.transport.drivers.aiokafka.Consumer)
