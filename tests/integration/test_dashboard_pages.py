"""Every dashboard page against the real local store, through Streamlit's AppTest."""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime, timedelta

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from relmon import db, get_settings
from relmon.kafka import producer
from schemas import Impression, ScoredImpression
from streams import repository

pytestmark = pytest.mark.integration


@pytest.fixture
def page_env(settings, monkeypatch):
    db.migrate(settings)
    monkeypatch.setenv("RELMON_CLICKHOUSE_PORT", str(settings.clickhouse.port))
    monkeypatch.setenv("RELMON_CLICKHOUSE_DATABASE", settings.clickhouse.database)
    monkeypatch.setenv("RELMON_KAFKA_BOOTSTRAP", settings.kafka.bootstrap)
    monkeypatch.setenv("RELMON_TOPIC_IMPRESSIONS", settings.topics.impressions)
    monkeypatch.setenv("RELMON_CONSUMER_GROUP", settings.kafka.consumer_group)
    monkeypatch.setenv("RELMON_HOME", str(settings.home))
    get_settings.cache_clear()
    st.cache_data.clear()
    st.cache_resource.clear()
    yield settings
    get_settings.cache_clear()


def seed(settings) -> None:
    now = datetime.now(UTC) - timedelta(minutes=3)
    out = []
    for i in range(120):
        category = "Desks" if i % 2 else "Area Rugs"
        bad = i % 4 == 0
        imp = Impression(
            impression_id=f"s{i}",
            query_id=f"q{i}",
            query="oak desk" if category == "Desks" else "wool rug",
            product_id=f"p{i}",
            title="Shag Rug" if bad else "Oak Writing Desk",
            category=category,
            position=1 + i % 10,
            event_time=now + timedelta(seconds=i),
        )
        row = ScoredImpression.of(
            imp,
            score=0.1 if bad else 0.9,
            threshold=0.5,
            model_version="m-test",
            sample_rate=1.0,
            scored_at=now,
        )
        out.append(row.model_copy(update={"tier": "head" if i % 3 == 0 else "tail"}))
    client = db.connect(settings)
    repository.insert_scored(client, out)
    client.close()


def page(name: str) -> AppTest:
    return AppTest.from_string(
        f"from dashboards import {name}\n{name}.render()", default_timeout=30
    ).run()


def test_overview_shows_rates_tiers_and_volume(page_env):
    seed(page_env)
    at = page("overview")
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["sampled impressions"] == "120"
    assert metrics["flagged for review"] == "30"
    assert metrics["flagged rate over the range"] == "25.0%"
    assert metrics["expected bad share over the range"] == "30.0%"  # 30 at P(bad) 0.9, 90 at 0.1
    table = at.dataframe[0].value  # rates per window: both estimates, each with its interval
    assert {"rate", "interval", "expected", "expected_interval"} <= set(table.columns)
    headers = [h.value for h in at.subheader]
    assert "By query tier" in headers and "Traffic volume (sampled impressions)" in headers
    charts = at.get("vega_lite_chart")
    assert len(charts) == 3
    for chart in charts:  # every time axis: a 24-hour clock in UTC, not the browser's 12-hour one
        spec = json.loads(chart.proto.spec)
        xs = [layer["encoding"]["x"] for layer in spec.get("layer", [spec])]
        for x in xs:
            assert x["type"] == "temporal" and x["scale"]["type"] == "utc"
            assert x["axis"]["format"] == "%H:%M" and x["axis"]["formatType"] == "utc"


def test_overview_filters_by_segment(page_env):
    seed(page_env)
    at = AppTest.from_string(
        "from dashboards import overview\noverview.render()", default_timeout=30
    ).run()
    at.sidebar.multiselect(key="f_cat").select("Desks").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["sampled impressions"] == "60"
    assert metrics["flagged for review"] == "0"


def test_segments_heatmap(page_env):
    seed(page_env)
    at = page("segments")
    assert not at.exception
    assert [t.value for t in at.title] == ["Segments"]
    assert "Bad-case rate by category and tier" in [h.value for h in at.subheader]
    assert len(at.get("vega_lite_chart")) == 1
    table = at.dataframe[0].value
    rates = dict(zip(table["category"], table["rate"], strict=True))
    assert rates == {"Area Rugs": 0.5, "Desks": 0.0}
    # the rate shown is the expected bad share: Area Rugs 30 rows at P(bad) 0.9 and 30 at 0.1,
    # Desks 60 at 0.1; the categories are ranked by it
    assert list(table["category"]) == ["Area Rugs", "Desks"]
    assert list(table["expected"]) == pytest.approx([0.5, 0.1])
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["color"]["field"] == "expected"


def test_drilldown_worst_queries_and_examples(page_env):
    seed(page_env)
    at = page("drilldown")
    assert not at.exception
    worst = at.dataframe[0].value
    assert list(worst["query"]) == ["wool rug"] and int(worst["bad"].iloc[0]) == 30
    examples = at.dataframe[1].value
    assert len(examples) == 30 and set(examples["title"]) == {"Shag Rug"}
    assert (examples["score"] < examples["threshold"]).all()


def test_alerts_page_without_alerts(page_env):
    at = page("alerts_page")
    assert not at.exception
    assert [t.value for t in at.title] == ["Alerts"]
    assert any("No open alerts" in s.value for s in at.success)


def test_health_page_counts_lag_honestly(page_env):
    s = page_env
    run = s.home / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "worker-g-1.json").write_text(
        json.dumps(
            {
                "consumed": 200,
                "impressions": 180,
                "dead_lettered": 4,
                "uptime_s": 20.0,
                "impressions_per_s": 2.5,  # the last minute's rate (the uptime's would be 9.0)
                "scored_per_s": 1.5,
                "scoring_capacity_pps": 373.4,
                "budget_mode": "auto",
                "budget_factor": 0.5946,
                "processing_lag_records": 1234,
                "pending": 0,
                "model_version": "minilm-ce-test-int8",
                "provider": "CPUExecutionProvider",
                "cache_hit_rate": 0.5,
                "score_latency_p50_ms": 25.0,
            }
        )
    )
    p = producer(s, linger_ms=200)
    for i in range(20):
        p.send(s.topics.impressions, key=b"k", value=b"v%d" % i, partition=0)
    p.flush()
    p.close()
    at = page("health")
    assert not at.exception
    assert not at.warning, [w.value for w in at.warning]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["impressions/s"] == "2.5"
    assert metrics["scoring capacity"] == "373 pairs/s"
    assert metrics["budget factor"] == "0.59"
    assert metrics["processing lag"] == "1,234"
    assert metrics["DLQ rate"] == "2.00%"
    assert metrics["cache hit rate"] == "50.0%"
    text = " ".join(m.value for m in at.markdown)  # in full, not cut to a tile's width
    assert "`minilm-ce-test-int8`" in text and "`CPUExecutionProvider`" in text
    assert metrics["scoring latency p50"] == "25 ms"
    assert metrics["total lag (records)"] == "20"
    lag = at.dataframe[-1].value
    assert int(lag.loc[lag["partition"] == 0, "highest_offset_seen_plus_1"].iloc[0]) == 20


def test_review_queue_is_mounted_when_installed():
    from dashboards import app

    titles = [title for title, _path, _render in app.page_specs()]
    assert titles[:4] == ["Overview", "Segments", "Drill-down", "Alerts"]
    assert titles[-1] == "Pipeline health"
    installed = importlib.util.find_spec("dashboards.review") is not None
    assert ("Review queue" in titles) == installed
