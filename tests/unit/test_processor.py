import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from relmon.errors import BrokerError
from relmon.settings import PlannerConfig, SamplingRates
from schemas.models import CatalogProduct, Impression
from streams import EventTimeWindow, RawRecord, Routing
from streams.catalog import Catalog
from streams.metrics import Metrics
from streams.plans import Planner
from streams.testing import MemoryPorts, OverlapScorer, memory_processor

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def record(value, offset, partition=0):
    return RawRecord("relmon.impressions", partition, offset, b"k", value, 1714564800000)


def native(i, query="blue velvet sofa", title="Blue Velvet Sofa", product="p1", qid=None):
    return Impression(
        impression_id=f"i{i}",
        query_id=qid or f"q{i}",
        query=query,
        product_id=product,
        title=title,
        position=1 + i % 10,
        event_time=NOW,
    ).to_bytes()


def ubi_event(qid, product, ordinal):
    return json.dumps(
        {
            "action_name": "impression",
            "query_id": qid,
            "timestamp": NOW.isoformat(),
            "event_attributes": {
                "object": {"object_id": product},
                "position": {"ordinal": ordinal},
            },
        }
    ).encode()


def make(ports=None, rate=1.0, retry_s=5.0, clock=None, catalog=None, backlog=0):
    ports = ports or MemoryPorts()
    metrics = Metrics()
    proc = memory_processor(
        ports=ports,
        catalog=catalog
        if catalog is not None
        else Catalog(
            [
                CatalogProduct(
                    product_id="p1", title="Blue Velvet Sofa", category="Sofas", brand="Acme"
                )
            ]
        ),
        planner=Planner(PlannerConfig(checkpoint_interval_s=0), clock=clock or Clock()),
        rates=SamplingRates.uniform_at(rate),
        routing=Routing(0.5),
        model_version="fake-overlap-1",
        metrics=metrics,
        retry_s=retry_s,
        clock=clock or Clock(),
        backoff_max_s=0.05,
        backlog=backlog,
    )
    return proc, ports, metrics


def run(coro):
    return asyncio.run(coro)


async def until(condition):
    """Let other tasks run until ``condition()`` holds."""
    while not condition():
        await asyncio.sleep(0)


def test_batch_routes_every_record():
    proc, ports, metrics = make()
    records = [
        record(native(0), 0),
        record(native(1, title="Oak Dining Table"), 1),
        record(b"{broken", 2),
        record(
            b'{"impression_id": "x", "query_id": "q", "query": "a", "product_id": "p",'
            b' "position": 0, "event_time": "2024-01-01T00:00:00Z"}',
            3,
        ),
        record(json.dumps({"query_id": "u1", "user_query": "velvet sofa"}).encode(), 4),
        record(ubi_event("u1", "p1", 1), 5),
        record(
            json.dumps(
                {
                    "action_name": "click",
                    "query_id": "u1",
                    "timestamp": NOW.isoformat(),
                    "event_attributes": {"position": {"ordinal": 1}},
                }
            ).encode(),
            6,
        ),
    ]
    run(proc.process(records))
    assert set(ports.rows) == {"i0", "i1", "ubi:u1:1:p1"}
    assert ports.rows["ubi:u1:1:p1"].title == "Blue Velvet Sofa"
    assert ports.rows["ubi:u1:1:p1"].source == "ubi"
    bad = {r.impression_id for r in ports.rows.values() if r.is_bad}
    assert bad == {"i1"}
    assert [r.impression_id for r in ports.reviews] == ["i1"]
    kinds = {d.offset: d.kind for d in ports.dead_letters}
    assert kinds == {2: "malformed", 3: "invalid"}
    broken = next(d for d in ports.dead_letters if d.offset == 2)
    assert broken.original == b"{broken" and broken.partition == 0
    assert broken.topic == "relmon.impressions" and "JSON" in broken.reason
    assert sorted(r.offset for r in ports.acked) == list(range(7))
    assert metrics.get("consumed") == 7 and metrics.get("dead_lettered") == 2
    assert metrics.get("ignored_events") == 1 and metrics.get("scored") == 3


def test_unknown_product_waits_then_dead_letters_and_is_acked_only_then():
    clock = Clock()
    catalog = Catalog()
    proc, ports, metrics = make(clock=clock, retry_s=5.0, catalog=catalog)
    run(
        proc.process(
            [
                record(ubi_event("u9", "late", 1), 0),
                record(json.dumps({"query_id": "u9", "user_query": "sofa"}).encode(), 1),
                record(ubi_event("u9", "never", 2), 2),
            ]
        )
    )
    # the query record came after the first event in the same batch: both events now wait
    # for the catalogue only; acks go out in offset order, so nothing is acked yet.
    assert proc.pending == 2
    assert ports.acked == []
    catalog.put(CatalogProduct(product_id="late", title="Sofa Bed"))
    clock.t += 1
    run(proc.retry_pending())
    assert "ubi:u9:1:late" in ports.rows and proc.pending == 1
    assert [r.offset for r in ports.acked] == [0, 1]
    clock.t += 10
    run(proc.retry_pending())
    assert proc.pending == 0
    (letter,) = ports.dead_letters
    assert letter.kind == "unknown_product" and "never" in letter.reason and letter.offset == 2
    assert sorted(r.offset for r in ports.acked) == [0, 1, 2]
    assert metrics.get("unknown_product_seen") == 2
    assert metrics.get("dead_lettered_unknown_product") == 1


