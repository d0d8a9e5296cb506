"""Where alert events go: a Kafka topic, the ClickHouse ``alerts`` table, a webhook.

Every sink takes :class:`~relmon.alerts.lifecycle.AlertEvent` s. The Kafka topic and the webhook
get ``fired`` and ``resolved`` events (people are paged once per alert episode); the table also
gets ``updated`` rows, so the dashboard shows the latest observed rate of an open alert. The
webhook posts Slack-compatible JSON (``text`` + ``blocks``, plus the alert as ``relmon``) and
retries with exponential backoff on connection errors, 429 and 5xx.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from clickhouse_connect.driver.client import Client

from relmon.alerts.lifecycle import Alert, AlertEvent
from relmon.errors import ServiceError
from relmon.settings import Settings

__all__ = [
    "ALERT_COLUMNS",
    "AlertSink",
    "ClickHouseSink",
    "KafkaSink",
    "WebhookSink",
    "alert_row",
    "build_sinks",
    "slack_payload",
]

log = logging.getLogger(__name__)

ALERT_COLUMNS = [
    "alert_id",
    "status",
    "dimension",
    "value",
    "started_at",
    "last_window",
    "resolved_at",
    "window_s",
    "observed_rate",
    "observed_low",
    "observed_high",
    "observed_sampled",
    "observed_n_eff",
    "baseline_rate",
    "baseline_low",
    "baseline_high",
    "baseline_sampled",
    "baseline_n_eff",
    "peak_rate",
    "z",
    "p_value",
    "detectors",
    "top_queries",
    "examples",
    "updated_at",
]


class AlertSink(Protocol):
    """Something that takes alert events."""

    name: str

    def send(self, event: AlertEvent) -> None:
        """Deliver one event (raise on failure)."""


def _num(x: float) -> float:
    return x if x == x else 0.0


def alert_row(alert: Alert, now: datetime | None = None) -> list[Any]:
    """The ``alerts`` table row of an alert (columns :data:`ALERT_COLUMNS`)."""
    o, b = alert.observed, alert.baseline
    return [
        alert.alert_id,
        alert.status,
        alert.dimension,
        alert.value,
        alert.started_at,
        alert.last_window,
        alert.resolved_at,
        alert.window_s,
        _num(o.rate),
        o.ci_low,
        o.ci_high,
        o.sampled,
        o.n_eff,
        _num(b.rate),
        b.ci_low,
        b.ci_high,
        b.sampled,
        b.n_eff,
        _num(alert.peak_rate),
        _num(alert.z),
        alert.p_value,
        list(alert.detectors),
        json.dumps(list(alert.top_queries), default=str),
        json.dumps(list(alert.examples), default=str),
        now or datetime.now(UTC),
    ]


class ClickHouseSink:
    """Writes every event as a row of the ``alerts`` table."""

    name = "clickhouse"

    def __init__(self, client: Callable[[], Client]) -> None:
        self._client = client

    def send(self, event: AlertEvent) -> None:
        """Insert the alert's current state."""
        self._client().insert("alerts", [alert_row(event.alert)], column_names=ALERT_COLUMNS)


class KafkaSink:
    """Publishes fired and resolved events to the alerts topic (key = alert id)."""

    name = "kafka"

    def __init__(self, settings: Settings, producer: Any = None) -> None:
        self._settings = settings
        self._producer = producer

    def send(self, event: AlertEvent) -> None:
        """Send and wait for the broker's acknowledgement."""
        if event.kind == "updated":
            return
        if self._producer is None:
            from relmon.kafka import producer

            self._producer = producer(self._settings)
        value = event.to_record().to_bytes()
        self._producer.send(
            self._settings.topics.alerts, key=event.alert.alert_id.encode(), value=value
        ).get(timeout=30)

    def close(self) -> None:
        """Close the producer."""
        if self._producer is not None:
            self._producer.close()


def _duration(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def slack_payload(event: AlertEvent) -> dict[str, Any]:
    """Slack incoming-webhook JSON for an event, with the full alert under ``relmon``."""
    a = event.alert
    lines = [
        a.title(),
        f"window {_duration(a.window_s)} from {a.started_at:%Y-%m-%d %H:%M} UTC; "
        f"detectors: {', '.join(a.detectors) or '-'}; p = {a.p_value:.2g}",
    ]
    if a.top_queries:
        lines.append(
            "top offending queries: "
            + "; ".join(f"{q['query']} ({q['bad']}/{q['sampled']} bad)" for q in a.top_queries)
        )
    for ex in a.examples:
        lines.append(f"  e.g. {ex['query']!r} -> {ex['title']!r} score {float(ex['score']):.2f}")
    text = "\n".join(lines)
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        "relmon": {"event": event.kind, **a.to_dict()},
    }


class WebhookSink:
    """POSTs fired and resolved events as Slack-compatible JSON, with retries and backoff."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        retries: int = 4,
        backoff_s: float = 1.0,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._sleep = sleep

    def send(self, event: AlertEvent) -> None:
        """Post the event; raise :class:`ServiceError` once every retry failed."""
        if event.kind == "updated":
            return
        body = json.dumps(slack_payload(event), default=str).encode()
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(  # noqa: S310 - operator-configured URL
                self.url,
                data=body,
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310
                    resp.read()
                    return
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if exc.code != 429 and exc.code < 500:
                    break
            except OSError as exc:
                error = str(exc)
        raise ServiceError(f"alert webhook failed after {self.retries + 1} attempt(s): {error}")


def build_sinks(settings: Settings, client: Callable[[], Client]) -> list[AlertSink]:
    """The sinks configured by ``RELMON_ALERT_SINKS`` (and the webhook URL)."""
    names = settings.alerts.sinks
    sinks: list[AlertSink] = []
    if "clickhouse" in names:
        sinks.append(ClickHouseSink(client))
    if "kafka" in names:
        sinks.append(KafkaSink(settings))
    url = settings.alerts.webhook_url.get_secret_value()
    if "webhook" in names and url:
        sinks.append(
            WebhookSink(
                url,
                retries=settings.alerts.webhook_retries,
                backoff_s=settings.alerts.webhook_backoff_s,
            )
        )
    return sinks
