"""``relmon demo``: the whole pipeline on this machine.

Starts the local store, the tansu broker, one worker (running the alert runner too, unless
``--no-alerts``) and (optionally) the dashboard as child processes, replays synthetic traffic
(optionally a scenario with spikes) in this process, and on the way out (duration reached or
Ctrl-C) drains the worker, stops every child it started by PID, and returns the counts.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from relmon import db
from relmon.errors import ServiceError
from relmon.kafka import broker_process, ensure_topics
from relmon.runtime import ManagedProcess, free_port, port_open, relmon_argv, wait_until
from relmon.settings import Settings, load_settings
from relmon.sim.replay import ReplayConfig, replay
from relmon.sim.scenario import Scenario
from streams import repository
from streams.metrics import read_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    """How to run the demo."""

    duration_s: float | None = None
    dashboard: bool = True
    rate: float = 100.0
    seed: int | None = 7
    """seed of the replayed traffic; ``None``: a new one each run (``relmon demo``'s default),
    so that a second run in the same home replays impressions not already stored"""
    dataset: Literal["esci", "synthetic"] = "esci"
    """real ESCI queries, products and human grades, or the synthetic catalogue"""
    drain_timeout_s: float = 180.0
    scenario: Scenario | None = None
    alerts: bool = True
    """run the leader-elected alert runner inside the worker (RELMON_ALERTS_IN_WORKER)"""
    impressions: int | None = None
    """stop the replay after this many impressions (then drain and stop, like ``duration_s``)"""
    inspect: Callable[[Settings], dict[str, Any]] | None = None
    """called once drained, before anything stops; its result is returned as ``inspected``"""


def _port(preferred: int, host: str) -> int:
    return preferred if preferred and not port_open(host, preferred) else free_port(host)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - local URL we built
            return bool(resp.status == 200)
    except OSError:
        return False


def store_process(settings: Settings) -> ManagedProcess:
    """The local ClickHouse store as a child process (not started yet)."""
    host, port = settings.clickhouse.host, settings.clickhouse.port
    return ManagedProcess(
        "store",
        relmon_argv("store"),
        log_path=settings.home / "logs" / "store.log",
        ready=lambda: _http_ok(f"http://{host}:{port}/ping"),
        env=env_of(settings),
        ready_timeout=60.0,
    )


def worker_process(settings: Settings, name: str = "worker") -> ManagedProcess:
    """A relmon worker as a child process; ready once it publishes its counters."""
    run_dir = settings.home / "run"
    before = set(run_dir.glob("worker-*.json")) if run_dir.exists() else set()

    def ready() -> bool:
        return bool(run_dir.exists() and set(run_dir.glob("worker-*.json")) - before)

    return ManagedProcess(
        name,
        relmon_argv("worker"),
        log_path=settings.home / "logs" / f"{name}.log",
        ready=ready,
        env=env_of(settings),
        ready_timeout=120.0,
        stop_timeout=30.0,
    )


def dashboard_process(settings: Settings, port: int) -> ManagedProcess:
    """The Streamlit dashboard as a child process (not started yet)."""
    app = Path(str(resources.files("dashboards") / "app.py"))
    host = settings.bind_host
    return ManagedProcess(
        "dashboard",
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(app),
            "--server.port",
            str(port),
            "--server.address",
            host,
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        log_path=settings.home / "logs" / "dashboard.log",
        ready=lambda: _http_ok(f"http://{host}:{port}/_stcore/health"),
        env=env_of(settings),
        ready_timeout=90.0,
    )


@contextmanager
def scratch_servers(prefix: str, model_dir: Path, *, keep: bool = False) -> Iterator[Settings]:
    """Settings of a temporary RELMON_HOME with its own tansu broker and local store (benches).

    Both serve while the block runs and are stopped by PID after it; the home is removed then,
    unless ``keep``.
    """
    home = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    settings = load_settings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{port}",
        clickhouse_port=free_port(),
        model_dir=model_dir,
        store_dir=home / "store",
    )
    try:
        with broker_process(settings, port), store_process(settings):
            yield settings
    finally:
        if keep:
            log.info("RELMON_HOME kept at %s", home)
        else:
            shutil.rmtree(home, ignore_errors=True)


def env_of(settings: Settings) -> dict[str, str]:
    """Environment that gives a child process the same settings as ``settings``."""
    return settings.to_env()


def worker_totals(settings: Settings) -> dict[str, int]:
    """Sum of the counters of every worker process of this run."""
    totals: dict[str, int] = {}
    for path in sorted((settings.home / "run").glob("worker-*.json")):
        for key, value in read_metrics(path).items():
            if isinstance(value, int) and key != "pid":
                totals[key] = totals.get(key, 0) + value
    return totals


def run_demo(settings: Settings, options: DemoOptions) -> dict[str, Any]:
    """Run the demo; return the final counts."""
    home = settings.home
    host = settings.bind_host
    shutil.rmtree(home / "run", ignore_errors=True)
    settings = settings.with_overrides(
        kafka_bootstrap=f"{host}:{_port(settings.kafka.broker_port, host)}",
        clickhouse_host=host,
        clickhouse_port=_port(settings.clickhouse.port, host),
        alerts_in_worker=settings.alerts.in_worker or options.alerts,
    )
    broker_port = int(settings.kafka.bootstrap.rsplit(":", 1)[1])
    from relmon.kafka import EMBEDDED_BROKER_NOTE, broker_process

    started: list[ManagedProcess] = []
    try:
        started.append(store_process(settings).start())
        _say(
            f"store   ClickHouse HTTP on {host}:{settings.clickhouse.port} ({settings.store_path})"
        )
        started.append(broker_process(settings, broker_port).start())
        _say(f"broker  tansu Kafka on {settings.kafka.bootstrap} ({EMBEDDED_BROKER_NOTE})")
        ensure_topics(settings)
        db.migrate(settings)
        worker = worker_process(settings).start()
        started.append(worker)
        alerting = (
            f"; alert runner on {settings.alerts.window_s} s windows"
            if settings.alerts.in_worker
            else ""
        )
        _say(f"worker  pid {worker.pid} (log {worker.log_path}){alerting}")
        if options.dashboard:
            port = _port(settings.dashboard_port, host)
            started.append(dashboard_process(settings, port).start())
            _say(f"dashboard  http://{host}:{port}")
        seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
        config = ReplayConfig(
            seed=seed,
            dataset=options.dataset,
            impressions=options.impressions,
            rate=options.rate,
            duration_s=options.duration_s,
            scenario=options.scenario,
        )
        _write_pids(settings, started)
        what = "real ESCI" if options.dataset == "esci" else "synthetic"
        bounded = options.duration_s or options.impressions
        _say(
            f"replaying {what} traffic (seed {seed}; --seed {seed} replays it again)"
            + ("" if bounded else "; Ctrl-C to stop")
        )
        counts = replay(settings, config, progress=_progress(settings))
        print(file=sys.stderr)
        produced = int(counts.get("produced", 0))
        if counts.get("interrupted"):
            _say("interrupted: stopping (records not yet processed stay in Kafka)")
        elif produced:
            _say("draining the worker")
            _drain(settings, worker, produced, options.drain_timeout_s)
        worker.stop()
        started.remove(worker)
        totals = worker_totals(settings)
        client = db.connect(settings)
        try:
            rows = repository.count_scored(client)
        finally:
            client.close()
        inspected = options.inspect(settings) if options.inspect is not None else None
        return {
            **({"inspected": inspected} if inspected is not None else {}),
            "seed": seed,
            "produced": produced,
            "impressions": int(counts.get("impressions", 0)),
            "truly_irrelevant": int(counts.get("truly_irrelevant", 0)),
            "malformed_sent": int(counts.get("malformed", 0)),
            "unknown_product_sent": int(counts.get("unknown_product", 0)),
            "consumed": totals.get("consumed", 0),
            "dead_lettered": totals.get("dead_lettered", 0),
            "sampled": totals.get("sampled", 0),
            "scored": totals.get("scored", 0),
            "sent_to_review": totals.get("sent_to_review", 0),
            "rows_in_clickhouse": rows,
        }
    finally:
        for proc in reversed(started):
            proc.stop()


def _write_pids(settings: Settings, started: list[ManagedProcess]) -> None:
    """Record the PIDs of the demo's children (for operators and the no-orphans test)."""
    path = settings.home / "run" / "demo-pids.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({p.name: p.pid for p in started} | {"demo": os.getpid()}))


def _drain(settings: Settings, worker: ManagedProcess, produced: int, timeout: float) -> None:
    def drained() -> bool:
        totals = worker_totals(settings)
        return totals.get("consumed", 0) >= produced and totals.get("pending", 0) == 0

    try:
        wait_until(drained, timeout=timeout, interval=0.5, what="worker drain", alive=worker.alive)
    except ServiceError as exc:
        log.warning("%s: counts below may be partial", exc)


def _progress(settings: Settings) -> Any:
    def show(p: dict[str, Any]) -> None:
        totals = worker_totals(settings)
        print(
            f"\rproduced {p['produced']:>7}  consumed {totals.get('consumed', 0):>7}  "
            f"scored {totals.get('scored', 0):>6}  to review {totals.get('sent_to_review', 0):>5}"
            f"  dead-lettered {totals.get('dead_lettered', 0):>4}  [{p['elapsed_s']:>6.1f} s]",
            end="",
            file=sys.stderr,
            flush=True,
        )

    return show


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
