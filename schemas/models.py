"""Versioned event contracts of relmon.

Every record relmon writes to Kafka is JSON of one of these models. Input impressions are accepted
in relmon's own format (:class:`Impression`) or as UBI 1.x query and event records
(:mod:`schemas.ubi`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

SCHEMA_VERSION = 1
DEAD_LETTER_MAX_BYTES = 512 * 1024
"""Default size limit of one serialised dead letter (``RELMON_DLQ_MAX_BYTES``)."""
DEAD_LETTER_KEY_KEEP = 1024
"""Bytes of an original key kept when a dead letter must be truncated."""

Id = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(min_length=1, max_length=2000)]
Action = Literal["impression", "click", "add_to_cart", "purchase", "view", "watch"]
ReviewReason = Literal["below_threshold", "uncertain", "audit"]
DeadLetterKind = Literal[
    "malformed", "invalid", "unknown_product", "unknown_query", "event_time_out_of_range"
]


def utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def float32(value: float) -> float:
    """``value`` as the nearest float32: what a ClickHouse ``Float32`` column stores and returns."""
    return float(np.float32(value))


def millis(value: datetime) -> datetime:
    """``value`` cut to whole milliseconds: what a ``DateTime64(3)`` column stores and returns."""
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


Float32 = Annotated[float, AfterValidator(float32)]
"""a float held as a float32 (so that a stored row reads back equal to the row written)"""
Millis = Annotated[datetime, AfterValidator(millis)]
"""a time held to the millisecond (so that a stored row reads back equal to the row written)"""


def hash_id(raw: str) -> str:
    """Pseudonymise a client or session id (sha256, first 16 hex digits)."""
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def json_type(value: object) -> str:
    """The JSON type name of a decoded JSON value (for error reasons)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def json_int(value: object) -> object:
    """Accept a JSON integer only: no booleans, numbers with a fraction part or strings."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, not {json_type(value)}")
    return value


_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?")


def date_time_string(value: object) -> object:
    """Accept an RFC 3339 date-time string (or a Python datetime): no Unix-time numbers."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 date-time string, not {json_type(value)}")
    if not _DATE_TIME.fullmatch(value.strip()):
        raise ValueError("must be an RFC 3339 date-time string like 2024-05-16T12:34:56Z")
    return value


def _utc_checked(value: datetime) -> datetime:
    try:
        return utc(value)
    except OverflowError:
        raise ValueError("date-time out of range once converted to UTC") from None


JsonInt = Annotated[int, BeforeValidator(json_int)]
DateTime = Annotated[datetime, BeforeValidator(date_time_string), AfterValidator(_utc_checked)]
"""An aware UTC datetime, given as an RFC 3339 string (naive times are taken as UTC)."""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    def to_bytes(self) -> bytes:
        """Serialise as compact JSON."""
        return self.model_dump_json(exclude_none=True).encode()


class CatalogProduct(_Record):
    """One product of the catalogue (value of the compacted ``relmon.catalog`` topic)."""

    product_id: Id
    title: Text
    category: str | None = None
    brand: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)


class Impression(_Record):
    """One product shown for one query: relmon's own input format, version 1.

    ``title`` (and category, brand, attributes) may be omitted: the worker then fills them in
    from the product catalogue.
    """

    schema_version: Annotated[Literal[1], BeforeValidator(json_int)] = 1
    impression_id: Id
    query_id: Id
    query: Text
    product_id: Id
    title: Text | None = None
    category: str | None = None
    brand: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    position: JsonInt = Field(ge=1, le=10_000, description="1-based rank on the result page")
    event_time: DateTime
    session_hash: str | None = Field(
        default=None, max_length=128, description="hashed client or session id, never raw"
    )
    locale: str = Field(default="en-US", max_length=32)
    action: Action | None = None
    source: Literal["relmon", "ubi"] = "relmon"

    @property
    def needs_catalog(self) -> bool:
        """True when the product text must come from the catalogue."""
        return self.title is None

    def enriched(self, product: CatalogProduct) -> Impression:
        """Return a copy with the product text taken from ``product`` where missing."""
        return self.model_copy(
            update={
                "title": self.title or product.title,
                "category": self.category or product.category,
                "brand": self.brand or product.brand,
                "attributes": self.attributes or dict(product.attributes),
            }
        )


class ScoredImpression(_Record):
    """A sampled impression with its student score (one row of ``scored_impressions``).

    The score and threshold are float32 numbers and the times whole milliseconds, as the table
    stores them, so a row read back from the store equals the row written.
    """

    impression_id: Id
    query_id: Id
    query: Text
    product_id: Id
    title: Text
    category: str = ""
    brand: str = ""
    position: int
    event_time: Millis
    locale: str
    session_hash: str = ""
    source: str
    tier: Literal["head", "torso", "tail"] = "tail"
    position_bucket: str = ""
    plan_id: str = ""
    score: Float32 = Field(ge=0.0, le=1.0)
    threshold: Float32
    is_bad: bool
    model_version: str
    sample_rate: float = Field(gt=0.0, le=1.0, description="inclusion probability")
    sample_weight: float = Field(ge=1.0, description="inverse inclusion probability")
    scored_at: Millis

    @classmethod
    def of(
        cls,
        impression: Impression,
        *,
        score: float,
        threshold: float,
        model_version: str,
        sample_rate: float,
        scored_at: datetime,
        tier: Literal["head", "torso", "tail"] = "tail",
        position_bucket: str = "",
        plan_id: str = "",
    ) -> ScoredImpression:
        """Build the scored row of an enriched impression (``sample_rate`` = inclusion prob.)."""
        if impression.title is None:
            raise ValueError("impression must be enriched before scoring")
        return cls(
            impression_id=impression.impression_id,
            query_id=impression.query_id,
            query=impression.query,
            product_id=impression.product_id,
            title=impression.title,
            category=impression.category or "",
            brand=impression.brand or "",
            position=impression.position,
            event_time=impression.event_time,
            locale=impression.locale,
            session_hash=impression.session_hash or "",
            source=impression.source,
            tier=tier,
            position_bucket=position_bucket,
            plan_id=plan_id,
            score=score,
            threshold=threshold,
            is_bad=float32(score) < float32(threshold),
            model_version=model_version,
            sample_rate=sample_rate,
            sample_weight=1.0 / sample_rate,
            scored_at=utc(scored_at),
        )