def test_query_text_is_found_in_the_store_after_a_restart():
    ports = MemoryPorts()
    ports.queries["u5"] = "green rug"
    proc, ports, _ = make(ports=ports)
    run(proc.process([record(ubi_event("u5", "p1", 4), 0)]))
    assert ports.rows["ubi:u5:4:p1"].query == "green rug"


def test_unknown_query_expires_to_dead_letter():
    clock = Clock()
    proc, ports, metrics = make(clock=clock, retry_s=0.0)
    run(proc.process([record(ubi_event("nobody", "p1", 1), 0)]))
    (letter,) = ports.dead_letters
    assert letter.kind == "unknown_query"
    assert metrics.get("unknown_query_seen") == 1


def test_store_failures_are_retried_and_ack_waits_for_the_write():
    ports = MemoryPorts(fail_writes=2)
    proc, ports, metrics = make(ports=ports)
    run(proc.process([record(native(0), 0)]))
    assert "i0" in ports.rows and [r.offset for r in ports.acked] == [0]
    assert metrics.get("store_errors") == 2


def test_cancelled_write_acks_nothing():
    class Hanging(MemoryPorts):
        entered: asyncio.Event

        async def write(self, rows, queries):
            self.entered.set()
            await asyncio.Event().wait()

    ports = Hanging()
    proc, _, _ = make(ports=ports)

    async def go():
        ports.entered = asyncio.Event()
        task = asyncio.create_task(proc.process([record(native(0), 0)]))
        await ports.entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert ports.acked == []


def test_sampling_is_by_query_and_weights_are_inverse_rate():
    proc, ports, metrics = make(rate=0.5)
    records = [record(native(i, qid=f"query-{i // 5}"), i) for i in range(400)]
    run(proc.process(records))
    sampled_queries = {r.query_id for r in ports.rows.values()}
    for qid in sampled_queries:
        assert sum(r.query_id == qid for r in ports.rows.values()) == 5
    assert 0.35 < len(sampled_queries) / 80 < 0.65
    assert all(r.sample_weight == 2.0 and r.sample_rate == 0.5 for r in ports.rows.values())
    assert len(ports.acked) == 400 and metrics.get("sampled") == len(ports.rows)
    again, ports2, _ = make(rate=0.5)
    run(again.process(records))
    assert set(ports2.rows) == set(ports.rows)


def test_drop_partitions_forgets_pending():
    proc, _, _ = make(catalog=Catalog())
    run(
        proc.process(
            [
                record(native(0, title=None), 0, partition=0),
                record(native(1, title=None), 1, partition=3),
            ]
        )
    )
    assert proc.pending == 2
    assert proc.drop_partitions([("relmon.impressions", 3)]) == 1
    assert proc.pending == 1


def test_overlap_scorer_is_deterministic():
    scores = OverlapScorer().predict(
        [("red sofa", "Red Sofa"), ("red sofa", "Oak Table"), ("", "x")]
    )
    assert scores.tolist() == [1.0, 0.0, 0.0]


def popular_traffic(epoch_start, n_pages=60):
    """Pages of one very popular query and many rare ones, 10 positions each."""
    records, offset = [], 0
    for page in range(n_pages):
        query = "velvet sofa" if page % 2 == 0 else f"rare thing {page}"
        for pos in range(1, 11):
            imp = Impression(
                impression_id=f"e{epoch_start.minute}-p{page}-{pos}",
                query_id=f"q{page}-{epoch_start.minute}",
                query=query,
                product_id="p1",
                title="Blue Velvet Sofa",
                position=pos,
                event_time=epoch_start,
            )
            records.append(record(imp.to_bytes(), offset))
            offset += 1
    return records


def stratified(ports=None, clock=None, config=None):
    ports = ports or MemoryPorts()
    proc = memory_processor(
        ports=ports,
        catalog=Catalog(),
        planner=Planner(
            config or PlannerConfig(epoch_s=60, head_share=0.2, torso_share=0.05),
            clock=clock or Clock(),
        ),
        rates=SamplingRates(
            head=0.1, torso=0.4, tail=1.0, top_positions=3, rest_position_factor=0.5
        ),
        routing=Routing(0.5),
        model_version="m",
        metrics=Metrics(),
        retry_s=5.0,
        clock=clock or Clock(),
        backoff_max_s=0.05,
    )
    return proc, ports


def test_popular_queries_become_head_in_the_next_epoch():
    proc, ports = stratified()
    run(proc.process(popular_traffic(NOW.replace(minute=0))))
    first = [r for r in ports.rows.values() if r.event_time.minute == 0]
    assert {r.tier for r in first} == {"tail"}  # nothing known yet: every query is tail
    run(proc.process(popular_traffic(NOW.replace(minute=1))))
    second = [r for r in ports.rows.values() if r.event_time.minute == 1]
    head = [r for r in second if r.query == "velvet sofa"]
    tail = [r for r in second if r.query != "velvet sofa"]
    assert head and tail
    assert {r.tier for r in head} == {"head"} and {r.tier for r in tail} == {"tail"}
    assert {(r.position_bucket, r.sample_rate) for r in head} <= {("top", 0.1), ("rest", 0.05)}
    assert {(r.position_bucket, r.sample_rate) for r in tail} == {("top", 1.0), ("rest", 0.5)}
    assert all(r.sample_weight == pytest.approx(1 / r.sample_rate) for r in ports.rows.values())
    # coordinated sampling: a sampled lower position implies its page's top positions are in
    for r in second:
        if r.position_bucket == "rest":
            assert {f"{r.impression_id.rsplit('-', 1)[0]}-{k}" for k in (1, 2, 3)} <= set(
                ports.rows
            )


