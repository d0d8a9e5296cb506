import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

import schemas
from relmon.alerts.detect import SEGMENT_DIMENSIONS
from relmon.alerts.lifecycle import Alert, AlertEvent
from relmon.errors import DecodeError
from relmon.stats import RateEstimate
from relmon.teacher.verdict import Verdict
from schemas import AlertRecord, Impression, UbiImpression, UbiOtherEvent, UbiQuery, decode_record
from schemas.alert import AlertDimension
from schemas.jsonschema import SHIPPED_DIR, generate, render
from schemas.models import CatalogProduct, DeadLetter, ScoredImpression
from streams.route import review_request

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
            "AlertRecord",
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
    # UBI ordinals count from 0 by default: ordinal 3 is relmon's 1-based position 4
    assert (decoded.query_id, decoded.object_id, decoded.position) == ("q-123", "SKU-42", 4)
    assert decoded.impression_id == "ubi:q-123:3:SKU-42"
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
                    event_attributes={"object": {"object_id": "x"}, "position": {"ordinal": -1}}
                )
            ).encode(),
            "invalid",
            "event_attributes.position.ordinal",
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
    review = review_request(row)
    assert review.reason == "below_threshold" and review.priority == pytest.approx(2.3)
    audit = review_request(row, "audit", review_probability=0.02)
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


# --- issue 11: nothing lost, nothing hangs -------------------------------------------------------


def native_impression(**over):
    record = {
        "impression_id": "i",
        "query_id": "q",
        "query": "velvet sofa",
        "product_id": "p",
        "position": 2,
        "event_time": "2024-05-16T12:34:56Z",
    }
    record.update(over)
    return record


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "nested deeper than 64"),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "nested deeper than 64"),
        (b"[" * 10_000, "nested deeper than 64"),
        (b'{"impression_id": ' + b"7" * 4_301 + b"}", "4300 digits"),
        (b'{"impression_id": "i", "position": NaN}', "NaN is not a JSON number"),
        (b'{"impression_id": "i", "position": -Infinity}', "Infinity is not a JSON number"),
        (b'{"impression_id": "\\ud800"}', "lone UTF-16 surrogate"),
        ('{"impression_id": "i"}'.encode("utf-16"), "not UTF-8"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
    ],
)
def test_hostile_json_is_malformed_not_a_crash(raw, fragment):
    with pytest.raises(DecodeError) as info:
        decode_record(raw)
    assert info.value.kind == "malformed"
    assert fragment in str(info.value)


def test_brackets_inside_strings_do_not_count_as_nesting():
    event = ubi_impression(message="[" * 5_000 + "{" * 5_000)
    assert isinstance(decode_record(json.dumps(event).encode()), UbiImpression)
    deep = {"a": [[[[{"b": [1]}]]]]}
    assert not schemas.ubi.json_depth_exceeds(json.dumps(deep).encode(), 7)
    assert schemas.ubi.json_depth_exceeds(json.dumps(deep).encode(), 6)


