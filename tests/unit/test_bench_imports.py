"""Every bench runs as ``python bench/NAME.py``: its imports resolve to the packages.

Run as a script, a bench has ``bench/`` first on ``sys.path``, where ``bench/scoring.py`` would
shadow the ``scoring`` package for any module that imports it before the bench puts the
repository root first (three benches failed so, with a circular-import error, before they did).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
# as ``python bench/NAME.py`` starts: the script's folder first; the module body runs, not main()
LOAD = "import runpy, sys; sys.path[0] = sys.argv[1]; runpy.run_path(sys.argv[2], run_name='x')"


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.stem)
def test_a_bench_imports_as_a_script(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(BENCH), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
