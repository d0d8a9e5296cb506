import math
import random

import pytest

from relmon.stats import RateEstimate, wilson
from streams.sampling import QuerySampler, unit_hash


def test_wilson_textbook_values():
    # Wilson (1927) / Newcombe (1998) table: 0 of 10 -> [0, 0.2775]; 1 of 10 -> [0.0179, 0.4042]
    low, high = wilson(0.0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(0.1, 10)
    assert (low, high) == (pytest.approx(0.0179, abs=1e-4), pytest.approx(0.4042, abs=1e-4))


def test_wilson_covers_about_95_percent():
    rng = random.Random(3)
    true_p, n, trials, hits = 0.2, 80, 2000, 0
    for _ in range(trials):
        k = sum(rng.random() < true_p for _ in range(n))
        low, high = wilson(k / n, n)
        hits += low <= true_p <= high
    assert 0.93 <= hits / trials <= 0.97


def test_weighted_estimate_matches_unweighted_when_weights_equal():
    est = RateEstimate.from_sums(sampled=50, bad=10, sum_w=100.0, sum_w_bad=20.0, sum_w2=200.0)
    assert est.rate == pytest.approx(0.2) and est.n_eff == pytest.approx(50)
    assert (est.ci_low, est.ci_high) == wilson(0.2, 50)


def test_unequal_weights_shrink_effective_size():
    # 10 rows of weight 1 and 10 of weight 9: Kish n_eff = 100^2 / 820
    est = RateEstimate.from_sums(20, 10, 100.0, 90.0, 10 + 10 * 81.0)
    assert est.rate == pytest.approx(0.9)
    assert est.n_eff == pytest.approx(10000 / 820)
    assert est.ci_high - est.ci_low > wilson(0.9, 20)[1] - wilson(0.9, 20)[0]


def test_empty_window_has_no_rate():
    est = RateEstimate.from_sums(0, 0, 0.0, 0.0, 0.0)
    assert math.isnan(est.rate) and (est.ci_low, est.ci_high) == (0.0, 1.0)


def test_sampler_is_deterministic_and_near_its_rate():
    sampler = QuerySampler(0.3)
    ids = [f"query-{i}" for i in range(20000)]
    share = sum(map(sampler.sampled, ids)) / len(ids)
    assert abs(share - 0.3) < 0.015
    assert [sampler.sampled(i) for i in ids[:100]] == [
        QuerySampler(0.3).sampled(i) for i in ids[:100]
    ]
    assert all(0.0 <= unit_hash(i) < 1.0 for i in ids[:1000])
    assert QuerySampler(1.0).sampled("anything")


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5])
def test_sampler_rejects_bad_rates(rate):
    with pytest.raises(ValueError, match="sample rate"):
        QuerySampler(rate)
