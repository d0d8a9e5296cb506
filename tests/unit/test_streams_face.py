"""The ``streams`` package's face: what other packages use, stage by stage."""

from __future__ import annotations

import importlib

import streams
from schemas.models import ScoredImpression
from streams import Routing, review_request


def test_every_name_of_the_face_is_defined_in_a_streams_stage_module() -> None:
    for name in streams.__all__:
        obj = getattr(streams, name)
        module = importlib.import_module(obj.__module__)
        assert module.__name__.startswith("streams."), name
        assert getattr(module, name) is obj


def test_the_face_leaves_out_adapters_and_test_doubles() -> None:
    modules = {getattr(streams, name).__module__ for name in streams.__all__}
    assert not modules & {"streams.app", "streams.storage", "streams.testing"}


def _row(score: float, threshold: float, impression_id: str = "i1") -> ScoredImpression:
    return ScoredImpression.model_validate(
        {
            "impression_id": impression_id,
            "query_id": "q",
            "query": "sofa",
            "product_id": "p",
            "title": "Sofa",
            "category": "Sofas",
            "position": 1,
            "event_time": "2026-01-01T00:00:00Z",
            "locale": "en-US",
            "source": "test",
            "score": score,
            "threshold": threshold,
            "is_bad": score < threshold,
            "model_version": "m",
            "sample_rate": 0.5,
            "sample_weight": 2.0,
            "scored_at": "2026-01-01T00:00:01Z",
        }
    )


def test_routing_picks_the_category_threshold_and_orders_reviews_by_priority() -> None:
    routing = Routing(0.5, category_thresholds={"Sofas": 0.3}, uncertain_band=0.1)
    assert routing.threshold_for("Sofas") == 0.3
    assert routing.threshold_for("Lamps") == routing.threshold_for(None) == 0.5
    very_bad = routing.review(_row(0.05, 0.5))
    bad = routing.review(_row(0.45, 0.5))
    unsure = routing.review(_row(0.55, 0.5))
    assert very_bad and bad and unsure
    assert (very_bad.reason, bad.reason, unsure.reason) == (
        "below_threshold",
        "below_threshold",
        "uncertain",
    )
    assert very_bad.priority > bad.priority > unsure.priority
    assert routing.review(_row(0.9, 0.5)) is None  # confident, and no audit share


def test_audits_are_a_deterministic_share_of_confident_rows_weighted_by_it() -> None:
    routing = Routing(0.5, audit_share=0.2)
    rows = [_row(0.9, 0.5, f"i{n}") for n in range(2000)]
    audits = [r for r in map(routing.review, rows) if r is not None]
    assert audits == [r for r in map(routing.review, rows) if r is not None]  # a replay agrees
    assert 300 < len(audits) < 500  # 2000 x 0.2 = 400 expected
    assert {a.reason for a in audits} == {"audit"}
    assert {a.review_weight for a in audits} == {5.0}
    assert review_request(rows[0], "audit", 0.2).priority == 0.0