def crash_traffic():
    """Three epochs of popular and rare queries spread over 3 partitions."""
    out, offsets = [], [0, 0, 0]
    for minute in range(3):
        for rec in popular_traffic(NOW.replace(minute=minute), n_pages=40):
            part = int(rec.value.split(b'"query_id":"q')[1].split(b"-")[0]) % 3
            out.append(RawRecord("t", part, offsets[part], b"k", rec.value))
            offsets[part] += 1
    return out


def committed(acked, partition):
    offsets = sorted(r.offset for r in acked if r.partition == partition)
    nxt = 0
    for o in offsets:
        if o != nxt:
            break
        nxt += 1
    return nxt


def checkpointing(ports, clock):
    config = PlannerConfig(epoch_s=60, head_share=0.2, torso_share=0.05, checkpoint_interval_s=3)
    proc, _ = stratified(ports=ports, clock=clock, config=config)
    return proc


def test_crash_and_restart_give_the_same_rows_as_a_clean_run():
    import random

    traffic = crash_traffic()
    clock = Clock()
    reference = MemoryPorts()
    proc = checkpointing(reference, clock)
    for start in range(0, len(traffic), 50):
        clock.t += 1
        run(proc.process(traffic[start : start + 50]))
    run(proc.flush())
    expected = {k: (r.sample_rate, r.tier, r.plan_id) for k, r in reference.rows.items()}
    assert {t for _, t, _ in expected.values()} >= {"head", "tail"}

    rng = random.Random(1)
    ports = MemoryPorts()  # rows, plans and checkpoints survive crashes; memory does not
    for _ in range(6):
        proc = checkpointing(ports, clock)
        resume = {p: committed(ports.acked, p) for p in range(3)}
        todo = [r for r in traffic if r.offset >= resume[r.partition]]
        stop_after = rng.randrange(1, 8)
        acked_before = []
        for n, start in enumerate(range(0, len(todo), 50)):
            if n == stop_after:
                break  # crash: nothing after this point happens
            acked_before.append(len(ports.acked))
            clock.t += 1
            run(proc.process(todo[start : start + 50]))
        # offsets are committed a little after their acks: the newest acks may be lost
        ports.acked = ports.acked[: acked_before[-rng.randrange(1, len(acked_before) + 1)]]
    proc = checkpointing(ports, clock)
    resume = {p: committed(ports.acked, p) for p in range(3)}
    todo = [r for r in traffic if r.offset >= resume[r.partition]]
    for start in range(0, len(todo), 50):
        clock.t += 1
        run(proc.process(todo[start : start + 50]))
    run(proc.flush())
    got = {k: (r.sample_rate, r.tier, r.plan_id) for k, r in ports.rows.items()}
    assert got == expected
    # the popularity sketches evolved exactly as without crashes
    assert {tp: (c.offset, c.state) for tp, c in ports.checkpoints.items()} == {
        tp: (c.offset, c.state) for tp, c in reference.checkpoints.items()
    }
    assert ports.row_writes == len(expected)  # each impression written once


def test_rows_already_stored_are_not_scored_or_reviewed_again():
    proc, ports, metrics = make()
    batch = [record(native(i, title="Oak Dining Table"), i) for i in range(5)]
    run(proc.process(batch))
    run(proc.process(batch))
    assert ports.row_writes == 5 and len(ports.reviews) == 5
    assert metrics.get("already_stored") == 5 and len(ports.acked) == 10


def test_reviews_cover_bad_uncertain_and_an_audit_share():
    ports = MemoryPorts()
    proc = memory_processor(
        ports=ports,
        catalog=Catalog(),
        planner=Planner(PlannerConfig(checkpoint_interval_s=0)),
        rates=SamplingRates.uniform_at(1.0),
        routing=Routing(0.5, uncertain_band=0.2, audit_share=0.1),
        model_version="m",
        metrics=Metrics(),
        clock=Clock(),
        backoff_max_s=0.05,
    )
    titles = {"bad": "Oak Dining Table", "unsure": "Blue Velvet Chair", "good": "Blue Velvet Sofa"}
    records = []
    for i in range(600):
        kind = ["bad", "unsure", "good"][i % 3]
        records.append(record(native(i, query="blue velvet sofa", title=titles[kind]), i))
    run(proc.process(records))
    reasons = {}
    for review in ports.reviews:
        reasons.setdefault(review.reason, []).append(review)
    scores = {r.impression_id: r.score for r in ports.rows.values()}
    assert {r.impression_id for r in reasons["below_threshold"]} == {
        i for i, s in scores.items() if s < 0.5
    }
    assert {r.impression_id for r in reasons["uncertain"]} == {
        i for i, s in scores.items() if 0.5 <= s < 0.7
    }
    audits = reasons["audit"]
    confident = [i for i, s in scores.items() if s >= 0.7]
    assert 0.05 < len(audits) / len(confident) < 0.15
    assert all(r.review_weight == pytest.approx(10) for r in audits)
    assert max(r.priority for r in audits) < min(r.priority for r in reasons["uncertain"])
    assert min(r.priority for r in reasons["uncertain"]) <= max(
        r.priority for r in reasons["below_threshold"]
    )


