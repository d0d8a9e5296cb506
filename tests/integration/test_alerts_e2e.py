"""A spike injected into replay traffic fires an alert that reaches a webhook, Kafka, ClickHouse
and the dashboard; leader election lets exactly one runner act."""

from __future__ import annotations

import contextlib
import functools
import json
from datetime import UTC, datetime, timedelta

import pytest

from relmon import db
from relmon.alerts.leader import KafkaLeader
from relmon.alerts.runner import AlertRunner, AlertThread
from relmon.kafka import read_topic
from relmon.runtime import wait_until
from relmon.sim.alerts import simulate_rows
from relmon.sim.scenario import Scenario, Shift
from streams import repository

pytestmark = pytest.mark.integration
WINDOW_S = 600


def _spiked_replay(now: datetime):
    """110 simulated minutes from 100-110 minutes before ``now`` (the last ones run past it, so
    the stored data has moved past the windows judged at ``now``); Wall Art's bad-case rate
    goes 0.2 -> 0.5 at minute 80."""
    return _replay_from(int(now.timestamp()) // WINDOW_S - 10)


@functools.cache
def _replay_from(window: int):
    """The replay starting at window number ``window`` (66,000 rows: built once per start)."""
    start = datetime.fromtimestamp(window * WINDOW_S, UTC)
    scenario = Scenario(
        tier_bad_share={"head": 0.05, "torso": 0.15, "tail": 0.3},
        category_bad_share={"Wall Art": 0.2},
        shifts=(Shift(at_s=80 * 60, category="Wall Art", bad_share=0.5),),
    )
    rows = simulate_rows(minutes=110, pages_per_minute=60, seed=5, scenario=scenario, start=start)
    return rows, start + timedelta(minutes=80)


def test_spike_fires_alert_to_webhook_kafka_store_and_dashboard(
    settings, webhook_receiver, dashboard_page
):
    url, bodies = webhook_receiver
    now = datetime.now(UTC)
    rows, spike_at = _spiked_replay(now)
    s = settings.with_overrides(
        alert_window_s=WINDOW_S,
        alert_lateness_s=0,
        alert_webhook_url=url,
        alert_webhook_backoff_s=0.1,
    )
    db.migrate(s)
    client = db.connect(s)
    repository.insert_scored(client, rows)

    runner = AlertRunner(s)
    events = runner.run_once(now=spike_at + timedelta(seconds=2 * WINDOW_S))
    runner.close()
    fired = [e.alert for e in events if e.kind == "fired"]
    wall_art = [a for a in fired if a.segment == ("category", "Wall Art")]
    assert len(wall_art) == 1, [a.segment for a in fired]
    alert = wall_art[0]
    assert alert.started_at in (spike_at, spike_at + timedelta(seconds=WINDOW_S))
    assert alert.observed.rate > 0.35 and alert.baseline.rate < 0.3
    assert alert.top_queries and alert.examples
    assert all(ex["score"] < ex["threshold"] for ex in alert.examples)

    hooks = [b for b in bodies if b["relmon"]["alert_id"] == alert.alert_id]
    assert len(hooks) == 1 and "category=Wall Art" in hooks[0]["text"]
    assert hooks[0]["relmon"]["event"] == "fired" and hooks[0]["relmon"]["top_queries"]

    records = [json.loads(v) for _k, v in read_topic(s, s.topics.alerts, expect=len(fired))]
    assert alert.alert_id in {r["alert_id"] for r in records}

    stored = client.query(
        "SELECT status, dimension, value, observed_sampled FROM alerts FINAL "
        "WHERE alert_id = {a:String}",
        parameters={"a": alert.alert_id},
    ).result_rows
    assert stored and stored[0][:3] == ("firing", "category", "Wall Art")

    # a restarted runner (or a new leader) warms up from the store and does not page again
    again = AlertRunner(s)
    second = again.run_once(now=spike_at + timedelta(seconds=2 * WINDOW_S))
    again.close()
    assert not [e for e in second if e.kind == "fired" and e.alert.alert_id == alert.alert_id]
    assert len([b for b in bodies if b["relmon"]["alert_id"] == alert.alert_id]) == 1
    client.close()

    at = dashboard_page("alerts_page", s)
    assert not at.exception
    assert [t.value for t in at.title] == ["Alerts"]
    labels = [e.label for e in at.expander]
    assert any("FIRING: category = Wall Art" in label for label in labels), labels
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["open alerts"]) >= 1


