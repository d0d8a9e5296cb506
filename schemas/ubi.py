"""Input decoding: relmon's own impressions and UBI (User Behavior Insights 1.x) records.

The impressions topic may carry three kinds of JSON objects:

- a relmon :class:`~schemas.models.Impression` (has ``impression_id``);
- a UBI query record (``query_id`` + ``user_query``, top level or under ``ext.ubi``), which tells
  the query text of later UBI events. When it carries ``query_response_hit_ids`` (UBI 1.3.0: the
  ids of everything the engine returned, in order) it is also a whole *result page*: one
  impression per hit, at position = order (the first hit is position 1). Such a page needs
  ``query_id`` and ``timestamp``; its impressions have the ids the UBI impression events of the
  same results would have (``ubi:{query_id}:{ordinal}:{object_id}``, ordinal = index +
  ``RELMON_UBI_POSITION_BASE``), so a stream that carries both is counted once;
- a UBI event with ``action_name`` ``"impression"``: the product is
  ``event_attributes.object.object_id`` at ``event_attributes.position.ordinal``. UBI streams
  number results from 0 (OpenSearch's UBI sample does; the UBI schema sets no minimum), so
  relmon's 1-based position is ``ordinal - base + 1`` with ``base`` 0 by default
  (``RELMON_UBI_POSITION_BASE=1`` for streams that number from 1).

UBI events carry neither product text nor query text: the worker fills both in from the catalogue
and from the UBI query records. Other UBI actions (click, add_to_cart, ...) are accepted and
ignored by scoring.

:func:`decode_record` never raises anything but :class:`~relmon.errors.DecodeError` (kind
``malformed`` or ``invalid``, the message says why and names the field): whatever the bytes, one
record can only become one dead letter. Types are as strict as the published JSON Schemas: no
numbers for date-times, no strings, booleans or fractions for integers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from itertools import accumulate
from typing import Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relmon.errors import DecodeError
from schemas.models import (
    CatalogProduct,
    DateTime,
    Id,
    Impression,
    JsonInt,
    Text,
    hash_id,
    json_type,
)

MAX_RECORD_BYTES = 1_000_000
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a record may have (checked before parsing)."""
UBI_POSITION_BASE = 0
"""Default number of the first UBI result (``event_attributes.position.ordinal``)."""
MAX_POSITION = 10_000

_UBI = ConfigDict(frozen=True, str_strip_whitespace=True)


def ubi_impression_id(query_id: str, ordinal: int, object_id: str) -> str:
    """The id of one UBI result, whether it came as an impression event or as a page hit."""
    return f"ubi:{query_id}:{ordinal}:{object_id}"


def _ubi_impression(
    query_id: str,
    query: str,
    object_id: str,
    ordinal: int,
    position: int,
    event_time: datetime,
    session_hash: str | None,
    locale: str = "en-US",
) -> Impression:
    """The relmon impression of one UBI result, however it arrived (event or page hit).

    Its id is the result's (:func:`ubi_impression_id`), so the impression event and the page
    hit of the same result are one impression.
    """
    return Impression(
        impression_id=ubi_impression_id(query_id, ordinal, object_id),
        query_id=query_id,
        query=query,
        product_id=object_id,
        position=position,
        event_time=event_time,
        session_hash=session_hash,
        locale=locale,
        action="impression",
        source="ubi",
    )


class UbiQuery(BaseModel):
    """A UBI query record: what the user searched for under ``query_id``, maybe with its page."""

    model_config = _UBI

    query_id: Id
    user_query: Text
    client_id: str | None = None
    timestamp: DateTime | None = None
    application: str | None = None
    hit_ids: tuple[Id, ...] = Field(
        default=(), max_length=MAX_POSITION, description="query_response_hit_ids, in order"
    )

    def page(self, base: int = UBI_POSITION_BASE) -> list[PageHit]:
        """The hits of the result page this record carries (none without hit ids).

        They need their product text from the catalogue. ``base`` is the stream's first
        ordinal, so that ids match the stream's UBI impression events.
        """
        if not self.hit_ids:
            return []
        if self.timestamp is None:  # _ubi_query refuses such a page; keep the type honest
            raise ValueError("a UBI result page needs a timestamp")
        session = hash_id(self.client_id) if self.client_id else None
        when = self.timestamp
        return [
            PageHit(
                self.query_id, self.user_query, object_id, index + 1, index + base, when, session
            )
            for index, object_id in enumerate(self.hit_ids)
        ]