# --- issue 11: nothing lost, nothing hangs -------------------------------------------------------


def within(coro, seconds=10.0):
    """Run ``coro``, failing (instead of hanging) if it does not finish in time."""
    return run(asyncio.wait_for(coro, seconds))


def test_hostile_records_are_dead_lettered_alone_and_the_batch_goes_on():
    proc, ports, _ = make()
    hostile = [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"impression_id": ' + b"9" * 5_000 + b"}",
        json.dumps(
            {
                **json.loads(ubi_event("u1", "p1", 0)),
                "event_attributes": {
                    "object": {"object_id": "p1"},
                    "position": {"ordinal": 0},
                    "locale": "x" * 40,
                },
            }
        ).encode(),
    ]
    records = [
        record(json.dumps({"query_id": "u1", "user_query": "velvet sofa"}).encode(), 0),
        *[record(raw, offset) for offset, raw in enumerate(hostile, 1)],
        record(native(4), 4),
    ]
    within(proc.process(records))
    assert set(ports.rows) == {"i4"}
    letters = {d.offset: d for d in ports.dead_letters}
    assert set(letters) == {1, 2, 3}
    assert "nested deeper" in letters[1].reason and "4300 digits" in letters[2].reason
    assert letters[3].kind == "invalid" and "locale" in letters[3].reason
    assert all(letters[o].original == records[o].value for o in letters)
    assert sorted(r.offset for r in ports.acked) == list(range(5))


def test_a_decoder_failure_dead_letters_that_record_only(monkeypatch):
    import streams.processor as processor

    real = processor.decode_record

    def flaky(raw, **kwargs):
        if raw == b'{"boom": 1}':
            raise MemoryError("fake")
        return real(raw, **kwargs)

    monkeypatch.setattr(processor, "decode_record", flaky)
    proc, ports, _ = make()
    within(proc.process([record(b'{"boom": 1}', 0), record(native(1), 1)]))
    (letter,) = ports.dead_letters
    assert letter.kind == "invalid" and "MemoryError" in letter.reason
    assert set(ports.rows) == {"i1"} and len(ports.acked) == 2


def test_a_failure_completing_one_impression_dead_letters_it_only(monkeypatch):
    from schemas.ubi import UbiImpression

    def boom(self, text):
        raise ValueError("cannot build")

    monkeypatch.setattr(UbiImpression, "with_query", boom)
    proc, ports, _ = make()
    batch = [
        record(json.dumps({"query_id": "u1", "user_query": "velvet sofa"}).encode(), 0),
        record(ubi_event("u1", "p1", 0), 1),
        record(native(2), 2),
    ]
    within(proc.process(batch))
    (letter,) = ports.dead_letters
    assert letter.offset == 1 and "cannot build" in letter.reason
    assert set(ports.rows) == {"i2"} and len(ports.acked) == 3


def test_a_record_too_large_for_the_broker_is_dead_lettered_truncated():
    import hashlib

    proc, ports, metrics = make()  # the fake broker refuses messages over 1 MiB
    value = b'{"impression_id": "' + b"x" * 900_000 + b'"'
    within(proc.process([record(value, 0), record(native(1), 1)]))
    (letter,) = ports.dead_letters
    assert letter.kind == "malformed" and letter.truncated
    assert len(letter.to_bytes()) <= 512 * 1024
    assert letter.value_size == len(value)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    assert value.startswith(letter.original) and len(letter.original) > 300_000
    assert len(ports.acked) == 2 and metrics.get("send_errors") == 0


def test_dead_letters_the_broker_refuses_for_good_are_sent_without_the_original():
    # a limit set above what the broker takes: the broker refuses, nothing retries forever
    ports = MemoryPorts(max_message_bytes=20_000)
    proc, ports, metrics = make(ports=ports)
    big = b"{" + b"x" * 50_000
    within(proc.process([record(big, 0), record(b"{small", 1), record(native(2), 2)]))
    letters = {d.offset: d for d in ports.dead_letters}
    assert set(letters) == {0, 1}
    assert letters[1].original == b"{small" and not letters[1].truncated
    assert letters[0].original == b"" and letters[0].truncated
    assert letters[0].value_size == len(big) and "refused" in letters[0].reason
    assert metrics.get("dead_letters_stripped") == 1
    assert sorted(r.offset for r in ports.acked) == [0, 1, 2]


def test_a_dead_letter_refused_even_stripped_is_logged_and_offsets_move(caplog):
    ports = MemoryPorts(max_message_bytes=10)
    proc, ports, metrics = make(ports=ports)
    within(proc.process([record(b"{bad", 0), record(native(1), 1)]))
    assert ports.dead_letters == []
    assert metrics.get("dead_letters_unsent") == 1
    assert any('"offset":0' in r.getMessage() for r in caplog.records)
    assert sorted(r.offset for r in ports.acked) == [0, 1]


