"""The LLM judge and its chat client against a real HTTP server in this process."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

import relmon.teacher as teacher
from relmon.errors import DecodeError
from relmon.teacher.client import (
    BudgetExhausted,
    ChatClient,
    DailyBudget,
    RateLimiter,
    TeacherRejected,
    TeacherUnavailable,
    backoff_delay,
)
from relmon.teacher.fakes import FakeChatServer
from relmon.teacher.judge import CachedGrade, LlmJudge, cache_key
from relmon.teacher.prompt import PROMPT_VERSION, build_messages, parse_answer
from schemas.models import ReviewRequest


def review(i: int, query: str = "oak desk", title: str = "Oak Writing Desk", **kw) -> ReviewRequest:
    base = dict(
        impression_id=f"imp-{i}",
        query_id=f"q-{i}",
        query=query,
        product_id=f"p-{title}",
        title=title,
        category="Desks",
        score=0.2,
        threshold=0.5,
        model_version="m1",
        reason="below_threshold",
        priority=2.3,
        sample_weight=2.0,
        event_time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    base.update(kw)
    return ReviewRequest(**base)


def client_for(server: FakeChatServer, **kw) -> ChatClient:
    opts = dict(model="judge-1", timeout_s=2.0, max_attempts=4, backoff_s=0.001, backoff_max_s=0.01)
    opts.update(kw)
    return ChatClient(server.url, **opts)


def test_exported_names():
    assert sorted(teacher.__all__) == sorted(
        [
            "PROMPT_VERSION",
            "ChatClient",
            "LlmJudge",
            "TeacherConsumer",
            "Verdict",
            "build_judge",
            "export_distill",
        ]
    )


def test_prompt_follows_the_chain_and_parses_strictly():
    messages = build_messages(review(1))
    system = messages[0]["content"]
    for step in ("product", "intent", "constraints", "match", "Exact", "Substitute", "Complement"):
        assert step in system
    assert "Query: oak desk" in messages[1]["content"]
    good = {
        "product": "a desk",
        "intent": "a desk",
        "constraints": "oak",
        "match": "yes",
        "grade": "Exact",
        "rationale": "An oak desk.",
    }
    assert parse_answer(json.dumps(good)).grade == "Exact"
    fenced = "<think>hmm</think>\n```json\n" + json.dumps(good) + "\n```"
    assert parse_answer(fenced).rationale == "An oak desk."
    for bad in (
        "Exact",
        json.dumps([good]),
        json.dumps({**good, "grade": "exact match"}),
        json.dumps({k: v for k, v in good.items() if k != "match"}),
        json.dumps({**good, "extra": "x"}),
        json.dumps({**good, "grade": 1}),
        "Sure! " + json.dumps(good),
    ):
        with pytest.raises(DecodeError):
            parse_answer(bad)


def test_judges_through_errors_timeouts_and_malformed_answers():
    faults = ["429", "500", "hang", "garbage", "malformed", "bad_grade", "think"]
    with FakeChatServer(faults=faults, hang_s=5.0, api_key="sk-test") as server:
        client = client_for(server, timeout_s=0.3, api_key="sk-test", max_attempts=5)
        judge = LlmJudge(client, concurrency=1, parse_retries=2)
        pairs = [
            ("oak desk", "Oak Writing Desk"),
            ("oak desk", "Shag Rug"),
            ("oak desk", "Pine Desk"),
        ]
        outcomes = judge.judge([review(i, title=t) for i, (_, t) in enumerate(pairs)])
        judge.close()
    grades = [o.verdict.grade for o in outcomes if o.verdict]
    assert grades == ["Exact", "Irrelevant", "Substitute"]
    assert [o.status for o in outcomes] == ["judged"] * 3
    assert all(s == 1 for f, s in server.served.items() if f != "ok")
    assert client.stats["timeouts"] == 1 and client.stats["retries"] == 4
    assert judge.stats.counts["malformed_answers"] == 2
    # the re-ask carries the model's own answer and the reason it was rejected
    reasks = [r for r in server.requests if len(r["messages"]) > 2]
    assert reasks and "not valid" in reasks[0]["messages"][-1]["content"]
    first = outcomes[0].verdict
    assert first.prompt_version == PROMPT_VERSION and first.judge_id == "judge-1"
    assert first.is_bad is False and outcomes[1].verdict.is_bad is True
    assert first.calls >= 5 and first.student_bad is True
    assert all(r["response_format"] == {"type": "json_object"} for r in server.requests)


def test_gives_up_after_max_attempts_and_rejects_bad_config():
    with FakeChatServer(faults=["500"] * 3) as server:
        with client_for(server, max_attempts=3) as client, pytest.raises(TeacherUnavailable):
            client.complete(build_messages(review(1)))
        assert server.served == {"500": 3}
    with FakeChatServer(api_key="right") as server:
        with client_for(server, api_key="wrong") as client, pytest.raises(TeacherRejected):
            client.complete(build_messages(review(1)))
        assert len(server.requests) == 0  # rejected before the handler counted it


def test_malformed_forever_leaves_the_case_to_people():
    with FakeChatServer(faults=["malformed"] * 3) as server:
        judge = LlmJudge(client_for(server), concurrency=2, parse_retries=2)
        [outcome] = judge.judge([review(1)])
        judge.close()
    assert outcome.verdict is None and outcome.status == "malformed"
    assert "not JSON" in outcome.error and len(server.requests) == 3


def test_cache_by_query_product_and_prompt_version():
    looked_up = []

    def lookup(keys):
        looked_up.extend(keys)
        stored = cache_key(review(9, title="Walnut Desk"))
        return {stored: CachedGrade("Substitute", "from the store")} if stored in keys else {}

    with FakeChatServer() as server:
        judge = LlmJudge(client_for(server), concurrency=3, lookup=lookup)
        batch = [
            review(1),
            review(2, query="  OAK   Desk "),  # same normalised query and product: one call
            review(3, title="Walnut Desk"),  # in the store already: no call
        ]
        out = judge.judge(batch)
        assert [o.status for o in out] == ["judged", "cached", "cached"]
        assert out[2].verdict.rationale == "from the store"
        assert len(server.requests) == 1
        again = judge.judge([review(4)])  # memory hit
        assert again[0].status == "cached" and len(server.requests) == 1
        other = LlmJudge(client_for(server), prompt_version="v-next", lookup=lookup)
        assert other.judge([review(5)])[0].status == "judged"  # new prompt: new verdict
        assert len(server.requests) == 2
        judge.close()
        other.close()
    assert {k[2] for k in looked_up} == {PROMPT_VERSION, "v-next"}


def test_daily_budget_stops_calls_and_rolls_over():
    day = [date(2026, 1, 1)]
    budget = DailyBudget(2, spent_today=1, today=lambda: day[0])
    with FakeChatServer() as server:
        judge = LlmJudge(client_for(server, budget=budget), concurrency=1)
        out = judge.judge([review(1), review(2, title="Shag Rug")])
        assert [o.status for o in out] == ["judged", "over_budget"]
        assert budget.exhausted and len(server.requests) == 1
        day[0] = date(2026, 1, 2)
        assert not budget.exhausted
        assert judge.judge([review(2, title="Shag Rug")])[0].status == "judged"
        judge.close()
    with pytest.raises(BudgetExhausted):
        DailyBudget(1, spent_today=1, today=lambda: day[0]).take()


def test_rate_limiter_and_backoff():
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(4.0, burst=2, clock=lambda: now[0], sleep=sleep)
    waits = [limiter.acquire() for _ in range(6)]
    assert waits[:2] == [0.0, 0.0]
    assert now[0] == pytest.approx(1.0)  # 4 more tokens at 4/s
    assert RateLimiter(0).acquire() == 0.0
    assert backoff_delay(0, 0.5, 30, rng=lambda: 1.0) == 0.5
    assert backoff_delay(3, 0.5, 30, rng=lambda: 1.0) == 4.0
    assert backoff_delay(10, 0.5, 30, rng=lambda: 1.0) == 30
    assert backoff_delay(10, 0.5, 30, rng=lambda: 0.25) == 7.5


def test_slow_fault_answers_late_but_within_the_timeout():
    import time

    with FakeChatServer(faults=["slow:0.3"]) as server, client_for(server) as client:
        started = time.monotonic()
        client.complete(build_messages(review(1)))
        elapsed = time.monotonic() - started
    assert server.served == {"slow:0.3": 1} and elapsed >= 0.3
    assert client.stats.get("timeouts", 0) == 0 and client.stats.get("retries", 0) == 0
