"""The alert runner: reads closed windows from ClickHouse, detects, keeps the lifecycle, sends.

Leadership: every runner (``relmon alerts``, or the thread inside a worker with
``RELMON_ALERTS_IN_WORKER``) joins the Kafka consumer group ``<consumer group>-alerts`` on the
single-partition topic ``<RELMON_TOPIC_ALERTS>.leader``. The group coordinator assigns that one
partition to exactly one member: the leader, the only runner that detects and sends. When it
dies or stalls past the session timeout the partition moves to another member, which warms up
from ClickHouse (the baseline windows, the open alerts and the ids already sent), so it neither
pages again for an alert that was sent nor forgets to resolve one. Nothing is ever written to
the leader topic. (A deposed leader that has not yet noticed can act for at most one more tick;
the table is idempotent per alert id and the webhook may then repeat one message.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from relmon import db
from relmon.alerts.detect import SEGMENT_DIMENSIONS, Detector, DetectorConfig, rollup
from relmon.alerts.lifecycle import Alert, AlertBook, AlertEvent
from relmon.alerts.sinks import AlertSink, build_sinks
from relmon.errors import RelmonError, ServiceError
from relmon.estimate import Sums, window_sums_sql
from relmon.settings import Settings
from relmon.stats import RateEstimate

__all__ = [
    "AlertRunner",
    "AlertThread",
    "AlwaysLeader",
    "KafkaLeader",
    "detector_config",
    "enrich",
    "query_window_sums",
]

log = logging.getLogger(__name__)


def detector_config(s: Settings) -> DetectorConfig:
    """The detector sensitivity configured in ``s``."""
    return DetectorConfig(
        baseline_windows=s.alert_baseline_windows,
        baseline_gap=s.alert_baseline_gap,
        min_baseline_windows=s.alert_min_baseline_windows,
        min_sample=s.alert_min_sample,
        min_baseline_sample=s.alert_min_baseline_sample,
        min_bad=s.alert_min_bad,
        fdr=s.alert_fdr,
        scan_windows=s.alert_scan_windows,
        min_lift=s.alert_min_lift,
        ewma_lambda=s.alert_ewma_lambda,
        ewma_limit=s.alert_ewma_limit,
        cusum_k=s.alert_cusum_k,
        cusum_h=s.alert_cusum_h,
        resolve_windows=s.alert_resolve_windows,
    )


def _floor(t: datetime, window_s: int) -> datetime:
    ts = int(t.timestamp()) // window_s * window_s
    return datetime.fromtimestamp(ts, UTC)


def stored_watermark(client: Client) -> datetime | None:
    """The newest event time in ``scored_impressions`` (None while it is empty)."""
    rows = client.query(
        "SELECT count(), max(event_time) FROM scored_impressions "
        "WHERE event_time > now64(3) - toIntervalDay(2)"
    ).result_rows
    if not rows or not rows[0][0]:
        return None
    newest: datetime = rows[0][1]
    return newest if newest.tzinfo else newest.replace(tzinfo=UTC)


def query_window_sums(
    client: Client, since: datetime, until: datetime, window_s: int
) -> dict[datetime, dict[tuple[str, str], Sums]]:
    """Per-window segment sums of ``scored_impressions`` in ``[since, until)``."""
    result = client.query(
        window_sums_sql("scored_impressions", SEGMENT_DIMENSIONS, bucket=True, until=True),
        parameters={"w": window_s, "since": since, "until": until},
    )
    cells: dict[datetime, list[tuple[dict[str, str], Sums]]] = {}
    for row in result.named_results():
        dims = {d: str(row[d]) for d in SEGMENT_DIMENSIONS}
        ws = row["window_start"]
        start = ws if ws.tzinfo else ws.replace(tzinfo=UTC)
        cells.setdefault(start, []).append((dims, Sums.from_row(row)))
    return {start: rollup(c) for start, c in cells.items()}


def _segment_filter(alert: Alert) -> tuple[str, dict[str, Any]]:
    if alert.dimension == "overall":
        return "1 = 1", {}
    if alert.dimension not in SEGMENT_DIMENSIONS:
        raise ValueError(f"unknown segment dimension {alert.dimension!r}")
    # the column name comes from the fixed list above, the value is a bound parameter
    return f"{alert.dimension} = {{v:String}}", {"v": alert.value}


def enrich(client: Client, alert: Alert, queries: int = 5, examples: int = 3) -> Alert:
    """Add the top offending queries and a few example bad cases of the alert's last window."""
    where, params = _segment_filter(alert)
    params |= {
        "a": alert.last_window,
        "b": alert.last_window + timedelta(seconds=alert.window_s),
        "k": queries,
        "e": examples,
    }
    span = (
        "event_time >= {a:DateTime64(3, 'UTC')} AND event_time < {b:DateTime64(3, 'UTC')} "
        f"AND {where}"
    )
    top = client.query(
        "SELECT query, count() AS n, sum(is_bad) AS bad, "
        "sum(sample_weight * is_bad) / sum(sample_weight) AS rate "
        f"FROM scored_impressions FINAL WHERE {span} "
        "GROUP BY query HAVING bad > 0 "
        "ORDER BY sum(sample_weight * is_bad) DESC, query LIMIT {k:UInt32}",
        parameters=params,
    )
    rows = client.query(
        "SELECT query, title, category, position, score, threshold, model_version "
        f"FROM scored_impressions FINAL WHERE {span} AND is_bad = 1 "
        "ORDER BY score, impression_id LIMIT {e:UInt32}",
        parameters=params,
    )
    return replace(
        alert,
        top_queries=tuple(
            {"query": str(q), "sampled": int(n), "bad": int(b), "rate": round(float(r), 4)}
            for q, n, b, r in top.result_rows
        ),
        examples=tuple(
            {
                "query": str(q),
                "title": str(t),
                "category": str(c),
                "position": int(p),
                "score": round(float(s), 4),
                "threshold": round(float(th), 4),
                "model_version": str(m),
            }
            for q, t, c, p, s, th, m in rows.result_rows
        ),
    )


