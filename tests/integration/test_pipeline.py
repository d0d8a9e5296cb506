"""End to end on real servers: tansu, the local ClickHouse store, a real worker and model."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from relmon import db
from relmon.demo import worker_totals
from relmon.errors import DecodeError
from relmon.kafka import producer, read_topic
from relmon.runtime import wait_until
from relmon.sim.replay import ReplayConfig, TrafficGenerator, publish_catalog
from relmon.sim.synth import SyntheticCatalog
from relmon.stats import RateEstimate
from schemas import (
    DeadLetter,
    Impression,
    ReviewRequest,
    UbiImpression,
    UbiQuery,
    decode_record,
)
from streams.sampling import QuerySampler

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def make_traffic(pages: int, seed: int) -> tuple[SyntheticCatalog, list[tuple[bytes, bytes]]]:
    catalog = SyntheticCatalog.generate(seed=seed)
    gen = TrafficGenerator(
        catalog,
        ReplayConfig(
            seed=seed,
            page_share=0.3,
            ubi_share=0.3,
            catalog_share=0.2,
            malformed_share=0.03,
            unknown_product_share=0.03,
        ),
    )
    records: list[tuple[bytes, bytes]] = []
    for _ in range(pages):
        records.extend(gen.page(datetime.now(UTC)))
    assert gen.counts["malformed"] > 0 and gen.counts["unknown_product"] > 0
    assert gen.counts["ubi_query_records"] > 0 and gen.counts["ubi_page_records"] > 0
    return catalog, records


def _impressions(rec):
    """The impressions a decoded record carries, each with its product id."""
    if isinstance(rec, UbiQuery):
        return [(imp.impression_id, imp.query_id, imp.product_id) for imp in rec.page()]
    if isinstance(rec, UbiImpression):
        return [(rec.impression_id, rec.query_id, rec.object_id)]
    if isinstance(rec, Impression):
        return [(rec.impression_id, rec.query_id, rec.product_id)]
    return []


def expectations(records, sampler):
    """Sort the input by what the worker must do with it.

    ``unknown`` holds the impressions of missing products; ``unknown_records`` the records
    that carry them (a page with two of them is one dead letter).
    """
    sampled, unsampled, malformed, unknown, unknown_records = set(), set(), [], set(), set()
    for _, value in records:
        try:
            rec = decode_record(value)
        except DecodeError:
            malformed.append(value)
            continue
        for impression_id, query_id, product_id in _impressions(rec):
            if product_id.startswith("missing-"):
                unknown.add(impression_id)
                unknown_records.add(value)
            elif sampler.sampled(query_id):
                sampled.add(impression_id)
            else:
                unsampled.add(impression_id)
    return sampled, unsampled, malformed, unknown, unknown_records


def test_impressions_end_to_end(settings, start_worker):
    # No scoring budget: the expected rows are those the base rate samples. The burst below is
    # what a budget must take for live input (its records arrive within one batch window), and
    # it may lower the first plans' rates (tests/unit/test_budget.py covers that).
    s = settings.with_overrides(
        sampling_mode="uniform",
        sample_rate=0.5,
        unknown_product_retry_s=3.0,
        scoring_budget_pps="0",
    )
    catalog, records = make_traffic(pages=60, seed=11)
    # every record twice, shuffled within its page key order: replays must not double count
    duplicated = records + records[: len(records) // 2]
    sampled, unsampled, malformed, unknown, unknown_records = expectations(
        records, QuerySampler(0.5)
    )
    assert sampled and unsampled and malformed and unknown

    publish_catalog(s, catalog)
    worker = start_worker(s=s)
    prod = producer(s)
    for key, value in duplicated:
        prod.send(s.topics.impressions, key=key, value=value)
    prod.flush(30)
    prod.close()

    wait_until(
        lambda: (
            worker_totals(s).get("consumed", 0) >= len(duplicated)
            and worker_totals(s).get("pending", 1) == 0
        ),
        timeout=180,
        interval=0.5,
        what="worker drain",
        alive=worker.alive,
    )
    client = db.connect(s)
    counts = dict(  # no FINAL: each impression must be written once, not merged away later
        client.query(
            "SELECT impression_id, count() FROM scored_impressions GROUP BY impression_id"
        ).result_rows
    )
    assert set(counts) == sampled
    assert set(counts.values()) == {1}

    letters = [
        DeadLetter.model_validate_json(v)
        for _, v in read_topic(
            s, s.topics.dlq, expect=len(malformed) + len(unknown_records), timeout_s=60
        )
    ]
    originals = Counter(
        letter.original for letter in letters if letter.kind in ("malformed", "invalid")
    )
    assert set(originals) == set(malformed)
    assert all(letter.reason and letter.topic == s.topics.impressions for letter in letters)
    assert all(
        letter.offset >= 0 and 0 <= letter.partition < s.topics.partitions for letter in letters
    )
    dead_unknown = {
        impression_id
        for letter in letters
        if letter.kind == "unknown_product"
        for impression_id, _, product_id in _impressions(decode_record(letter.original))
        if product_id.startswith("missing-")
    }
    assert dead_unknown == unknown

    bad_ids = {
        row[0]
        for row in client.query(
            "SELECT impression_id FROM scored_impressions FINAL WHERE is_bad"
        ).result_rows
    }
    assert bad_ids, "the demo catalogue has irrelevant results: some rows must score low"
    reviews = [
        ReviewRequest.model_validate_json(v)
        for _, v in read_topic(s, s.topics.review, idle_s=3.0, timeout_s=60)
    ]
    # every bad row was sent for review once; the rest of the reviews are uncertain or audits
    by_reason = defaultdict(list)
    for r in reviews:
        by_reason[r.reason].append(r)
    assert sorted(r.impression_id for r in by_reason["below_threshold"]) == sorted(bad_ids)
    assert all(r.score < r.threshold for r in by_reason["below_threshold"])
    band = s.routing.uncertain_band
    assert all(r.threshold <= r.score < r.threshold + band for r in by_reason["uncertain"])
    assert all(r.score >= r.threshold + band for r in by_reason["audit"])
    assert len({r.impression_id for r in reviews}) == len(reviews)
    client.close()


def _expected(rows, window):
    expected = defaultdict(lambda: [0, 0, 0.0, 0.0, 0.0])
    for r in rows:
        e = expected[(window(r.event_time).replace(tzinfo=None), r.category, r.tier)]
        e[0] += 1
        e[1] += int(r.is_bad)
        e[2] += r.sample_weight
        e[3] += r.sample_weight * r.is_bad
        e[4] += r.sample_weight**2
    return expected


def _check_view(client, view, expected):
    got = client.query(
        f"SELECT window_start, category, tier, sampled, bad, weighted_rate, ci_low, ci_high, "
        f"judged FROM {view} ORDER BY window_start, category, tier"
    ).result_rows
    assert len(got) == len(expected)
    for window, category, tier, n, bad, rate, low, high, judged in got:
        est = RateEstimate.from_sums(*expected[(window, category, tier)])
        assert (n, bad) == (est.sampled, est.bad)
        assert rate == pytest.approx(est.rate, abs=1e-9)
        assert (low, high) == (
            pytest.approx(est.ci_low, abs=1e-9),
            pytest.approx(est.ci_high, abs=1e-9),
        )
        assert low <= rate <= high
        assert bool(judged) == (est.n_eff >= 30)


def test_bad_case_rates_for_known_input(settings, store):
    """The views' numbers equal a hand computation over rows we write ourselves."""
    from relmon.db import migrate
    from schemas import ScoredImpression
    from streams.repository import insert_scored

    migrate(settings)
    client = db.connect(settings)
    rng = random.Random(5)
    hour = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    rows = []
    for i in range(300):
        rate = rng.choice([1.0, 0.5, 0.25])
        imp = Impression(
            impression_id=f"k{i}",
            query_id=f"q{i % 40}",
            query="lamp",
            product_id=f"p{i}",
            title="Brass Lamp",
            category=rng.choice(["Lamps", "Rugs"]),
            position=1,
            event_time=hour.replace(minute=i % 3),
            locale="en-US",
        )
        rows.append(
            ScoredImpression.of(
                imp,
                score=rng.random(),
                threshold=0.3,
                model_version="m1",
                sample_rate=rate,
                scored_at=hour,
                tier=rng.choice(["head", "tail"]),
                position_bucket="top",
            )
        )
    insert_scored(client, rows)
    minute = _expected(rows, lambda t: t)
    _check_view(client, "bad_case_rates", minute)
    _check_view(client, "bad_case_rates_1h", _expected(rows, lambda t: t.replace(minute=0)))
    _check_view(client, "bad_case_rates_1d", _expected(rows, lambda t: t.replace(hour=0, minute=0)))
    insert_scored(client, rows[:100])  # a replay reaching the raw table: no double counting
    _check_view(client, "bad_case_rates", minute)
    client.close()
