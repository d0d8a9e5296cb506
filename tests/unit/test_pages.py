"""Result pages: UBI query records whose ``query_response_hit_ids`` list a whole page."""

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from relmon.errors import DecodeError
from relmon.settings import BudgetConfig, PlannerConfig, SamplingRates
from schemas.models import CatalogProduct, float32
from schemas.ubi import PageHit, UbiQuery, decode_record
from streams import EventTimeWindow, RawRecord, Routing
from streams.budget import BudgetController
from streams.catalog import Catalog
from streams.enrich import catalog_text, impression_text
from streams.metrics import Metrics
from streams.plans import Planner
from streams.testing import MemoryPorts, memory_processor
from streams.vectors import embed_catalog

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PRODUCTS = {
    "p1": "Blue Velvet Sofa",
    "p2": "Oak Dining Table",
    "p3": "Grey Linen Sofa",
    "p4": "Velvet Sofa Cover",
}


def page(qid, hits, query="velvet sofa", when=NOW, wrap=False, **extra):
    body = {
        "query_id": qid,
        "user_query": query,
        "client_id": "browser-1",
        "timestamp": when.isoformat(),
        "query_response_hit_ids": hits,
        **extra,
    }
    return json.dumps({"ext": {"ubi": body}} if wrap else body).encode()


def ubi_event(qid, product, ordinal):
    return json.dumps(
        {
            "action_name": "impression",
            "query_id": qid,
            "client_id": "browser-1",
            "timestamp": NOW.isoformat(),
            "event_attributes": {
                "object": {"object_id": product},
                "position": {"ordinal": ordinal},
            },
        }
    ).encode()


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def record(value, offset, partition=0):
    return RawRecord("relmon.impressions", partition, offset, b"k", value, 1714564800000)


def make(catalog=None, clock=None, event_window=None, rate=1.0, page_tier=False, budget=None):
    clock = clock or Clock()
    ports, metrics = MemoryPorts(), Metrics()
    if catalog is None:
        catalog = Catalog(
            [CatalogProduct(product_id=k, title=v, category="Sofas") for k, v in PRODUCTS.items()]
        )
    proc = memory_processor(
        ports=ports,
        catalog=catalog,
        planner=Planner(PlannerConfig(checkpoint_interval_s=0), clock=clock, budget=budget),
        rates=rate if isinstance(rate, SamplingRates) else SamplingRates.uniform_at(rate),
        routing=Routing(0.5, page_threshold=0.3 if page_tier else None),
        model_version="fake-overlap-1",
        page_model_version="fake-page-1" if page_tier else None,
        metrics=metrics,
        retry_s=5.0,
        clock=clock,
        backoff_max_s=0.05,
        event_window=event_window,
        wall_clock=lambda: NOW,
    )
    return proc, ports, metrics


def run(coro):
    return asyncio.run(coro)


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [False, True])
def test_a_query_record_with_hit_ids_is_a_page_in_order(wrap):
    decoded = decode_record(page("q1", ["p2", "p1", "p3"], wrap=wrap))
    assert isinstance(decoded, UbiQuery)
    imps = decoded.page()
    assert [(i.product_id, i.position) for i in imps] == [("p2", 1), ("p1", 2), ("p3", 3)]
    assert [i.impression_id for i in imps] == ["ubi:q1:0:p2", "ubi:q1:1:p1", "ubi:q1:2:p3"]
    assert all(i.query == "velvet sofa" and i.event_time == NOW for i in imps)
    assert all(i.needs_catalog and i.session_hash for i in imps)
    full = imps[0].impression()
    assert (full.impression_id, full.position, full.source) == ("ubi:q1:0:p2", 1, "ubi")
    # the ids follow the stream's first ordinal, as its impression events' ids do
    assert decoded.page(base=1)[0].impression_id == "ubi:q1:1:p2"


def test_a_query_record_without_hits_is_no_page():
    assert decode_record(page("q1", [])).page() == []
    plain = json.dumps({"query_id": "q1", "user_query": "sofa"}).encode()
    assert decode_record(plain).page() == []


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (page("q1", "p1,p2"), "query_response_hit_ids must be an array, not string"),
        (page("q1", ["p1", 7]), "query_response_hit_ids[1] must be a string, not integer"),
        (page("q1", ["p1", None]), "query_response_hit_ids[1] must be a string, not null"),
        (page("q1", ["p1", ""]), "query_response_hit_ids.1"),
        (page("q1", ["x" * 300]), "query_response_hit_ids.0"),
        (page("q1", ["p1"] * 10_001), "query_response_hit_ids"),
        (page(None, ["p1"]), "query_id missing (a result page"),
        (
            json.dumps(
                {"query_id": "q1", "user_query": "sofa", "query_response_hit_ids": ["p1"]}
            ).encode(),
            "timestamp missing (a result page",
        ),
        (page("q1", ["p1"], timestamp=1714564800000), "timestamp"),
    ],
)
def test_a_bad_page_is_refused_naming_the_field(value, says):
    with pytest.raises(DecodeError) as err:
        decode_record(value)
    assert err.value.kind == "invalid"
    assert says in str(err.value)


