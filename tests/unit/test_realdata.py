"""The real-label pieces: product text, query folds, the operating point, ESCI replay truth."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from relmon.sim.realdata import EsciCatalog
from relmon.sim.replay import ReplayConfig, TrafficGenerator
from relmon.sim.scenario import Scenario, Shift
from relmon.stats import wilson
from scoring.esci import BAD_GRADES, load_esci_judgments, load_esci_products
from scoring.text import category_leaf, names_any, product_text, title_head, without_words
from scoring.training import TrainConfig, operating_point, query_folds, training_pairs
from scoring.training.evaluate import FLAG_CONFIDENCE_Z


def test_product_text_leaves_out_what_is_missing():
    assert product_text("  Oak  desk ") == "Oak desk"
    assert (
        product_text("Oak desk", "Acme", "Brown", "Home > Furniture > Desks")
        == "Oak desk | brand Acme | colour Brown | category Furniture > Desks"
    )
    assert product_text("Oak desk", None, "", ["Home", "Office"]) == (
        "Oak desk | category Home > Office"
    )
    assert category_leaf(None) is None and category_leaf(" > ") is None


def test_title_head_is_the_title_before_what_the_product_is_for():
    assert title_head("Silicone  Case for iPhone 12, Black") == "Silicone Case"
    assert title_head("Charger Compatible with Dell XPS") == "Charger"
    assert title_head("Strap that FITS Garmin watches") == "Strap that"
    # whole words only; nothing before the marker, or no marker: no head
    assert title_head("Fitsy Forest fort") is None
    assert title_head("For Men eau de toilette") is None
    assert title_head("Oak writing desk") is None
    # the bundled judgments: accessories (complements) name what they are for more often
    examples = load_esci_judgments()
    share = {
        g: np.mean([title_head(e.title) is not None for e in examples if e.grade == g])
        for g in "ESCI"
    }
    assert share["C"] > 1.5 * max(share["E"], share["S"], share["I"])


def test_without_words_are_what_a_query_excludes_and_a_title_names_them_unless_it_negates():
    assert without_words("cat treats without chicken") == ("chicken",)
    assert without_words("lights WITHOUT wiring, with switch") == ("wiring",)
    assert without_words("shoes w/o laces and buckles") == ("laces",)
    assert without_words("gift not included batteries") == ("batteries",)
    assert without_words("glass beads without the a") == ()
    assert without_words("chicken cat treats") == ()
    assert names_any("Chicken Jerky Cat Treats", ("chicken",))
    assert names_any("Cat treats with CHICKENS", ("chicken",))  # a plural, any case
    assert names_any("AA Batteries, 24 count", ("batteries",))
    for title in ("Cat Treats, Chicken-Free", "Cat treats (no chicken)", "Chickenless treats"):
        assert not names_any(title, ("chicken",)), title
    assert not names_any("Cat Treats", ())
    # the bundled judgments: a result that names what its query excludes is bad more often
    examples = [e for e in load_esci_judgments() if without_words(e.query)]
    assert len({e.query for e in examples}) >= 30
    named = [names_any(e.title, without_words(e.query)) for e in examples]
    bad = np.array([not e.hard_label for e in examples])
    assert bad[np.array(named)].mean() > 1.5 * bad[~np.array(named)].mean()


def test_bundled_esci_slice_is_complete():
    examples = load_esci_judgments()
    assert len(examples) == 6678
    assert len({e.query for e in examples}) == 150
    grades = Counter(e.grade for e in examples)
    assert grades == {"E": 3389, "S": 1898, "C": 305, "I": 1086}
    assert all(e.hard_label == (e.grade not in BAD_GRADES) for e in examples)
    products = {p.product_id for p in load_esci_products()}
    assert len(products) == 6764 and {e.product_id for e in examples} <= products


def test_query_folds_never_split_a_query():
    examples = load_esci_judgments()
    folds = query_folds(examples, 5, seed=13)
    by_query: dict[str, set[int]] = {}
    for e, f in zip(examples, folds, strict=True):
        by_query.setdefault(e.query, set()).add(f)
    assert all(len(f) == 1 for f in by_query.values())
    assert Counter(next(iter(f)) for f in by_query.values()) == {k: 30 for k in range(5)}
    assert folds == query_folds(examples, 5, seed=13)
    assert folds != query_folds(examples, 5, seed=14)


def test_training_pairs_drop_fields_for_a_share_and_use_the_graded_target():
    examples = [e for e in load_esci_judgments() if e.brand and e.color][:400]
    pairs, targets = training_pairs(examples, TrainConfig(title_only_share=0.3, seed=1))
    plain = [product_text(e.title) for e in examples]
    title_only = sum(text == p for (_, text), p in zip(pairs, plain, strict=True))
    assert 0.2 < title_only / len(examples) < 0.4
    assert set(targets) <= {1.0, 0.6, 0.3, 0.0}
    assert {0.3, 0.6} & set(targets)
    binary = training_pairs(examples, TrainConfig(target="binary"))[1]
    assert set(binary) <= {0.0, 1.0}


def _draw(seed: int, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) > 0.2
    return labels, np.where(labels, rng.normal(0.7, 0.2, n), rng.normal(0.45, 0.2, n))


def test_operating_point_flags_at_the_precision_target_with_confidence():
    labels, scores = _draw(3)
    point = operating_point(labels, scores)
    flagged = scores < point["threshold"]
    precision = float((~labels[flagged]).mean())
    assert point["rule"] == "precision" and point["min_precision"] == 0.6
    assert point["flagged_share"] == pytest.approx(flagged.mean())
    assert point["precision"] == pytest.approx(precision)
    assert point["recall"] == pytest.approx((flagged & ~labels).sum() / (~labels).sum())
    assert point["true_bad_share"] == pytest.approx(1 - labels.mean())
    # a bound, not the observed share: the observed precision sits above the target
    assert 0.6 <= point["precision_lower_bound"] < precision
    # the highest such threshold: one more flagged pair and the bound falls below the target
    k = int(flagged.sum())
    next_cut = np.sort(scores)[k]
    lower = wilson(float((~labels[scores <= next_cut]).mean()), k + 1, FLAG_CONFIDENCE_Z)[0]
    assert lower < 0.6
    # it holds on a fresh draw of the same population, as the bound is meant to
    fresh_labels, fresh_scores = _draw(4)
    fresh = fresh_scores < point["threshold"]
    assert (~fresh_labels[fresh]).mean() >= 0.6


def test_a_pair_in_several_fitting_pages_counts_once_in_the_flags_bound():
    labels, scores = _draw(3, 1500)
    once = operating_point(labels, scores)
    # every pair three times (as in pages cut from its pool): the rows alone would make the
    # bound as narrow as 4,500 judgments, and the threshold higher than 1,500 allow
    rows = np.r_[labels, labels, labels], np.r_[scores, scores, scores]
    assert operating_point(*rows)["threshold"] > once["threshold"]
    weighted = operating_point(*rows, weights=np.full(4500, 1 / 3))
    for key in ("threshold", "flagged_share", "precision", "precision_lower_bound", "recall"):
        assert weighted[key] == pytest.approx(once[key])


def test_operating_point_of_a_weak_scorer_flags_the_true_bad_share():
    labels, scores = _draw(5)
    scores = scores + np.random.default_rng(6).normal(0, 0.6, len(labels))  # mostly noise
    point = operating_point(labels, scores)
    assert point["rule"] == "rate"
    assert point["precision_lower_bound"] < 0.6
    flagged = scores < point["threshold"]
    assert flagged.mean() == pytest.approx(point["true_bad_share"], abs=1e-3)
    assert point["flagged_share"] == pytest.approx(flagged.mean())


@pytest.fixture(scope="module")
def esci_catalog() -> EsciCatalog:
    return EsciCatalog.load(seed=7)


def _impressions(gen: TrafficGenerator, pages: int, at_s: float = 0.0):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(pages):
        for _key, value, truth in gen.labelled_page(now, at_s):
            if truth is not None and value.startswith(b'{"schema_version"'):
                yield json.loads(value), truth


def test_esci_replay_pages_carry_the_human_grades(esci_catalog):
    assert len(esci_catalog.queries) == 150 and len(esci_catalog.products) == 6764
    assert Counter(q.tier for q in esci_catalog.queries)["head"] > 0
    cfg = ReplayConfig(
        seed=3, page_share=0.0, ubi_share=0.0, malformed_share=0.0, unknown_product_share=0.0
    )
    gen = TrafficGenerator(esci_catalog, cfg)
    by_text = {q.text: q for q in esci_catalog.queries}
    seen = 0
    for imp, truth in _impressions(gen, 200):
        grade = esci_catalog.grade(by_text[imp["query"]], imp["product_id"])
        assert grade is not None  # every replayed pair was judged by a person
        assert truth == (grade not in BAD_GRADES)
        seen += 1
    assert seen > 1000
    share = gen.counts["truly_irrelevant"] / gen.counts["impressions"]
    assert 0.1 < share < 0.4  # the judged composition (20.8% of the pairs are bad)


def test_esci_scenario_shift_raises_the_true_bad_share_of_its_tier(esci_catalog):
    scenario = Scenario(shifts=(Shift(at_s=60, tier="tail", bad_share=0.9),))
    assert scenario.explicit_bad_share("tail", "x", 0) is None  # before: the data's own
    assert scenario.explicit_bad_share("tail", "x", 61) == 0.9
    assert Scenario(base_bad_share=0.3).explicit_bad_share("head", "x", 0) == 0.3
    cfg = ReplayConfig(
        seed=4, page_share=0.0, ubi_share=0.0, malformed_share=0.0, unknown_product_share=0.0
    )
    tiers = {q.text: q.tier for q in esci_catalog.queries}

    def tail_bad_share(at_s: float) -> float:
        gen = TrafficGenerator(esci_catalog, replace(cfg, scenario=scenario))
        truths = [not t for imp, t in _impressions(gen, 600, at_s) if tiers[imp["query"]] == "tail"]
        return sum(truths) / len(truths)

    before, after = tail_bad_share(0), tail_bad_share(120)
    assert before < 0.35 and after > 0.8


def test_irrelevant_for_a_query_without_judged_bad_results_is_judged_irrelevant_elsewhere(
    esci_catalog,
):
    clean = [
        q
        for q in esci_catalog.queries
        if not any(grade in BAD_GRADES for _, grade in esci_catalog.judgments(q))
    ]
    assert clean  # 18 of the 150 queries have no C/I-judged result
    rng = random.Random(1)
    for q in clean[:5]:
        p = esci_catalog.irrelevant_for(q, rng)
        assert esci_catalog.grade(q, p.product_id) is None


def test_a_smaller_student_keeps_only_the_lowest_layers_of_the_base_model():
    """``fit_cross_encoder(layers=3)``: the body's lowest 3 layers, the base weights, trained."""
    import torch
    from transformers import AutoModel

    from scoring.training.finetune import base_model_path, fit_cross_encoder, torch_scores

    examples = load_esci_judgments()[:32]
    cfg = replace(TrainConfig(), frozen_layers=1, batch_size=16)
    model = fit_cross_encoder(examples, cfg, layers=3)
    base = AutoModel.from_pretrained(base_model_path(), local_files_only=True)
    layers = model.base_model.encoder.layer
    assert len(layers) == 3 and model.config.num_hidden_layers == 3
    frozen, trained = layers[0], layers[2]
    name = "attention.self.query.weight"
    assert torch.equal(frozen.state_dict()[name], base.encoder.layer[0].state_dict()[name])
    assert not torch.equal(trained.state_dict()[name], base.encoder.layer[2].state_dict()[name])
    scores = torch_scores(model, [(e.query, e.text()) for e in examples])
    assert scores.shape == (32,) and np.isfinite(scores).all()
