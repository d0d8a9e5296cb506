"""Alert detectors, lifecycle and the webhook sink, without servers (the webhook gets a real
stdlib HTTP server in this process)."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import jsonschema
import pytest

import relmon.alerts
from relmon.alerts import AlertBook, Detector, Sums
from relmon.alerts.detect import benjamini_hochberg, rollup
from relmon.alerts.lifecycle import AlertEvent
from relmon.alerts.sinks import KafkaSink, WebhookSink, slack_payload
from relmon.errors import ServiceError
from relmon.settings import DetectorConfig, load_settings
from relmon.stats import RateEstimate
from schemas.jsonschema import SHIPPED_DIR

T0 = datetime(2026, 1, 1, tzinfo=UTC)
W = 300


def test_public_api():
    assert sorted(relmon.alerts.__all__) == [
        "Alert",
        "AlertBook",
        "AlertEvent",
        "Detector",
        "Sums",
        "window_sums",
    ]


def test_benjamini_hochberg_matches_the_textbook_example():
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    assert benjamini_hochberg(p, 0.05) == [True, True, True, True, False]
    assert benjamini_hochberg(p, 0.03) == [True, False, False, True, False]
    assert benjamini_hochberg(p, 0.001) == [False] * 5
    assert benjamini_hochberg([], 0.05) == []


def _window(rng: random.Random | None, rates: dict[str, float], n: int) -> dict:
    """A window of ``n`` rows per category; without ``rng`` exactly ``rate * n`` are bad."""
    cells = []
    for category, rate in rates.items():
        bad = round(rate * n) if rng is None else sum(rng.random() < rate for _ in range(n))
        dims = {
            "tier": "tail",
            "category": category,
            "locale": "en-US",
            "position_bucket": "top",
            "model_version": "m",
        }
        cells.append((dims, Sums(n, bad, float(n), float(bad), float(n))))
    return rollup(cells)


def _run(rates_at, windows: int, n: int = 200, seed: int = 1, config=None):
    rng = random.Random(seed)
    det = Detector(config or DetectorConfig())
    book = AlertBook(window_s=W, cooldown_windows=3)
    events = []
    for i in range(windows):
        t = T0 + timedelta(seconds=W * i)
        events += [(i, e) for e in book.apply(det.step(t, _window(rng, rates_at(i), n)))]
    return events, book


def test_stationary_traffic_stays_quiet():
    events, _ = _run(lambda i: {"A": 0.2, "B": 0.1, "C": 0.3}, windows=150)
    assert [e for _, e in events if e.kind == "fired"] == []


def test_doubled_category_fires_at_once_then_resolves():
    def rates(i):
        return {"A": 0.4 if 20 <= i < 25 else 0.2, "B": 0.1}

    events, book = _run(rates, windows=40)
    fired = [(i, e.alert) for i, e in events if e.kind == "fired"]
    cats = [(i, a) for i, a in fired if a.dimension == "category"]
    assert [(i, a.value) for i, a in cats] == [(20, "A")]
    alert = cats[0][1]
    assert alert.observed.rate > 0.3 and alert.baseline.rate < 0.25
    assert alert.observed.ci_low <= alert.observed.rate <= alert.observed.ci_high
    assert alert.observed.sampled == 200 and alert.baseline.sampled >= 200 * 6
    assert "z-test" in alert.detectors
    resolved = [(i, e.alert) for i, e in events if e.kind == "resolved"]
    assert [(i, a.value) for i, a in resolved if a.dimension == "category"] == [(26, "A")]
    assert ("category", "A") in book.resolved and not book.open.get(("category", "A"))


def test_minimum_sample_guard_keeps_thin_segments_untested():
    events, _ = _run(lambda i: {"A": 0.9 if i >= 20 else 0.2}, windows=30, n=10)
    assert [e for _, e in events if e.kind == "fired"] == []


def test_cusum_catches_a_sustained_small_shift_the_window_test_misses():
    config = DetectorConfig(min_lift=1.0)
    events, _ = _run(lambda i: {"A": 0.26 if i >= 30 else 0.2}, windows=60, config=config)
    fired = [(i, e.alert) for i, e in events if e.kind == "fired" and e.alert.value == "A"]
    assert fired, "a sustained 30% lift should be caught"
    assert {"cusum", "ewma"} & set(fired[0][1].detectors)


@pytest.mark.parametrize(("scan", "fires_at"), [(1, None), (2, 11), (3, 12)])
def test_scan_over_recent_windows_catches_a_lift_too_small_for_one_window(scan, fires_at):
    # 0.15 -> 0.26 on 100 rows a window: z ~ 2.9 per window, too little at this FDR; two or
    # three windows together carry it (EWMA and CUSUM are switched off to isolate the z-test)
    config = DetectorConfig(scan_windows=scan, ewma_limit=1e9, cusum_h=1e9, fdr=1e-3)
    det = Detector(config)
    started = []
    for i in range(16):
        rates = {"A": 0.26 if i >= 10 else 0.15, "B": 0.15}
        for t in det.step(T0 + timedelta(seconds=W * i), _window(None, rates, 100)):
            if t.started and t.segment == ("category", "A"):
                started.append((i, t.span, t.detectors))
    if fires_at is None:
        assert started == []
    else:
        assert started == [(fires_at, scan, (f"z-test-{scan}w",))]


def test_scan_may_not_reach_into_the_baseline():
    with pytest.raises(
        ValueError,
        match=r"RELMON_ALERT_SCAN_WINDOWS=5 must be at most RELMON_ALERT_BASELINE_GAP \+ 1",
    ):
        DetectorConfig(scan_windows=5, baseline_gap=3)


def test_flapping_segment_reopens_instead_of_paging_again():
    def rates(i):
        return {"A": 0.45 if 20 <= i < 23 or 26 <= i < 28 else 0.2}

    events, book = _run(rates, windows=35)
    fired = [e for _, e in events if e.kind == "fired" and e.alert.dimension == "category"]
    assert len(fired) == 1
    assert book.suppressed >= 1


class _Hook(BaseHTTPRequestHandler):
    statuses: ClassVar[list[int]] = []
    bodies: ClassVar[list[dict]] = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    _Hook.statuses, _Hook.bodies = [], []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Hook
    server.shutdown()
    server.server_close()


def _an_alert():
    events, _ = _run(lambda i: {"A": 0.4 if i >= 20 else 0.2}, windows=21)
    return next(e for _, e in events if e.kind == "fired" and e.alert.dimension == "category")


def test_webhook_retries_with_backoff_then_delivers(hook):
    url, handler = hook
    handler.statuses = [503, 429]
    sleeps: list[float] = []
    WebhookSink(url, retries=3, backoff_s=0.5, sleep=sleeps.append).send(_an_alert())
    assert sleeps == [0.5, 1.0]
    assert len(handler.bodies) == 3
    body = handler.bodies[-1]
    assert "category=A" in body["text"] and body["blocks"][0]["type"] == "section"
    assert body["relmon"]["event"] == "fired" and body["relmon"]["value"] == "A"


def test_webhook_gives_up_on_client_errors_and_after_retries(hook):
    url, handler = hook
    handler.statuses = [400]
    with pytest.raises(ServiceError, match="HTTP 400"):
        WebhookSink(url, retries=3, sleep=lambda s: None).send(_an_alert())
    assert len(handler.bodies) == 1
    handler.statuses = [500, 500, 500]
    with pytest.raises(ServiceError, match="3 attempt"):
        WebhookSink(url, retries=2, sleep=lambda s: None).send(_an_alert())


def test_updates_are_not_announced():
    event = _an_alert()
    assert slack_payload(event)["relmon"]["alert_id"] == event.alert.alert_id
    WebhookSink("http://127.0.0.1:9/never", retries=0).send(AlertEvent("updated", event.alert))


class _Producer:
    """kafka-python's producer, as far as the sink uses it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes):
        self.sent.append((topic, key, value))
        return self

    def get(self, timeout: float) -> None:
        pass


