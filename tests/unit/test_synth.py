import hashlib
import random

import pytest

import relmon.sim.synth as synth
from relmon.sim.synth import Product, Query, SyntheticCatalog, labelled_pairs, result_page


@pytest.fixture(scope="module")
def catalog() -> SyntheticCatalog:
    return SyntheticCatalog.generate(seed=7)


def test_exported_names() -> None:
    assert sorted(synth.__all__) == [
        "Product",
        "Query",
        "SyntheticCatalog",
        "labelled_pairs",
        "result_page",
        "zipf_popularities",
    ]


def test_generation_is_deterministic(catalog: SyntheticCatalog) -> None:
    again = SyntheticCatalog.generate(seed=7)
    assert again.products == catalog.products
    assert again.queries == catalog.queries
    other = SyntheticCatalog.generate(seed=8)
    assert [p.title for p in other.products] != [p.title for p in catalog.products]


def test_products_per_category(catalog: SyntheticCatalog) -> None:
    small = SyntheticCatalog.generate(seed=7, products_per_category=3)
    assert len(small.products) == 3 * len(small.categories)
    assert len(catalog.products) == 12 * len(catalog.categories)
    assert len(catalog.categories) > 150
    assert len({p.product_id for p in catalog.products}) == len(catalog.products)


def test_products_look_real(catalog: SyntheticCatalog) -> None:
    stools = [p for p in catalog.products if p.category == "Bar Stools"]
    assert stools and all("Bar Stool" in p.title for p in stools)
    for p in catalog.products:
        assert p.title.startswith(p.brand)
        assert {"colour", "material", "size", "style", "feature"} <= set(p.attributes)
        assert "  " not in p.title
    assert catalog.product(stools[0].product_id) is stools[0]
    with pytest.raises(KeyError):
        catalog.product("nope")


def test_product_is_hashable_and_attributes_read_only(catalog: SyntheticCatalog) -> None:
    p = catalog.products[0]
    assert isinstance(p, Product)
    assert hash(p) == hash(SyntheticCatalog.generate(seed=7).products[0])
    with pytest.raises(TypeError):
        p.attributes["colour"] = "x"  # type: ignore[index]


def test_queries_come_from_wands_and_empty_classes_are_handled(catalog: SyntheticCatalog) -> None:
    assert 474 <= len(catalog.queries) <= 480
    assert all(q.category for q in catalog.queries)
    by_text = {q.text: q for q in catalog.queries}
    assert by_text["salon chair"].category == "Massage Chairs"
    assert by_text["salon chair"].query_id == "q0"
    # "wand bunk beds" has no class in WANDS: it is inferred from the class names.
    assert by_text["wand bunk beds"].category in {"Beds", "Kids Beds"}
    cats = set(catalog.categories)
    assert all(q.category in cats for q in catalog.queries)


def test_tiers_follow_zipf(catalog: SyntheticCatalog) -> None:
    qs = catalog.queries
    assert sum(q.popularity for q in qs) == pytest.approx(1.0)
    share = {t: sum(q.popularity for q in qs if q.tier == t) for t in ("head", "torso", "tail")}
    count = {t: sum(q.tier == t for q in qs) for t in ("head", "torso", "tail")}
    assert share["head"] == pytest.approx(0.5, abs=0.02)
    assert count["head"] == pytest.approx(0.05 * len(qs), abs=1)
    assert count["torso"] == pytest.approx(0.25 * len(qs), abs=1)
    head_min = min(q.popularity for q in qs if q.tier == "head")
    assert all(q.popularity < head_min for q in qs if q.tier != "head")


def test_relevant_and_irrelevant(catalog: SyntheticCatalog) -> None:
    rng = random.Random(0)
    for q in catalog.queries[:60]:
        rel = catalog.relevant_for(q)
        assert rel and all(p.category == q.category for p in rel)
        for kind in ("easy", "hard", "any"):
            bad = catalog.irrelevant_for(q, rng, kind)  # type: ignore[arg-type]
            assert bad.category != q.category


