"""Alert lifecycle: firing, then resolved; one alert per segment episode, with a cooldown.

:class:`AlertBook` turns the detector's per-window :class:`~relmon.alerts.detect.SegmentTest`
results into :class:`AlertEvent` s:

- a segment that becomes alarmed **fires** a new alert (id from the segment and first window),
  unless it was resolved less than ``cooldown_windows`` windows ago: then the resolved alert is
  reopened and nothing new is sent (deduplication of flapping segments);
- while the segment stays alarmed the open alert is **updated** (latest observed rate, sample
  sizes) but not announced again;
- when the detector says the rate is back, the alert is **resolved** and announced once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from relmon.alerts.detect import Segment, SegmentTest
from relmon.stats import RateEstimate
from schemas.alert import (
    AlertEventKind,
    AlertExample,
    AlertRecord,
    AlertStatus,
    RateRecord,
    TopQuery,
)

__all__ = ["Alert", "AlertBook", "AlertEvent", "rate_record"]


def rate_record(est: RateEstimate) -> RateRecord:
    """A rate estimate as published: rounded, and a NaN rate (no sample) as null."""
    return RateRecord(
        rate=round(est.rate, 6),  # NaN (no sample): null, by the record
        ci_low=round(est.ci_low, 6),
        ci_high=round(est.ci_high, 6),
        sampled=est.sampled,
        bad=est.bad,
        n_eff=round(est.n_eff, 3),
    )


@dataclass(frozen=True)
class Alert:
    """One alert: a segment whose bad-case rate rose above its baseline."""

    alert_id: str
    status: AlertStatus
    dimension: str
    value: str
    started_at: datetime
    last_window: datetime
    window_s: int
    observed: RateEstimate
    baseline: RateEstimate
    peak_rate: float
    z: float
    p_value: float
    detectors: tuple[str, ...]
    resolved_at: datetime | None = None
    top_queries: tuple[dict[str, Any], ...] = ()
    examples: tuple[dict[str, Any], ...] = ()

    @property
    def segment(self) -> Segment:
        """(dimension, value)."""
        return (self.dimension, self.value)

    def title(self) -> str:
        """One line for humans."""
        what = "overall" if self.dimension == "overall" else f"{self.dimension}={self.value}"
        verb = "RESOLVED" if self.status == "resolved" else "FIRING"
        o, b = self.observed, self.baseline
        return (
            f"[{verb}] bad-case rate {what}: {o.rate:.1%} "
            f"(95% {o.ci_low:.1%}-{o.ci_high:.1%}, n={o.sampled})"
            f" vs baseline {b.rate:.1%} (95% {b.ci_low:.1%}-{b.ci_high:.1%}, n={b.sampled})"
        )

    def to_record(self, event: AlertEventKind) -> AlertRecord:
        """The published record of this alert for an ``event`` (the ``relmon.alerts`` value)."""
        return AlertRecord(
            event=event,
            alert_id=self.alert_id,
            status=self.status,
            dimension=self.dimension,  # type: ignore[arg-type]  # a str, checked by the record
            value=self.value,
            started_at=self.started_at,
            last_window=self.last_window,
            resolved_at=self.resolved_at,
            window_s=self.window_s,
            observed=rate_record(self.observed),
            baseline=rate_record(self.baseline),
            peak_rate=round(self.peak_rate, 6),  # not finite: null, by the record
            z=round(self.z, 3),
            p_value=self.p_value,
            detectors=list(self.detectors),
            top_queries=[TopQuery.model_validate(q) for q in self.top_queries],
            examples=[AlertExample.model_validate(e) for e in self.examples],
        )

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON fields but ``event`` (the sinks add the event kind)."""
        event: AlertEventKind = "resolved" if self.status == "resolved" else "updated"
        return self.to_record(event).model_dump(mode="json", exclude={"event"})

    def to_json(self) -> bytes:
        """:meth:`to_dict` as JSON bytes (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False).encode()


@dataclass(frozen=True)
class AlertEvent:
    """A change worth telling the sinks: ``fired`` or ``resolved`` (``updated`` is stored only)."""

    kind: AlertEventKind
    alert: Alert

    def to_record(self) -> AlertRecord:
        """The published record of this event."""
        return self.alert.to_record(self.kind)


def _alert_id(segment: Segment, start: datetime) -> str:
    raw = f"{segment[0]}\x1f{segment[1]}\x1f{start.isoformat()}".encode()
    return "a-" + hashlib.sha256(raw).hexdigest()[:16]


@dataclass
class AlertBook:
    """Open and recently resolved alerts per segment."""

    window_s: int
    cooldown_windows: int = 6
    open: dict[Segment, Alert] = field(default_factory=dict)
    resolved: dict[Segment, Alert] = field(default_factory=dict)
    suppressed: int = 0

    def apply(self, tests: Iterable[SegmentTest]) -> list[AlertEvent]:
        """Fold one window's tests into the book; return what changed."""
        events: list[AlertEvent] = []
        for t in tests:
            seg = t.segment
            if t.started:
                events.extend(self._start(t))
            elif t.resolved and seg in self.open:
                alert = replace(
                    self._updated(self.open.pop(seg), t),
                    status="resolved",
                    resolved_at=t.window_start + timedelta(seconds=self.window_s),
                )
                self.resolved[seg] = alert
                events.append(AlertEvent("resolved", alert))
            elif t.alarmed and seg in self.open:
                self.open[seg] = self._updated(self.open[seg], t)
                events.append(AlertEvent("updated", self.open[seg]))
        return events

    def _start(self, t: SegmentTest) -> list[AlertEvent]:
        seg = t.segment
        if seg in self.open:  # still open (e.g. restored from the store): an update
            self.open[seg] = self._updated(self.open[seg], t)
            return [AlertEvent("updated", self.open[seg])]
        last = self.resolved.get(seg)
        cooldown = timedelta(seconds=self.window_s * self.cooldown_windows)
        if last and last.resolved_at and t.window_start < last.resolved_at + cooldown:
            self.suppressed += 1
            self.open[seg] = replace(self._updated(last, t), status="firing", resolved_at=None)
            del self.resolved[seg]
            return [AlertEvent("updated", self.open[seg])]
        alert = Alert(
            alert_id=_alert_id(seg, t.window_start),
            status="firing",
            dimension=seg[0],
            value=seg[1],
            started_at=t.window_start,
            last_window=t.window_start,
            window_s=self.window_s,
            observed=t.current,
            baseline=t.baseline,
            peak_rate=t.current.rate,
            z=t.z,
            p_value=t.p_value,
            detectors=t.detectors,
        )
        self.open[seg] = alert
        return [AlertEvent("fired", alert)]

    @staticmethod
    def _updated(alert: Alert, t: SegmentTest) -> Alert:
        peak = alert.peak_rate
        if t.current.rate == t.current.rate:
            peak = max(peak, t.current.rate)
        return replace(
            alert,
            last_window=t.window_start,
            observed=t.current if t.current.sampled else alert.observed,
            peak_rate=peak,
            z=t.z if t.z == t.z else alert.z,
            p_value=t.p_value,
        )