def test_transient_dead_letter_failures_are_still_retried():
    class Flaky(MemoryPorts):
        failures = 2

        async def send_dead_letters(self, letters):
            if self.failures:
                self.failures -= 1
                raise BrokerError("broker away (fake)")
            await super().send_dead_letters(letters)

    proc, ports, metrics = make(ports=Flaky())
    within(proc.process([record(b"{bad", 0)]))
    (letter,) = ports.dead_letters
    assert letter.original == b"{bad" and not letter.truncated
    assert metrics.get("send_errors") == 2 and len(ports.acked) == 1


def test_ubi_ordinals_from_zero_become_positions_from_one():
    proc, ports, _ = make()
    within(
        proc.process(
            [
                record(json.dumps({"query_id": "u1", "user_query": "velvet sofa"}).encode(), 0),
                record(ubi_event("u1", "p1", 0), 1),
            ]
        )
    )
    assert ports.dead_letters == []
    assert ports.rows["ubi:u1:0:p1"].position == 1
    assert ports.rows["ubi:u1:0:p1"].position_bucket == "top"


def test_ubi_position_base_one():
    ports = MemoryPorts()
    proc = memory_processor(
        ports=ports,
        catalog=Catalog([CatalogProduct(product_id="p1", title="Blue Velvet Sofa")]),
        planner=Planner(PlannerConfig(checkpoint_interval_s=0), clock=Clock()),
        rates=SamplingRates.uniform_at(1.0),
        routing=Routing(0.5),
        model_version="m",
        metrics=Metrics(),
        clock=Clock(),
        backoff_max_s=0.05,
        ubi_position_base=1,
    )
    batch = [
        record(json.dumps({"query_id": "u1", "user_query": "velvet sofa"}).encode(), 0),
        record(ubi_event("u1", "p1", 1), 1),
        record(ubi_event("u1", "p1", 0), 2),
    ]
    within(proc.process(batch))
    assert ports.rows["ubi:u1:1:p1"].position == 1
    (letter,) = ports.dead_letters
    assert letter.offset == 2 and "RELMON_UBI_POSITION_BASE=1" in letter.reason


def test_numeric_event_time_is_dead_lettered_naming_the_field():
    proc, ports, _ = make()
    raw = json.loads(native(0))
    raw["event_time"] = 123
    within(proc.process([record(json.dumps(raw).encode(), 0)]))
    (letter,) = ports.dead_letters
    assert letter.kind == "invalid" and letter.reason.startswith("invalid event_time:")
    assert ports.rows == {}


# --- issue 11 items 5 and 6: event-time window, store before review, the ledger ---------------


def windowed(ports=None, now=NOW, max_age_s=28 * 86400, max_future_s=300, metrics=None):
    ports = ports or MemoryPorts()
    proc = memory_processor(
        ports=ports,
        catalog=Catalog([CatalogProduct(product_id="p1", title="Blue Velvet Sofa")]),
        planner=Planner(PlannerConfig(checkpoint_interval_s=0), clock=Clock()),
        rates=SamplingRates.uniform_at(1.0),
        routing=Routing(0.5),
        model_version="m",
        metrics=metrics if metrics is not None else Metrics(),
        clock=Clock(),
        backoff_max_s=0.05,
        event_window=EventTimeWindow(max_age_s, max_future_s),
        wall_clock=now if callable(now) else lambda: now,
    )
    return proc, ports


def at(i, when, title="Oak Dining Table"):
    return Impression(
        impression_id=f"t{i}",
        query_id=f"q{i}",
        query="blue velvet sofa",
        product_id="p1",
        title=title,
        position=1,
        event_time=when,
    ).to_bytes()


def test_event_times_outside_the_window_are_refused_never_scored():
    metrics = Metrics()
    proc, ports = windowed(metrics=metrics)
    day = timedelta(days=1)
    ubi_late = json.loads(ubi_event("u1", "p1", 0))
    ubi_late["timestamp"] = (NOW + timedelta(seconds=301)).isoformat()
    batch = [
        record(at(0, NOW - 29 * day), 0),  # a replay of old traffic: would expire at once
        record(at(1, NOW - 28 * day), 1),  # the oldest accepted
        record(at(2, NOW + timedelta(seconds=300)), 2),  # the latest accepted
        record(json.dumps({"query_id": "u1", "user_query": "velvet sofa"}).encode(), 3),
        record(json.dumps(ubi_late).encode(), 4),  # clock skew
        record(at(5, datetime(2024, 12, 1, tzinfo=UTC)), 5),
    ]
    within(proc.process(batch))
    assert set(ports.rows) == {"t1", "t2"}
    assert {r.impression_id for r in ports.reviews} == {"t1", "t2"}
    letters = {d.offset: d for d in ports.dead_letters}
    assert set(letters) == {0, 4, 5}
    assert {d.kind for d in letters.values()} == {"event_time_out_of_range"}
    window = "[2024-04-03T12:00:00Z, 2024-05-01T12:05:00Z]"
    assert all(window in d.reason for d in letters.values())
    assert letters[0].reason.startswith("event_time_out_of_range: event time 2024-04-02T12")
    assert "RELMON_MAX_EVENT_AGE_S=2.4192e+06" in letters[0].reason
    assert "RELMON_MAX_EVENT_FUTURE_S=300" in letters[4].reason
    assert all(letters[o].original == batch[o].value for o in letters)
    assert sorted(r.offset for r in ports.acked) == list(range(6))
    assert metrics.get("dead_lettered_event_time_out_of_range") == 3


