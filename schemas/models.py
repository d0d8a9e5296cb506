"""Versioned event contracts of relmon.

Every record relmon writes to Kafka is JSON of one of these models. Input impressions are accepted
in relmon's own format (:class:`Impression`) or as UBI 1.x query and event records
(:mod:`schemas.ubi`).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1

Id = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(min_length=1, max_length=2000)]
Action = Literal["impression", "click", "add_to_cart", "purchase", "view", "watch"]
ReviewReason = Literal["below_threshold", "uncertain", "audit"]
DeadLetterKind = Literal["malformed", "invalid", "unknown_product", "unknown_query"]


def utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def hash_id(raw: str) -> str:
    """Pseudonymise a client or session id (sha256, first 16 hex digits)."""
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


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

    schema_version: Literal[1] = 1
    impression_id: Id
    query_id: Id
    query: Text
    product_id: Id
    title: Text | None = None
    category: str | None = None
    brand: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    position: int = Field(ge=1, le=10_000, description="1-based rank on the result page")
    event_time: datetime
    session_hash: str | None = Field(
        default=None, max_length=128, description="hashed client or session id, never raw"
    )
    locale: str = Field(default="en-US", max_length=32)
    action: Action | None = None
    source: Literal["relmon", "ubi"] = "relmon"

    @field_validator("event_time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return utc(value)

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
    """A sampled impression with its student score (one row of ``scored_impressions``)."""

    impression_id: Id
    query_id: Id
    query: Text
    product_id: Id
    title: Text
    category: str = ""
    brand: str = ""
    position: int
    event_time: datetime
    locale: str
    session_hash: str = ""
    source: str
    tier: Literal["head", "torso", "tail"] = "tail"
    position_bucket: str = ""
    plan_id: str = ""
    score: float = Field(ge=0.0, le=1.0)
    threshold: float
    is_bad: bool
    model_version: str
    sample_rate: float = Field(gt=0.0, le=1.0, description="inclusion probability")
    sample_weight: float = Field(ge=1.0, description="inverse inclusion probability")
    scored_at: datetime

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
            is_bad=score < threshold,
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

    @classmethod
    def of(
        cls,
        row: ScoredImpression,
        reason: ReviewReason = "below_threshold",
        review_probability: float = 1.0,
    ) -> ReviewRequest:
        """Build the review request for a scored row."""
        margin = row.threshold - row.score
        priority = {"below_threshold": 2.0 + margin, "uncertain": 1.0 - abs(margin)}.get(
            reason, 0.0
        )
        return cls(
            impression_id=row.impression_id,
            query_id=row.query_id,
            query=row.query,
            product_id=row.product_id,
            title=row.title,
            category=row.category,
            score=row.score,
            threshold=row.threshold,
            model_version=row.model_version,
            reason=reason,
            priority=round(priority, 6),
            sample_weight=row.sample_weight,
            review_weight=1.0 / review_probability,
            tier=row.tier,
            locale=row.locale,
            position=row.position,
            event_time=row.event_time,
        )


class DeadLetter(_Record):
    """A record relmon could not process: value of ``relmon.dlq``; nothing is lost."""

    schema_version: Literal[1] = 1
    kind: DeadLetterKind
    reason: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key_b64: str | None = None
    value_b64: str = Field(description="the original record value, base64")
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
    ) -> DeadLetter:
        """Build a dead letter keeping the original bytes."""
        return cls(
            kind=kind,
            reason=reason[:2000],
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp_ms=timestamp_ms,
            key_b64=base64.b64encode(key).decode() if key is not None else None,
            value_b64=base64.b64encode(value).decode(),
            dead_lettered_at=datetime.now(UTC),
        )

    @property
    def original(self) -> bytes:
        """The original record value."""
        return base64.b64decode(self.value_b64)
