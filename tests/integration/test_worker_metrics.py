"""The worker's Prometheus endpoint, on a real worker process."""

from __future__ import annotations

import urllib.request

import pytest

from relmon.runtime import free_port, wait_until

pytestmark = pytest.mark.integration


def test_worker_serves_prometheus_metrics(settings, start_worker):
    """Also: the worker's own alert runner (RELMON_ALERTS_IN_WORKER) gets elected leader."""
    port = free_port()
    s = settings.with_overrides(
        metrics_port=port,
        alerts_in_worker=True,
        alert_interval_s=1.0,
        topic_alerts=f"{settings.topics.impressions}.alerts",
    )
    start_worker(s=s)
    url = f"http://127.0.0.1:{port}/metrics"
    body: dict[str, str] = {}

    def scraped() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body["text"] = resp.read().decode()
        except OSError:
            return False
        return "relmon_consumer_lag{" in body["text"] and (
            "relmon_alert_runner_leader 1" in body["text"].splitlines()
        )

    wait_until(scraped, timeout=90, interval=0.5, what="worker /metrics with lag and leader")
    lines = body["text"].splitlines()
    assert "relmon_consumed_total 0" in lines
    info = [line for line in lines if line.startswith("relmon_worker_info{")]
    assert len(info) == 1 and "model_version=" in info[0] and 'budget_mode="auto"' in info[0]
    gauges = dict(line.split(" ", 1) for line in lines if not line.startswith("#"))
    assert float(gauges["relmon_scoring_capacity_pps"]) > 0  # measured at start-up
    assert gauges["relmon_budget_factor"] == "1.0"
    assert "relmon_processing_lag_records" in gauges and "relmon_impressions_per_s" in gauges
    assert 'relmon_score_seconds_bucket{le="+Inf"} 0' in lines
    assert any(line.startswith("relmon_dead_lettered_total ") for line in lines)