@dataclass(frozen=True, slots=True)
class PageHit:
    """One hit of a UBI result page: an impression whose product text the catalogue gives.

    Every field was validated with its page record, and most hits are not sampled, so a hit is
    a plain value; :meth:`impression` builds the relmon impression of a sampled one.
    """

    query_id: str
    query: str
    product_id: str
    position: int
    ordinal: int
    event_time: datetime
    session_hash: str | None

    category = None
    """a page carries no product text: the catalogue's category applies"""
    needs_catalog = True

    @property
    def impression_id(self) -> str:
        """The id the UBI impression event of the same result has."""
        return ubi_impression_id(self.query_id, self.ordinal, self.product_id)

    def impression(self) -> Impression:
        """The relmon impression of this hit (without product text)."""
        return _ubi_impression(
            self.query_id,
            self.query,
            self.product_id,
            self.ordinal,
            self.position,
            self.event_time,
            self.session_hash,
        )

    def enriched(self, product: CatalogProduct) -> Impression:
        """The relmon impression of this hit with the product text of ``product``."""
        return self.impression().enriched(product)


class UbiImpression(BaseModel):
    """A UBI ``impression`` event, before its query text and product text are known."""

    model_config = _UBI

    query_id: Id
    object_id: Id
    ordinal: JsonInt = Field(description="event_attributes.position.ordinal as sent")
    position: int = Field(ge=1, le=MAX_POSITION, description="relmon's 1-based position")
    timestamp: DateTime
    session_hash: str | None = None
    locale: str = Field(default="en-US", max_length=32)

    @property
    def impression_id(self) -> str:
        """A deterministic id: the same event always maps to the same impression."""
        return ubi_impression_id(self.query_id, self.ordinal, self.object_id)

    def with_query(self, user_query: str) -> Impression:
        """Return the relmon impression once the query text is known."""
        return _ubi_impression(
            self.query_id,
            user_query,
            self.object_id,
            self.ordinal,
            self.position,
            self.timestamp,
            self.session_hash,
            self.locale,
        )


class UbiOtherEvent(BaseModel):
    """A UBI event that is not an impression (click, purchase, ...): not scored."""

    model_config = ConfigDict(frozen=True)

    action_name: str


InputRecord = Impression | UbiQuery | UbiImpression | UbiOtherEvent

# --- Parsing: bytes to one JSON object ---------------------------------------------------------

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [1 if chr(b) in "[{" else -1 for b in range(256)]
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def json_depth_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects in ``raw`` nest deeper than ``limit``.

    Brackets in strings do not count. Linear and in C: a count first, a bracket scan only when
    that is not enough.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
"""One decoder for every record: ``json.loads`` with an argument builds a new one per call"""


def _malformed(reason: str) -> NoReturn:
    raise DecodeError(reason, "malformed")


