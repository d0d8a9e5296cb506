"""The worker's error policy on a real worker process: a bug stops it, non-zero, loudly."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import pytest

from relmon.demo import env_of
from relmon.kafka import producer
from relmon.runtime import ManagedProcess
from relmon.settings import Settings
from schemas.models import Impression

pytestmark = pytest.mark.integration

# A worker whose scorer has a bug: every prediction raises.
FAULTY_WORKER = """
from relmon.settings import get_settings
from streams.app import RelmonWorker
from streams.testing import OverlapScorer


class BuggyScorer(OverlapScorer):
    def predict(self, pairs, batch_size=32, keys=None):
        raise IndexError("a bug in the scorer (test)")


RelmonWorker(get_settings(), BuggyScorer()).run()
"""


def test_a_scorer_bug_stops_the_worker_process_with_a_failure_code(settings: Settings) -> None:
    """Retrying a bug would stall the partition silently; the supervisor must see it exit."""
    # no scoring budget: its start-up warm-up would meet the bug before any record (that path
    # stops the same way, loudly; this test is about a bug met while processing)
    s = settings.with_overrides(sampling_mode="uniform", sample_rate=1.0, scoring_budget_pps="0")
    run_dir = s.home / "run"
    proc = ManagedProcess(
        "faulty-worker",
        [sys.executable, "-c", FAULTY_WORKER],
        log_path=s.home / "logs" / "faulty-worker.log",
        ready=lambda: run_dir.exists() and any(run_dir.glob("worker-*.json")),
        env=env_of(s),
        ready_timeout=120.0,
    )
    proc.start()
    try:
        imp = Impression(
            impression_id="i1",
            query_id="q1",
            query="blue velvet sofa",
            product_id="p1",
            title="Blue Velvet Sofa",
            position=1,
            event_time=datetime.now(UTC),
        )
        send = producer(s)
        send.send(s.topics.impressions, key=b"q1", value=imp.to_bytes()).get(30)
        send.close()
        code = proc.wait(timeout=120)
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    assert code != 0, log[-3000:]
    assert "the worker stops on an unexpected error" in log
    assert "a bug in the scorer (test)" in log
