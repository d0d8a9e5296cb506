import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

import schemas
from relmon.errors import DecodeError
from relmon.teacher.verdict import Verdict
from schemas import Impression, UbiImpression, UbiOtherEvent, UbiQuery, decode_record
from schemas.jsonschema import SHIPPED_DIR, generate, render
from schemas.models import CatalogProduct, DeadLetter, ReviewRequest, ScoredImpression

UBI = Path(schemas.__file__).parent / "ubi"


def _open_enums(node):
    """UBI 1.3.0 writes "known value or any string" as oneOf[enum, string]: a known value
    matches both branches, so oneOf rejects every documented action_name. Read it as anyOf."""
    if isinstance(node, dict):
        branches = node.get("oneOf")
        if isinstance(branches, list) and any("enum" in b for b in branches):
            node = {("anyOf" if k == "oneOf" else k): v for k, v in node.items()}
        return {k: _open_enums(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_open_enums(v) for v in node]
    return node


RAW_EVENT_SCHEMA = json.loads((UBI / "event.schema.json").read_text())
EVENT_SCHEMA = _open_enums(RAW_EVENT_SCHEMA)
QUERY_SCHEMA = json.loads((UBI / "query.request.schema.json").read_text())


def ubi_impression(**over):
    event = {
        "action_name": "impression",
        "query_id": "q-123",
        "client_id": "client-1",
        "session_id": "s-9",
        "timestamp": "2024-05-16T12:34:56.789Z",
        "event_attributes": {
            "object": {"object_id": "SKU-42", "object_id_type": "product"},
            "position": {"ordinal": 3},
        },
    }
    event.update(over)
    return event


def test_exported_names():
    assert sorted(schemas.__all__) == sorted(
        [
            "CatalogProduct",
            "DeadLetter",
            "Impression",
            "InputRecord",
            "ReviewRequest",
            "ScoredImpression",
            "UbiImpression",
            "UbiOtherEvent",
            "UbiQuery",
            "decode_record",
        ]
    )


def test_shipped_json_schemas_match_models():
    for name, schema in generate().items():
        shipped = (SHIPPED_DIR / f"{name}.schema.json").read_text()
        assert shipped == render(schema), f"run `relmon schemas export`: {name} is stale"


def test_native_impression_round_trip_and_schema():
    imp = Impression(
        impression_id="i1",
        query_id="q1",
        query="velvet sofa",
        product_id="p1",
        title="Blue Velvet Sofa",
        position=1,
        event_time=datetime(2024, 1, 1, tzinfo=UTC),
    )
    decoded = decode_record(imp.to_bytes())
    assert decoded == imp
    jsonschema.validate(json.loads(imp.to_bytes()), generate()["impression"])


def test_naive_event_time_is_utc():
    raw = json.dumps(
        {
            "impression_id": "i",
            "query_id": "q",
            "query": "x",
            "product_id": "p",
            "position": 2,
            "event_time": "2024-01-01T10:00:00",
        }
    ).encode()
    decoded = decode_record(raw)
    assert isinstance(decoded, Impression)
    assert decoded.event_time.tzinfo is not None
    assert decoded.event_time.hour == 10


def test_ubi_schema_quirk_is_real():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(ubi_impression(), RAW_EVENT_SCHEMA)


def test_ubi_impression_valid_against_ubi_schema_and_decoded():
    event = ubi_impression()
    jsonschema.validate(event, EVENT_SCHEMA)
    decoded = decode_record(json.dumps(event).encode())
    assert isinstance(decoded, UbiImpression)
    assert (decoded.query_id, decoded.object_id, decoded.position) == ("q-123", "SKU-42", 3)
    assert decoded.session_hash and "s-9" not in decoded.session_hash
    imp = decoded.with_query("toner")
    assert imp.needs_catalog and imp.source == "ubi" and imp.query == "toner"
    assert imp.impression_id == decode_record(json.dumps(event).encode()).impression_id


def test_integer_object_id_is_accepted():
    event = ubi_impression(
        event_attributes={"object": {"object_id": 123}, "position": {"ordinal": 1}}
    )
    jsonschema.validate(event, EVENT_SCHEMA)
    assert decode_record(json.dumps(event).encode()).object_id == "123"


def test_ubi_query_records_top_level_and_ext():
    sample = json.loads((UBI / "query-opensearch.json").read_text())
    jsonschema.validate(sample["ext"]["ubi"], QUERY_SCHEMA)
    decoded = decode_record(json.dumps(sample).encode())
    assert isinstance(decoded, UbiQuery)
    assert decoded.user_query == "Toner"
    flat = {"query_id": "q-1", "user_query": "red sofa", "timestamp": "2024-01-01T00:00:00Z"}
    jsonschema.validate(flat, QUERY_SCHEMA)
    assert decode_record(json.dumps(flat).encode()) == UbiQuery(
        query_id="q-1", user_query="red sofa", timestamp=datetime(2024, 1, 1, tzinfo=UTC)
    )


def test_other_ubi_events_are_recognised():
    sample = (UBI / "event-opensearch.json").read_bytes()
    assert decode_record(sample) == UbiOtherEvent(action_name="page_exit")


@pytest.mark.parametrize(
    ("raw", "kind", "fragment"),
    [
        (b"{not json", "malformed", "not JSON"),
        (b"\xff\xfe", "malformed", "not JSON"),
        (None, "malformed", "empty"),
        (b"[1,2]", "malformed", "JSON object"),
        (b'{"hello": 1}', "invalid", "unknown record"),
        (
            json.dumps(ubi_impression(event_attributes={"position": {"ordinal": 1}})).encode(),
            "invalid",
            "object_id",
        ),
        (
            json.dumps(
                ubi_impression(
                    event_attributes={"object": {"object_id": "x"}, "position": {"ordinal": 0}}
                )
            ).encode(),
            "invalid",
            "position",
        ),
        (
            b'{"impression_id": "i", "query_id": "q", "query": "", "product_id": "p",'
            b' "position": 1, "event_time": "2024-01-01T00:00:00Z"}',
            "invalid",
            "query",
        ),
        (
            b'{"impression_id": "i", "query_id": "q", "query": "x", "product_id": "p",'
            b' "position": 1, "event_time": "yesterday"}',
            "invalid",
            "event_time",
        ),
    ],
)
def test_bad_records_raise_decode_error_with_reason(raw, kind, fragment):
    with pytest.raises(DecodeError) as info:
        decode_record(raw)
    assert info.value.kind == kind
    assert fragment in str(info.value)


def test_scored_review_and_dead_letter():
    imp = Impression(
        impression_id="i1",
        query_id="q1",
        query="lamp",
        product_id="p1",
        position=2,
        event_time=datetime(2024, 1, 1, tzinfo=UTC),
    ).enriched(CatalogProduct(product_id="p1", title="Brass Floor Lamp", category="Lamps"))
    row = ScoredImpression.of(
        imp,
        score=0.2,
        threshold=0.5,
        model_version="m1",
        sample_rate=0.25,
        scored_at=datetime.now(UTC),
    )
    assert row.is_bad and row.sample_weight == 4.0 and row.category == "Lamps"
    review = ReviewRequest.of(row)
    assert review.reason == "below_threshold" and review.priority == pytest.approx(2.3)
    audit = ReviewRequest.of(row, "audit", review_probability=0.02)
    assert audit.review_weight == pytest.approx(50) and audit.priority < review.priority
    jsonschema.validate(json.loads(review.to_bytes()), generate()["review_request"])
    # the labels topic's record (teacher or person) against the shipped verdict schema
    verdict_schema = json.loads((SHIPPED_DIR / "verdict.schema.json").read_text())
    verdict = Verdict.of(review, judge="human", judge_id="ana", grade="Irrelevant")
    label = json.loads(verdict.to_bytes())
    jsonschema.validate(label, verdict_schema)
    assert label["is_bad"] and label["student_bad"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**label, "grade": "Bad"}, verdict_schema)
    letter = DeadLetter.of(
        kind="malformed", reason="bad", topic="t", partition=1, offset=7, value=b"\x00\xffraw"
    )
    assert DeadLetter.model_validate_json(letter.to_bytes()).original == b"\x00\xffraw"


def test_scoring_requires_enrichment():
    imp = Impression(
        impression_id="i",
        query_id="q",
        query="x",
        product_id="p",
        position=1,
        event_time=datetime.now(UTC),
    )
    with pytest.raises(ValueError, match="enriched"):
        ScoredImpression.of(
            imp,
            score=0.1,
            threshold=0.5,
            model_version="m",
            sample_rate=1.0,
            scored_at=datetime.now(UTC),
        )