# --- processing -------------------------------------------------------------------------------


def test_a_page_becomes_one_row_per_hit_and_its_record_is_acked_once():
    proc, ports, metrics = make()
    run(proc.process([record(page("q1", ["p1", "p2", "p3"]), 0)]))
    rows = sorted(ports.rows.values(), key=lambda r: r.position)
    assert [(r.product_id, r.position, r.title) for r in rows] == [
        ("p1", 1, "Blue Velvet Sofa"),
        ("p2", 2, "Oak Dining Table"),
        ("p3", 3, "Grey Linen Sofa"),
    ]
    assert [r.offset for r in ports.acked] == [0]
    assert ports.queries == {"q1": "velvet sofa"}
    assert metrics.get("ubi_pages") == 1 and metrics.get("impressions") == 3
    assert metrics.get("consumed") == 1 and metrics.get("sampled") == 3


def test_a_page_and_its_impression_events_are_counted_once():
    proc, ports, _ = make()
    events = [record(ubi_event("q1", p, i), 1 + i) for i, p in enumerate(["p1", "p2"])]
    run(proc.process([record(page("q1", ["p1", "p2"]), 0), *events]))
    assert sorted(ports.rows) == ["ubi:q1:0:p1", "ubi:q1:1:p2"]
    assert ports.row_writes == 2


def test_pages_and_impression_events_of_the_same_traffic_give_the_same_rows():
    hits = {f"q{i}": [f"p{1 + (i + j) % 4}" for j in range(3)] for i in range(40)}
    queries = ["velvet sofa", "oak table", "linen sofa", "sofa cover"]
    as_pages, as_events = [], []
    for n, (qid, ids) in enumerate(hits.items()):
        text = queries[n % 3 if n % 5 else 0]
        as_pages.append(page(qid, ids, query=text))
        as_events.append(json.dumps({"query_id": qid, "user_query": text}).encode())
        as_events += [ubi_event(qid, p, i) for i, p in enumerate(ids)]

    def rows(values):
        proc, ports, _ = make(rate=0.5)
        run(proc.process([record(v, i) for i, v in enumerate(values)]))
        return {k: (r.sample_rate, r.tier, r.position, r.score) for k, r in ports.rows.items()}

    from_pages = rows(as_pages)
    assert 0 < len(from_pages) < 120  # sampled by query: some pages in, some out
    assert from_pages == rows(as_events)


class HalfBudget(BudgetController):
    """A budget at factor 0.5 that adds up the pairs the base rates asked for (its demand)."""

    def __init__(self):
        super().__init__(BudgetConfig())
        self.demand = 0

    def factor(self, now):
        return 0.5

    def observe_batch(self, *, base_pairs, **kwargs):
        self.demand += base_pairs
        super().observe_batch(base_pairs=base_pairs, **kwargs)


def test_pages_not_sampled_at_any_position_decide_as_their_hits_would():
    # base rates 0.6 at the top position, 0.3 below, halved by the budget: pages with a draw
    # under 0.15 are sampled whole, between 0.15 and 0.3 at the top only, above 0.3 not at all
    # (done without building their hits); the budget's demand counts the base rates' pairs
    rates = SamplingRates(mode="stratified", tail=0.6, top_positions=1, rest_position_factor=0.5)
    hits = {f"q{i}": [f"p{1 + (i + j) % 4}" for j in range(1 + i % 4)] for i in range(80)}
    as_pages, as_events = [], []
    for qid, ids in hits.items():
        as_pages.append(page(qid, ids, query=f"sofa {qid}"))
        as_events.append(json.dumps({"query_id": qid, "user_query": f"sofa {qid}"}).encode())
        as_events += [ubi_event(qid, p, i) for i, p in enumerate(ids)]

    def outcome(values):
        budget = HalfBudget()
        proc, ports, metrics = make(rate=rates, budget=budget)
        run(proc.process([record(v, i) for i, v in enumerate(values)]))
        assert len(ports.acked) == len(values)
        rows = {k: (r.sample_rate, r.position) for k, r in ports.rows.items()}
        return rows, metrics.get("sampled"), metrics.get("not_sampled"), budget.demand

    from_pages = outcome(as_pages)
    rows, sampled, not_sampled, demand = from_pages
    impressions = sum(len(ids) for ids in hits.values())
    assert sampled == len(rows) and sampled + not_sampled == impressions
    assert {p for p, _ in rows.values()} == {0.3, 0.15}  # both strata sampled
    assert 0 < len(rows) < demand < impressions
    assert from_pages == outcome(as_events)