def test_the_window_follows_the_wall_clock():
    clock = [NOW]
    ports = MemoryPorts()
    proc, _ = windowed(ports, now=lambda: clock[0])
    within(proc.process([record(at(0, NOW - timedelta(days=27)), 0)]))
    clock[0] = NOW + timedelta(days=2)  # a replay two days later: now too old
    within(proc.process([record(at(1, NOW - timedelta(days=27)), 1)]))
    assert set(ports.rows) == {"t0"}
    (letter,) = ports.dead_letters
    assert letter.offset == 1 and letter.kind == "event_time_out_of_range"


def test_max_event_age_must_leave_every_accepted_hour_in_the_raw_rows():
    from relmon.errors import ConfigError
    from relmon.settings import load_settings

    assert load_settings().ingest.max_event_age_s == 28 * 86400
    assert load_settings().ingest.max_event_future_s == 300
    with pytest.raises(ConfigError, match="RELMON_MAX_EVENT_AGE_S"):
        load_settings(max_event_age_s=30 * 86400)


class Crash(BaseException):
    """A SIGKILL: nothing after it runs (BaseException: the processor's retries do not catch it)."""


class CrashingPorts(MemoryPorts):
    """Ports that crash the worker once, at the ``crash_at``-th call of method ``step``."""

    def __init__(self, step, crash_at):
        super().__init__()
        self.step, self.crash_at, self.calls = step, crash_at, 0

    def _maybe_crash(self, step):
        if step == self.step:
            self.calls += 1
            if self.calls == self.crash_at:
                raise Crash(step)

    async def write(self, rows, queries):
        self._maybe_crash("before_write")
        await super().write(rows, queries)
        self._maybe_crash("after_write")

    async def send_reviews(self, reviews):
        await super().send_reviews(reviews)
        self._maybe_crash("after_send")


def review_traffic(batches=4, size=12):
    """Pages whose results are bad, uncertain or good: most of them are reviewed."""
    titles = ["Oak Dining Table", "Blue Velvet Chair", "Blue Velvet Sofa"]
    out = []
    for i in range(batches * size):
        when = NOW - timedelta(minutes=90 - i)
        out.append(record(at(i, when, title=titles[i % 3]), i))
    return [out[b : b + size] for b in range(0, len(out), size)]


def run_with_restarts(ports, batches):
    """Process ``batches``; after a crash restart (memory lost) from the committed offset."""
    while True:
        proc, _ = windowed(ports)
        resume = committed(ports.acked, 0)
        try:
            for batch in batches:
                todo = [r for r in batch if r.offset >= resume]
                if todo:
                    within(proc.process(todo))
            return
        except Crash:
            continue


@pytest.mark.parametrize("step", ["before_write", "after_write", "after_send"])
def test_a_crash_sends_no_review_twice_except_between_delivery_and_the_ledger(step):
    clean = MemoryPorts()
    run_with_restarts(clean, review_traffic())
    expected = {r.impression_id: r for r in clean.reviews}
    assert len(expected) == len(clean.reviews) == 16

    ports = CrashingPorts(step, crash_at=2)
    run_with_restarts(ports, review_traffic())
    assert ports.calls >= 2  # it crashed
    sent = Counter(r.impression_id for r in ports.reviews)
    assert set(sent) == set(expected)  # nothing lost
    again = {i for i, n in sent.items() if n > 1}
    if step == "after_send":  # delivered, not yet in the ledger: the replay sends them again
        assert again == {i for i in expected if 12 <= int(i[1:]) < 24}  # the second batch
    else:
        assert again == set()
    # every repeat is the same request, so a consumer keyed by impression_id keeps one
    assert all(r == expected[r.impression_id] for r in ports.reviews)
    assert set(ports.rows) == set(clean.rows) and set(ports.ledger) == set(clean.rows)
    assert ports.row_writes == len(clean.rows)  # each row written once, also across the crash


def test_rows_stored_before_a_crash_are_recovered_not_rescored():
    ports = CrashingPorts("after_write", crash_at=1)
    (batch,) = review_traffic(batches=1)
    with pytest.raises(Crash):
        within(windowed(ports)[0].process(batch))
    assert ports.rows and not ports.reviews and not ports.ledger and not ports.acked
    metrics = Metrics()
    proc, _ = windowed(ports, metrics=metrics)
    within(proc.process(batch))
    assert metrics.get("rows_recovered") == len(ports.rows)
    assert metrics.get("scored") == 0
    hours = {r.event_time.replace(minute=0, second=0, microsecond=0) for r in ports.rows.values()}
    assert sorted(ports.rollup_refreshes) == sorted(hours)
    assert {r.impression_id for r in ports.reviews} == {
        r.impression_id for r in ports.rows.values() if r.is_bad
    }
    assert set(ports.ledger) == set(ports.rows) and len(ports.acked) == len(batch)