def _rate(rate: float, low: float, high: float, sampled: int, n_eff: float) -> RateEstimate:
    return RateEstimate(int(sampled), 0, float(rate), float(n_eff), float(low), float(high))


def load_alerts(client: Client, since: datetime) -> tuple[list[Alert], set[str]]:
    """Open alerts (any age) and the ids of every alert started since ``since``."""
    result = client.query(
        "SELECT alert_id, status, dimension, value, started_at, last_window, window_s, "
        "observed_rate, observed_low, observed_high, observed_sampled, observed_n_eff, "
        "baseline_rate, baseline_low, baseline_high, baseline_sampled, baseline_n_eff, "
        "peak_rate, z, p_value, detectors, top_queries, examples "
        "FROM alerts FINAL WHERE status = 'firing' OR started_at >= {since:DateTime64(3, 'UTC')}",
        parameters={"since": since},
    )
    open_alerts, ids = [], set()
    for r in result.result_rows:
        ids.add(str(r[0]))
        if r[1] != "firing":
            continue
        open_alerts.append(
            Alert(
                alert_id=str(r[0]),
                status="firing",
                dimension=str(r[2]),
                value=str(r[3]),
                started_at=r[4].replace(tzinfo=UTC) if r[4].tzinfo is None else r[4],
                last_window=r[5].replace(tzinfo=UTC) if r[5].tzinfo is None else r[5],
                window_s=int(r[6]),
                observed=_rate(*r[7:12]),
                baseline=_rate(*r[12:17]),
                peak_rate=float(r[17]),
                z=float(r[18]),
                p_value=float(r[19]),
                detectors=tuple(r[20]),
                top_queries=tuple(json.loads(r[21] or "[]")),
                examples=tuple(json.loads(r[22] or "[]")),
            )
        )
    return open_alerts, ids


class AlwaysLeader:
    """Leadership for a single runner (tests, benches): always the leader."""

    def is_leader(self) -> bool:
        """Always True."""
        return True

    def close(self) -> None:
        """Nothing to release."""


