"""The teacher never prints or logs the API key, whatever a server echoes back."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from relmon.teacher.client import ChatClient, TeacherRejected, redact
from relmon.teacher.fakes import FakeChatServer
from relmon.teacher.judge import LlmJudge
from relmon.teacher.prompt import build_messages
from schemas.models import ReviewRequest

KEY = "sk-live-Zq8Hc2VtZXNlY3JldC1rZXktMDEyMzQ1Njc4OQ"


def review() -> ReviewRequest:
    return ReviewRequest(
        impression_id="imp-1",
        query_id="q-1",
        query="oak desk",
        product_id="p-1",
        title="Oak Writing Desk",
        category="Desks",
        score=0.2,
        threshold=0.5,
        model_version="m1",
        reason="below_threshold",
        priority=2.3,
        sample_weight=2.0,
        event_time=datetime(2026, 1, 1, tzinfo=UTC),
    )


def leaks(text: str) -> bool:
    """Whether ``text`` shows the key or any 8-character piece of it."""
    return any(KEY[i : i + 8] in text for i in range(len(KEY) - 7))


@pytest.mark.parametrize("padding", [0, 4, 8, 12, 16, 20])
def test_an_error_body_echoing_the_authorization_header_is_redacted(padding: int) -> None:
    # The 300-character excerpt of the body showed the header; with paddings of about 5-20
    # the key straddles the cut, so only a prefix of it was there.
    with FakeChatServer(api_key=KEY, faults=[f"echo_auth:{padding}"]) as server:
        client = ChatClient(server.url, "judge-1", api_key=KEY, max_attempts=1)
        with pytest.raises(TeacherRejected) as err:
            client.complete(build_messages(review()))
        client.close()
    text = str(err.value)
    assert "HTTP 400" in text and "unknown model" in text
    assert not leaks(text), text


def test_url_credentials_and_bearer_tokens_of_other_keys_are_redacted() -> None:
    with FakeChatServer(faults=["echo_auth"]) as server:  # credentials in the URL: basic auth
        url = server.url.replace("http://", "http://admin:hunter2@")
        client = ChatClient(url, "judge-1", max_attempts=1)
        with pytest.raises(TeacherRejected) as err:
            client.complete(build_messages(review()))
        client.close()
    assert "hunter2" not in str(err.value) and "YWRtaW46aHVudGVyMg" not in str(err.value)
    assert "http://***@127.0.0.1" in str(err.value) and "Basic ***" in str(err.value)
    text = 'Authorization: Bearer other-token-123 {"api_key": "k-9"} token=abc'
    assert redact(text) == 'Authorization: Bearer *** {"api_key": "***"} token=***'


def test_malformed_answers_quoting_the_key_are_logged_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Quoting(FakeChatServer):
        def answer(self, body: dict, fault: str) -> str:
            keys = ("product", "intent", "constraints", "match", "rationale")
            return json.dumps({**dict.fromkeys(keys, "x"), "grade": f"Exact {KEY}"})

    with Quoting(api_key=KEY) as server, caplog.at_level(logging.WARNING):
        judge = LlmJudge(
            ChatClient(server.url, "judge-1", api_key=KEY, max_attempts=1), parse_retries=0
        )
        [outcome] = judge.judge([review()])
        judge.close()
    assert outcome.status == "malformed"
    assert not leaks(outcome.error) and not leaks(caplog.text)
    assert "no valid answer" in caplog.text
