"""Prometheus text exposition of a worker's counters, with a small stdlib HTTP server.

``GET /metrics`` on ``RELMON_BIND_HOST:RELMON_METRICS_PORT`` (0 = no endpoint) answers:
counters of :mod:`streams.metrics` as ``relmon_<name>_total``, numeric gauges as
``relmon_<name>`` (pending, cache hit rate, current rates ``impressions_per_s``, ``scored_per_s``
over the last minute, and the scoring budget's ``budget_factor``, ``scoring_capacity_pps``,
``processing_lag_records``, ``input_records_per_s``, ``budget_load``), string gauges (model
version, provider, budget mode) as labels of ``relmon_worker_info``, the scoring latency
histogram ``relmon_score_seconds``, and ``relmon_consumer_lag{partition}`` when a lag source is
given, and with the alert runner in the worker ``relmon_alert_runner_leader`` (1 on the elected
leader) and ``relmon_alert_runner_rounds``.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from relmon.lag import consumer_lag
from streams.metrics import COUNTERS

__all__ = ["CachedLag", "LatencyHistogram", "MetricsServer", "exposition"]

log = logging.getLogger(__name__)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyHistogram:
    """A thread-safe cumulative histogram of durations in seconds."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[list[int], float]:
        """Per-bucket counts (last = above every bound) and the sum."""
        with self._lock:
            return list(self._counts), self._sum

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile ``q`` (nan when empty)."""
        counts, _ = self.snapshot()
        total = sum(counts)
        if not total:
            return float("nan")
        seen = 0
        for bound, n in zip((*self.buckets, float("inf")), counts, strict=True):
            seen += n
            if seen >= q * total:
                return bound
        return float("inf")

    def lines(self, name: str, help_text: str) -> list[str]:
        """Exposition lines of the histogram."""
        counts, total_sum = self.snapshot()
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, n in zip(self.buckets, counts, strict=False):
            running += n
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        running += counts[-1]
        out += [f'{name}_bucket{{le="+Inf"}} {running}', f"{name}_sum {total_sum}"]
        out.append(f"{name}_count {running}")
        return out


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def exposition(
    snapshot: Mapping[str, float | int | str],
    histograms: Mapping[str, LatencyHistogram] | None = None,
    lag: Mapping[int, int] | None = None,
) -> str:
    """Prometheus text format of a :meth:`streams.metrics.Metrics.snapshot`."""
    lines: list[str] = []
    info = {}
    for key in sorted(snapshot):
        value = snapshot[key]
        name = f"relmon_{key}"
        if isinstance(value, str):
            info[key] = value
        elif key in COUNTERS or key.startswith("dead_lettered_"):
            lines += [f"# TYPE {name}_total counter", f"{name}_total {value}"]
        elif isinstance(value, int | float) and key != "pid":
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
    labels = ",".join(f'{k}="{_label(v)}"' for k, v in sorted(info.items()))
    lines += ["# TYPE relmon_worker_info gauge", f"relmon_worker_info{{{labels}}} 1"]
    for name, hist in (histograms or {}).items():
        lines += hist.lines(name, "duration of scoring calls in seconds")
    if lag is not None:
        lines.append("# TYPE relmon_consumer_lag gauge")
        lines += [f'relmon_consumer_lag{{partition="{p}"}} {n}' for p, n in sorted(lag.items())]
    return "\n".join(lines) + "\n"


class CachedLag:
    """The consumer group's lag per partition (:mod:`relmon.lag`), refreshed at most every ttl."""

    def __init__(
        self, connection: Mapping[str, Any], topic: str, group: str, ttl_s: float = 15.0
    ) -> None:
        self._args = (connection, topic, group)
        self._ttl = ttl_s
        self._at = -ttl_s
        self._value: dict[int, int] | None = None
        self._lock = threading.Lock()

    def get(self) -> dict[int, int] | None:
        """Lag by partition, or None while Kafka cannot be read."""
        with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                self._at = time.monotonic()
                try:
                    rows = consumer_lag(*self._args, read_s=1.0)
                    self._value = {r.partition: r.lag for r in rows}
                except Exception as exc:  # a scrape must not fail because Kafka is slow
                    log.warning("consumer lag unavailable: %s", exc)
                    self._value = None
            return self._value


class MetricsServer:
    """Serves ``render()`` at ``/metrics`` from a daemon thread."""

    def __init__(self, host: str, port: int, render: Callable[[], str]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = outer.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug(format, *args)

        self.render = render
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="relmon-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
