"""The embedded broker alone: how late a bare consumer sees records, by the producer's batch size.

Run: ``python bench/broker.py`` (about 5 minutes on 2 cores). It starts the embedded tansu broker
(no store, no worker) in a temporary RELMON_HOME and, for each ``--linger-ms`` value in turn, on a
topic of its own: a librdkafka producer sends real replay page records (ESCI pages of 10, the
stream bench's traffic) at ``--records-per-s`` for ``--seconds`` (batching for that linger), while
a bare aiokafka consumer tails the topic with the worker's fetch settings (its fetch wait
``RELMON_FETCH_MAX_WAIT_MS``, Faust's 1 MiB a partition) and only notes how old each record is on
arrival (now minus the record's create time, stamped by librdkafka as it is produced). So the
figures are the broker's and the client's, with nothing of relmon's worker in them.

Why: tansu 0.6 (memory storage) keeps each produced record batch as its own object and lists
every object of a partition on each fetch, so its fetches slow down as batches accumulate, and
small batches accumulate fast. The age on arrival is printed per ``--window-s`` window, so the
trend is visible; the peer is the same broker, rate and records with the largest linger.

Then the cause, alone: in a topic of one partition, each record produced as a batch of its own,
the time to fetch the partition's last record (the median of 5) once ``--batches`` batches are
stored (``fetch_ms_by_batches_stored``).

The last line on stdout is one JSON object: per linger, the age quantiles of each window and of
the whole run; ``last_window_p99_ratio`` (the smallest linger's p99 in the last window
wholly within the production over the largest's); ``cpu``, ``isa``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/*.py

from relmon.hostinfo import host  # noqa: E402
from relmon.kafka import (  # noqa: E402
    broker_process,
    ensure_topics,
    librdkafka_config,
    produce_waiting,
)
from relmon.runtime import free_port  # noqa: E402
from relmon.settings import Settings, load_settings  # noqa: E402
from relmon.sim.replay import ReplayConfig, TrafficGenerator, load_catalog  # noqa: E402
from relmon.stats import quantile_ms  # noqa: E402

log = logging.getLogger("bench.broker")
PACE_S = 0.005
"""The producer sleeps once it is this far ahead of its schedule (as the stream bench's does)."""


def page_records(count: int, page_size: int) -> list[tuple[bytes, bytes]]:
    """``count`` (key, value) page records of the stream bench's traffic, made ahead."""
    config = ReplayConfig.clean_pages(seed=7, dataset="esci", page_size=page_size)
    gen = TrafficGenerator(load_catalog(config), config)
    now = datetime.now(UTC)
    records: list[tuple[bytes, bytes]] = []
    while len(records) < count:
        records.extend(gen.page(now))
    return records[:count]


class Tail:
    """A bare aiokafka consumer on its own thread, noting each record's (arrival, age) in s."""

    def __init__(self, settings: Settings, topic: str, expect: int) -> None:
        self.settings, self.topic, self.expect = settings, topic, expect
        self.arrivals: list[tuple[float, float]] = []
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tail", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._tail())
        except BaseException as exc:  # reported by join()
            self.error = exc
            self.ready.set()

    async def _tail(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.settings.kafka.servers,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=1024**2,  # Faust's consumer_max_fetch_size
            fetch_max_wait_ms=self.settings.ingest.fetch_max_wait_ms,
        )
        await consumer.start()
        self.ready.set()
        try:
            while len(self.arrivals) < self.expect:
                fetched = await consumer.getmany(timeout_ms=1000)
                now = time.time()
                for records in fetched.values():
                    self.arrivals.extend((now, now - r.timestamp / 1000) for r in records)
        finally:
            await consumer.stop()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        if self.thread.is_alive():
            raise TimeoutError(f"{len(self.arrivals)} of {self.expect} records arrived")


def produce(
    settings: Settings,
    topic: str,
    records: list[tuple[bytes, bytes]],
    per_s: float,
    linger_ms: int,
) -> float:
    """Send ``records`` at ``per_s`` with librdkafka; the rate achieved."""
    producer = Producer(librdkafka_config(settings, **{"acks": "all", "linger.ms": linger_ms}))
    start = time.monotonic()
    for sent, (key, value) in enumerate(records, 1):
        produce_waiting(producer, topic, value, key)
        producer.poll(0)
        ahead = sent / per_s - (time.monotonic() - start)
        if ahead >= PACE_S:
            time.sleep(ahead)
    achieved = len(records) / (time.monotonic() - start)
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{left} records were not delivered")
    return achieved


def run(
    settings: Settings, records: list[tuple[bytes, bytes]], linger_ms: int, args: Any
) -> dict[str, Any]:
    """One linger: produce and tail a fresh topic; the ages on arrival."""
    topic = f"bench-broker-linger-{linger_ms}"
    ensure_topics(settings.with_overrides(topic_impressions=topic))
    tail = Tail(settings, topic, len(records))
    tail.thread.start()
    if not tail.ready.wait(60):
        raise TimeoutError("the consumer did not start")
    achieved = produce(settings, topic, records, args.records_per_s, linger_ms)
    tail.join(timeout=300)
    start, width = tail.arrivals[0][0], args.window_s
    windows = []
    for i in range(int((tail.arrivals[-1][0] - start) // width) + 1):
        ages = sorted(a for t, a in tail.arrivals if i * width <= t - start < (i + 1) * width)
        p50, p99 = quantile_ms(ages, 0.5), quantile_ms(ages, 0.99)
        windows.append({"from_s": i * width, "records": len(ages), "p50": p50, "p99": p99})
    ages = sorted(a for _, a in tail.arrivals)
    report = {
        "records_per_s": round(achieved, 1),
        "age_ms_p50": quantile_ms(ages, 0.5),
        "age_ms_p99": quantile_ms(ages, 0.99),
        "age_ms_max": quantile_ms(ages, 1.0),
        "windows": windows,
    }
    log.info("linger %d ms: %s", linger_ms, report)
    return report


async def _fetch_last_ms(settings: Settings, topic: str, repeats: int = 5) -> float:
    """Median ms to fetch the last record of partition 0 of ``topic`` (a fresh seek each time)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.ingest.fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        took = []
        for _ in range(repeats):
            consumer.seek(tp, end - 1)
            started = time.perf_counter()
            fetched = await consumer.getmany(tp, timeout_ms=30_000)
            took.append(1000 * (time.perf_counter() - started))
            if not fetched.get(tp):
                raise TimeoutError(f"no record fetched at offset {end - 1}")
        return round(statistics.median(took), 1)
    finally:
        await consumer.stop()


def fetch_cost(settings: Settings, sizes: list[int]) -> dict[str, float]:
    """Fetch time of a partition's last record by the record batches stored before it.

    Each record goes out as a batch of its own (``batch.num.messages`` 1), into a topic of one
    partition, until the partition holds each of ``sizes`` batches in turn.
    """
    topic = "bench-broker-fetch-cost"
    ensure_topics(settings.with_overrides(topic_impressions=topic, topic_partitions=1))
    config = {"acks": "all", "linger.ms": 0, "batch.num.messages": 1}
    producer = Producer(librdkafka_config(settings, **config))
    stored, cost = 0, {}
    for size in sorted(sizes):
        while stored < size:
            produce_waiting(producer, topic, b"x" * 342)
            stored += 1
            producer.poll(0)
        if producer.flush(120):
            raise RuntimeError("records were not delivered")
        cost[str(size)] = asyncio.run(_fetch_last_ms(settings, topic))
        log.info("a fetch with %d batches stored: %.1f ms", size, cost[str(size)])
    return cost


def last_full_window(report: dict[str, Any], args: Any) -> dict[str, Any]:
    """The last window that lies wholly within the production (not the drain after it)."""
    full = [w for w in report["windows"] if w["from_s"] + args.window_s <= args.seconds]
    return full[-1] if full else report["windows"][-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--records-per-s",
        type=float,
        default=4000.0,
        help="page records a second (4,000 pages of 10: the stream bench's 80%% point)",
    )
    parser.add_argument("--seconds", type=float, default=90.0, help="produced per linger")
    parser.add_argument("--window-s", type=float, default=15.0)
    parser.add_argument("--linger-ms", default="5,50", help="comma-separated, each a run")
    parser.add_argument("--page-size", type=int, default=10)
    parser.add_argument(
        "--batches",
        default="1000,10000,50000",
        help="comma-separated: batches stored in a partition when its fetch is timed",
    )
    args = parser.parse_args()
    lingers = sorted(int(x) for x in args.linger_ms.split(","))
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    records = page_records(int(args.records_per_s * args.seconds), args.page_size)
    home = Path(tempfile.mkdtemp(prefix="relmon-broker-"))
    port = free_port()
    settings = load_settings(home=home, kafka_bootstrap=f"127.0.0.1:{port}")
    try:
        with broker_process(settings, port):
            runs = {f"linger_{ms}": run(settings, records, ms, args) for ms in lingers}
            cost = fetch_cost(settings, [int(x) for x in args.batches.split(",")])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    first, last = runs[f"linger_{lingers[0]}"], runs[f"linger_{lingers[-1]}"]
    tail_of = [last_full_window(r, args)["p99"] for r in (first, last)]
    result = {
        "bench": "broker",
        "records_per_s": args.records_per_s,
        "seconds": args.seconds,
        "record_bytes_mean": round(sum(len(v) for _, v in records) / len(records)),
        "partitions": settings.topics.partitions,
        "fetch_max_wait_ms": settings.ingest.fetch_max_wait_ms,
        **runs,
        "fetch_ms_by_batches_stored": cost,
        "last_window_p99_ratio": (
            round(tail_of[0] / tail_of[1], 2) if None not in tail_of and tail_of[1] else None
        ),
        **host(),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
