"""Stream bench: relmon's worker against a plain Faust agent on the same records.

Run: ``python bench/stream.py`` (about 10 minutes on 2 cores). It starts its own tansu broker and
local store in a temporary RELMON_HOME, publishes the replay catalogue (real ESCI products by
default), pre-fills one topic with ``--pages`` result pages and another with ``--scored-pages``,
each page one UBI query record with ``query_response_hit_ids`` (the replayer's page format), and
embeds the catalogue's product texts into the store once (``relmon model embed``, timed as
``catalogue_embed``; each run's database gets a copy of those vectors, as a worker finds them in
production after the command or after any worker has met the product) and then runs, back to
back, each with its own consumer group and ClickHouse database:

1. ``plain_faust``: a Faust agent that takes one event at a time and only ``json.loads`` it
   (the floor of any Faust consumer on this machine), on the ``--pages`` topic;
2. ``relmon_default``: ``relmon worker`` with default settings, i.e. with scoring budgeted by
   the automatic budget (measured scorer capacity, adjusted from lag), on the same topic: the
   headline ``relmon_impressions_per_s`` and ``ratio_vs_plain_faust``. The topic is long enough
   (20,000 pages by default) for the run to last tens of seconds: on a short one the first
   batches, whose plans are made before the budget has measured anything, weigh too much;
3. ``relmon_fixed_budget``: ``relmon worker`` with a fixed scoring budget
   (``RELMON_SCORING_BUDGET_PPS``) of ``--budget-share`` of the scorer capacity run 2 measured,
   on the same topic (a fixed budget acts from the second batch on: its first plans, made before
   anything was measured, are at factor 1);
3b. ``relmon_cold_store``: the default worker with no product embedded yet (it embeds each
   product text on first sight and stores it), on the same topic: the worker before
   ``relmon model embed``, or a new catalogue;
4. ``relmon_unbudgeted``: ``relmon worker`` with ``RELMON_SCORING_BUDGET_PPS=0`` (every sampled
   impression scored, at the base rates: a quarter of the impressions), on the
   ``--scored-pages`` topic (as long as the first by default: with the catalogue's vectors
   shared, 3,000 pages took two batches and half a second);
5. ``lag``: the default worker fed at 3x its scorer's capacity of input (impressions/s whose
   base-rate sample, run 4's share, is 3x the pairs/s it measured at start-up) for ``--lag-s``
   seconds; the lag is bounded when it stops growing (the last third's mean lag at most 1.25x
   the middle third's, or under one second of input);
6. ``latency``: the default worker fed at ``--latency-share`` (80%) of the impressions/s it
   reached in run 2 (the producer then shares the machine with it), for ``--warmup-s`` seconds
   (the budget settles; sampling plans change once per minute of event time) and then
   ``--latency-s`` seconds measured; impression-to-ClickHouse latency is the
   ledger time of each sampled impression (written after its row and review request are
   stored) minus its event time (set when it was produced). Its pages are made before it
   starts and stamped with the time as each is sent: in production the search engine produces
   on its own machines, and the generator's Python would take a share of the two cores from the
   worker under test.

The paced runs (5 and 6) produce with librdkafka (confluent-kafka), as a search engine's C,
Java or Go client would, batching for ``--linger-ms``: 50 by default, not librdkafka's own 5,
because the embedded broker, not the worker, is what small batches slow down: tansu 0.6 keeps
each record batch as an object and lists every one of a partition on each fetch, so with 5 ms
batches its fetches slow down within the run (``bench/broker.py``: at this bench's 80% point, a
bare consumer's p99 age on arrival grew from about 0.1 s to 1.3-1.5 s within 90 s with 5 ms
batches in two runs, and stayed near 0.1 s with 50 ms ones). Apache Kafka's fetch does not
depend on how many batches a partition holds. Or with kafka-python (``--producer
kafka-python``), whose pure-Python sender takes a share of the worker's two cores.

``--latency-only IMPRESSIONS_PER_S`` runs run 6 alone, fed at that rate, and prints its own JSON
line (``latency``, ``cpu``, ``isa``): one point of the latency curve in about three minutes.

Throughput is measured between the consumer's first and last record (the worker's counters,
polled every 0.2 s; the plain agent times itself), so start-up is not counted. Progress goes to
stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/*.py

from relmon import db  # noqa: E402
from relmon.demo import scratch_servers, worker_process  # noqa: E402
from relmon.hostinfo import host  # noqa: E402
from relmon.kafka import (  # noqa: E402
    ensure_topics,
    librdkafka_config,
    produce_waiting,
    producer,
)
from relmon.runtime import free_port, settle_heap, wait_until  # noqa: E402
from relmon.settings import Settings  # noqa: E402
from relmon.sim.chaos import scrape  # noqa: E402
from relmon.sim.replay import ReplayConfig, TrafficGenerator, load_catalog, publish_catalog  # noqa: E402
from relmon.stats import quantile_ms  # noqa: E402

log = logging.getLogger("bench.stream")
POLL_S = 0.2
EMBED_COMMAND = [sys.executable, "-m", "relmon", "model", "embed"]


# --- The plain Faust agent (run in a child process) ---------------------------------------------


def plain_agent(bootstrap: str, topic: str, group: str, expect: int, out: Path) -> None:
    """Consume ``expect`` records one at a time, ``json.loads`` each; time them into ``out``."""
    import faust

    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        autodiscover=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        datadir=str(out.parent / f"faust-{group}"),
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "first": 0.0}

    @app.agent(source)
    async def consume(stream: Any) -> None:
        async for value in stream:
            json.loads(value)
            seen["n"] += 1
            if seen["n"] == 1:
                seen["first"] = time.monotonic()
            if seen["n"] == expect:
                elapsed = time.monotonic() - seen["first"]
                out.write_text(json.dumps({"records": expect - 1, "seconds": elapsed}))

    faust.Worker(app, loglevel="WARNING", redirect_stdouts=False).execute_from_commandline()


def run_plain(settings: Settings, expect: int, timeout_s: float) -> dict[str, float]:
    """Run the plain agent in a child process on ``settings``' impressions topic."""
    out = settings.home / "plain-agent.json"
    argv = [
        sys.executable,
        __file__,
        "--plain-agent",
        ",".join(settings.kafka.servers),
        settings.topics.impressions,
        "plain-faust",
        str(expect),
        str(out),
    ]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(out.exists, timeout=timeout_s, interval=POLL_S, what="the plain Faust agent")
    finally:
        child.terminate()
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
    timing = json.loads(out.read_text())
    return {"events_per_s": timing["records"] / timing["seconds"], **timing}


