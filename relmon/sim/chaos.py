"""The chaos run: the whole pipeline twice on the same input, once clean and once under faults.

:func:`run_chaos` needs a running broker and store (``settings``); it starts everything else as
real processes: a second local store of its own (the one it takes down), ``relmon worker`` and
``relmon teacher`` processes, and a :class:`~relmon.teacher.fakes.FakeChatServer` per run. The
input is a deterministic stream of synthetic result pages (relmon impressions with and without
product text, UBI query records and UBI impressions numbered from 0) mixed with hostile records
(:func:`hostile_records`), produced in three phases to one topic that both runs read.

The chaos run injects, in one run: chat API faults from the start (500, 429, slow and hanging
answers), its store stopped for ``store_down_s`` while the second phase arrives, the worker
SIGKILLed while it is stuck on that outage with a batch in flight, a restart attempt during the
outage (a worker exits when its store is down at start: a supervisor starts it again), a
restart once the store is back, and a second outage of ``ride_through_s`` while the third phase
arrives, which the restarted worker rides out. The clean run (one worker, the shared store, a
chat API without faults) runs during the first outage.

Accounting comes from the workers' own counters (``/metrics``) and from the dead-letter topic.
Counters restart with each process, and a killed worker had counted records it never committed,
which its successor reads again. So the killed worker's counters are taken at a point where
they cover exactly what it committed: when it had committed the whole first phase and was idle,
just before the outage. The kill then comes after the second phase arrived, and the run checks
that the committed offsets had not moved past the first phase; the successor's counters cover
the later phases. ``lost`` is the input records minus every record counted as stored (sampled),
not sampled, ignored by design (UBI query records, non-impression UBI events) or dead-lettered
(distinct input offsets in the dead-letter topic), so a record dropped silently, or counted by
no one, shows up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient

from relmon import db
from relmon.demo import env_of, store_process, worker_process
from relmon.errors import ServiceError
from relmon.hostinfo import cpu_model, isa_flags
from relmon.kafka import ensure_topics, kafka_connection, producer, read_topic
from relmon.lag import consumer_lag
from relmon.runtime import ManagedProcess, free_port, relmon_argv, wait_until
from relmon.settings import Settings
from relmon.sim.replay import ReplayConfig, TrafficGenerator, publish_catalog, to_catalog_product
from relmon.sim.synth import SyntheticCatalog
from relmon.teacher import store as teacher_store
from relmon.teacher.fakes import FakeChatServer
from schemas.models import DeadLetter, Impression, ReviewRequest

__all__ = ["DEFAULT_CHAT_FAULTS", "ChaosConfig", "hostile_records", "run_chaos"]

log = logging.getLogger(__name__)

DEFAULT_CHAT_FAULTS: tuple[str, ...] = (
    "500",
    "ok",
    "429",
    "slow:1.0",
    "500",
    "500",
    "500",
    "hang",
    "ok",
    "429",
    "slow:0.5",
    "500",
    "hang",
    "429",
    "ok",
    "slow:1.5",
)
"""The chat API's answers in the chaos run, one per request, then normal answers ("ok")."""

ROWS = (
    "SELECT impression_id, query_id, product_id, position, event_time, tier, position_bucket, "
    "sample_rate, is_bad, plan_id, model_version FROM scored_impressions FINAL ORDER BY ALL"
)
ROLLUPS = tuple(
    f"SELECT window_start, tier, category, locale, position_bucket, model_version, sampled, bad, "
    f"round(sum_w, 9), round(sum_w_bad, 9), round(sum_w2, 9) FROM {view} ORDER BY ALL"
    for view in ("bad_case_rollup_1h", "bad_case_rollup_1d")
)
RATES = tuple(
    f"SELECT window_start, tier, category, locale, position_bucket, sampled, bad, "
    f"round(weighted_rate, 9), round(ci_low, 9), round(ci_high, 9) FROM {view} ORDER BY ALL"
    for view in ("bad_case_rates", "bad_case_rates_1h", "bad_case_rates_1d")
)


