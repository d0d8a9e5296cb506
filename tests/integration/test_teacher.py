"""The teacher loop on real servers: tansu, the local ClickHouse store and a chat server
(:class:`relmon.teacher.fakes.FakeChatServer`, real HTTP in this process)."""

from __future__ import annotations

import base64
import threading
import uuid
from datetime import UTC, datetime

import pytest
from kafka import KafkaAdminClient

from relmon import db
from relmon.kafka import ensure_topics, producer, read_topic
from relmon.runtime import wait_until
from relmon.teacher import TeacherConsumer, Verdict, build_judge, export_distill, store
from relmon.teacher.fakes import FakeChatServer, overlap_grade
from schemas.models import DeadLetter, ReviewRequest
from scoring.data import load_examples

pytestmark = pytest.mark.integration

PAIRS = [
    ("oak desk", "Oak Writing Desk"),
    ("oak desk", "Shag Rug"),
    ("oak desk", "Pine Desk"),
    ("blue rug", "Blue Shag Rug"),
    ("blue rug", "Red Lamp"),
]


def reviews(n: int, prefix: str = "imp") -> list[ReviewRequest]:
    out = []
    for i in range(n):
        query, title = PAIRS[i % len(PAIRS)]
        score = 0.1 + 0.8 * (i % 4) / 4
        out.append(
            ReviewRequest(
                impression_id=f"{prefix}-{i}",
                query_id=f"q-{i}",
                query=query,
                product_id=f"p-{title.lower().replace(' ', '-')}",
                title=title,
                category="Desks" if "desk" in query else "Rugs",
                score=score,
                threshold=0.5,
                model_version="m1",
                reason="below_threshold" if score < 0.5 else "audit",
                priority=2.0 + 0.5 - score if score < 0.5 else 0.0,
                sample_weight=2.0,
                review_weight=1.0 if score < 0.5 else 50.0,
                tier="tail",
                locale="en-US",
                position=1 + i % 10,
                event_time=datetime.now(UTC),
            )
        )
    return out


@pytest.fixture
def teacher_settings(settings):
    s = settings.with_overrides(
        topic_labels=f"{settings.topics.review}.labels",
        teacher_group=f"teacher-{uuid.uuid4().hex[:8]}",
        teacher_backoff_s=0.01,
        teacher_backoff_max_s=0.05,
        teacher_timeout_s=2.0,
        teacher_rate_per_s=0.0,
    )
    ensure_topics(s)
    db.migrate(s)
    return s


def produce(s, topic, values: list[bytes]) -> None:
    prod = producer(s)
    for v in values:
        prod.send(topic, key=b"k", value=v)
    prod.flush(30)
    prod.close()


def run_until(consumer: TeacherConsumer, done, timeout: float = 60.0) -> None:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run(poll_ms=200)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        wait_until(lambda: done() or bool(errors), timeout=timeout, what="teacher verdicts")
    finally:
        consumer.stop()
        thread.join(timeout=30)
    assert not errors, errors


def committed(s) -> int:
    admin = KafkaAdminClient(bootstrap_servers=s.kafka.servers)
    try:
        offsets = admin.list_group_offsets(s.teacher.group)[s.teacher.group]
    finally:
        admin.close()
    return sum(o.offset for tp, o in offsets.items() if tp.topic == s.topics.review)


def test_review_records_become_verdicts_end_to_end(teacher_settings):
    s = teacher_settings
    cases = reviews(20)
    malformed = [b"{not json", b'{"impression_id": "x"}']
    produce(s, s.topics.review, [c.to_bytes() for c in cases] + malformed)
    faults = ["429", "500", "hang", "malformed", "garbage"]
    with FakeChatServer(faults=faults, hang_s=5.0, api_key="sk-relmon") as server:
        s = s.with_overrides(
            teacher_base_url=server.url,
            teacher_model="fake-judge",
            teacher_api_key="sk-relmon",
            teacher_timeout_s=0.5,
        )
        client = db.connect(s)
        consumer = TeacherConsumer(s, build_judge(s, client), client=client)
        run_until(consumer, lambda: store.count_verdicts(client, "teacher") >= len(cases))
        consumer.close()
        distinct_pairs = len(PAIRS)
        assert server.served.get("ok", 0) == distinct_pairs  # one valid answer per pair
        assert all(server.served[f] == 1 for f in faults)

        rows = client.query(
            "SELECT impression_id, grade, is_bad, student_bad, prompt_version, judge_id, "
            "rationale, review_weight FROM verdicts FINAL ORDER BY impression_id"
        ).result_rows
        assert len(rows) == len(cases)
        by_id = {c.impression_id: c for c in cases}
        for iid, grade, is_bad, student_bad, version, judge_id, rationale, rw in rows:
            case = by_id[iid]
            assert grade == overlap_grade(case.query, case.title)
            assert bool(is_bad) == (grade in ("Complement", "Irrelevant"))
            assert bool(student_bad) == (case.score < case.threshold)
            assert version == "lore-esci-v1" and judge_id == "fake-judge" and rationale
            assert rw == case.review_weight
        assert int(client.command("SELECT count() FROM review_queue FINAL")) == len(cases)

        labels = [
            Verdict.model_validate_json(v) for _, v in read_topic(s, s.topics.labels, expect=20)
        ]
        assert {v.impression_id for v in labels} == set(by_id)
        letters = [
            DeadLetter.model_validate_json(v) for _, v in read_topic(s, s.topics.dlq, expect=2)
        ]
        assert sorted(base64.b64decode(d.value_b64) for d in letters) == sorted(malformed)
        assert {d.kind for d in letters} == {"malformed", "invalid"}
        assert all(d.topic == s.topics.review and d.offset >= 0 for d in letters)
        wait_until(lambda: committed(s) == len(cases) + 2, timeout=20, what="commits")

        # a replay of the same cases, by a fresh process: no new chat call, no new row
        requests_before = len(server.requests)
        produce(s, s.topics.review, [c.to_bytes() for c in cases[:10]])
        consumer = TeacherConsumer(s, build_judge(s, client), client=client)
        run_until(consumer, lambda: consumer.totals.counts.get("consumed", 0) >= 10)
        consumer.close()
        assert consumer.totals.counts["verdicts"] == 10
        assert len(server.requests) == requests_before
        assert store.count_verdicts(client, "teacher") == len(cases)
        client.close()


