"""The alert record: one event of one alert, the value of the ``relmon.alerts`` topic.

A contract like the others in :mod:`schemas` (its JSON Schema, ``alert.schema.json``, is shipped
beside theirs). The alert runner builds it from its domain object
(:meth:`relmon.alerts.lifecycle.Alert.to_record`); the Kafka sink publishes its bytes (key = the
alert id) and the webhook carries the same fields under ``relmon``.

Every number is valid JSON: a rate without a sample (the domain's NaN) is ``null``, as are a
peak rate or z that is not finite. Times are ISO 8601 in UTC with an explicit ``+00:00`` offset
(Python's ``datetime.isoformat``), as the topic has carried them from the start.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from schemas.models import DateTime

__all__ = [
    "AlertDimension",
    "AlertEventKind",
    "AlertExample",
    "AlertRecord",
    "AlertStatus",
    "RateRecord",
    "TopQuery",
]

AlertEventKind = Literal["fired", "updated", "resolved"]
AlertStatus = Literal["firing", "resolved"]
AlertDimension = Literal[
    "overall", "tier", "category", "locale", "position_bucket", "model_version"
]
"""The segment dimensions (``overall`` and :data:`relmon.alerts.detect.SEGMENT_DIMENSIONS`)."""


def _finite_or_none(value: object) -> object:
    """NaN and infinities (not valid JSON) become ``None``: published as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _isoformat(value: datetime) -> str:
    return value.isoformat()


FiniteOrNull = Annotated[float | None, BeforeValidator(_finite_or_none)]
"""A finite number, or ``null`` where the domain has NaN (or an infinity)."""
IsoDateTime = Annotated[DateTime, PlainSerializer(_isoformat, return_type=str, when_used="json")]
"""An aware UTC time, written as ``datetime.isoformat()`` (``2026-01-01T10:05:00+00:00``)."""
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _AlertPart(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class RateRecord(_AlertPart):
    """A weighted bad-case rate with its 95% interval and sample sizes."""

    rate: FiniteOrNull = Field(
        ge=0.0,
        le=1.0,
        description="the weighted (Horvitz-Thompson) bad-case rate, rounded to 6 digits; null "
        "when there was no sample to estimate it from (sampled = 0)",
    )
    ci_low: Probability = Field(description="95% Wilson interval, lower end (0 without sample)")
    ci_high: Probability = Field(description="95% Wilson interval, upper end (1 without sample)")
    sampled: int = Field(ge=0, description="scored (sampled) impressions")
    bad: int = Field(
        ge=0,
        description="bad ones among them (0 in an alert restored from the alerts table, which "
        "does not store it)",
    )
    n_eff: float = Field(ge=0.0, description="Kish effective sample size, rounded to 3 digits")


class TopQuery(_AlertPart):
    """A query with bad cases in the alert's last window, heaviest first."""

    query: str
    sampled: int = Field(ge=0, description="scored impressions of the query in the segment")
    bad: int = Field(ge=0, description="bad ones among them")
    rate: Probability = Field(description="the query's weighted bad-case rate, 4 digits")


class AlertExample(_AlertPart):
    """A bad case of the alert's last window (lowest scores first)."""

    query: str
    title: str
    category: str
    position: int = Field(ge=1, description="1-based rank on the result page")
    score: float = Field(description="the student's score, rounded to 4 digits")
    threshold: float = Field(description="the threshold it fell below, rounded to 4 digits")
    model_version: str


class AlertRecord(_AlertPart):
    """One alert event: the alert's state when it fired, was updated or resolved.

    The ``relmon.alerts`` topic carries ``fired`` and ``resolved`` events (key = ``alert_id``);
    ``updated`` events go to the alerts table only.
    """

    schema_version: Literal[1] = 1
    event: AlertEventKind = Field(
        description="fired: a new alert; updated: an open alert's latest window (not "
        "published on the topic); resolved: the rate is back"
    )
    alert_id: str = Field(
        min_length=1, description="stable id from the segment and its first window"
    )
    status: AlertStatus = Field(description="firing until resolved")
    dimension: AlertDimension = Field(description="the segment's dimension")
    value: str = Field(description="the segment's value ('all' for overall)")
    started_at: IsoDateTime = Field(description="start of the first alarmed window")
    last_window: IsoDateTime = Field(description="start of the latest window judged")
    resolved_at: IsoDateTime | None = Field(
        default=None, description="end of the window that resolved it; null while firing"
    )
    window_s: int = Field(gt=0, description="window length in seconds")
    observed: RateRecord = Field(description="the segment's rate in its latest sampled window")
    baseline: RateRecord = Field(description="the frozen baseline it is compared against")
    peak_rate: FiniteOrNull = Field(
        ge=0.0,
        le=1.0,
        description="highest observed rate since the alert fired, rounded to 6 digits; null "
        "when no window had a sample",
    )
    z: FiniteOrNull = Field(
        description="overdispersion-scaled z of the latest tested window, rounded to 3 digits; "
        "null when not finite"
    )
    p_value: Probability = Field(description="the segment's corrected p-value, latest window")
    detectors: list[str] = Field(
        description="what fired it: z-test (z-test-<k>w for a k-window scan), ewma, cusum"
    )
    top_queries: list[TopQuery] = Field(
        default_factory=list, description="the top offending queries of the latest window"
    )
    examples: list[AlertExample] = Field(
        default_factory=list, description="a few bad cases of the latest window"
    )

    def to_bytes(self) -> bytes:
        """Serialise as compact JSON (every key, ``null`` included)."""
        return self.model_dump_json().encode()