class ReviewRequest(_Record):
    """A case for the teacher (LLM judge or person): value of ``relmon.teacher-review``."""

    schema_version: Literal[1] = 1
    impression_id: Id
    query_id: Id
    query: Text
    product_id: Id
    title: Text
    category: str = ""
    score: float
    threshold: float
    model_version: str
    reason: ReviewReason
    priority: float = Field(
        description="higher first: bad cases by how far below the threshold, then uncertain "
        "ones, audits last"
    )
    sample_weight: float = Field(description="the row's weight: 1 / inclusion probability")
    review_weight: float = Field(
        default=1.0,
        description="weight of this review among the scored rows: 1 / probability that the row "
        "was sent for review (audits are a random share of confident rows)",
    )
    tier: str = "tail"
    locale: str = "en-US"
    position: int = 1
    event_time: datetime


class DeadLetter(_Record):
    """A record relmon could not process: value of ``relmon.dlq``; nothing is lost.

    The original bytes travel base64 in ``value_b64`` (and ``key_b64``). A letter that would be
    larger than its size limit (``RELMON_DLQ_MAX_BYTES``; the broker refuses larger messages)
    keeps only a prefix of them and says so (``truncated``); ``value_size`` and ``value_sha256``
    always describe the whole original value, and its topic, partition and offset point to it.
    """

    schema_version: Literal[1] = 1
    kind: DeadLetterKind
    reason: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key_b64: str | None = None
    value_b64: str = Field(
        description="the original record value, base64 (only its first bytes when truncated)"
    )
    value_size: int | None = Field(
        default=None, ge=0, description="size in bytes of the whole original value"
    )
    value_sha256: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{64}$",
        description="sha256 (hex) of the whole original value",
    )
    key_size: int | None = Field(
        default=None, ge=0, description="size in bytes of the whole original key"
    )
    truncated: bool = Field(
        default=False,
        description="value_b64 (and key_b64) hold only the first bytes of the original, cut to "
        "keep the letter under its size limit",
    )
    dead_lettered_at: datetime

    @classmethod
    def of(
        cls,
        *,
        kind: DeadLetterKind,
        reason: str,
        topic: str,
        partition: int,
        offset: int,
        value: bytes,
        key: bytes | None = None,
        timestamp_ms: int | None = None,
        max_bytes: int = DEAD_LETTER_MAX_BYTES,
    ) -> DeadLetter:
        """Build a dead letter keeping the original bytes (a prefix of them past ``max_bytes``)."""
        letter = cls(
            kind=kind,
            reason=reason[:2000],
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp_ms=timestamp_ms,
            key_b64=_b64(key) if key is not None else None,
            value_b64=_b64(value),
            value_size=len(value),
            value_sha256=hashlib.sha256(value).hexdigest(),
            key_size=len(key) if key is not None else None,
            dead_lettered_at=datetime.now(UTC),
        )
        return letter.within(max_bytes, value, key)

    def within(self, max_bytes: int, value: bytes, key: bytes | None = None) -> DeadLetter:
        """Cut to at most ``max_bytes`` serialised, keeping a prefix of the original ``value``.

        ``value`` and ``key`` are the original bytes. A key longer than
        :data:`DEAD_LETTER_KEY_KEEP` is cut too. Never larger than ``max_bytes`` unless the
        letter's other fields alone are.
        """
        if len(self.to_bytes()) <= max_bytes:
            return self
        kept_key = key[:DEAD_LETTER_KEY_KEEP] if key is not None else None
        bare = self.model_copy(
            update={
                "value_b64": "",
                "key_b64": _b64(kept_key) if kept_key is not None else None,
                "truncated": True,
            }
        )
        room = max(0, max_bytes - len(bare.to_bytes()))
        return bare.model_copy(update={"value_b64": _b64(value[: room // 4 * 3])})

    def without_original(self, note: str) -> DeadLetter:
        """A copy without the original bytes (size, sha256 and coordinates kept)."""
        return self.model_copy(
            update={
                "reason": f"{self.reason}; original bytes left out: {note}"[:2000],
                "value_b64": "",
                "key_b64": None,
                "truncated": True,
            }
        )

    @property
    def original(self) -> bytes:
        """The original record value (its first bytes only when :attr:`truncated`)."""
        return base64.b64decode(self.value_b64)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