def _strict_json(raw: bytes) -> dict:
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(raw, parse_constant=refuse)


def test_kafka_sink_publishes_the_alert_record(tmp_path):
    schema = json.loads((SHIPPED_DIR / "alert.schema.json").read_text())
    producer = _Producer()
    sink = KafkaSink(load_settings(home=tmp_path), producer=producer)
    fired = _an_alert()
    sink.send(fired)
    sink.send(AlertEvent("updated", fired.alert))  # stored only, never published
    # resolved after a window without a sample: the NaN rate goes out as null, not as NaN
    gone = replace(
        fired.alert,
        status="resolved",
        resolved_at=fired.alert.last_window + timedelta(seconds=W),
        observed=RateEstimate.from_sums(0, 0, 0.0, 0.0, 0.0),
    )
    sink.send(AlertEvent("resolved", gone))
    assert [(t, k) for t, k, _ in producer.sent] == [
        ("relmon.alerts", fired.alert.alert_id.encode()),
        ("relmon.alerts", fired.alert.alert_id.encode()),
    ]
    records = [_strict_json(v) for _, _, v in producer.sent]
    for record in records:
        jsonschema.validate(record, schema)
    first, last = records
    assert first["event"] == "fired" and first["status"] == "firing"
    assert first["dimension"] == "category" and first["value"] == "A"
    assert first["started_at"] == fired.alert.started_at.isoformat()
    assert first["observed"]["rate"] == round(fired.alert.observed.rate, 6)
    assert last["event"] == "resolved" and last["resolved_at"] is not None
    assert last["observed"]["rate"] is None and last["observed"]["sampled"] == 0
    # the webhook carries the same record under "relmon"
    assert slack_payload(fired)["relmon"] == first
