"""The alert runner's loop: read closed windows, detect, keep the lifecycle, send.

It composes the other alert modules: :mod:`relmon.alerts.repository` reads ClickHouse (the
stored watermark, window sums, enrichment, the open alerts on warm-up),
:mod:`relmon.alerts.detect` and :mod:`relmon.alerts.lifecycle` judge, :mod:`relmon.alerts.sinks`
send, and a :class:`~relmon.alerts.leader.Leader` says whether this runner may act at all (only
the leader detects and sends; see :mod:`relmon.alerts.leader` for how a new leader warms up
without paging twice). :class:`AlertThread` runs one in a daemon thread beside a worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from clickhouse_connect.driver.client import Client

from relmon import db
from relmon.alerts.detect import Detector
from relmon.alerts.leader import AlwaysLeader, KafkaLeader, Leader
from relmon.alerts.lifecycle import AlertBook, AlertEvent
from relmon.alerts.repository import enrich, load_alerts, query_window_sums, stored_watermark
from relmon.alerts.sinks import AlertSink, build_sinks
from relmon.errors import RelmonError
from relmon.settings import Settings

__all__ = ["AlertRunner", "AlertThread"]

log = logging.getLogger(__name__)


def _floor(t: datetime, window_s: int) -> datetime:
    ts = int(t.timestamp()) // window_s * window_s
    return datetime.fromtimestamp(ts, UTC)


class AlertRunner:
    """Detects on closed windows of ClickHouse data and sends alert events (leader only)."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: Callable[[], Client] | None = None,
        sinks: list[AlertSink] | None = None,
        leader: Leader | None = None,
    ) -> None:
        self.settings = settings
        self._own_client: Client | None = None
        self._client = client or self._default_client
        self.sinks = sinks if sinks is not None else build_sinks(settings, self._client)
        self.leader: Leader = leader or AlwaysLeader()
        self.failures = 0
        self._reset()

    def _default_client(self) -> Client:
        if self._own_client is None:
            self._own_client = db.connect(self.settings)
        return self._own_client

    def _reset(self) -> None:
        self.detector = Detector(self.settings.detector)
        self.book = AlertBook(
            window_s=self.settings.alerts.window_s,
            cooldown_windows=self.settings.alerts.cooldown_windows,
        )
        self._next: datetime | None = None
        self._sent: set[str] = set()

    def run_once(self, now: datetime | None = None) -> list[AlertEvent]:
        """Judge the windows not judged yet that are closed; send and return the events.

        A window is closed once ``now`` is ``RELMON_ALERT_LATENESS_S`` past its end and the
        newest stored event time is past it too.
        """
        s = self.settings
        w = s.alerts.window_s
        now = now or datetime.now(UTC)
        until = _floor(now - timedelta(seconds=s.alerts.lateness_s), w)
        # ...and only windows the stored data has moved past: a worker running behind must not
        # get a window judged on the part of it already written
        watermark = stored_watermark(self._client())
        if watermark is not None:
            until = min(until, _floor(watermark, w))
        first = self._next is None
        if self._next is None:
            warm = s.detector.baseline_windows + s.detector.baseline_gap + 1
            self._next = until - timedelta(seconds=w * warm)
            restored, self._sent = load_alerts(self._client(), self._next)
            for alert in restored:
                self.book.open[alert.segment] = alert
        if self._next >= until:
            return []
        sums = query_window_sums(self._client(), self._next, until, w)
        events: list[AlertEvent] = []
        t = self._next
        while t < until:
            events.extend(self.book.apply(self.detector.step(t, sums.get(t, {}))))
            t += timedelta(seconds=w)
        self._next = until
        if first:
            events.extend(self._resolve_stale(until - timedelta(seconds=w)))
        return self._deliver(events)

    def _resolve_stale(self, last: datetime) -> list[AlertEvent]:
        """After a warm-up, resolve restored alerts whose segment is no longer alarmed."""
        alarmed = self.detector.alarmed()
        out = []
        for seg in [s for s in self.book.open if s not in alarmed]:
            alert = replace(
                self.book.open.pop(seg),
                status="resolved",
                resolved_at=last + timedelta(seconds=self.settings.alerts.window_s),
            )
            self.book.resolved[seg] = alert
            out.append(AlertEvent("resolved", alert))
        return out

    def _deliver(self, events: list[AlertEvent]) -> list[AlertEvent]:
        """Announce fired (enriched, once per alert id) and resolved events; store the rest."""
        out: list[AlertEvent] = []
        changed: set[str] = set()
        for event in events:
            alert = event.alert
            changed.add(alert.alert_id)
            if event.kind == "updated" or (event.kind == "fired" and alert.alert_id in self._sent):
                continue  # dedup: an alert id is announced once, across restarts and leaders
            if event.kind == "fired":
                try:
                    alert = enrich(self._client(), alert)
                except RelmonError as exc:
                    log.warning("cannot enrich alert %s: %s", alert.alert_id, exc)
                self._sent.add(alert.alert_id)
                held = self.book.open.get(alert.segment)
                if held is not None and held.alert_id == alert.alert_id:
                    self.book.open[alert.segment] = replace(
                        held, top_queries=alert.top_queries, examples=alert.examples
                    )
            out.append(AlertEvent(event.kind, alert))
        out.extend(
            AlertEvent("updated", a) for a in self.book.open.values() if a.alert_id in changed
        )
        for event in out:
            for sink in self.sinks:
                try:
                    sink.send(event)
                except Exception as exc:  # a failing sink must not silence the others
                    self.failures += 1
                    log.error("alert sink %s failed (%s): %s", sink.name, event.kind, exc)
        return out

    def run(self, stop: threading.Event, on_round: Callable[[bool], None] | None = None) -> None:
        """Until ``stop`` is set: while leader, judge new windows every interval.

        ``on_round(leading)`` is called after every round.
        """
        leading = False
        while not stop.is_set():
            try:
                is_leader = self.leader.is_leader()
                if is_leader and not leading:
                    log.info("alert runner: elected leader, warming up")
                if not is_leader and leading:
                    log.info("alert runner: no longer the leader")
                    self._reset()
                leading = is_leader
                if leading:
                    for event in self.run_once():
                        if event.kind != "updated":
                            log.warning("alert %s: %s", event.kind, event.alert.title())
            except RelmonError as exc:
                log.error("alert runner: %s", exc)
            if on_round is not None:
                on_round(leading)
            stop.wait(self.settings.alerts.interval_s)

    def close(self) -> None:
        """Release the leadership and clients."""
        self.leader.close()
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if callable(close):
                close()
        if self._own_client is not None:
            self._own_client.close()