def refreshing(ports, clock, refresh_s):
    """A processor on ``ports`` that recomputes roll-ups at most every ``refresh_s``."""
    return memory_processor(
        ports=ports,
        catalog=Catalog([CatalogProduct(product_id="p1", title="Blue Velvet Sofa")]),
        planner=Planner(PlannerConfig(checkpoint_interval_s=0), clock=clock),
        clock=clock,
        event_window=EventTimeWindow(28 * 86400, 300),
        wall_clock=lambda: NOW,
        rollup_refresh_s=refresh_s,
    )


def hours_of(rows):
    return {r.event_time.replace(minute=0, second=0, microsecond=0) for r in rows}


def test_rollups_are_recomputed_at_most_every_interval_and_records_wait_for_it():
    clock, ports = Clock(), MemoryPorts()
    proc = refreshing(ports, clock, refresh_s=5.0)
    first, second = review_traffic(batches=2, size=12)  # minutes 30-53 of one hour, then 42-...
    within(proc.process(first))  # the first refresh is due at once
    assert ports.rollup_refreshes == sorted(hours_of(ports.rows.values()))
    assert len(ports.acked) == len(first)

    clock.t += 1.0
    within(proc.process(second))
    stored_now = [ports.rows[f"t{i}"] for i in range(12, 24)]
    assert all(f"t{i}" in ports.ledger for i in range(12, 24))  # stored, reviewed, done
    assert len(ports.rollup_refreshes) == 1 and len(ports.acked) == len(first)  # not yet

    clock.t += 2.0
    within(proc.retry_pending())  # the worker's timer: not due yet
    assert len(ports.rollup_refreshes) == 1 and len(ports.acked) == len(first)

    clock.t += 3.0
    within(proc.retry_pending())  # due: one recomputation for everything since, then the acks
    assert ports.rollup_refreshes[1:] == sorted(hours_of(stored_now))
    assert len(ports.acked) == len(first) + len(second)


def test_a_flush_recomputes_stale_rollups_at_once():
    clock, ports = Clock(), MemoryPorts()
    proc = refreshing(ports, clock, refresh_s=3600.0)
    first, second = review_traffic(batches=2, size=12)
    within(proc.process(first))
    clock.t += 1.0
    within(proc.process(second))
    assert len(ports.rollup_refreshes) == 1 and len(ports.acked) == len(first)
    within(proc.flush())  # a clean hand-over (partitions revoked, the worker stopping)
    assert len(ports.rollup_refreshes) == 2 and len(ports.acked) == len(first) + len(second)


def test_a_crash_between_the_ledger_and_the_refresh_recomputes_before_the_ack():
    clock, ports = Clock(), MemoryPorts()
    first, second = review_traffic(batches=2, size=12)
    proc = refreshing(ports, clock, refresh_s=3600.0)
    within(proc.process(first))
    clock.t += 1.0
    within(proc.process(second))  # done in the ledger, its roll-ups not recomputed: a crash
    second_hours = hours_of(ports.rows[f"t{i}"] for i in range(12, 24))
    refreshed_before = list(ports.rollup_refreshes)
    writes = ports.row_writes

    proc = refreshing(ports, clock, refresh_s=3600.0)  # restarted: memory lost
    resume = committed(ports.acked, 0)
    assert resume == len(first)
    within(proc.process([r for r in second if r.offset >= resume]))
    assert set(ports.rollup_refreshes[len(refreshed_before) :]) == second_hours
    assert ports.row_writes == writes  # found done: not scored or written again
    assert committed(ports.acked, 0) == len(first) + len(second)


def test_reviews_are_sent_only_after_their_rows_are_stored():
    class Watching(MemoryPorts):
        async def send_reviews(self, reviews):
            assert all(r.impression_id in self.rows for r in reviews)
            assert not any(r.impression_id in self.ledger for r in reviews)
            await super().send_reviews(reviews)

    proc, ports = windowed(Watching())
    for batch in review_traffic():
        within(proc.process(batch))
    assert ports.reviews


class GatedPorts(MemoryPorts):
    """Ports whose scoring waits until the test opens ``gate`` (a slow scorer).

    ``one_at_a_time``: the gate closes again behind each scoring call.
    """

    def __init__(self, one_at_a_time=False):
        super().__init__()
        self.gate = asyncio.Event()
        self.scoring = asyncio.Event()
        self.one_at_a_time = one_at_a_time

    async def score(self, pairs, keys, pages=None):
        self.scoring.set()
        await self.gate.wait()
        if self.one_at_a_time:
            self.gate.clear()
            self.scoring.clear()
        return await super().score(pairs, keys, pages)


