"""Prometheus exposition of worker counters, served over real HTTP."""

from __future__ import annotations

import urllib.request

from streams.metrics import Metrics
from streams.prometheus import LatencyHistogram, MetricsServer, exposition


def test_exposition_has_counters_gauges_info_histogram_and_lag():
    m = Metrics()
    m.inc("consumed", 10)
    m.inc("dead_lettered", 2)
    m.set("model_version", 'minilm "x"')
    m.set("provider", "CPUExecutionProvider")
    m.set("cache_hit_rate", 0.25)
    h = LatencyHistogram()
    for s in (0.004, 0.02, 0.02, 3.0):
        h.observe(s)
    text = exposition(m.snapshot(), {"relmon_score_seconds": h}, lag={0: 5, 1: 0})
    lines = set(text.splitlines())
    assert "relmon_consumed_total 10" in lines
    assert "relmon_dead_lettered_total 2" in lines
    assert "relmon_cache_hit_rate 0.25" in lines
    info = 'relmon_worker_info{model_version="minilm \\"x\\"",provider="CPUExecutionProvider"} 1'
    assert info in lines
    assert 'relmon_score_seconds_bucket{le="0.005"} 1' in lines
    assert 'relmon_score_seconds_bucket{le="0.025"} 3' in lines
    assert 'relmon_score_seconds_bucket{le="+Inf"} 4' in lines
    assert "relmon_score_seconds_count 4" in lines
    assert 'relmon_consumer_lag{partition="0"} 5' in lines
    assert h.quantile(0.5) == 0.025 and h.quantile(0.99) == 5.0


def test_server_serves_metrics_on_loopback():
    server = MetricsServer("127.0.0.1", 0, lambda: "relmon_up 1\n").start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            assert r.read() == b"relmon_up 1\n"
    finally:
        server.stop()
