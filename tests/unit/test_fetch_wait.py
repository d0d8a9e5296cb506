"""The worker's fetch wait (RELMON_FETCH_MAX_WAIT_MS) reaches the fetches aiokafka sends.

Faust has no setting for it, so :func:`streams.app.set_fetch_max_wait` sets it on the consumer
Faust started and on its fetcher. These tests fail when an upgrade of Faust or aiokafka moves it,
before a worker would silently run with Faust's 1.5 s again (the scale-out integration test
checks that running workers report ``fetch_wait_set``).
"""

import asyncio
import gc
import inspect
from types import SimpleNamespace
from typing import Any

import aiokafka
from aiokafka.consumer import fetcher
from faust.exceptions import ConsumerNotStarted

from streams.app import set_fetch_max_wait


def test_aiokafka_builds_each_fetch_request_from_the_attribute_the_worker_sets() -> None:
    source = inspect.getsource(fetcher.Fetcher._get_actions_per_node)
    assert "FetchRequest(\n                self._fetch_max_wait_ms," in source

    async def made() -> int:
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers="127.0.0.1:9", fetch_max_wait_ms=1234
        )
        return consumer._fetch_max_wait_ms

    assert asyncio.run(made()) == 1234  # and the consumer hands it to the fetcher it starts


class _Thread:
    def __init__(self, consumer: object) -> None:
        self.consumer = consumer

    def _ensure_consumer(self) -> object:
        if self.consumer is None:
            raise ConsumerNotStarted("not started")
        return self.consumer


def _app(consumer: object) -> Any:
    return SimpleNamespace(consumer=SimpleNamespace(_thread=_Thread(consumer)))


def test_the_wait_is_set_on_the_started_consumer_and_its_fetcher() -> None:
    fetcher = SimpleNamespace(_fetch_max_wait_ms=1500)
    consumer = SimpleNamespace(_fetch_max_wait_ms=1500, _fetcher=fetcher)
    assert set_fetch_max_wait(_app(consumer), 100) is True
    assert consumer._fetch_max_wait_ms == fetcher._fetch_max_wait_ms == 100


def test_a_consumer_not_started_or_of_another_make_is_left_alone() -> None:
    assert set_fetch_max_wait(_app(None), 100) is False  # not started yet: tried again later
    no_fetcher = SimpleNamespace(_fetch_max_wait_ms=1500, _fetcher=None)
    assert set_fetch_max_wait(_app(no_fetcher), 100) is False
    assert no_fetcher._fetch_max_wait_ms == 1500
    moved = SimpleNamespace(_fetcher=SimpleNamespace(wait=1500))  # kept elsewhere
    assert set_fetch_max_wait(_app(moved), 100) is False
    assert not hasattr(moved, "_fetch_max_wait_ms")


def test_the_worker_consumer_reads_only_committed_records() -> None:
    """Records of aborted transactions must not be scored: the worker's consumer, as Faust
    creates it through relmon's consumer class, reads committed records only, and aiokafka
    builds its fetcher from the attribute that is set."""
    from streams.fetches import BatchApp

    source = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "isolation_level=self._isolation_level" in source

    async def made() -> tuple[str, str]:
        app = BatchApp("isolation-test", broker="kafka://127.0.0.1:9", autodiscover=False)
        thread = app.consumer._new_consumer_thread()
        worker = thread._create_worker_consumer(app.transport)
        plain = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
        try:
            return worker._isolation_level, plain._isolation_level
        finally:  # closed here, not by a finaliser at some later garbage collection
            await worker.stop()
            await plain.stop()

    worker_level, default_level = asyncio.run(made())
    # the consumer thread's finalisers run now: run by a later collection inside pytest's
    # ast.parse of a module, they trip CPython 3.11's "AST constructor recursion depth mismatch"
    gc.collect()
    assert (worker_level, default_level) == ("read_committed", "read_uncommitted")