def test_an_unknown_hit_waits_and_the_page_is_acked_only_when_it_is_known():
    clock = Clock()
    catalog = Catalog([CatalogProduct(product_id="p1", title="Blue Velvet Sofa")])
    proc, ports, _ = make(catalog=catalog, clock=clock)
    run(proc.process([record(page("q1", ["p1", "late"]), 0), record(page("q2", ["p1"]), 1)]))
    assert set(ports.rows) == {"ubi:q1:0:p1", "ubi:q2:0:p1"}
    assert proc.pending == 1 and ports.acked == []  # offset 1 waits behind offset 0
    catalog.put(CatalogProduct(product_id="late", title="Sofa Bed"))
    clock.t += 1
    run(proc.retry_pending())
    assert "ubi:q1:1:late" in ports.rows
    assert [r.offset for r in ports.acked] == [0, 1] and ports.dead_letters == []


def test_the_page_tier_gets_each_sampled_hit_with_its_page_and_results_alone_without():
    clock = Clock()
    catalog = Catalog(
        [
            CatalogProduct(product_id="p1", title="Blue Velvet Sofa", category="Home > Sofas"),
            CatalogProduct(product_id="p2", title="Oak Table", brand="Acme", category="Tables"),
            CatalogProduct(product_id="p3", title="Grey Linen Sofa", category="Home > Sofas"),
        ]
    )
    proc, ports, _ = make(catalog=catalog, clock=clock, page_tier=True)
    alone = {"query_id": "q9", "user_query": "sofa"}
    events = [record(json.dumps(alone).encode(), 1), record(ubi_event("q9", "p2", 0), 2)]
    run(proc.process([record(page("q1", ["p1", "late", "p2", "p3"]), 0), *events]))
    # the impression event is scored alone; the page's hits wait for its unknown hit
    assert list(ports.rows) == ["ubi:q9:0:p2"] and ports.pages_seen == [None]
    row = ports.rows["ubi:q9:0:p2"]
    assert (row.model_version, row.threshold) == ("fake-overlap-1", 0.5)
    catalog.put(
        CatalogProduct(product_id="late", title="Sofa Bed for Guests", category="Home > Sofas")
    )
    clock.t += 1
    run(proc.retry_pending())
    refs = [ref for ref in ports.pages_seen if ref is not None]
    assert len(refs) == 4 and len({id(page) for page, _ in refs}) == 1  # one page, built once
    context = refs[0][0]
    # the page as the model reads it: every hit's text and category leaf, in page order
    assert context.texts[0].startswith("Blue Velvet Sofa") and "brand Acme" in context.texts[2]
    assert context.texts[1].startswith("Sofa Bed")
    assert context.categories == ("Home > Sofas", "Home > Sofas", "Tables", "Home > Sofas")
    assert context.heads == (None, "Sofa Bed", None, None)  # the title before its "for"
    assert sorted(index for _, index in refs) == [0, 1, 2, 3]
    on_page = [r for k, r in ports.rows.items() if k.startswith("ubi:q1")]
    assert len(on_page) == 4
    assert {(r.model_version, r.threshold) for r in on_page} == {("fake-page-1", float32(0.3))}
    assert [r.offset for r in ports.acked] == [0, 1, 2]


def test_the_page_tier_judges_a_page_by_its_hits_known_in_full_whenever_they_were_known():
    """The page is the same when the catalogue learns a product late: a replay agrees."""

    def scored(late_catalog: bool) -> list[tuple[tuple[str, ...], int]]:
        clock = Clock()
        products = [
            CatalogProduct(product_id=k, title=v, category="Sofas") for k, v in PRODUCTS.items()
        ]
        catalog = Catalog(products[:2] if late_catalog else products)
        proc, ports, _ = make(catalog=catalog, clock=clock, page_tier=True)
        run(proc.process([record(page("q1", ["p1", "p2", "p3", "p4", "gone"]), 0)]))
        for product in products[2:]:
            catalog.put(product)
        clock.t += 10  # past the wait: "gone" is refused, the rest is scored
        run(proc.retry_pending())
        (letter,) = ports.dead_letters
        assert "'gone' at position 5" in letter.reason
        return [(ref[0].texts, ref[1]) for ref in ports.pages_seen if ref is not None]

    on_time, late = scored(False), scored(True)
    assert len(on_time) == 4 and sorted(on_time) == sorted(late)