# --- The relmon worker ---------------------------------------------------------------------------


def counters(settings: Settings) -> dict[str, float]:
    """The worker's /metrics, or {} while it is not up."""
    try:
        return scrape(settings)
    except OSError:
        return {}


def finished(got: dict[str, float], records: int, impressions: int) -> bool:
    """Whether a worker has taken every record and stored every sampled impression."""
    return (
        got.get("consumed", 0) >= records
        and got.get("sampled", 0) + got.get("not_sampled", 0) >= impressions
        and got.get("rows_written", 0) >= got.get("sampled", 1)
        and got.get("pending", 1) == 0
    )


def run_worker(settings: Settings, expect: tuple[int, int], timeout_s: float) -> dict[str, float]:
    """Start a worker on the pre-filled topic; time it from its first to its last record.

    ``expect``: the topic's records and impressions.
    """
    proc = worker_process(settings, f"worker-{settings.kafka.consumer_group}").start()
    try:
        deadline = time.monotonic() + timeout_s
        first: tuple[float, dict[str, float]] | None = None
        while True:
            now, got = time.monotonic(), counters(settings)
            if first is None and got.get("consumed", 0) > 0:
                first = (now, got)
            if finished(got, *expect):
                break
            if not proc.alive() or now > deadline:
                raise RuntimeError(f"worker did not finish: {got}\n{proc.tail()}")
            time.sleep(POLL_S)
        assert first is not None
        # from the first batch taken to the last row stored, every record counted (the worker
        # decodes up to two batches ahead of the one it scores and stores: counting from the
        # first poll's counters would leave out records whose work is in the time)
        seconds = now - first[0]
        records, impressions, batches = got["consumed"], got["impressions"], got["batches"]
        return {
            "seconds": round(seconds, 2),
            "records_per_s": records / seconds,
            "impressions_per_s": impressions / seconds,
            "records_per_batch": records / max(batches, 1),
            "sampled_share": got["sampled"] / max(got["impressions"], 1),
            "scored": got["scored"],
            "budget_factor": got.get("budget_factor", 1.0),
            "scoring_capacity_pps": got.get("scoring_capacity_pps", 0.0),
            **gc_figures(got),
        }
    finally:
        proc.stop()


def gc_figures(got: dict[str, float]) -> dict[str, float]:
    """The worker's time in Python's garbage collector since start-up, from its /metrics."""
    return {name: got[name] for name in ("gc_pause_seconds", "gc_pause_longest_ms") if name in got}