def test_without_llm_the_queue_fills_and_people_labels_export(teacher_settings, tmp_path):
    s = teacher_settings
    assert build_judge(s) is None
    cases = reviews(8)
    produce(s, s.topics.review, [c.to_bytes() for c in cases])
    client = db.connect(s)
    consumer = TeacherConsumer(s, None, client=client)
    run_until(consumer, lambda: len(store.queue_frame(client)) >= len(cases))
    consumer.close()
    queue = store.queue_frame(client)
    assert list(queue["priority"]) == sorted(queue["priority"], reverse=True)
    assert queue["teacher_grade"].isna().all()
    assert store.count_verdicts(client) == 0

    # a person grades two cases, a teacher verdict exists for a third pair (and for one of the
    # person's: the person wins in the export)
    human = [
        Verdict.of(cases[0], judge="human", judge_id="alice", grade="Substitute"),
        Verdict.of(cases[1], judge="human", judge_id="bob", grade="Irrelevant"),
    ]
    teacher = [
        Verdict.of(cases[1], judge="teacher", judge_id="m", grade="Exact", prompt_version="v"),
        Verdict.of(cases[2], judge="teacher", judge_id="m", grade="Exact", prompt_version="v"),
    ]
    store.insert_verdicts(client, human + teacher)
    store.insert_verdicts(client, human)  # replays are idempotent
    assert store.count_verdicts(client, "human") == 2
    assert len(store.queue_frame(client)) == len(cases) - 2  # graded cases leave the queue

    out = tmp_path / "distill.jsonl"
    counts = export_distill(client, out)
    assert counts == {"pairs": 3, "human": 2, "teacher": 1}
    examples = {(e.query, e.title): e for e in load_examples(out)}
    a = examples[(cases[0].query, cases[0].title)]
    assert (a.label, a.teacher_prob, a.grade, a.source) == (1, 0.6, "Substitute", "human:alice")
    b = examples[(cases[1].query, cases[1].title)]
    assert (b.label, b.teacher_prob, b.source) == (0, 0.0, "human:bob")
    c = examples[(cases[2].query, cases[2].title)]
    assert (c.label, c.target, c.source) == (1, 1.0, "teacher:m:v")
    assert c.product_id == cases[2].product_id
    assert export_distill(client, out, include_teacher=False)["pairs"] == 2
    client.close()


def test_calls_on_answers_that_stay_malformed_count_against_the_budget_after_restart(
    teacher_settings,
):
    s = teacher_settings
    case = reviews(1, prefix="spend")[0]
    produce(s, s.topics.review, [case.to_bytes()])
    attempts = s.teacher.parse_retries + 1
    with FakeChatServer(faults=["malformed"] * attempts, api_key="sk-relmon") as server:
        s = s.with_overrides(
            teacher_base_url=server.url,
            teacher_model="fake-judge",
            teacher_api_key="sk-relmon",
            teacher_daily_budget=10,
        )
        client = db.connect(s)
        consumer = TeacherConsumer(s, build_judge(s, client), client=client)
        run_until(consumer, lambda: consumer.totals.counts.get("unjudged", 0) >= 1)
        consumer.close()
        assert len(server.requests) == attempts
        assert store.count_verdicts(client, "teacher") == 0
        assert store.requests_spent_today(client) == attempts
        restarted = build_judge(s, client)
        assert restarted is not None
        assert restarted.client.budget.spent == attempts
        restarted.close()
        client.close()