class AlertThread:
    """A leader-elected :class:`AlertRunner` in a daemon thread (the worker's alert runner).

    ``leading`` and ``rounds`` (windows looked at while leading) say what it is doing, for the
    worker's metrics and for tests; ``error`` holds why it could not start, if it could not.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.leading = False
        self.rounds = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="relmon-alerts", daemon=True)

    def start(self) -> AlertThread:
        """Start the thread; return ``self``."""
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            runner = AlertRunner(self.settings, leader=KafkaLeader(self.settings))
        except RelmonError as exc:
            self.error = str(exc)
            log.error("alert runner not started: %s", exc)
            return
        log.info("alert runner started (leader election on %s.leader)", self.settings.topics.alerts)
        try:
            runner.run(self._stop, on_round=self._on_round)
        except Exception:
            log.exception("alert runner stopped by an unexpected error")
            raise
        finally:
            self.leading = False
            runner.close()

    def _on_round(self, leading: bool) -> None:
        self.leading = leading
        if leading:
            self.rounds += 1

    def gauges(self) -> dict[str, int]:
        """``alert_runner_leader`` (1 while leading) and ``alert_runner_rounds``, for /metrics."""
        return {"alert_runner_leader": int(self.leading), "alert_runner_rounds": self.rounds}

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and join (leaving the leader group, so another worker takes over at once)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