@dataclass(frozen=True)
class ChaosConfig:
    """What to run: input size, faults, budget and how long to wait at most."""

    pages: int = 80
    """synthetic result pages (10 results each, some with a UBI query record)"""
    seed: int = 11
    store_down_s: float = 60.0
    """the outage during which the worker is killed"""
    ride_through_s: float = 15.0
    """a second outage, which the restarted worker rides out while the third phase arrives"""
    teacher_budget: int = 40
    """chat requests per day for each run's teacher (each run has its own spend ledger)"""
    chat_faults: tuple[str, ...] = DEFAULT_CHAT_FAULTS
    kill_delay_s: tuple[float, float] = (0.5, 3.0)
    """the kill comes this long (uniform, seeded) after the worker is seen stuck on the outage"""
    timeout_s: float = 300.0
    """longest wait for any one step (a worker draining, a teacher finishing)"""


@dataclass(frozen=True)
class _Record:
    partition: int
    key: bytes
    value: bytes | None


@dataclass
class _Input:
    """The produced input: end offset per partition and the original bytes by coordinates."""

    topic: str
    ends: dict[int, int] = field(default_factory=dict)
    values: dict[tuple[int, int], bytes | None] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.values)


# --- Input --------------------------------------------------------------------------------------


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def hostile_records(now: datetime, product_id: str) -> list[tuple[str, bytes | None]]:
    """Records that must not stop, hang or fool the worker, by name.

    Each is dead-lettered or ignored by design, except the last two (valid impressions of
    ``product_id``: 20 days old, and a query with control characters). They are the inputs that
    broke earlier versions (issue 11): deep nesting, integers beyond Python's 4,300-digit limit,
    a record near the broker's 1 MB limit, bytes that are not UTF-8, event times outside the
    acceptance window, types the JSON Schemas do not allow. (UBI impressions numbered from 0 are
    in every UBI page of the ordinary traffic.)
    """

    def imp(name: str, **changes: Any) -> bytes:
        base = {
            "impression_id": f"hostile-{name}",
            "query_id": f"hq-{name}",
            "query": "oak writing desk",
            "product_id": product_id,
            "position": 3,
            "event_time": _iso(now),
        }
        return json.dumps({**base, **changes}).encode()

    def ubi(action: str = "impression", ordinal: object = 0, **changes: Any) -> bytes:
        event = {
            "action_name": action,
            "query_id": "hq-ubi-unknown",
            "timestamp": _iso(now),
            "event_attributes": {
                "object": {"object_id": product_id},
                "position": {"ordinal": ordinal},
            },
        }
        return json.dumps({**event, **changes}).encode()

    deep, digits = 10_000, b"9" * 5_000
    nested = b"[" * deep + b"]" * deep
    huge_position = imp("digits", position=7).replace(b'"position": 7', b'"position": ' + digits)
    return [
        ("deep_array", nested),
        ("deep_object", b'{"a":' * deep + b"1" + b"}" * deep),
        ("deep_field", imp("deep")[:-1] + b', "attributes": ' + nested + b"}"),
        ("int_5000_digits", huge_position),
        ("bare_int_5000_digits", digits),
        ("oversized_1mb", imp("oversized", title="x" * 1_000_000)),
        ("invalid_utf8", imp("utf8").replace(b"oak", b"\xff\xfeoak")),
        ("lone_surrogate", imp("surrogate", query="\ud800 desk")),
        ("utf8_bom", b"\xef\xbb\xbf" + imp("bom")),
        ("nan", imp("nan")[:-1] + b', "score": NaN}'),
        ("old_event_time", imp("old", event_time=_iso(now - timedelta(days=40)))),
        ("future_event_time", imp("future", event_time=_iso(now + timedelta(days=1)))),
        ("event_time_number", imp("ts-number", event_time=123)),
        ("position_string", imp("pos-string", position="3")),
        ("position_float", imp("pos-float", position=2.5)),
        ("position_bool", imp("pos-bool", position=True)),
        ("position_zero", imp("pos-zero", position=0)),
        ("impression_id_number", imp("id-number", impression_id=5)),
        ("query_too_long", imp("long", query="q" * 3_000)),
        ("ubi_ordinal_negative", ubi(ordinal=-1)),
        ("ubi_ordinal_string", ubi(ordinal="0")),
        ("ubi_timestamp_number", ubi(timestamp=123)),
        ("ubi_unknown_query", ubi()),
        ("ubi_click", ubi("click")),
        ("json_null", b"null"),
        ("json_array", b"[1, 2, 3]"),
        ("empty", b""),
        ("tombstone", None),
        ("old_in_window", imp("old-ok", event_time=_iso(now - timedelta(days=20)))),
        ("control_chars", imp("nul", query="oak\u0000 writing\u0007 desk")),
    ]  # fmt: skip