def test_hard_negatives_are_related() -> None:
    cat = SyntheticCatalog.generate(seed=7)
    q = Query("x", "bar stool with backrest", "Bar Stools", "tail", 0.0)
    rng = random.Random(1)
    hard = [cat.irrelevant_for(q, rng, "hard") for _ in range(200)]
    # Never a near-synonym class sharing the head noun ("Patio Bar Stools")...
    assert all("Stool" not in p.title for p in hard)
    # ...but often furniture seating or a title sharing a query word.
    seating = {"Dining Chairs", "Accent Chairs", "Benches", "Ottomans", "Office Chairs"}
    close = [p for p in hard if p.category in seating or "bar" in p.title.lower()]
    assert len(close) > 50


def test_labelled_pairs(catalog: SyntheticCatalog) -> None:
    pairs = labelled_pairs(catalog, 2000, seed=3)
    assert len(pairs) == 2000
    assert pairs == labelled_pairs(catalog, 2000, seed=3)
    assert pairs != labelled_pairs(catalog, 2000, seed=4)
    neg = sum(1 for *_, y in pairs if y == 0)
    assert 900 < neg < 1100
    assert sum(y for *_, y in labelled_pairs(catalog, 500, seed=3, irrelevant_share=0.0)) == 500
    texts = {q.text for q in catalog.queries}
    assert all(q in texts and t and y in (0, 1) for q, t, y in pairs)


def test_labelled_pairs_restricted_to_queries(catalog: SyntheticCatalog) -> None:
    subset = catalog.queries[:10]
    pairs = labelled_pairs(catalog, 300, seed=1, queries=subset)
    assert {q for q, _, _ in pairs} <= {q.text for q in subset}


def test_result_page(catalog: SyntheticCatalog) -> None:
    q = next(q for q in catalog.queries if q.category == "Area Rugs")
    page = result_page(catalog, q, random.Random(5), size=10, bad_share=0.3)
    assert len(page) == 10
    assert sum(not ok for _, ok in page) == 3
    for p, ok in page:
        assert (p.category == q.category) == ok
    assert page == result_page(catalog, q, random.Random(5), size=10, bad_share=0.3)
    big = result_page(catalog, q, random.Random(5), size=30, bad_share=0.0)
    assert len(big) == 30 and all(ok for _, ok in big)
    assert all(not ok for _, ok in result_page(catalog, q, random.Random(5), 5, 1.0))


def _digest(catalog: SyntheticCatalog) -> str:
    rows = [
        (p.product_id, p.title, p.category, p.brand, sorted(p.attributes.items()))
        for p in catalog.products
    ]
    return hashlib.sha256(repr((rows, catalog.queries)).encode()).hexdigest()


def test_the_vocabulary_file_makes_the_same_catalogue(catalog: SyntheticCatalog) -> None:
    """The words moved from code into vocabulary.json; the catalogue of seed 7 is unchanged.

    A change of this digest means every synthetic replay and bench figure changes: make it on
    purpose, never as a side effect of editing the vocabulary's layout.
    """
    assert "Lark Manor" in synth.VOCABULARY.brands
    assert next(iter(synth.VOCABULARY.families)) == "outdoor"  # first match wins: order is data
    assert _digest(catalog) == "a6ee56234f7434699a53e0e8d1198c7e93b8a735bb491a3b00ce34ce58e9195a"


def test_misfiled_negatives_keep_the_draws_and_take_the_query_category(
    catalog: SyntheticCatalog,
) -> None:
    misfiled = SyntheticCatalog.generate(seed=7, misfiled_negatives=True)
    assert misfiled.products == catalog.products
    for q in catalog.queries[:40]:
        plain = catalog.irrelevant_for(q, random.Random(q.query_id))
        mis = misfiled.irrelevant_for(q, random.Random(q.query_id))
        assert (mis.product_id, mis.category) == (f"mis-{plain.product_id}", q.category)
        assert (mis.title, mis.brand) == (plain.title, plain.brand)