# Pages made before a paced run carry this event time; ``paced`` stamps the time of sending over
# it. Both timestamp spellings the generator writes (``isoformat()``, pydantic's ``...Z``) start
# with the same 26 characters, and so does ``_stamp()``: the records keep their length.
_PLACEHOLDER = datetime(2000, 1, 1, 0, 0, 0, 123457, tzinfo=UTC)
_PLACEHOLDER_TEXT = _PLACEHOLDER.strftime("%Y-%m-%dT%H:%M:%S.%f").encode()

Page = tuple[list[tuple[bytes, bytes]], int]
"""One result page's records (key, value) and the impressions among them."""


def _stamp() -> bytes:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").encode()


def pregenerate(gen: TrafficGenerator, impressions_per_s: float, seconds: float) -> list[Page]:
    """The pages of a paced run, made before it (event time: ``_PLACEHOLDER``).

    In production the search engine produces on its own machines; made during the run, the
    generator's Python would take a share of the bench's two cores from the worker under test.
    """
    pages: list[Page] = []
    want = gen.counts["impressions"] + impressions_per_s * seconds
    while gen.counts["impressions"] < want:
        before = gen.counts["impressions"]
        records = gen.page(_PLACEHOLDER)
        pages.append((records, gen.counts["impressions"] - before))
    return pages


PACE_S = 0.005
"""The paced producer sleeps once it is this far ahead of its schedule, not after every page: with
a wake-up per page (4,000 a second at 40,000 impressions/s) the producing process took 29% of a
core in a ``top`` snapshot, of the two the worker is measured on (11% over 20 s at 36,000 after
this change). Each page is still stamped as it is sent."""


def paced(
    settings: Settings,
    gen: TrafficGenerator | list[Page],
    impressions_per_s: float,
    seconds: float,
    stop: threading.Event,
    delivered: list[tuple[float, float]] | None = None,
) -> int:
    """Produce pages at ``impressions_per_s`` for ``seconds``, event time = now; return
    the impressions produced.

    ``gen`` is a generator, which makes each page as it is sent, or pages made ahead by
    ``pregenerate``, whose placeholder event time is replaced by the time of sending. The
    producer is ``PRODUCER``'s: librdkafka (confluent-kafka, batching for ``linger_ms``) or
    kafka-python. With librdkafka, ``delivered`` gets (wall time sent, seconds until the broker
    acknowledged it) of every record.
    """
    send, close = _paced_producer(settings, delivered)
    topic = settings.topics.impressions
    ahead_made = iter(gen) if isinstance(gen, list) else None
    start, impressions = time.monotonic(), 0
    try:
        while not stop.is_set() and time.monotonic() - start < seconds:
            if ahead_made is None:
                assert isinstance(gen, TrafficGenerator)
                before = gen.counts["impressions"]
                for key, value in gen.page(datetime.now(UTC)):
                    send(topic, key, value)
                impressions += gen.counts["impressions"] - before
            else:
                page = next(ahead_made, None)
                if page is None:
                    break
                now = _stamp()
                for key, value in page[0]:
                    send(topic, key, value.replace(_PLACEHOLDER_TEXT, now))
                impressions += page[1]
            ahead = impressions / impressions_per_s - (time.monotonic() - start)
            if ahead >= PACE_S:
                time.sleep(ahead)
    finally:
        close()
    return impressions


PRODUCER: dict[str, Any] = {"name": "librdkafka", "linger_ms": 50}
"""The paced runs' producer (set from ``--producer`` and ``--linger-ms``)."""


def _paced_producer(
    settings: Settings, delivered: list[tuple[float, float]] | None = None
) -> tuple[Callable[[str, bytes, bytes], None], Callable[[], None]]:
    """``send(topic, key, value)`` and ``close()`` (delivers what is queued) of ``PRODUCER``.

    ``delivered`` (librdkafka only): see :func:`paced`.
    """
    if PRODUCER["name"] != "librdkafka":
        kp = producer(settings)

        def close_kafka_python() -> None:
            kp.flush(60)
            kp.close()

        return lambda topic, key, value: kp.send(topic, key=key, value=value), close_kafka_python
    config = librdkafka_config(settings, **{"acks": "all", "linger.ms": PRODUCER["linger_ms"]})
    rd = Producer(config)

    def on_delivery(err: Any, msg: Any) -> None:  # in poll(), on the sending thread
        took = msg.latency()
        if err is None and took is not None and delivered is not None:
            delivered.append((time.time() - took, took))

    def send(topic: str, key: bytes, value: bytes) -> None:
        produce_waiting(rd, topic, value, key, on_delivery=on_delivery)
        rd.poll(0)

    def close() -> None:
        left = rd.flush(60)
        if left:
            raise RuntimeError(f"{left} records were not delivered")

    return send, close