@pytest.mark.parametrize(
    ("target", "record", "kind"),
    [
        ("schemas.ubi._DECODER.decode", native_impression(), "malformed"),
        ("schemas.ubi.Impression.model_validate", native_impression(), "invalid"),
        ("schemas.ubi.hash_id", ubi_impression(), "invalid"),
    ],
)
def test_any_failure_while_decoding_is_a_decode_error(monkeypatch, target, record, kind):
    def boom(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(target, boom)
    with pytest.raises(DecodeError, match="RuntimeError: unexpected") as info:
        decode_record(json.dumps(record).encode())
    assert info.value.kind == kind


def opensearch_impression(ordinal):
    """An impression event shaped like OpenSearch's UBI sample (ESCI-derived: ASINs, from 0)."""
    event = json.loads((UBI / "event-opensearch.json").read_text())
    event["action_name"] = "impression"
    event["event_attributes"] = {
        "object": {"object_id": "B07QXV6N1B", "object_id_field": "asin"},
        "position": {"ordinal": ordinal},
    }
    jsonschema.validate(event, EVENT_SCHEMA)
    return json.dumps(event).encode()


def test_ubi_ordinals_count_from_zero_by_default():
    first = decode_record(opensearch_impression(0))
    assert isinstance(first, UbiImpression)
    assert (first.ordinal, first.position, first.object_id) == (0, 1, "B07QXV6N1B")
    assert first.with_query("usb c cable").position == 1
    assert decode_record(opensearch_impression(9)).position == 10


def test_ubi_position_base_one_for_streams_numbering_from_one():
    assert decode_record(opensearch_impression(1), ubi_position_base=1).position == 1
    with pytest.raises(DecodeError) as info:
        decode_record(opensearch_impression(0), ubi_position_base=1)
    assert info.value.kind == "invalid"
    assert "event_attributes.position.ordinal" in str(info.value)
    assert "RELMON_UBI_POSITION_BASE=1" in str(info.value)
    # the id names the event as sent, whatever the base: replays stay idempotent
    zero = decode_record(opensearch_impression(1))
    one = decode_record(opensearch_impression(1), ubi_position_base=1)
    assert zero.impression_id == one.impression_id


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_time": 123}, "event_time"),
        ({"event_time": 1714564800.5}, "event_time"),
        ({"event_time": "1714564800"}, "event_time"),
        ({"event_time": "2024-05-16"}, "event_time"),
        ({"event_time": True}, "event_time"),
        ({"event_time": "9999-12-31T23:59:59-05:00"}, "event_time"),
        ({"position": "3"}, "position"),
        ({"position": 3.0}, "position"),
        ({"position": 2.5}, "position"),
        ({"position": True}, "position"),
        ({"schema_version": True}, "schema_version"),
        ({"query_id": 5}, "query_id"),
        ({"attributes": {"size": 3}}, "attributes.size"),
        ({"locale": None}, "locale"),
    ],
)
def test_native_impression_types_are_as_strict_as_the_schema(change, field):
    record = native_impression(**change)
    with pytest.raises(DecodeError) as info:
        decode_record(json.dumps(record).encode())
    assert info.value.kind == "invalid"
    assert str(info.value).startswith(f"invalid {field}:")
    # jsonschema does not assert formats, and JSON Schema counts 3.0 as an integer: relmon
    # refuses both (a producer that sends 3.0 for a rank has a bug worth seeing)
    if not isinstance(change.get("event_time"), str) and change != {"position": 3.0}:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(record, generate()["impression"])


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"timestamp": 1714564800}, "timestamp"),
        ({"timestamp": "1714564800"}, "timestamp"),
        ({"query_id": 42}, "query_id"),
        ({"session_id": 42}, "session_id"),
        ({"client_id": ["c"]}, "client_id"),
        (
            {"event_attributes": {"object": {"object_id": True}, "position": {"ordinal": 1}}},
            "object_id",
        ),
        (
            {"event_attributes": {"object": {"object_id": None}, "position": {"ordinal": 1}}},
            "object_id",
        ),
        (
            {"event_attributes": {"object": {"object_id": "x"}, "position": {"ordinal": "1"}}},
            "ordinal",
        ),
        (
            {"event_attributes": {"object": {"object_id": "x"}, "position": {"ordinal": 1.0}}},
            "ordinal",
        ),
        (
            {"event_attributes": {"object": {"object_id": "x"}, "position": {"ordinal": True}}},
            "ordinal",
        ),
        ({"event_attributes": {"object": "x", "position": {"ordinal": 1}}}, "object_id"),
    ],
)
def test_ubi_impression_types_are_as_strict_as_the_ubi_schema(change, fragment):
    event = ubi_impression(**change)
    with pytest.raises(DecodeError) as info:
        decode_record(json.dumps(event).encode())
    assert info.value.kind == "invalid" and fragment in str(info.value)
    ordinal = change.get("event_attributes", {}).get("position", {}).get("ordinal")
    if not isinstance(change.get("timestamp"), str) and not isinstance(ordinal, float):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(event, EVENT_SCHEMA)


def test_ubi_query_timestamp_must_be_a_date_time_string():
    with pytest.raises(DecodeError, match="invalid timestamp"):
        decode_record(json.dumps({"query_id": "q", "user_query": "sofa", "timestamp": 5}).encode())


def test_ubi_values_relmon_would_refuse_later_are_refused_when_decoded():
    # these used to pass decoding and crash the batch when the impression was built
    for event in (
        ubi_impression(
            event_attributes={**ubi_impression()["event_attributes"], "locale": "x" * 40}
        ),
        ubi_impression(query_id="   "),
    ):
        with pytest.raises(DecodeError):
            decode_record(json.dumps(event).encode())
    with pytest.raises(DecodeError, match="user_query"):
        decode_record(json.dumps({"query_id": "q", "user_query": "   "}).encode())


def test_dead_letter_of_a_large_record_is_truncated_with_size_and_sha256():
    import hashlib

    value = bytes(range(256)) * 3_000  # 768,000 bytes: ~1 MB once base64
    key = b"k" * 5_000
    letter = DeadLetter.of(
        kind="malformed",
        reason="not JSON",
        topic="t",
        partition=1,
        offset=7,
        value=value,
        key=key,
        max_bytes=100_000,
    )
    size = len(letter.to_bytes())
    assert 99_000 < size <= 100_000
    assert letter.truncated and value.startswith(letter.original)
    assert letter.value_size == len(value) and letter.key_size == len(key)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    parsed = DeadLetter.model_validate_json(letter.to_bytes())
    assert parsed == letter
    jsonschema.validate(json.loads(letter.to_bytes()), generate()["dead_letter"])
    whole = DeadLetter.of(
        kind="malformed", reason="r", topic="t", partition=0, offset=0, value=value[:1000]
    )
    assert not whole.truncated and whole.original == value[:1000] and whole.value_size == 1000
    stripped = letter.without_original("refused")
    assert stripped.original == b"" and stripped.truncated and "refused" in stripped.reason
    assert stripped.value_sha256 == letter.value_sha256 and stripped.value_size == len(value)


