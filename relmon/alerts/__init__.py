"""Alerts on bad-case-rate spikes: detectors, alert lifecycle, sinks and the leader-only runner."""

from relmon.alerts.detect import Detector, Sums, window_sums
from relmon.alerts.lifecycle import Alert, AlertBook, AlertEvent

__all__ = ["Alert", "AlertBook", "AlertEvent", "Detector", "Sums", "window_sums"]