def test_unknown_hits_dead_letter_the_page_once_with_its_bytes_and_the_rest_is_scored():
    clock = Clock()
    proc, ports, metrics = make(clock=clock)
    value = page("q1", ["p1", "gone-1", "p2", "gone-2"])
    run(proc.process([record(value, 0)]))
    assert set(ports.rows) == {"ubi:q1:0:p1", "ubi:q1:2:p2"}
    assert ports.acked == [] and ports.dead_letters == []
    clock.t += 10
    run(proc.retry_pending())
    (letter,) = ports.dead_letters
    assert letter.kind == "unknown_product" and letter.offset == 0
    assert letter.original == value
    assert "2 of the page's 4 hits refused" in letter.reason
    assert "'gone-1' at position 2" in letter.reason and "'gone-2' at position 4" in letter.reason
    assert [r.offset for r in ports.acked] == [0] and proc.pending == 0
    assert metrics.get("dead_lettered_unknown_product") == 1
    # re-sending the letter's page scores nothing twice
    catalog_known = ports.row_writes
    run(proc.process([record(value, 1)]))
    assert ports.row_writes == catalog_known


def test_a_page_outside_the_event_time_window_is_one_dead_letter():
    window = EventTimeWindow(max_age_s=86_400, max_future_s=300)
    proc, ports, metrics = make(event_window=window)
    old = page("q1", ["p1", "p2"], when=NOW - timedelta(days=3))
    run(proc.process([record(old, 0)]))
    (letter,) = ports.dead_letters
    assert letter.kind == "event_time_out_of_range" and ports.rows == {}
    assert metrics.get("dead_lettered_event_time_out_of_range") == 1
    assert [r.offset for r in ports.acked] == [0]
    assert ports.queries == {"q1": "velvet sofa"}  # its text is still known to later events


def test_revoking_a_partition_forgets_its_half_done_pages():
    proc, ports, _ = make(catalog=Catalog([CatalogProduct(product_id="p1", title="Sofa")]))
    run(proc.process([record(page("q1", ["p1", "late"]), 0, partition=3)]))
    assert proc.pending == 1
    assert proc.drop_partitions([("relmon.impressions", 3)]) == 1
    # the partition's next owner reads the page again; this worker, given it back, starts afresh
    run(proc.process([record(page("q1", ["p1"]), 0, partition=3)]))
    assert [(r.partition, r.offset) for r in ports.acked] == [(3, 0)]


def test_a_partition_revoked_in_the_middle_of_a_batch_goes_once_the_batch_is_planned():
    """A rebalance can arrive while a batch's front waits: here, while it stores its plans."""
    proc, ports, _ = make(catalog=Catalog([CatalogProduct(product_id="p1", title="Sofa")]))
    dropped_at_once = []
    store_plans = ports.save_plans

    async def store_then_revoke(plans):
        await store_plans(plans)
        dropped_at_once.append(proc.drop_partitions([("relmon.impressions", 3)]))

    ports.save_plans = store_then_revoke
    batch = [
        record(page("q1", ["p1", "late"]), 0, partition=3),
        record(page("q2", ["p1"]), 1, partition=0),
    ]
    run(proc.process(batch))  # before, its plans were gone mid-batch: KeyError
    assert dropped_at_once == [0]  # the drop waited for the batch's front
    assert proc.pending == 0  # the page waiting for "late" went with its partition
    assert [(r.partition, r.offset) for r in ports.acked] == [(0, 1)]
    ports.save_plans = store_plans
    run(proc.process([record(page("q1", ["p1"]), 0, partition=3)]))  # given back: afresh
    assert [(r.partition, r.offset) for r in ports.acked] == [(0, 1), (3, 0)]


