"""Property-based fuzzing of the decoder and the whole processor (in-package fakes).

Whatever bytes come in (random bytes, deep nesting, huge integers, huge strings, odd encodings,
valid records mutated), the decoder raises nothing but DecodeError and the processor stays up:
every record is stored, left out by sampling, ignored by design (UBI queries, other UBI events)
or dead-lettered with its reason and original bytes (a prefix + size + sha256 when too large),
and every offset is acked. Deterministic (derandomize) and fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relmon.errors import DecodeError
from relmon.settings import PlannerConfig, SamplingRates
from schemas.models import CatalogProduct, Impression
from schemas.ubi import MAX_RECORD_BYTES, UbiImpression, UbiOtherEvent, UbiQuery, decode_record
from streams import RawRecord, Routing
from streams.catalog import Catalog
from streams.metrics import Metrics
from streams.plans import Planner
from streams.sampling import sampled
from streams.testing import MemoryPorts, memory_processor

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
RATE = 0.5
LETTER_MAX = 64 * 1024  # small, so that truncation happens often
PRODUCTS = ["p1", "p2", "missing-1"]
QUERY_IDS = ["u0", "u1", "u2", "u3", " u3 "]  # u0, u1 are not sampled at RATE

# --- valid records --------------------------------------------------------------------------------

times = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30))]),
).map(lambda t: t.isoformat().replace("+00:00", "Z"))
words = st.from_regex(r"[a-zé]{1,6}( [a-z]{1,6}){0,2}", fullmatch=True)

relmon_impressions = st.fixed_dictionaries(
    {
        "impression_id": st.text(min_size=1, max_size=6),
        "query_id": st.sampled_from(QUERY_IDS),
        "query": words,
        "product_id": st.sampled_from(PRODUCTS),
        "position": st.integers(1, 12),
        "event_time": times,
    },
    optional={
        "title": words,
        "category": words,
        "attributes": st.dictionaries(words, words, max_size=2),
        "locale": st.sampled_from(["en-US", "de-DE"]),
        "schema_version": st.just(1),
        "session_hash": words,
    },
)
ubi_impressions = st.builds(
    lambda qid, oid, ordinal, ts, extra: {
        "action_name": "impression",
        "query_id": qid,
        "timestamp": ts,
        "event_attributes": {
            "object": {"object_id": oid, "object_id_field": "asin"},
            "position": {"ordinal": ordinal},
        },
        **extra,
    },
    st.sampled_from(QUERY_IDS),
    st.sampled_from([*PRODUCTS, 7]),
    st.integers(0, 12),
    times,
    st.fixed_dictionaries({}, optional={"session_id": words, "client_id": words}),
)
ubi_queries = st.builds(
    lambda qid, text, ts, nested: (
        {"ext": {"ubi": {"query_id": qid, "user_query": text, "timestamp": ts}}}
        if nested
        else {"query_id": qid, "user_query": text, "timestamp": ts}
    ),
    st.sampled_from(QUERY_IDS),
    words,
    times,
    st.booleans(),
)
other_events = st.builds(
    lambda action, ts: {"action_name": action, "timestamp": ts, "event_attributes": {}},
    st.sampled_from(["click", "page_exit", "add_to_cart"]),
    times,
)
valid = st.one_of(relmon_impressions, ubi_impressions, ubi_queries, other_events)

# --- hostile and mutated records ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


def _paths(obj, prefix=()):
    for key, value in obj.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


@st.composite
def mutated(draw):
    """A valid record with one field dropped, replaced by any JSON value, or one added."""
    record = json.loads(json.dumps(draw(valid)))
    path = draw(st.sampled_from(list(_paths(record))))
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    op = draw(st.sampled_from(["drop", "replace", "add"]))
    if op == "drop":
        del parent[path[-1]]
    elif op == "replace":
        parent[path[-1]] = draw(json_values)
    else:
        parent[draw(st.text(max_size=5))] = draw(json_values)
    return json.dumps(record).encode()


@st.composite
def byte_mutated(draw):
    """A valid record's bytes with a few bytes changed, inserted or deleted."""
    raw = bytearray(json.dumps(draw(valid)).encode())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set":
            raw[i] = draw(st.integers(0, 255))
        elif op == "insert":
            raw.insert(i, draw(st.integers(0, 255)))
        elif len(raw) > 1:
            del raw[i]
    return bytes(raw)


def _nested(depth, kind):
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"impression_id": ' + b"[" * depth  # unclosed, behind a valid start


