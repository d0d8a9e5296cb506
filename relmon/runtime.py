"""Local runtime: start, wait for and stop the processes of the embedded setup.

Each child runs in its own session with a log file, receives SIGTERM if its parent dies
(``PR_SET_PDEATHSIG`` on Linux) so nothing is left behind, and is stopped only by the PID of the
process this module started.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from relmon.errors import ServiceError, StartupTimeout

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

# Python's cyclic collector runs a young-generation pass every 700 net new container objects by
# default. A worker batch holds tens of thousands of them (each record's message, record and
# model objects) for the whole batch, so the default promoted every batch to the old
# generation and ran a full collection every 1-2 s, 0.2-0.4 s each with the interpreter lock
# held. 50,000 lets most of a batch die young; full passes then come minutes apart.
GC_THRESHOLDS = (50_000, 20, 100)


def settle_heap() -> None:
    """Tune the cyclic garbage collector for a long-running batch process.

    Call once start-up is over: what exists then (modules, the model's tokenizer, settings)
    lives as long as the process, so it is frozen out of every later collection, and the
    thresholds become :data:`GC_THRESHOLDS`.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class GcPauses:
    """Time spent in the cyclic garbage collector since :meth:`install`.

    The interpreter lock is held throughout a collection, so every thread of the process waits.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.longest_s = 0.0
        self.full = 0  # collections of the oldest generation
        self._began = 0.0

    def install(self) -> GcPauses:
        """Start timing every collection."""
        gc.callbacks.append(self._on_gc)
        return self

    def uninstall(self) -> None:
        """Stop timing."""
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._began = now
            return
        took = now - self._began
        self.seconds += took
        self.longest_s = max(self.longest_s, took)
        self.full += info["generation"] == 2

    def gauges(self) -> dict[str, float]:
        """``gc_pause_seconds``, ``gc_pause_longest_ms`` and ``gc_full_collections``."""
        return {
            "gc_pause_seconds": round(self.seconds, 3),
            "gc_pause_longest_ms": round(self.longest_s * 1000, 1),
            "gc_full_collections": self.full,
        }


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``condition`` until it is true; raise :class:`StartupTimeout` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if alive is not None and not alive():
            raise ServiceError(f"{what}: the process exited before it was ready")
        if time.monotonic() >= deadline:
            raise StartupTimeout(f"{what} not ready after {timeout:.0f} s")
        time.sleep(interval)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class ManagedProcess:
    """A child process with a log file, a readiness check and a clean stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: Callable[[], bool] | None = None,
        env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._ready = ready
        self._env = env
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the running child, if started."""
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        """True while the child runs."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ManagedProcess:
        """Start the child and wait until it is ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        env = dict(os.environ)
        env.update(self._env or {})
        log.info("starting %s: %s (log %s)", self.name, " ".join(self.argv), self.log_path)
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        if self._ready is not None:
            try:
                wait_until(
                    self._ready,
                    timeout=self._ready_timeout,
                    what=self.name,
                    alive=self.alive,
                )
            except ServiceError as exc:
                self.stop()
                raise ServiceError(f"{exc}; see {self.log_path}:\n{self.tail()}") from None
        return self

    def tail(self, lines: int = 20) -> str:
        """The last lines of the child's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the child by its PID (``sig``, then SIGKILL after a grace period)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, self._stop_timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the child at once (crash tests)."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit; return its exit code."""
        if self._proc is None:
            raise ServiceError(f"{self.name} was never started")
        return self._proc.wait(timeout=timeout)

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def relmon_argv(*args: str) -> list[str]:
    """Command line that runs a relmon subcommand with this interpreter."""
    return [sys.executable, "-m", "relmon", *args]