def test_exactly_one_runner_leads(settings):
    s = settings.with_overrides(topic_alerts=f"{settings.topics.impressions}.alerts")
    a = KafkaLeader(s)
    b = KafkaLeader(s)
    try:
        state: dict[str, bool] = {}

        def one_leader() -> bool:
            state["a"], state["b"] = a.is_leader(), b.is_leader()
            return state["a"] != state["b"]

        wait_until(one_leader, timeout=60, interval=0.1, what="one leader")
        leader, follower = (a, b) if state["a"] else (b, a)
        assert not follower.is_leader()
        leader.close()
        wait_until(follower.is_leader, timeout=60, interval=0.1, what="failover")
    finally:
        for x in (a, b):
            with contextlib.suppress(Exception):  # one of them is closed already
                x.close()


def test_alert_threads_in_workers_page_once_and_hand_over(settings, webhook_receiver):
    """`RELMON_ALERTS_IN_WORKER`: two workers' alert threads elect one leader; only it pages.
    When it stops, the other takes over, warms up from the store and does not page again."""
    url, bodies = webhook_receiver
    now = datetime.now(UTC)
    rows, _spike_at = _spiked_replay(now)
    s = settings.with_overrides(
        topic_alerts=f"{settings.topics.impressions}.alerts",
        alert_window_s=WINDOW_S,
        alert_lateness_s=0,
        alert_interval_s=1.0,  # kafka-python never settled in the group when polled this rarely
        alert_webhook_url=url,
        alert_webhook_backoff_s=0.1,
    )
    db.migrate(s)
    client = db.connect(s)
    repository.insert_scored(client, rows)
    client.close()

    def wall_art_pages() -> list[dict]:
        return [
            b["relmon"]
            for b in list(bodies)
            if b["relmon"]["event"] == "fired" and b["relmon"]["value"] == "Wall Art"
        ]

    a = AlertThread(s).start()
    b = AlertThread(s).start()
    try:
        wait_until(lambda: bool(wall_art_pages()), timeout=120, what="a page from a worker")
        wait_until(lambda: a.leading != b.leading, timeout=60, what="exactly one leader")
        leader, follower = (a, b) if a.leading else (b, a)
        assert follower.rounds == 0 and follower.error is None
        leader.stop()
        assert not leader.leading
        wait_until(lambda: follower.rounds >= 3, timeout=120, what="the follower taking over")
        assert follower.leading
    finally:
        a.stop()
        b.stop()
    assert len(wall_art_pages()) == 1, wall_art_pages()


def test_a_window_is_judged_only_once_the_stored_data_has_moved_past_it(settings):
    """A worker running behind has written half of the spike's first window: that window (and
    the empty ones after it) wait; once the rest is stored the alert carries the full window."""
    now = datetime.now(UTC)
    rows, spike_at = _spiked_replay(now)
    s = settings.with_overrides(
        alert_window_s=WINDOW_S, alert_lateness_s=0, alert_sinks="clickhouse"
    )
    db.migrate(s)
    client = db.connect(s)
    half = spike_at + timedelta(seconds=WINDOW_S / 2)
    repository.insert_scored(client, [r for r in rows if r.event_time < half])
    runner = AlertRunner(s)
    try:
        later = spike_at + timedelta(seconds=3 * WINDOW_S)
        early = runner.run_once(now=later)
        assert not [e for e in early if e.alert.started_at >= spike_at], early
        repository.insert_scored(client, [r for r in rows if r.event_time >= half])
        fired = [e.alert for e in runner.run_once(now=later) if e.kind == "fired"]
    finally:
        runner.close()
        client.close()
    wall_art = [a for a in fired if a.segment == ("category", "Wall Art")]
    assert len(wall_art) == 1, [a.segment for a in fired]
    window_end = wall_art[0].started_at + timedelta(seconds=WINDOW_S)
    in_window = [
        r
        for r in rows
        if r.category == "Wall Art" and wall_art[0].started_at <= r.event_time < window_end
    ]
    assert wall_art[0].observed.sampled == len(in_window)
