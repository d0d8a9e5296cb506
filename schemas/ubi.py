"""Input decoding: relmon's own impressions and UBI (User Behavior Insights 1.x) records.

The impressions topic may carry three kinds of JSON objects:

- a relmon :class:`~schemas.models.Impression` (has ``impression_id``);
- a UBI query record (``query_id`` + ``user_query``, top level or under ``ext.ubi``), which tells
  the query text of later UBI events;
- a UBI event with ``action_name`` ``"impression"``: the product is
  ``event_attributes.object.object_id`` at ``event_attributes.position.ordinal`` (1-based).

UBI events carry neither product text nor query text: the worker fills both in from the catalogue
and from the UBI query records. Other UBI actions (click, add_to_cart, ...) are accepted and
ignored by scoring.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relmon.errors import DecodeError
from schemas.models import Id, Impression, hash_id, utc

MAX_RECORD_BYTES = 1_000_000


class UbiQuery(BaseModel):
    """A UBI query record: what the user searched for under ``query_id``."""

    model_config = ConfigDict(frozen=True)

    query_id: Id
    user_query: str = Field(min_length=1, max_length=2000)
    client_id: str | None = None
    timestamp: datetime | None = None
    application: str | None = None


class UbiImpression(BaseModel):
    """A UBI ``impression`` event, before its query text and product text are known."""

    model_config = ConfigDict(frozen=True)

    query_id: Id
    object_id: Id
    position: int = Field(ge=1, le=10_000)
    timestamp: datetime
    session_hash: str | None = None
    locale: str = "en-US"

    @property
    def impression_id(self) -> str:
        """A deterministic id: the same event always maps to the same impression."""
        return f"ubi:{self.query_id}:{self.position}:{self.object_id}"

    def with_query(self, user_query: str) -> Impression:
        """Return the relmon impression once the query text is known."""
        return Impression(
            impression_id=self.impression_id,
            query_id=self.query_id,
            query=user_query,
            product_id=self.object_id,
            position=self.position,
            event_time=utc(self.timestamp),
            session_hash=self.session_hash,
            locale=self.locale,
            action="impression",
            source="ubi",
        )


class UbiOtherEvent(BaseModel):
    """A UBI event that is not an impression (click, purchase, ...): not scored."""

    model_config = ConfigDict(frozen=True)

    action_name: str


InputRecord = Impression | UbiQuery | UbiImpression | UbiOtherEvent


def _ubi_event(obj: dict[str, Any]) -> UbiImpression | UbiOtherEvent:
    action = obj.get("action_name")
    if not isinstance(action, str):
        raise DecodeError("UBI event: action_name must be a string")
    if action != "impression":
        return UbiOtherEvent(action_name=action)
    attrs = obj.get("event_attributes")
    if not isinstance(attrs, dict):
        raise DecodeError("UBI impression: event_attributes missing")
    target = attrs.get("object") or {}
    position = attrs.get("position") or {}
    if not isinstance(target, dict) or "object_id" not in target:
        raise DecodeError("UBI impression: event_attributes.object.object_id missing")
    if not isinstance(position, dict) or "ordinal" not in position:
        raise DecodeError("UBI impression: event_attributes.position.ordinal missing")
    if not obj.get("query_id"):
        raise DecodeError("UBI impression: query_id missing")
    who = obj.get("session_id") or obj.get("client_id")
    return UbiImpression(
        query_id=str(obj["query_id"]),
        object_id=str(target["object_id"]),
        position=position["ordinal"],
        timestamp=obj.get("timestamp"),  # type: ignore[arg-type]
        session_hash=hash_id(str(who)) if who else None,
        locale=str(attrs.get("locale") or "en-US"),
    )


def _ubi_query(obj: dict[str, Any]) -> UbiQuery:
    inner = obj.get("ext", {}).get("ubi", obj) if isinstance(obj.get("ext"), dict) else obj
    if not isinstance(inner, dict):
        raise DecodeError("UBI query: ext.ubi must be an object")
    return UbiQuery(
        query_id=inner.get("query_id"),  # type: ignore[arg-type]
        user_query=inner.get("user_query"),  # type: ignore[arg-type]
        client_id=inner.get("client_id"),
        timestamp=inner.get("timestamp"),
        application=inner.get("application"),
    )


def decode_record(raw: bytes | None) -> InputRecord:
    """Decode one record of the impressions topic, or raise :class:`DecodeError` saying why."""
    if raw is None:
        raise DecodeError("empty record (null value)", "malformed")
    if len(raw) > MAX_RECORD_BYTES:
        raise DecodeError(f"record of {len(raw)} bytes exceeds {MAX_RECORD_BYTES}", "malformed")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"not JSON: {exc}", "malformed") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a JSON object, got {type(obj).__name__}", "malformed")
    try:
        if "impression_id" in obj:
            return Impression.model_validate(obj)
        if "action_name" in obj:
            return _ubi_event(obj)
        if "user_query" in obj or isinstance(obj.get("ext"), dict):
            return _ubi_query(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise DecodeError(f"invalid {where}: {first['msg']}") from None
    raise DecodeError(
        "unknown record: expected a relmon impression (impression_id), a UBI event "
        "(action_name) or a UBI query (user_query)"
    )