def parse_object(raw: bytes | None) -> dict[str, Any]:
    """Parse one record value into a JSON object, or raise a ``malformed`` DecodeError."""
    if raw is None:
        _malformed("empty record (null value)")
    if len(raw) > MAX_RECORD_BYTES:
        _malformed(f"record of {len(raw)} bytes exceeds {MAX_RECORD_BYTES}")
    if json_depth_exceeds(raw):
        _malformed(f"not JSON relmon accepts: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _malformed(f"not JSON: not UTF-8 ({exc.reason} at byte {exc.start})")
    if text.startswith("\ufeff"):  # as json.loads refuses it
        _malformed("not JSON: it starts with a UTF-8 byte order mark")
    try:
        obj = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, >4300-digit integers
        _malformed(f"not JSON: {exc}")
    if not isinstance(obj, dict):
        _malformed(f"expected a JSON object, got {json_type(obj)}")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            _malformed("not JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)")
    return obj


# --- Validation: one JSON object to one input record --------------------------------------------


def _invalid(reason: str) -> NoReturn:
    raise DecodeError(reason, "invalid")


def _ordinal(position: object, base: int) -> int:
    if not isinstance(position, dict) or "ordinal" not in position:
        _invalid("UBI impression: event_attributes.position.ordinal missing")
    ordinal = position["ordinal"]
    if isinstance(ordinal, bool) or not isinstance(ordinal, int):
        _invalid(
            "UBI impression: event_attributes.position.ordinal must be an integer, "
            f"not {json_type(ordinal)}"
        )
    if not base <= ordinal < base + MAX_POSITION:
        _invalid(
            f"UBI impression: event_attributes.position.ordinal must be between {base} and "
            f"{base + MAX_POSITION - 1} (RELMON_UBI_POSITION_BASE={base})"
        )
    return ordinal


def _object_id(target: object) -> str:
    if not isinstance(target, dict) or "object_id" not in target:
        _invalid("UBI impression: event_attributes.object.object_id missing")
    object_id = target["object_id"]
    if isinstance(object_id, bool) or not isinstance(object_id, str | int):
        _invalid(
            "UBI impression: event_attributes.object.object_id must be a string or an integer, "
            f"not {json_type(object_id)}"
        )
    return str(object_id)


def _optional_string(obj: dict[str, Any], name: str, where: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        _invalid(f"UBI event: {where}{name} must be a string, not {json_type(value)}")
    return value


def _ubi_event(obj: dict[str, Any], base: int) -> UbiImpression | UbiOtherEvent:
    action = obj.get("action_name")
    if not isinstance(action, str):
        _invalid(f"UBI event: action_name must be a string, not {json_type(action)}")
    if action != "impression":
        return UbiOtherEvent(action_name=action)
    attrs = obj.get("event_attributes")
    if not isinstance(attrs, dict):
        _invalid("UBI impression: event_attributes missing")
    ordinal = _ordinal(attrs.get("position"), base)
    object_id = _object_id(attrs.get("object"))
    if obj.get("query_id") is None:
        _invalid("UBI impression: query_id missing")
    session = _optional_string(obj, "session_id", "")
    client = _optional_string(obj, "client_id", "")
    who = session or client
    return UbiImpression.model_validate(
        {
            "query_id": obj["query_id"],
            "object_id": object_id,
            "ordinal": ordinal,
            "position": ordinal - base + 1,
            "timestamp": obj.get("timestamp"),
            "session_hash": hash_id(who) if who else None,
            "locale": _optional_string(attrs, "locale", "event_attributes.") or "en-US",
        }
    )


def _ubi_query(obj: dict[str, Any]) -> UbiQuery:
    ext = obj.get("ext")
    inner = ext.get("ubi", obj) if isinstance(ext, dict) else obj
    if not isinstance(inner, dict):
        _invalid(f"UBI query: ext.ubi must be an object, not {json_type(inner)}")
    fields = ("query_id", "user_query", "client_id", "timestamp", "application")
    values = {k: inner[k] for k in fields if k in inner}
    hits = inner.get("query_response_hit_ids")
    if hits is not None:
        if not isinstance(hits, list):
            _invalid(f"UBI query: query_response_hit_ids must be an array, not {json_type(hits)}")
        for index, hit in enumerate(hits):
            if not isinstance(hit, str):
                _invalid(
                    f"UBI query: query_response_hit_ids[{index}] must be a string, "
                    f"not {json_type(hit)}"
                )
        if hits:
            for needed in ("query_id", "timestamp"):
                if inner.get(needed) is None:
                    _invalid(
                        f"UBI query: {needed} missing (a result page in "
                        "query_response_hit_ids needs it)"
                    )
        values["hit_ids"] = hits
    return UbiQuery.model_validate(values)


def _validation_reason(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "record"
    where = where.replace("hit_ids", "query_response_hit_ids")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid {where}: {first['msg'].removeprefix('Value error, ')}{more}"


def _validate(obj: dict[str, Any], base: int) -> InputRecord:
    try:
        if "impression_id" in obj:
            return Impression.model_validate(obj)
        if "action_name" in obj:
            return _ubi_event(obj, base)
        if "user_query" in obj or isinstance(obj.get("ext"), dict):
            return _ubi_query(obj)
    except ValidationError as exc:
        _invalid(_validation_reason(exc))
    _invalid(
        "unknown record: expected a relmon impression (impression_id), a UBI event "
        "(action_name) or a UBI query (user_query)"
    )


def decode_record(raw: bytes | None, *, ubi_position_base: int = UBI_POSITION_BASE) -> InputRecord:
    """Decode one record of the impressions topic, or raise :class:`DecodeError` saying why.

    ``ubi_position_base`` is the ordinal of a UBI stream's first result (0 or 1). Any failure,
    expected or not, is a DecodeError: ``malformed`` while parsing, ``invalid`` after.
    """
    try:
        obj = parse_object(raw)
    except DecodeError:
        raise
    except Exception as exc:  # one record must never break its batch
        _malformed(f"cannot parse record: {type(exc).__name__}: {exc}")
    try:
        return _validate(obj, ubi_position_base)
    except DecodeError:
        raise
    except Exception as exc:
        _invalid(f"cannot validate record: {type(exc).__name__}: {exc}")