def test_submit_returns_once_the_back_task_takes_the_batch():
    """No backlog (the default): the caller fronts its next batch while the back task works,
    then waits until that batch is taken, so no finished front waits a whole back phase."""
    batches = [[record(native(3 * b + i), 3 * b + i) for i in range(3)] for b in range(2)]

    async def scenario():
        proc, ports, metrics = make(ports=GatedPorts(one_at_a_time=True))
        await proc.submit(batches[0])  # taken at once: the back task was idle
        await asyncio.wait_for(ports.scoring.wait(), 10)
        second = asyncio.ensure_future(proc.submit(batches[1]))
        await asyncio.wait_for(until(lambda: proc._jobs.qsize() == 1), 10)  # batch 1 fronted
        for _ in range(100):  # ample turns of the loop for a queued submit to return
            await asyncio.sleep(0)
        assert metrics.get("sampled") == 3  # batch 0 is still scoring
        assert not second.done()  # and batch 1 waits until the back task takes it
        ports.gate.set()  # batch 0 finishes; batch 1 is taken and waits at the gate
        await asyncio.wait_for(second, 10)
        assert [r.offset for r in ports.acked] == [0, 1, 2]
        ports.gate.set()
        await asyncio.wait_for(proc.drain(), 10)
        return ports

    ports = run(scenario())
    assert [r.offset for r in ports.acked] == list(range(6))


def test_submit_decodes_the_next_batch_while_the_back_task_scores():
    batches = [[record(native(3 * b + i), 3 * b + i) for i in range(3)] for b in range(3)]

    async def scenario():
        proc, ports, metrics = make(ports=GatedPorts(), backlog=1)
        await proc.submit(batches[0])  # queued: the back task takes it and waits to score
        await asyncio.wait_for(ports.scoring.wait(), 10)
        await proc.submit(batches[1])  # decoded and sampled while batch 0 waits; queued
        assert metrics.get("consumed") == 6 and metrics.get("sampled") == 3  # batch 0 only
        assert not ports.rows and not ports.acked
        third = asyncio.ensure_future(proc.submit(batches[2]))
        await asyncio.sleep(0)
        assert not third.done()  # the backlog (1 batch) is full: the caller waits
        ports.gate.set()
        await asyncio.wait_for(third, 10)
        await asyncio.wait_for(proc.drain(), 10)
        return ports

    ports = run(scenario())
    assert [r.offset for r in ports.acked] == list(range(9))  # in offset order
    assert set(ports.rows) == set(ports.ledger) == {f"i{i}" for i in range(9)}


def test_retry_pending_waits_for_the_batches_before_it_not_for_those_after():
    async def scenario():
        proc, ports, _ = make(ports=GatedPorts(one_at_a_time=True))
        await proc.submit([record(native(0), 0)])
        await asyncio.wait_for(ports.scoring.wait(), 10)  # batch 0 is being scored
        retry = asyncio.ensure_future(proc.retry_pending())  # the worker's timer
        await asyncio.sleep(0)
        later = asyncio.ensure_future(proc.submit([record(native(1), 1)]))
        await asyncio.sleep(0)
        assert not retry.done()  # batch 0 is not finished
        ports.gate.set()  # batch 0 scores; batch 1 will wait at the gate
        await asyncio.wait_for(retry, 10)
        await asyncio.wait_for(ports.scoring.wait(), 10)  # batch 1 is being scored
        assert [r.offset for r in ports.acked] == [0]
        ports.gate.set()
        await asyncio.wait_for(later, 10)
        await asyncio.wait_for(proc.drain(), 10)
        return ports

    ports = run(scenario())
    assert [r.offset for r in ports.acked] == [0, 1]


def test_a_bug_in_the_back_task_stops_the_caller_at_its_next_call():
    class BuggyPorts(MemoryPorts):
        async def write(self, rows, queries):
            raise RuntimeError("a bug in the store adapter")

    async def scenario():
        proc, ports, _ = make(ports=BuggyPorts())
        await proc.submit([record(native(0), 0)])
        with pytest.raises(RuntimeError, match="a bug in the store adapter"):
            await asyncio.wait_for(proc.drain(), 10)
        with pytest.raises(RuntimeError, match="a bug in the store adapter"):
            await proc.submit([record(native(1), 1)])
        with pytest.raises(RuntimeError, match="a bug in the store adapter"):
            await proc.retry_pending()
        return ports

    ports = run(scenario())
    assert not ports.acked and not ports.ledger


class JournalPorts(MemoryPorts):
    """Memory ports that note the order of the back half's writes, sends and acks."""

    def __init__(self):
        super().__init__()
        self.journal = []

    async def write(self, rows, queries):
        await super().write(rows, queries)
        if rows:
            self.journal.append("rows")
        if queries:
            self.journal.append("queries")

    async def send_reviews(self, reviews):
        await super().send_reviews(reviews)
        self.journal.append("reviews")

    async def mark_done(self, rows):
        await super().mark_done(rows)
        self.journal.append("ledger")

    async def ack(self, records):
        await super().ack(records)
        self.journal.append("ack")


def test_rows_reach_the_ledger_before_the_batch_query_texts_and_acks_come_last():
    ports = JournalPorts()
    proc, _, _ = make(ports=ports)
    records = [
        record(native(1, title="Garden Hose"), 0),  # scores 0: bad, so reviewed
        record(json.dumps({"query_id": "u1", "user_query": "velvet sofa"}).encode(), 1),
        record(ubi_event("u1", "p1", 1), 2),
    ]
    run(proc.process(records))
    assert ports.journal == ["rows", "reviews", "ledger", "queries", "ack"]
    assert ports.queries == {"u1": "velvet sofa"}
    assert sorted(r.offset for r in ports.acked) == [0, 1, 2]
