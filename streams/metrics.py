"""Worker counters, published as a JSON file that the demo and operators can read."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from pathlib import Path

COUNTERS = (
    "consumed",
    "decoded",
    "dead_lettered",
    "dead_lettered_malformed",
    "dead_lettered_invalid",
    "dead_lettered_unknown_product",
    "dead_lettered_unknown_query",
    "dead_lettered_event_time_out_of_range",
    "unknown_product_seen",
    "unknown_query_seen",
    "ubi_queries",
    "ubi_pages",
    "ignored_events",
    "impressions",
    "sampled",
    "not_sampled",
    "scored",
    "sent_to_review",
    "rows_recovered",
    "rows_written",
    "rollup_refreshes",
    "already_stored",
    "store_errors",
    "send_errors",
    "service_errors",
    "send_refused",
    "dead_letters_stripped",
    "dead_letters_unsent",
    "catalog_products",
    "catalog_invalid",
    "batches",
)


class Metrics:
    """Thread-safe counters and gauges of one worker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self._gauges: dict[str, float | str] = {}
        self.started = time.time()

    def inc(self, name: str, value: int = 1) -> None:
        """Add ``value`` to counter ``name``."""
        with self._lock:
            self._counts[name] += value

    def add(self, counts: Mapping[str, int]) -> None:
        """Add several counts at once (one lock for a batch's per-record counts)."""
        with self._lock:
            self._counts.update(counts)

    def set(self, name: str, value: float | str) -> None:
        """Set gauge ``name``."""
        with self._lock:
            self._gauges[name] = value

    def get(self, name: str) -> int:
        """Current value of counter ``name``."""
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, float | int | str]:
        """All counters and gauges."""
        with self._lock:
            out: dict[str, float | int | str] = dict(self._counts)
            out.update(self._gauges)
        out["uptime_s"] = round(time.time() - self.started, 3)
        out["pid"] = os.getpid()
        return out

    def write(self, path: Path) -> None:
        """Atomically write the snapshot as JSON to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.snapshot(), sort_keys=True))
        tmp.replace(path)


class RecentRate:
    """The rate of a growing counter over the last ``window_s`` seconds.

    What a person watching a worker wants is how fast it goes now: an average since start hides
    a worker that has stalled (or sped up) for the last ten minutes behind an hour of history.
    """

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def observe(self, now: float, count: float) -> float:
        """Note the counter's value at ``now``; its rate per second over the last window.

        0 until two samples exist; over a shorter span while the worker is younger than the
        window.
        """
        samples = self._samples
        samples.append((now, count))
        while len(samples) > 2 and samples[1][0] <= now - self.window_s:
            samples.popleft()  # keep one sample at or before the window's start
        then, before = samples[0]
        return (count - before) / (now - then) if now > then else 0.0


def read_metrics(path: Path) -> dict[str, float | int | str]:
    """Read a metrics file written by :meth:`Metrics.write` (empty dict if absent)."""
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}
