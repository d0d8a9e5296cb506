"""The teacher's daily budget across restarts, on real servers: tansu, the local ClickHouse store,
real ``relmon teacher`` processes and a chat server (:class:`FakeChatServer`, in this process).

Every chat request is reserved in the store's spend ledger (``teacher_requests``) before it is
sent, so two consecutive teacher processes, the first one killed in the middle of failing and
succeeding batches, never send more than the day's budget in total.
"""

from __future__ import annotations

import signal
import time
import uuid
from datetime import UTC, datetime

import pytest

from relmon import db
from relmon.demo import env_of
from relmon.kafka import ensure_topics, producer
from relmon.runtime import ManagedProcess, relmon_argv, wait_until
from relmon.settings import Settings
from relmon.teacher import TeacherConsumer, build_judge, store
from relmon.teacher.fakes import FakeChatServer
from schemas.models import ReviewRequest

pytestmark = pytest.mark.integration

BUDGET = 20


def cases(n: int, prefix: str) -> list[ReviewRequest]:
    """``n`` cases of distinct pairs (no cache hit between them)."""
    return [
        ReviewRequest(
            impression_id=f"{prefix}-{i}",
            query_id=f"q-{i}",
            query=f"oak desk {i}",
            product_id=f"p-{i}",
            title=f"Oak Writing Desk {i}" if i % 2 else f"Shag Rug {i}",
            category="Desks",
            score=0.2,
            threshold=0.5,
            model_version="m1",
            reason="below_threshold",
            priority=2.3,
            sample_weight=2.0,
            review_weight=1.0,
            tier="tail",
            locale="en-US",
            position=1 + i % 10,
            event_time=datetime.now(UTC),
        )
        for i in range(n)
    ]


@pytest.fixture
def budget_settings(settings: Settings) -> Settings:
    s = settings.with_overrides(
        topic_labels=f"{settings.topics.review}.labels",
        teacher_group=f"teacher-{uuid.uuid4().hex[:8]}",
        teacher_model="fake-judge",
        teacher_daily_budget=BUDGET,
        teacher_max_attempts=3,
        teacher_backoff_s=0.05,
        teacher_backoff_max_s=0.5,  # also how long the circuit stays open
        teacher_timeout_s=0.5,
        teacher_concurrency=2,
        teacher_rate_per_s=0.0,
    )
    ensure_topics(s)
    db.migrate(s)
    return s


def produce(s: Settings, requests: list[ReviewRequest]) -> None:
    prod = producer(s)
    for r in requests:
        prod.send(s.topics.review, key=r.impression_id.encode(), value=r.to_bytes())
    prod.flush(30)
    prod.close()


def teacher_process(s: Settings, name: str) -> ManagedProcess:
    return ManagedProcess(
        name,
        [*relmon_argv("teacher")],
        log_path=s.home / "logs" / f"{name}.log",
        env=env_of(s),
        stop_timeout=20.0,
    )


def test_two_consecutive_teachers_never_exceed_the_daily_budget(budget_settings):
    s = budget_settings
    produce(s, cases(40, "budget"))
    # the API first fails (5xx, then hangs past the timeout), then answers, slowly
    faults = ["500"] * 4 + ["hang"] * 3
    with FakeChatServer(faults=faults, hang_s=2.0) as server:
        s = s.with_overrides(teacher_base_url=server.url, teacher_rate_per_s=2.0)
        client = db.connect(s)
        first = teacher_process(s, "teacher-1").start()
        try:
            # killed while it is judging: after its failed batches and a few answers
            wait_until(
                lambda: len(server.requests) >= len(faults) + 2,
                timeout=90,
                what="first teacher's requests",
                alive=first.alive,
            )
        finally:
            first.stop(signal.SIGKILL)
        sent_first = len(server.requests)
        spent_first = store.requests_spent_today(client)
        # every request the first process sent is in the ledger, failed ones included
        assert sent_first <= spent_first < BUDGET, (sent_first, spent_first)

        second = teacher_process(s, "teacher-2").start()
        try:
            wait_until(
                lambda: "daily teacher budget exhausted" in second.log_path.read_text(),
                timeout=120,
                what="second teacher to spend the rest of the budget",
                alive=second.alive,
            )
            time.sleep(1.0)  # nothing more goes out
            assert len(server.requests) <= BUDGET
        finally:
            second.stop()
        log_text = second.log_path.read_text()
        total = len(server.requests)
        assert total <= BUDGET, (sent_first, total)
        assert total - sent_first <= BUDGET - spent_first  # the second counted the first's spend
        assert store.requests_spent_today(client) == BUDGET
        assert log_text.count("daily teacher budget exhausted") == 1  # once per day
        teacher_verdicts = store.count_verdicts(client, "teacher")
        assert 0 < teacher_verdicts <= BUDGET - len(faults)
        client.close()


def test_spend_survives_a_restart_and_cached_reissues_keep_the_original_calls(
    budget_settings,
):
    s = budget_settings
    case = cases(1, "cached")[0]
    produce(s, [case])
    with FakeChatServer(faults=["500"]) as server:
        s = s.with_overrides(teacher_base_url=server.url, teacher_daily_budget=3)
        client = db.connect(s)

        def judged_once(consumer: TeacherConsumer, want: int) -> None:
            deadline = time.monotonic() + 60
            while consumer.totals.counts.get("verdicts", 0) < want:
                assert time.monotonic() < deadline, consumer.totals.counts
                consumer.poll_once(200)

        consumer = TeacherConsumer(s, build_judge(s, client), client=client)
        judged_once(consumer, 1)
        consumer.close()
        assert len(server.requests) == 2  # a 5xx, then the answer
        assert store.requests_spent_today(client) == 2

        def calls() -> list[tuple[int, int]]:
            return [
                (int(c), int(cached))
                for c, cached in client.query(
                    "SELECT calls, cached FROM verdicts FINAL WHERE impression_id = {i:String}",
                    parameters={"i": case.impression_id},
                ).result_rows
            ]

        assert calls() == [(2, 0)]

        # a restart: the new process's budget starts from the ledger, and the same case,
        # delivered again, is answered from the cache without replacing the stored verdict
        produce(s, [case])
        restarted = build_judge(s, client)
        assert restarted is not None and restarted.client.budget.spent == 2
        consumer = TeacherConsumer(
            s.with_overrides(teacher_group=f"{s.teacher.group}-2"), restarted, client=client
        )
        judged_once(consumer, 2)  # the first delivery and the replay, both from the cache
        consumer.close()
        assert len(server.requests) == 2
        assert calls() == [(2, 0)]
        assert store.requests_spent_today(client) == 2

        # one request is left today: one of two new pairs gets it, the other waits for people
        judge = build_judge(s, client)
        assert judge is not None
        outcomes = judge.judge(cases(3, "more")[1:])
        judge.close()
        assert sorted(o.status for o in outcomes) == ["judged", "over_budget"]
        assert len(server.requests) == 3
        assert store.requests_spent_today(client) == 3
        client.close()