def run_lag(
    settings: Settings, gen: TrafficGenerator, sampled_share: float, seconds: float
) -> dict[str, Any]:
    """Feed the default worker at 3x its scorer's capacity of input; is the lag bounded?"""
    proc = worker_process(settings, f"worker-{settings.kafka.consumer_group}").start()
    stop = threading.Event()
    try:
        wait_until(
            lambda: counters(settings).get("scoring_capacity_pps", 0) > 0,
            timeout=300,
            interval=POLL_S,
            what="the worker's scorer capacity",
            alive=proc.alive,
        )
        capacity = counters(settings)["scoring_capacity_pps"]
        rate = 3 * capacity / max(sampled_share, 1e-3)
        log.info("lag run: capacity %.0f pairs/s, input %.0f impressions/s", capacity, rate)
        feeder = threading.Thread(target=paced, args=(settings, gen, rate, seconds, stop))
        began = time.monotonic()
        feeder.start()
        lags: list[float] = []
        factors: list[float] = []
        while feeder.is_alive():
            got = counters(settings)
            lags.append(got.get("processing_lag_records", 0.0))
            factors.append(got.get("budget_factor", 1.0))
            time.sleep(1.0)
        achieved = gen.counts["impressions"] / (time.monotonic() - began)
        third = max(len(lags) // 3, 1)
        middle = statistics.fmean(lags[third : 2 * third] or [0.0])
        last = statistics.fmean(lags[2 * third :] or [0.0])
        records_per_s = rate / max(gen.config.page_size, 1)
        bounded = last <= max(1.25 * middle, records_per_s)
        return {
            "input_impressions_per_s": round(rate, 1),
            "produced_impressions_per_s": round(achieved, 1),
            "scoring_capacity_pps": capacity,
            "lag_records_middle_third": round(middle, 1),
            "lag_records_last_third": round(last, 1),
            "budget_factor_last": factors[-1] if factors else 1.0,
            "lag_bounded": bounded,
        }
    finally:
        stop.set()
        proc.stop()


def run_latency(
    settings: Settings,
    gen: TrafficGenerator,
    impressions_per_s: float,
    warmup_s: float,
    seconds: float,
) -> dict[str, Any]:
    """Feed the default worker at ``impressions_per_s``; impression-to-ClickHouse latency."""
    proc = worker_process(settings, f"worker-{settings.kafka.consumer_group}").start()
    stop = threading.Event()
    try:
        wait_until(
            lambda: "batches" in counters(settings),
            timeout=300,
            interval=POLL_S,
            what="the worker's metrics",
            alive=proc.alive,
        )
        pages = pregenerate(gen, impressions_per_s, warmup_s + seconds)
        # the pages live until the run ends: out of the collector's sight, so that its full
        # passes over them (0.7 s each, measured) do not stall the producer mid-run
        settle_heap()
        started = datetime.now(UTC) + timedelta(seconds=warmup_s)
        began = time.monotonic()
        delivered: list[tuple[float, float]] = []
        produced = paced(settings, pages, impressions_per_s, warmup_s + seconds, stop, delivered)
        achieved = produced / (time.monotonic() - began)  # the producer may fall short
        wait_until(
            lambda: finished(counters(settings), 0, produced),
            timeout=120,
            interval=POLL_S,
            what="the worker to drain",
            alive=proc.alive,
        )
        gc_at_end = gc_figures(counters(settings))
        client = db.connect(settings)
        try:

            def ledger_complete() -> bool:  # the ledger write follows the row write
                done = client.command("SELECT count() FROM impression_ledger FINAL")
                stored = client.command("SELECT count() FROM scored_impressions FINAL")
                return bool(done == stored)

            wait_until(ledger_complete, timeout=60, interval=POLL_S, what="the ledger")
            rows = client.query(
                "SELECT quantiles(0.5, 0.99)(dateDiff('millisecond', event_time, done_at)), "
                "count() FROM impression_ledger FINAL "
                "WHERE event_time >= {since:DateTime64(3, 'UTC')}",
                parameters={"since": started},
            ).result_rows
        finally:
            client.close()
        ((quantiles, count),) = rows
        since = started.timestamp()
        to_broker = sorted(took for sent, took in delivered if sent >= since)
        return {
            "input_impressions_per_s": round(impressions_per_s, 1),
            "produced_impressions_per_s": round(achieved, 1),
            "rows": count,
            # no sampled row in the window (too short a run): no figure, not NaN
            "latency_ms_p50": round(quantiles[0], 1) if count else None,
            "latency_ms_p99": round(quantiles[1], 1) if count else None,
            # the producer's share of it: from sending a record until the broker acknowledged
            # it (acks=all), librdkafka's own measure; the bench's producer shares the cores
            "producer_to_broker_ms_p50": quantile_ms(to_broker, 0.5),
            "producer_to_broker_ms_p99": quantile_ms(to_broker, 0.99),
            **gc_at_end,
        }
    finally:
        stop.set()
        proc.stop()


# --- Set-up and the runs -------------------------------------------------------------------------


def prefill(settings: Settings, gen: TrafficGenerator, pages: int) -> tuple[int, int]:
    """Produce ``pages`` pages over the last 10 minutes of event time; (records, impressions)."""
    prod = producer(settings)
    start = datetime.now(UTC) - timedelta(minutes=10)
    records = 0
    for i in range(pages):
        for key, value in gen.page(start + timedelta(seconds=600 * i / pages)):
            prod.send(settings.topics.impressions, key=key, value=value)
            records += 1
    prod.flush(120)
    prod.close()
    return records, gen.counts["impressions"]


def embed_catalogue(settings: Settings, config: ReplayConfig) -> dict[str, Any]:
    """``relmon model embed`` of the published catalogue into ``settings``' database."""
    started = time.monotonic()
    out = subprocess.run(
        [*EMBED_COMMAND, "--dataset", config.dataset, "--seed", str(config.seed)],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    report["command_seconds"] = round(time.monotonic() - started, 2)
    return report


def run_settings(
    base: Settings,
    name: str,
    *,
    own_topic: bool = False,
    embedded: bool = True,
    **overrides: object,
) -> Settings:
    """``base`` with its own consumer group, database and metrics port.

    ``own_topic``: an impressions topic of its own too, so a paced run does not start behind
    the pre-filled records (its group reads from the earliest offset). ``embedded``: the
    database starts with the catalogue's vectors (copied from ``base``'s, which
    :func:`embed_catalogue` filled); else with none.
    """
    if own_topic:
        overrides["topic_impressions"] = f"bench-{name}.impressions"
    s = base.with_overrides(
        consumer_group=f"bench-{name}",
        clickhouse_database=f"bench_{name}",
        metrics_port=free_port(),
        **overrides,
    )
    ensure_topics(s)
    db.migrate(s)
    if embedded:
        client = db.connect(s)
        try:  # the databases' names come from this bench, not from input
            client.command(
                f"INSERT INTO {s.clickhouse.database}.text_embeddings "
                f"SELECT * FROM {base.clickhouse.database}.text_embeddings"
            )
        finally:
            client.close()
    return s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--pages", type=int, default=20000, help="pre-filled result pages (runs 1 to 3)"
    )
    parser.add_argument(
        "--scored-pages", type=int, default=20000, help="pre-filled result pages (run 4)"
    )
    parser.add_argument("--page-size", type=int, default=10)
    parser.add_argument("--dataset", choices=["esci", "synthetic"], default="esci")
    parser.add_argument("--lag-s", type=float, default=60.0)
    parser.add_argument("--latency-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=90.0)
    parser.add_argument(
        "--latency-share", type=float, default=0.8, help="input of run 6, share of run 2's rate"
    )
    parser.add_argument("--budget-share", type=float, default=0.25)
    parser.add_argument(
        "--producer",
        choices=["kafka-python", "librdkafka"],
        default="librdkafka",
        help="the paced runs' producer (runs 5 and 6)",
    )
    parser.add_argument(
        "--linger-ms", type=int, default=50, help="librdkafka's linger.ms (its own default: 5)"
    )
    parser.add_argument(
        "--latency-only",
        type=float,
        metavar="IMPRESSIONS_PER_S",
        help="run only run 6, fed at this rate (no pre-fill, no other run): about 3 minutes",
    )
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "relmon-minilm-ce")
    parser.add_argument("--keep", action="store_true", help="keep the temporary RELMON_HOME")
    args = parser.parse_args()
    PRODUCER.update(name=args.producer, linger_ms=args.linger_ms)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = ReplayConfig.clean_pages(seed=7, dataset=args.dataset, page_size=args.page_size)
    with scratch_servers("relmon-stream-", args.model_dir, keep=args.keep) as base:
        ensure_topics(base)
        catalog = load_catalog(config)
        publish_catalog(base, catalog)
        db.migrate(base)
        embedded = embed_catalogue(base, config)
        log.info("catalogue embedded: %s", embedded)
        if args.latency_only is not None:
            latency = run_latency(
                run_settings(base, "latency", own_topic=True),
                TrafficGenerator(catalog, replace(config, seed=9)),
                args.latency_only,
                args.warmup_s,
                args.latency_s,
            )
            only = {"bench": "stream", "dataset": args.dataset, "latency_only": True}
            only["producer"] = dict(PRODUCER)
            print(json.dumps({**only, "latency": latency, **host()}), flush=True)
            return 0
        gen = TrafficGenerator(catalog, config)
        records, impressions = prefill(base, gen, args.pages)
        log.info("pre-filled %d records (%d impressions)", records, impressions)
        scored_topic = "bench.scored-impressions"
        scored_base = base.with_overrides(topic_impressions=scored_topic)
        ensure_topics(scored_base)
        scored = prefill(
            scored_base, TrafficGenerator(catalog, replace(config, seed=10)), args.scored_pages
        )
        log.info("pre-filled %d records (%d impressions) for the unbudgeted run", *scored)

        plain = run_plain(base, records, args.timeout_s)
        log.info("plain Faust agent: %.0f events/s", plain["events_per_s"])
        expect = (records, impressions)
        default = run_worker(run_settings(base, "default"), expect, args.timeout_s)
        log.info("relmon worker, defaults: %s", default)
        budget_pps = round(args.budget_share * default["scoring_capacity_pps"], 1)
        fixed = run_worker(
            run_settings(base, "fixed", scoring_budget_pps=str(budget_pps)), expect, args.timeout_s
        )
        log.info("relmon worker, budget %.1f pairs/s: %s", budget_pps, fixed)
        cold = run_worker(run_settings(base, "cold", embedded=False), expect, args.timeout_s)
        log.info("relmon worker, defaults, no product embedded yet: %s", cold)
        unbudgeted = run_worker(
            run_settings(
                base, "unbudgeted", topic_impressions=scored_topic, scoring_budget_pps="0"
            ),
            scored,
            args.timeout_s,
        )
        log.info("relmon worker, no budget: %s", unbudgeted)

        fresh = TrafficGenerator(catalog, replace(config, seed=8))
        lag = run_lag(
            run_settings(base, "lag", own_topic=True),
            fresh,
            unbudgeted["sampled_share"],
            args.lag_s,
        )
        log.info("lag at 3x capacity: %s", lag)
        latency = run_latency(
            run_settings(base, "latency", own_topic=True),
            TrafficGenerator(catalog, replace(config, seed=9)),
            args.latency_share * default["impressions_per_s"],
            args.warmup_s,
            args.latency_s,
        )
        log.info("latency at %.0f%% of capacity: %s", 100 * args.latency_share, latency)
    result = {
        "bench": "stream",
        "dataset": args.dataset,
        "records": records,
        "impressions": impressions,
        "scored_run_records": scored[0],
        "page_size": args.page_size,
        "plain_faust_events_per_s": round(plain["events_per_s"], 1),
        "relmon_impressions_per_s": round(default["impressions_per_s"], 1),
        "relmon_records_per_s": round(default["records_per_s"], 1),
        "ratio_vs_plain_faust": round(default["impressions_per_s"] / plain["events_per_s"], 2),
        "relmon_default": default,
        "catalogue_embed": embedded,
        "relmon_cold_store": cold,
        "cold_store_impressions_per_s": round(cold["impressions_per_s"], 1),
        "fixed_budget_pps": budget_pps,
        "relmon_fixed_budget": fixed,
        "relmon_unbudgeted": unbudgeted,
        "lag": lag,
        "lag_bounded": lag["lag_bounded"],
        "latency_share": args.latency_share,
        "producer": dict(PRODUCER),
        "latency": latency,
        "latency_ms_p50": latency["latency_ms_p50"],
        "latency_ms_p99": latency["latency_ms_p99"],
        **host(),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--plain-agent":
        _, _, servers, topic, group, expect, out = sys.argv
        sys.argv = [sys.argv[0], "worker"]  # faust's Worker reads its command line
        plain_agent(servers, topic, group, int(expect), Path(out))
    else:
        sys.exit(main())