def build_input(
    catalog: SyntheticCatalog, config: ChaosConfig, partitions: int, start: datetime
) -> tuple[list[_Record], list[_Record], list[_Record]]:
    """The three phases of the input (half, 30%, 20% of the pages), deterministic for a seed.

    Pages keep their key's partition (a UBI query record before its impressions); the hostile
    records are spread over the phases and all partitions. Every partition's second phase
    begins with a valid impression, so a worker that meets the store outage cannot finish (and
    commit) any second-phase record before it: the committed offsets stay where the first phase
    ends, which the accounting relies on and checks.
    """
    gen = TrafficGenerator(
        catalog,
        ReplayConfig(
            seed=config.seed,
            dataset="synthetic",
            malformed_share=0.01,
            unknown_product_share=0.01,
            page_share=0.0,  # the accounting is per record: one impression per record
            ubi_share=0.3,
            catalog_share=0.3,
        ),
    )
    pages: list[list[_Record]] = []
    for i in range(config.pages):
        when = start + timedelta(seconds=180 * i / config.pages)
        page = [_Record(zlib.crc32(key) % partitions, key, value) for key, value in gen.page(when)]
        pages.append(page)
    now = start + timedelta(minutes=5)
    product = catalog.products[0].product_id
    hostile = [
        _Record(n % partitions, f"hostile-{name}".encode(), value)
        for n, (name, value) in enumerate(hostile_records(now, product))
    ]
    split, split2 = config.pages // 2, config.pages * 4 // 5
    cut, cut2 = len(hostile) // 2, len(hostile) * 4 // 5
    first = _interleave(pages[:split], hostile[:cut])
    lead_time = start + timedelta(seconds=180 * split / config.pages)
    leads = [_lead(catalog, p, lead_time) for p in range(partitions)]
    second = leads + _interleave(pages[split:split2], hostile[cut:cut2])
    third = _interleave(pages[split2:], hostile[cut2:])
    return first, second, third


def _interleave(pages: list[list[_Record]], extra: list[_Record]) -> list[_Record]:
    out: list[_Record] = []
    step = max(1, len(pages) // max(1, len(extra)))
    pending = list(extra)
    for i, page in enumerate(pages):
        out += page
        if pending and i % step == step - 1:
            out.append(pending.pop(0))
    return out + pending


def _lead(catalog: SyntheticCatalog, partition: int, when: datetime) -> _Record:
    query = catalog.queries[partition % len(catalog.queries)]
    product = catalog.products[partition % len(catalog.products)]
    imp = Impression(
        impression_id=f"lead-{partition}",
        query_id=f"lead-{partition}",
        query=query.text,
        product_id=product.product_id,
        position=1,
        event_time=when,
    )
    return _Record(partition, f"lead-{partition}".encode(), imp.to_bytes())


def produce(settings: Settings, records: list[_Record], into: _Input) -> None:
    """Send ``records`` to their partitions; note each one's offset from the broker's answer."""
    prod = producer(settings, max_request_size=2_000_000)
    try:
        futures = [
            (r, prod.send(into.topic, key=r.key, value=r.value, partition=r.partition))
            for r in records
        ]
        prod.flush(60)
        for record, future in futures:
            meta = future.get(60)
            into.values[(meta.partition, meta.offset)] = record.value
            into.ends[meta.partition] = max(into.ends.get(meta.partition, 0), meta.offset + 1)
    finally:
        prod.close()
    if sum(into.ends.values()) != into.count:
        raise ServiceError(f"offsets are not contiguous: ends {into.ends}, {into.count} records")


# --- Observing the processes --------------------------------------------------------------------


def committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """The committed offset of ``group`` on each partition of ``topic``."""
    admin = KafkaAdminClient(**kafka_connection(settings))
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: m.offset for tp, m in offsets.items() if tp.topic == topic}


def committed_all(settings: Settings, ends: Mapping[int, int]) -> bool:
    """Whether the worker group committed every partition up to ``ends``."""
    got = committed(settings, settings.kafka.consumer_group, settings.topics.impressions)
    return all(got.get(p, -1) >= end for p, end in ends.items())