def test_what_a_batch_finishes_after_its_partition_was_revoked_is_left_to_the_new_owner():
    """A rebalance can also arrive while a batch's back half stores it: nothing of it is kept."""
    proc, ports, _ = make()
    mark_done = ports.mark_done

    async def mark_then_revoke(rows):
        await mark_done(rows)
        assert proc.drop_partitions([("relmon.impressions", 3)]) == 0  # no page was waiting

    ports.mark_done = mark_then_revoke
    run(proc.process([record(page("q1", ["p1"]), 0, partition=3), record(page("q2", ["p1"]), 1)]))
    assert [(r.partition, r.offset) for r in ports.acked] == [(0, 1)]
    # white box: before, partition 3's record stayed among the done records for good, unacked
    assert not proc._done
    ports.mark_done = mark_done
    run(proc.process([record(page("q1", ["p1"]), 0, partition=3)]))  # given back: re-read
    assert [(r.partition, r.offset) for r in ports.acked] == [(0, 1), (3, 0)]
    assert not proc._done


# --- the replayer -----------------------------------------------------------------------------


def test_the_replayer_sends_a_page_as_one_record_with_its_hits_in_order():
    from relmon.sim.replay import ReplayConfig, TrafficGenerator
    from relmon.sim.synth import SyntheticCatalog

    catalog = SyntheticCatalog.generate(seed=3)
    config = ReplayConfig(
        seed=3,
        dataset="synthetic",
        page_share=1.0,
        ubi_share=0.0,
        catalog_share=0.0,
        malformed_share=0.2,
        unknown_product_share=0.0,
    )
    gen = TrafficGenerator(catalog, config)
    records = gen.labelled_page(NOW)
    *malformed, (_, value, truth) = records
    assert truth is None and all(t is None for _, _, t in malformed)
    decoded = decode_record(value)
    assert isinstance(decoded, UbiQuery)
    assert len(decoded.hit_ids) + len(malformed) == config.page_size
    assert [i.position for i in decoded.page()] == list(range(1, len(decoded.hit_ids) + 1))
    assert gen.counts["ubi_page_records"] == 1 and gen.counts["impressions"] == len(decoded.hit_ids)


@pytest.mark.parametrize(
    ("shares", "says"),
    [
        ({"page_share": 0.6, "ubi_share": 0.3, "catalog_share": 0.2}, "at most 1"),
        ({"page_share": -0.1}, "page_share must be between 0 and 1"),
    ],
)
def test_the_replayer_refuses_format_shares_that_do_not_add_up(shares, says):
    from relmon.sim.replay import ReplayConfig, TrafficGenerator
    from relmon.sim.synth import SyntheticCatalog

    with pytest.raises(ValueError, match=says):
        TrafficGenerator(SyntheticCatalog.generate(seed=3), ReplayConfig(**shares))


@pytest.mark.parametrize(
    "product",
    [
        CatalogProduct(product_id="p1", title="Oak  Desk"),
        CatalogProduct(
            product_id="p2",
            title="Lamp",
            brand="Acme",
            category="Home > Lighting > Lamps",
            attributes={"color": "Brass"},
        ),
        CatalogProduct(
            product_id="p3",
            title="Rug",
            category="Rugs",
            attributes={"colour": "Grey", "category_path": "Home > Decor > Rugs"},
        ),
    ],
)
def test_a_catalogue_products_text_is_the_text_its_page_hits_are_scored_on(product):
    # `relmon model embed` embeds catalog_text; the worker scores a hit on impression_text of
    # the hit filled in from the catalogue: the same text, or the shared vectors never match
    hit = PageHit(
        query_id="q",
        query="desk",
        product_id=product.product_id,
        position=1,
        ordinal=0,
        event_time=datetime(2026, 1, 1, tzinfo=UTC),
        session_hash=None,
    )
    assert catalog_text(product) == impression_text(hit.enriched(product))


def test_embedding_a_catalogue_embeds_each_product_text_and_title_head_once():
    class Recorder:
        def __init__(self) -> None:
            self.texts: list[str] = []

        def embed(self, texts):
            self.texts.extend(texts)

        def stats(self):
            n = len(self.texts)
            return {
                "embedding_shared_hits": 0,
                "embedding_cache_misses": n,
                "embedding_shared_errors": 0,
            }

    products = [
        CatalogProduct(product_id="a", title="Cover for Sofa", brand="Acme"),
        CatalogProduct(product_id="b", title="Velvet Sofa"),
        CatalogProduct(product_id="c", title="Cover for Chair", brand="Acme"),
    ]
    scorer = Recorder()
    report = embed_catalog(scorer, products, chunk=2)
    assert scorer.texts == [
        catalog_text(products[0]),
        "Cover",
        catalog_text(products[1]),
        catalog_text(products[2]),
    ]
    assert report["texts"] == report["embedded"] == 4
