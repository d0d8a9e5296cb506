import math

import numpy as np
import pytest

from scoring.metrics import binary_metrics, pearson, roc_auc


def test_auc_perfect_inverted_and_chance() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_hand_computed() -> None:
    # Positives 0.8, 0.4; negatives 0.5, 0.1. Pairs (pos > neg): 0.8>0.5, 0.8>0.1, 0.4>0.1,
    # and 0.4<0.5: 3 of 4.
    assert roc_auc([1, 0, 1, 0], [0.8, 0.5, 0.4, 0.1]) == pytest.approx(0.75)


def test_auc_ties_count_half() -> None:
    # Positive 0.5 ties negative 0.5 (1/2), beats 0.2 (1); positive 0.9 beats both (2): 3.5/4
    assert roc_auc([1, 1, 0, 0], [0.5, 0.9, 0.5, 0.2]) == pytest.approx(3.5 / 4)


def test_auc_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # rounding makes many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert roc_auc(y, s) == pytest.approx(brute)


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="both"):
        roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="labels"):
        roc_auc([1, 0, 1], [0.2, 0.3])


def test_binary_metrics_hand_computed() -> None:
    labels = [1, 1, 1, 0, 0, 0]
    scores = [0.9, 0.6, 0.3, 0.7, 0.2, 0.1]
    m = binary_metrics(labels, scores, threshold=0.5)
    # predicted positive: 0.9 (tp), 0.6 (tp), 0.7 (fp); 0.3 is a fn
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["auc"] == pytest.approx(7 / 9)  # 0.9 beats 3 negatives, 0.6 and 0.3 two each


def test_binary_metrics_no_predicted_positive() -> None:
    m = binary_metrics([1, 0], [0.1, 0.2], threshold=0.5)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["accuracy"] == 0.5


def test_pearson() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_reliability_and_ece_hand_computed() -> None:
    from scoring.metrics import reliability

    # bin 0.1-0.2: scores 0.15, 0.15, rate 0.5 -> |0.5 - 0.15| = 0.35; bin 0.9-1.0: 0.95, rate 1
    rel = reliability([0, 1, 1], [0.15, 0.15, 0.95], bins=10)
    assert [c["n"] for c in rel["curve"]] == [2, 1]
    assert rel["ece"] == pytest.approx(2 / 3 * 0.35 + 1 / 3 * 0.05)
    assert reliability([0, 1], [0.0, 1.0])["ece"] == pytest.approx(0.0)


def test_grade_distributions() -> None:
    from scoring.metrics import grade_distributions

    d = grade_distributions(["E", "E", "I", "I"], [0.9, 0.7, 0.2, 0.6], threshold=0.5)
    assert d["E"]["n"] == 2 and d["E"]["mean"] == pytest.approx(0.8)
    assert d["I"]["below_threshold"] == pytest.approx(0.5)
    assert d["E"]["p50"] == pytest.approx(0.8)


def test_fit_polarisation_recovers_the_generating_curve() -> None:
    from scoring.metrics import fit_polarisation

    rng = np.random.default_rng(3)
    s = rng.random(20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-6.0 * (s - 0.4)))
    alpha, beta = fit_polarisation(y.astype(int), s)
    assert alpha == pytest.approx(6.0, rel=0.1)
    assert beta == pytest.approx(0.4, abs=0.02)


def test_card_markdown_has_numbers_and_hashes() -> None:
    from scoring.card import card_markdown

    md = card_markdown(
        {
            "model_version": "minilm-ce-abc",
            "training_data": "SYNTHETIC catalogue",
            "heldout": {"auc_fp32": 0.91, "auc_int8": 0.905},
            "calibration": {"alpha": 7.5, "beta": 0.45},
            "sha256": {"model.onnx": "f" * 64},
            "sizes_bytes": {"model.onnx": 123},
        }
    )
    assert "# Model card: minilm-ce-abc" in md and "SYNTHETIC" in md
    assert "| auc_int8 | 0.9050 |" in md and "f" * 64 in md and "sigmoid(7.500" in md


def _clustered_flags(rng: np.random.Generator, clusters: int = 150) -> tuple:
    """Flags of ``clusters`` queries whose own precision varies around 0.6 (Beta(3, 2))."""
    own = rng.beta(3.0, 2.0, clusters)
    sizes = rng.integers(1, 12, clusters)
    hits = rng.binomial(sizes, own)
    return hits, sizes, np.arange(clusters)


def test_cluster_ratio_interval_covers_new_clusters_where_counting_rows_does_not() -> None:
    from relmon.stats import wilson
    from scoring.metrics import cluster_ratio_interval

    rng = np.random.default_rng(5)
    truth = 0.6  # the mean of Beta(3, 2), and sizes do not depend on it
    runs, by_clusters, by_rows = 200, 0, 0
    for _ in range(runs):
        hits, sizes, ids = _clustered_flags(rng)
        low, high = cluster_ratio_interval(hits, sizes, ids, resamples=1000, seed=1)
        by_clusters += low <= truth <= high
        w_low, w_high = wilson(hits.sum() / sizes.sum(), sizes.sum())
        by_rows += w_low <= truth <= w_high
    assert by_clusters / runs >= 0.9
    assert by_rows < by_clusters  # rows of one query are not independent draws


def test_cluster_ratio_interval_is_deterministic_and_holds_the_estimate() -> None:
    from scoring.metrics import cluster_ratio_interval

    hits, sizes, ids = _clustered_flags(np.random.default_rng(2))
    # rows, not clusters: each cluster's flags spread over rows of one hit or one miss
    row_hits = np.concatenate([[1] * h + [0] * (s - h) for h, s in zip(hits, sizes, strict=True)])
    row_ids = np.repeat(ids, sizes)
    first = cluster_ratio_interval(row_hits, np.ones(len(row_hits)), row_ids, seed=3)
    assert first == cluster_ratio_interval(row_hits, np.ones(len(row_hits)), row_ids, seed=3)
    # the same clusters summed beforehand give the same interval
    assert first == pytest.approx(cluster_ratio_interval(hits, sizes, ids, seed=3))
    assert first[0] < hits.sum() / sizes.sum() < first[1]
    with pytest.raises(ValueError, match="trial"):
        cluster_ratio_interval([0, 0], [0, 0], ["a", "b"])
    with pytest.raises(ValueError, match="clusters"):
        cluster_ratio_interval([1], [1, 2], ["a", "b"])
