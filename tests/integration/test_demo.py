"""`relmon demo` as a user runs it: a timed run with consistent counts, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from relmon.demo import worker_totals
from relmon.runtime import wait_until
from relmon.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def demo_env(tmp_path, model_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELMON_")}
    env.update(RELMON_HOME=str(tmp_path / "home"), RELMON_MODEL_DIR=str(model_dir))
    return env


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of an exited parent is reaped by init; treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_timed_demo_prints_consistent_counts(tmp_path, model_dir):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "relmon",
            "demo",
            "--duration",
            "20",
            "--no-dashboard",
            "--rate",
            "60",
        ],
        env=demo_env(tmp_path, model_dir),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in (
        "produced",
        "consumed",
        "dead_lettered",
        "sampled",
        "scored",
        "sent_to_review",
        "rows_in_clickhouse",
    ):
        assert key in result
    assert result["produced"] > 500
    assert result["consumed"] == result["produced"]
    assert result["scored"] == result["sampled"] == result["rows_in_clickhouse"] > 0
    assert 0 < result["sent_to_review"] < result["scored"]
    assert result["dead_lettered"] >= result["malformed_sent"] > 0


def test_ctrl_c_stops_every_child(tmp_path, model_dir):
    env = demo_env(tmp_path, model_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "relmon", "demo", "--no-dashboard", "--rate", "40"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    settings = load_settings(home=tmp_path / "home")
    pids_file = settings.home / "run" / "demo-pids.json"
    try:
        wait_until(
            lambda: worker_totals(settings).get("scored", 0) > 0 and pids_file.exists(),
            timeout=180,
            interval=0.5,
            what="demo scoring",
            alive=lambda: proc.poll() is None,
        )
        pids = json.loads(pids_file.read_text())
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    children = {name: pid for name, pid in pids.items() if name != "demo"}
    assert {"store", "broker", "worker"} <= set(children)
    assert not [name for name, pid in children.items() if pid_alive(pid)]