deep = st.builds(_nested, st.integers(60, 20_000), st.sampled_from(["array", "object", "open"]))
huge_ints = st.builds(
    lambda digits, field: b'{"impression_id": "i", "%s": %s}' % (field, b"9" * digits),
    st.integers(4_000, 5_000),
    st.sampled_from([b"position", b"query_id"]),
)
huge_strings = st.builds(
    lambda size, record: json.dumps({**record, "title": "t" * size}).encode(),
    st.sampled_from([70_000, 400_000, MAX_RECORD_BYTES + 1]),
    relmon_impressions,
)
odd_encodings = st.builds(
    lambda record, encoding: json.dumps(record, ensure_ascii=False).encode(encoding, "replace"),
    valid,
    st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "utf-8-sig", "cp1252"]),
)
hostile = st.one_of(
    huge_strings,
    st.none(),
    st.binary(max_size=200),
    deep,
    huge_ints,
    huge_strings,
    odd_encodings,
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"1e999", b'{"a": NaN}', b'{"\\ud800": 1}']),
)
valid_bytes = valid.map(lambda r: json.dumps(r).encode())
record_values = st.one_of(valid_bytes, valid_bytes, mutated(), byte_mutated(), hostile)

# --- the decoder ----------------------------------------------------------------------------------


@settings(FUZZ, max_examples=400)
@given(raw=record_values, base=st.sampled_from([0, 1]))
def test_decoder_raises_only_decode_errors_with_a_reason(raw, base):
    try:
        decoded = decode_record(raw, ubi_position_base=base)
    except DecodeError as exc:
        assert exc.kind in ("malformed", "invalid") and str(exc)
        return
    assert isinstance(decoded, Impression | UbiImpression | UbiQuery | UbiOtherEvent)
    if isinstance(decoded, Impression):  # what relmon accepted, it writes back the same
        assert decode_record(decoded.to_bytes()) == decoded
        assert 1 <= decoded.position <= 10_000
    if isinstance(decoded, UbiImpression):
        assert decoded.position == decoded.ordinal - base + 1 >= 1


# --- the whole processor --------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _processor(base):
    clock, ports = Clock(), MemoryPorts()
    catalog = Catalog(
        [
            CatalogProduct(product_id="p1", title="Blue Velvet Sofa", category="Sofas"),
            CatalogProduct(product_id="p2", title="Oak Table"),
            CatalogProduct(product_id="7", title="Brass Lamp"),
        ]
    )
    proc = memory_processor(
        ports=ports,
        catalog=catalog,
        planner=Planner(PlannerConfig(checkpoint_interval_s=0), clock=clock),
        rates=SamplingRates.uniform_at(RATE),
        routing=Routing(0.5),
        model_version="fake-overlap-1",
        metrics=Metrics(),
        retry_s=5.0,
        clock=clock,
        backoff_max_s=0.01,
        ubi_position_base=base,
        dead_letter_max_bytes=LETTER_MAX,
    )
    return proc, ports, clock


def _records(batch):
    offsets = [0, 0]
    out = []
    for i, (value, key) in enumerate(batch):
        partition = i % 2
        out.append(RawRecord("relmon.impressions", partition, offsets[partition], key, value))
        offsets[partition] += 1
    return out


def _check_letter(letter, record):
    value = record.value or b""
    assert letter.reason and letter.topic == record.topic
    assert len(letter.to_bytes()) <= LETTER_MAX
    assert letter.value_size == len(value)
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    if letter.truncated:
        assert value.startswith(letter.original) and len(value) > LETTER_MAX // 2
    else:
        assert letter.original == value


def _check_fate(record, letter, ports, base):
    """The one thing that happened to ``record``, checked against what it decodes to alone."""
    try:
        decoded = decode_record(record.value, ubi_position_base=base)
    except DecodeError as exc:
        assert letter is not None and letter.kind == exc.kind
        assert letter.reason == str(exc)[:2000]
        event(f"dead letter: {exc.kind}{' (truncated)' if letter.truncated else ''}")
        return
    if isinstance(decoded, UbiQuery | UbiOtherEvent):
        assert letter is None  # remembered / ignored by design
        event(f"ignored by design: {type(decoded).__name__}")
        return
    if letter is not None:
        assert letter.kind in ("unknown_product", "unknown_query")
        event(f"dead letter: {letter.kind}")
    elif decoded.impression_id in ports.rows:
        event("stored")
    else:
        assert not sampled(decoded.query_id, RATE)
        event("not sampled")


@settings(FUZZ, max_examples=150)
@given(
    batch=st.lists(
        st.tuples(record_values, st.none() | st.binary(max_size=8)), min_size=1, max_size=10
    ),
    base=st.sampled_from([0, 1]),
)
def test_processor_stays_up_and_accounts_for_every_record(batch, base):
    records = _records(batch)
    proc, ports, clock = _processor(base)

    async def go():
        await proc.process(records)
        clock.t += 10  # past retry_s: what still waits for the catalogue is dead-lettered
        await proc.retry_pending()

    asyncio.run(asyncio.wait_for(go(), 60))
    assert proc.pending == 0
    acked = sorted((r.partition, r.offset) for r in ports.acked)
    assert acked == sorted((r.partition, r.offset) for r in records)  # each once, none missing
    letters = {(d.partition, d.offset): d for d in ports.dead_letters}
    assert len(letters) == len(ports.dead_letters)  # at most one letter per record
    for record in records:
        letter = letters.get((record.partition, record.offset))
        if letter is not None:
            _check_letter(letter, record)
        _check_fate(record, letter, ports, base)