def scrape(settings: Settings) -> dict[str, float]:
    """A worker's counters and numeric gauges from its Prometheus endpoint."""
    url = f"http://{settings.bind_host}:{settings.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if line.startswith("relmon_") and "{" not in name:
            out[name.removeprefix("relmon_").removesuffix("_total")] = float(value)
    return out


def quiet_counters(settings: Settings, timeout: float) -> dict[str, float]:
    """The worker's counters once two scrapes a second apart agree (nothing in progress)."""
    last: list[dict[str, float]] = [{}]

    def settled() -> bool:
        now = {k: v for k, v in scrape(settings).items() if not k.startswith(("uptime", "score_"))}
        same = now == last[0]
        last[0] = now
        return same

    wait_until(settled, timeout=timeout, interval=1.0, what="worker counters to settle")
    return last[0]


def outcomes(counters: Mapping[str, float]) -> dict[str, int]:
    """What a worker counted its records as (one class per consumed record)."""

    def n(name: str) -> int:
        return int(counters.get(name, 0))

    return {
        "consumed": n("consumed"),
        "stored": n("sampled"),
        "not_sampled": n("not_sampled"),
        "ignored_by_design": n("ubi_queries") + n("ignored_events"),
        "dead_lettered": n("dead_lettered") - n("catalog_invalid"),
        "rows_written": n("rows_written"),
        "pending": n("pending"),
    }


def teacher_process(settings: Settings, name: str) -> ManagedProcess:
    """A ``relmon teacher`` process with the settings' environment."""
    return ManagedProcess(
        name,
        relmon_argv("teacher"),
        log_path=settings.home / "logs" / f"{name}.log",
        env=env_of(settings),
        stop_timeout=20.0,
    )


def teacher_done(settings: Settings) -> bool:
    """Whether the teacher group has committed every review request sent so far."""
    lags = consumer_lag(
        kafka_connection(settings), settings.topics.review, settings.teacher.group, read_s=1.0
    )
    return all(p.lag == 0 for p in lags)


# --- The two runs -------------------------------------------------------------------------------


@dataclass
class _Run:
    """One run's settings, processes and what was measured."""

    settings: Settings
    stack: ExitStack
    counted: list[dict[str, int]] = field(default_factory=list)
    restarts: int = 0
    failed_starts: int = 0
    incarnations: int = 0

    def worker(self) -> ManagedProcess:
        """Start a worker (with its own metrics port); stopped with the run at the latest."""
        self.incarnations += 1
        s = self.settings.with_overrides(metrics_port=free_port())
        self.settings = s
        proc = worker_process(s, f"worker-{self.incarnations}")
        self.stack.callback(proc.stop)
        return proc.start()

    def teacher(self, chat: FakeChatServer) -> ManagedProcess:
        """Start the run's teacher against ``chat``."""
        self.settings = self.settings.with_overrides(teacher_base_url=chat.url)
        proc = teacher_process(self.settings, "teacher")
        self.stack.callback(proc.stop)
        return proc.start()

    def drain(
        self,
        worker: ManagedProcess,
        ends: Mapping[int, int],
        timeout: float,
        *,
        keep: bool = True,
        stop: bool = True,
    ) -> None:
        """Wait until the worker committed ``ends``; keep its counters; stop it, unless told.

        Once every record is committed and the counters hold still, they count exactly the
        records committed by this worker process.
        """
        wait_until(
            lambda: committed_all(self.settings, ends),
            timeout=timeout,
            interval=1.0,
            what=f"{worker.name} to commit the input",
            alive=worker.alive,
        )
        if keep:
            self.counted.append(outcomes(quiet_counters(self.settings, timeout)))
        if stop:
            worker.stop()

    def finish_teacher(self, teacher: ManagedProcess, timeout: float) -> None:
        """Wait until the teacher has handled every review request, then stop it."""
        wait_until(
            lambda: teacher_done(self.settings),
            timeout=timeout,
            interval=1.0,
            what="teacher to handle every review request",
            alive=teacher.alive,
        )
        teacher.stop()


def _catalog_file(settings: Settings, catalog: SyntheticCatalog) -> Path:
    """The catalogue as a JSON Lines file for the workers to load at start.

    The workers follow the catalogue topic too, but in the background: an impression processed
    before the follower caught up would wait ``unknown_product_retry_s`` and might be
    dead-lettered in one run and not in the other.
    """
    path = settings.home / "catalog.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (to_catalog_product(p).model_dump_json() for p in catalog.products)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _base(settings: Settings, config: ChaosConfig, catalog_file: Path) -> Settings:
    """Settings both runs share.

    No scoring budget: a budget that adapts to the worker's lag samples less after an outage, by
    design, and the runs could then not be compared row for row.
    """
    return settings.with_overrides(
        catalog_file=catalog_file,
        scoring_budget_pps=0,
        unknown_product_retry_s=2.0,
        alerts_in_worker=False,
        teacher_model="fake-judge",
        teacher_daily_budget=config.teacher_budget,
        teacher_max_attempts=3,
        teacher_backoff_s=0.05,
        teacher_backoff_max_s=1.0,
        teacher_timeout_s=2.0,
        teacher_concurrency=2,
        teacher_rate_per_s=0.0,
    )


def _run_settings(base: Settings, name: str, **changes: Any) -> Settings:
    s = base.with_overrides(
        consumer_group=f"{base.kafka.consumer_group}-{name}",
        clickhouse_database=f"{base.clickhouse.database}_{name}",
        topic_review=f"{base.topics.review}-{name}",
        topic_dlq=f"{base.topics.dlq}-{name}",
        topic_labels=f"{base.topics.review}-{name}.labels",
        teacher_group=f"{base.kafka.consumer_group}-{name}-teacher",
        home=base.home / name,
        **changes,
    )
    ensure_topics(s)
    return s


def _start_clean_run(
    run: _Run, chat: FakeChatServer, data: _Input, timeout: float
) -> tuple[ManagedProcess, ManagedProcess]:
    """Start the clean run's teacher and worker; return them once the worker caught up.

    They keep running: the third phase arrives later, and the clean run must see all of it.
    """
    teacher = run.teacher(chat)
    worker = run.worker()
    run.drain(worker, data.ends, timeout, keep=False, stop=False)
    return teacher, worker


@contextmanager
def _timed(what: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    log.info("%s: %.1f s", what, time.monotonic() - started)


def _failures(counters: Mapping[str, float]) -> float:
    return counters.get("store_errors", 0) + counters.get("service_errors", 0)


def _await_stuck(s: Settings, consumed: int, errors: float, timeout: float) -> None:
    """Wait until the worker took records beyond ``consumed`` and retries a failing store."""

    def stuck() -> bool:
        now = scrape(s)
        return now["consumed"] > consumed and _failures(now) > errors

    wait_until(stuck, timeout=timeout, what="worker stuck on the store outage")


def _ride_through(
    run: _Run,
    store: ManagedProcess,
    worker: ManagedProcess,
    produce_third: Callable[[], None],
    ends: Mapping[int, int],
    config: ChaosConfig,
) -> float:
    """Stop the store while the worker takes the third phase; bring it back after ride_through_s.

    The worker stays up and retries meanwhile. Return how long after the store came back the
    worker had committed every record.
    """
    before = scrape(run.settings)
    store.stop()
    down_at = time.monotonic()
    produce_third()
    _await_stuck(run.settings, int(before["consumed"]), _failures(before), config.timeout_s)
    time.sleep(max(0.0, down_at + config.ride_through_s - time.monotonic()))  # the outage
    store.start()
    back_at = time.monotonic()
    run.drain(worker, ends, config.timeout_s, keep=False, stop=False)
    return time.monotonic() - back_at


def _outage(
    run: _Run,
    store: ManagedProcess,
    worker: ManagedProcess,
    produce_second: Callable[[], int],
    config: ChaosConfig,
    meanwhile: Callable[[], None],
) -> tuple[float, int, ManagedProcess | None]:
    """Stop the store, kill the worker stuck on it, bring the store back after store_down_s.

    Meanwhile the second phase is sent, a restart is tried at once, and ``meanwhile`` runs.

    Return the seconds the store was down, the records the killed worker had in flight, and the
    worker restarted during the outage (None if it could not start).
    """
    store.stop()
    down_at = time.monotonic()
    errors = _failures(scrape(run.settings))
    first_phase = produce_second()
    _await_stuck(run.settings, first_phase, errors, config.timeout_s)
    delay = random.Random(config.seed).uniform(*config.kill_delay_s)
    deadline = time.monotonic() + delay
    wait_until(lambda: time.monotonic() >= deadline, timeout=delay + 5, what="kill moment")
    in_flight = int(scrape(run.settings)["consumed"]) - first_phase
    worker.kill()
    log.info("killed %s with %d records in flight", worker.name, in_flight)
    restarted: ManagedProcess | None = None
    try:
        restarted = run.worker()  # as a supervisor would, at once
        run.restarts += 1
    except ServiceError as exc:  # a worker exits when its store is down at start
        run.failed_starts += 1
        log.info("restart during the outage failed: %s", str(exc)[:300])
    meanwhile()
    time.sleep(max(0.0, down_at + config.store_down_s - time.monotonic()))  # the outage itself
    store.start()
    return time.monotonic() - down_at, in_flight, restarted


def _results(s: Settings) -> dict[str, list[tuple[Any, ...]]]:
    client = db.connect(s)
    try:
        return {
            "rows": [tuple(r) for r in client.query(ROWS).result_rows],
            "rollups": [tuple(r) for q in ROLLUPS for r in client.query(q).result_rows],
            "rates": [tuple(r) for q in RATES for r in client.query(q).result_rows],
            "spent": [(teacher_store.requests_spent_today(client),)],
        }
    finally:
        client.close()


def _dead_letters(s: Settings, data: _Input) -> tuple[set[tuple[int, int, str]], bool]:
    """Distinct input records in the dead-letter topic, and whether all letters are intact.

    A record is (partition, offset, kind); a letter is intact when it carries its original's
    size and sha256.
    """
    letters = [
        DeadLetter.model_validate_json(v or b"")
        for _, v in read_topic(s, s.topics.dlq, idle_s=3.0, timeout_s=120)
    ]
    mine = [x for x in letters if x.topic == data.topic]
    intact = all(
        x.value_size == len(original) and x.value_sha256 == hashlib.sha256(original).hexdigest()
        for x in mine
        for original in [data.values.get((x.partition, x.offset)) or b""]
    )
    return {(x.partition, x.offset, x.kind) for x in mine}, intact


def _reviews(s: Settings) -> Counter[str]:
    return Counter(
        ReviewRequest.model_validate_json(v or b"").impression_id
        for _, v in read_topic(s, s.topics.review, idle_s=3.0, timeout_s=120)
    )


def _accounting(run: _Run, letters: set[tuple[int, int, str]], data: _Input) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counted in run.counted:
        total.update(counted)
    dead = len({(p, o) for p, o, _ in letters})
    accounted = total["stored"] + total["not_sampled"] + total["ignored_by_design"] + dead
    return {
        "records_in": data.count,
        "accounted": accounted,
        "lost": data.count - accounted,
        "stored": total["stored"],
        "not_sampled": total["not_sampled"],
        "ignored_by_design": total["ignored_by_design"],
        "dead_lettered": dead,
        "counted_dead_lettered": total["dead_lettered"],
        "counted_consumed": total["consumed"],
        "rows_written": total["rows_written"],
    }


def run_chaos(settings: Settings, config: ChaosConfig | None = None) -> dict[str, Any]:
    """Run the pipeline clean and under chaos on one input; return the chaos run's accounting.

    ``settings`` name a running broker and store (used by the clean run) and the model; every
    other process is started here and stopped by PID before returning.
    """
    config = config or ChaosConfig()
    started = time.monotonic()
    catalog = SyntheticCatalog.generate(seed=config.seed)
    base = _base(settings, config, _catalog_file(settings, catalog))
    ensure_topics(base)
    publish_catalog(base, catalog)
    start = (datetime.now(UTC) - timedelta(minutes=10)).replace(second=0, microsecond=0)
    first, second, third = build_input(catalog, config, base.topics.partitions, start)
    data = _Input(base.topics.impressions)
    chaos_home = base.home / "chaos"
    clean_s = _run_settings(base, "clean")
    chaos_s = _run_settings(
        base, "chaos", clickhouse_port=free_port(), store_dir=chaos_home / "store"
    )
    with (
        ExitStack() as stack,
        FakeChatServer(faults=config.chat_faults, hang_s=3.0) as chat,
        FakeChatServer() as clean_chat,
    ):
        clean, chaos = _Run(clean_s, stack), _Run(chaos_s, stack)
        produce(base, first, data)
        store = store_process(chaos_s)
        stack.callback(store.stop)
        store.start()
        teacher = chaos.teacher(chat)
        worker = chaos.worker()
        with _timed("chaos run, first phase"):
            chaos.drain(worker, data.ends, config.timeout_s, stop=False)
        first_ends = dict(data.ends)

        def produce_second() -> int:
            count = data.count
            produce(base, second, data)
            return count

        clean_procs: list[ManagedProcess] = []

        def clean_meanwhile() -> None:
            with _timed("clean run, first and second phases"):
                clean_procs.extend(_start_clean_run(clean, clean_chat, data, config.timeout_s))

        down_s, in_flight, survivor = _outage(
            chaos, store, worker, produce_second, config, clean_meanwhile
        )
        moved = committed(chaos.settings, chaos.settings.kafka.consumer_group, data.topic)
        if any(moved.get(p, -1) != end for p, end in first_ends.items()):
            # the first phase's counters would not cover what the killed worker committed
            raise ServiceError(f"the killed worker committed {moved}, not {first_ends}")
        with _timed("chaos run, after the outage"):
            if survivor is None or not survivor.alive():
                survivor = chaos.worker()
                chaos.restarts += 1
            chaos.drain(survivor, data.ends, config.timeout_s, keep=False, stop=False)
        with _timed("chaos run, the second outage"):
            recovery_s = _ride_through(
                chaos, store, survivor, lambda: produce(base, third, data), data.ends, config
            )
        chaos.drain(survivor, data.ends, config.timeout_s)
        chaos.finish_teacher(teacher, config.timeout_s)
        clean_teacher, clean_worker = clean_procs
        clean.drain(clean_worker, data.ends, config.timeout_s)
        clean.finish_teacher(clean_teacher, config.timeout_s)
        extra = {
            "in_flight_at_kill": in_flight,
            "store_down_s": round(down_s, 1),
            "ride_through_s": config.ride_through_s,
            "committed_s_after_store_back": round(recovery_s, 1),
            "recovery_logged": "recovered after" in survivor.log_path.read_text(errors="replace"),
        }
        return _report(clean, chaos, data, chat, config, extra, started)


def _report(
    clean: _Run,
    chaos: _Run,
    data: _Input,
    chat: FakeChatServer,
    config: ChaosConfig,
    extra: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    clean_letters, clean_intact = _dead_letters(clean.settings, data)
    chaos_letters, chaos_intact = _dead_letters(chaos.settings, data)
    got, want = _results(chaos.settings), _results(clean.settings)
    reviews, clean_reviews = _reviews(chaos.settings), _reviews(clean.settings)
    account = _accounting(chaos, chaos_letters, data)
    clean_account = _accounting(clean, clean_letters, data)
    return {
        **account,
        "clean_run_lost": clean_account["lost"],
        "rows": len(got["rows"]),
        "rows_equal_clean_run": bool(got["rows"]) and got["rows"] == want["rows"],
        "rates_equal_clean_run": bool(got["rates"]) and got["rates"] == want["rates"],
        "rollups_equal_clean_run": bool(got["rollups"]) and got["rollups"] == want["rollups"],
        "dead_letters_equal_clean_run": chaos_letters == clean_letters,
        "dead_letters_intact": chaos_intact and clean_intact,
        "review_requests": len(reviews),
        "review_requests_equal_clean_run": set(reviews) == set(clean_reviews),
        "duplicate_review_requests": sum(n - 1 for n in reviews.values()),
        "teacher_requests": len(chat.requests),
        "teacher_spent": got["spent"][0][0],
        "teacher_budget": config.teacher_budget,
        "chat_faults_served": sum(n for f, n in chat.served.items() if f != "ok"),
        "worker_restarts": chaos.restarts,
        "worker_failed_starts": chaos.failed_starts,
        **extra,
        "cpu": cpu_model(),
        "isa": ",".join(isa_flags()),
        "wall_s": round(time.monotonic() - started, 1),
    }