def test_default_dead_letter_limit_keeps_letters_under_a_megabyte():
    letter = DeadLetter.of(
        kind="malformed", reason="r", topic="t", partition=0, offset=0, value=b"x" * 1_000_000
    )
    assert letter.truncated and len(letter.to_bytes()) <= 512 * 1024


# --- issue 13: the alert record on relmon.alerts --------------------------------------------------

ALERT_SCHEMA = json.loads((SHIPPED_DIR / "alert.schema.json").read_text())
NO_SAMPLE = RateEstimate.from_sums(0, 0, 0.0, 0.0, 0.0)


def an_alert(**over):
    start = datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    alert = Alert(
        alert_id="a-0123456789abcdef",
        status="firing",
        dimension="category",
        value="Area Rugs",
        started_at=start,
        last_window=start,
        window_s=300,
        observed=RateEstimate.from_sums(60, 30, 60.0, 30.0, 60.0),
        baseline=RateEstimate(2000, 400, 0.2, 1800.0, 0.18, 0.22),
        peak_rate=0.5,
        z=6.0123456,
        p_value=1e-9,
        detectors=("z-test-2w", "cusum"),
        top_queries=({"query": "wool rug", "sampled": 60, "bad": 30, "rate": 0.5},),
        examples=(
            {
                "query": "wool rug",
                "title": "Jute Doormat",
                "category": "Area Rugs",
                "position": 2,
                "score": 0.1234,
                "threshold": 0.5,
                "model_version": "m1",
            },
        ),
    )
    return replace(alert, **over)


def published(event):
    """The bytes the Kafka sink sends, parsed strictly: NaN or Infinity would raise."""
    raw = event.to_record().to_bytes()

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(raw, parse_constant=refuse)


def test_published_alert_records_validate_against_the_shipped_schema():
    fired = published(AlertEvent("fired", an_alert()))
    jsonschema.validate(fired, ALERT_SCHEMA)
    assert fired["schema_version"] == 1 and fired["event"] == "fired"
    # the formats consumers have read from the start: isoformat times, rounded numbers, lists
    assert fired["started_at"] == "2026-01-01T10:05:00+00:00" and fired["resolved_at"] is None
    assert fired["observed"] == {
        "rate": 0.5,
        "ci_low": 0.37735,
        "ci_high": 0.62265,
        "sampled": 60,
        "bad": 30,
        "n_eff": 60.0,
    }
    assert fired["z"] == 6.012 and fired["p_value"] == 1e-9
    assert fired["detectors"] == ["z-test-2w", "cusum"]
    assert fired["top_queries"][0]["query"] == "wool rug"
    assert fired["examples"][0]["title"] == "Jute Doormat"
    assert datetime.fromisoformat(fired["last_window"]) == datetime(2026, 1, 1, 10, 5, tzinfo=UTC)

    # a resolved alert whose last window had no sample: NaN rate, NaN z and peak -> null
    end = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    resolved = published(
        AlertEvent(
            "resolved",
            an_alert(
                status="resolved",
                resolved_at=end,
                observed=NO_SAMPLE,
                peak_rate=float("nan"),
                z=float("inf"),
                top_queries=(),
                examples=(),
            ),
        )
    )
    jsonschema.validate(resolved, ALERT_SCHEMA)
    assert resolved["event"] == "resolved" and resolved["status"] == "resolved"
    assert resolved["resolved_at"] == "2026-01-01T11:00:00+00:00"
    assert resolved["observed"]["rate"] is None and resolved["observed"]["sampled"] == 0
    assert resolved["peak_rate"] is None and resolved["z"] is None
    assert resolved["top_queries"] == [] and resolved["examples"] == []


def test_alert_record_round_trips_and_the_schema_refuses_what_it_should():
    gone = an_alert(
        status="resolved", resolved_at=datetime(2026, 1, 1, 11, tzinfo=UTC), observed=NO_SAMPLE
    )
    record = AlertEvent("resolved", gone).to_record()
    assert AlertRecord.model_validate_json(record.to_bytes()) == record
    good = json.loads(record.to_bytes())
    for bad in (
        {**good, "event": "opened"},
        {**good, "dimension": "brand"},
        {**good, "observed": {**good["observed"], "rate": "NaN"}},
        {**good, "observed": {**good["observed"], "rate": 1.5}},
        {**good, "surprise": 1},
        {k: v for k, v in good.items() if k != "alert_id"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, ALERT_SCHEMA)


def test_alert_to_dict_is_the_record_without_its_event():
    alert = an_alert(observed=NO_SAMPLE)
    record = json.loads(alert.to_record("fired").to_bytes())
    assert {"event": "fired", **alert.to_dict()} == record
    assert json.loads(alert.to_json()) == alert.to_dict()


def test_alert_dimensions_are_the_detectors_segments():
    from typing import get_args

    assert set(get_args(AlertDimension)) == {"overall", *SEGMENT_DIMENSIONS}