class KafkaLeader:
    """Leader election through a Kafka consumer group on a single-partition topic."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer
        from kafka.admin import NewTopic
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        self.topic = f"{settings.topic_alerts}.leader"
        try:
            admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers)
            try:
                if self.topic not in set(admin.list_topics()):
                    with contextlib.suppress(TopicAlreadyExistsError):
                        admin.create_topics([NewTopic(self.topic, 1, 1)])
            finally:
                admin.close()
            self._consumer = KafkaConsumer(
                bootstrap_servers=settings.kafka_servers,
                group_id=f"{settings.consumer_group}-alerts",
                enable_auto_commit=False,
                session_timeout_ms=int(settings.session_timeout_s * 1000),
                heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
                max_poll_interval_ms=60_000,
            )
        except KafkaError as exc:
            raise ServiceError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
        parts = self._consumer.partitions_for_topic(self.topic)
        if parts is not None and len(parts) != 1:
            self._consumer.close()
            raise ServiceError(
                f"leader topic {self.topic} has {len(parts)} partitions; it needs exactly 1 "
                "(delete it and let relmon create it)"
            )
        self._consumer.subscribe([self.topic])
        self._leading = False
        self._closed = threading.Event()
        # The group protocol needs a consumer that polls all the time: polled only once per
        # alert interval, kafka-python keeps re-joining the group and never settles (measured
        # against tansu with a 1 s gap). So one thread owns the consumer and polls it.
        self._thread = threading.Thread(
            target=self._poll_forever, name="relmon-alerts-leader", daemon=True
        )
        self._thread.start()

    def _poll_forever(self) -> None:
        try:
            while not self._closed.is_set():
                try:
                    self._consumer.poll(timeout_ms=100)
                    self._leading = bool(self._consumer.assignment())
                except Exception as exc:  # keep electing; a broker hiccup must not end it
                    self._leading = False
                    log.warning("leader election: %s", exc)
                    self._closed.wait(1.0)
        finally:
            self._leading = False
            self._consumer.close()

    def is_leader(self) -> bool:
        """True while this member holds the leader topic's partition."""
        return self._leading and self._thread.is_alive()

    def close(self) -> None:
        """Leave the group (another member takes over at once)."""
        self._closed.set()
        self._thread.join(timeout=30)


class AlertRunner:
    """Detects on closed windows of ClickHouse data and sends alert events (leader only)."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: Callable[[], Client] | None = None,
        sinks: list[AlertSink] | None = None,
        leader: Any = None,
    ) -> None:
        self.settings = settings
        self._own_client: Client | None = None
        self._client = client or self._default_client
        self.sinks = sinks if sinks is not None else build_sinks(settings, self._client)
        self.leader = leader or AlwaysLeader()
        self.failures = 0
        self._reset()

    def _default_client(self) -> Client:
        if self._own_client is None:
            self._own_client = db.connect(self.settings)
        return self._own_client

    def _reset(self) -> None:
        self.detector = Detector(detector_config(self.settings))
        self.book = AlertBook(
            window_s=self.settings.alert_window_s,
            cooldown_windows=self.settings.alert_cooldown_windows,
        )
        self._next: datetime | None = None
        self._sent: set[str] = set()

    def run_once(self, now: datetime | None = None) -> list[AlertEvent]:
        """Judge the windows not judged yet that are closed; send and return the events.

        A window is closed once ``now`` is ``RELMON_ALERT_LATENESS_S`` past its end and the
        newest stored event time is past it too.
        """
        s = self.settings
        w = s.alert_window_s
        now = now or datetime.now(UTC)
        until = _floor(now - timedelta(seconds=s.alert_lateness_s), w)
        # ...and only windows the stored data has moved past: a worker running behind must not
        # get a window judged on the part of it already written
        watermark = stored_watermark(self._client())
        if watermark is not None:
            until = min(until, _floor(watermark, w))
        first = self._next is None
        if self._next is None:
            warm = s.alert_baseline_windows + s.alert_baseline_gap + 1
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
                resolved_at=last + timedelta(seconds=self.settings.alert_window_s),
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
            stop.wait(self.settings.alert_interval_s)

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
        log.info("alert runner started (leader election on %s.leader)", self.settings.topic_alerts)
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
