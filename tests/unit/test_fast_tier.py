"""The fast tier (``make test-fast``: the unit tests not marked ``slow``) needs no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_COLLECT = (
    "import sys, pytest; "
    "rc = pytest.main(['-q', '--co', '-m', 'not slow', '-p', 'no:cacheprovider', 'tests/unit']); "
    "print('torch imported' if 'torch' in sys.modules else 'no torch'); "
    "sys.exit(rc)"
)


def test_the_fast_tier_collects_without_importing_torch() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _COLLECT], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.strip().endswith("no torch"), run.stdout[-2000:]
    assert "deselected" in run.stdout  # the slow ones (test_scorer, test_estimation) are left out
