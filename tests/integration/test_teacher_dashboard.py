"""The review queue and agreement pages against the real local store, through AppTest."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from relmon import db, get_settings
from relmon.kafka import read_topic
from relmon.teacher import Verdict, store
from streams import repository
from streams.route import review_request

pytestmark = pytest.mark.integration


@pytest.fixture
def page_env(settings, monkeypatch, tmp_path):
    db.migrate(settings)
    monkeypatch.setenv("RELMON_CLICKHOUSE_PORT", str(settings.clickhouse.port))
    monkeypatch.setenv("RELMON_CLICKHOUSE_DATABASE", settings.clickhouse.database)
    monkeypatch.setenv("RELMON_KAFKA_BOOTSTRAP", settings.kafka.bootstrap)
    monkeypatch.setenv("RELMON_TOPIC_LABELS", settings.topics.review + ".labels")
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    review = tmp_path / "review_page.py"
    review.write_text("from dashboards.review import render\n\nrender()\n")
    agree = tmp_path / "agreement_page.py"
    agree.write_text("from dashboards.review import render_agreement\n\nrender_agreement()\n")
    client = db.connect(settings)
    yield client, str(review), str(agree)
    client.close()
    get_settings.cache_clear()


def test_people_grade_the_queue_by_priority(page_env, scored_rows):
    client, review_page, _ = page_env
    empty = AppTest.from_file(review_page, default_timeout=30).run()
    assert not empty.exception
    assert any("review queue is empty" in i.value for i in empty.info)

    rows = scored_rows(n_good=3, n_bad=3)
    requests = [review_request(r, "below_threshold") for r in rows[3:]]
    requests.append(review_request(rows[0], "audit", review_probability=0.02))
    store.insert_queue(client, requests)
    top = min(requests, key=lambda r: (-r.priority, r.impression_id))  # ties: by id
    store.insert_verdicts(
        client,
        [
            Verdict.of(
                r,
                judge="teacher",
                judge_id="llm",
                grade="Irrelevant",
                rationale=f"a rug is not a desk ({r.impression_id})",
                prompt_version="v1",
            )
            for r in requests
        ],
    )
    st.cache_data.clear()  # the empty queue above is cached for a few seconds
    at = AppTest.from_file(review_page, default_timeout=30).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 4
    assert list(table["priority"]) == sorted(table["priority"], reverse=True)
    assert table["reason"].iloc[-1] == "audit"
    picked = at.selectbox[0].value
    assert picked == top.impression_id  # the highest-priority case comes first
    texts = " ".join(m.value for m in at.markdown)
    assert "Shag Rug" in texts and "**Irrelevant** (llm)" in texts
    assert f"a rug is not a desk ({top.impression_id})" in texts

    # no name: refused
    at.radio[0].set_value("Irrelevant")
    at.button[0].click().run()
    assert any("enter your name" in e.value for e in at.error)
    assert at.selectbox[0].value == picked  # cases with equal text stay apart
    assert store.count_verdicts(client, "human") == 0

    at.text_input[0].input("alice")
    at.radio[0].set_value("Complement")
    at.button[0].click().run()
    assert not at.exception
    assert any("saved: Complement by alice" in s.value for s in at.success)
    stored = client.query(
        "SELECT impression_id, judge_id, grade, is_bad, student_bad, review_weight "
        "FROM verdicts FINAL WHERE judge = 'human'"
    ).result_rows
    assert stored == [(picked, "alice", "Complement", 1, 1, 1.0)]
    assert not at.warning  # ... and sent to the labels topic like a teacher verdict
    (label,) = [
        Verdict.model_validate_json(v)
        for _, v in read_topic(get_settings(), get_settings().topics.labels, expect=1, timeout_s=30)
    ]
    assert (label.impression_id, label.judge, label.judge_id, label.grade) == (
        picked,
        "human",
        "alice",
        "Complement",
    )
    assert len(store.queue_frame(client)) == 3
    after = AppTest.from_file(review_page, default_timeout=30).run()
    assert len(after.dataframe[0].value) == 3
    assert after.selectbox[0].value != picked


def test_agreement_and_corrected_rates_are_shown(page_env, scored_rows):
    client, _, agree_page = page_env
    at = AppTest.from_file(agree_page, default_timeout=30).run()
    assert not at.exception and any("No verdicts yet" in i.value for i in at.info)

    rows = scored_rows(n_good=40, n_bad=10)
    repository.insert_scored(client, rows)
    flagged = [review_request(r, "below_threshold") for r in rows[40:]]
    audits = [review_request(r, "audit", review_probability=0.25) for r in rows[:10]]
    store.insert_queue(client, flagged + audits)
    verdicts = [
        Verdict.of(r, judge="teacher", judge_id="llm", grade=g, prompt_version="v1")
        for r, g in zip(flagged + audits, ["Irrelevant"] * 8 + ["Exact"] * 12, strict=True)
    ]
    verdicts.append(Verdict.of(flagged[0], judge="human", judge_id="bob", grade="Complement"))
    store.insert_verdicts(client, verdicts)
    st.cache_data.clear()
    at = AppTest.from_file(agree_page, default_timeout=30).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["teacher verdicts"] == "20" and metrics["human verdicts"] == "1"
    assert metrics["precision of the bad-case flag"] == "80.0%"
    rates = at.dataframe[-1].value.set_index("segment")
    assert {"all", "Desks"} <= set(rates.index)
    desks = rates.loc["Desks"]
    assert desks["student_rate"] == pytest.approx(0.2)
    # 8 of 10 flagged confirmed, no misses among the audits: 0.2 * 0.8
    assert desks["corrected_rate"] == pytest.approx(0.16)
    assert desks["ci_low"] < 0.16 < desks["ci_high"]
