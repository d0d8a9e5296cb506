"""Ranking and classification metrics in plain numpy, and :func:`evaluate_model`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scoring.scorer import Provider, Scorer

__all__ = [
    "binary_metrics",
    "cluster_ratio_interval",
    "evaluate_model",
    "fit_polarisation",
    "grade_distributions",
    "pearson",
    "reliability",
    "roc_auc",
]


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start index of each run of equal values, and the run each element belongs to.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U); ties count one half.

    Raises:
        ValueError: lengths differ, or the labels are not both 0 and 1.

    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def cluster_ratio_interval(
    hits: Sequence[float] | np.ndarray,
    trials: Sequence[float] | np.ndarray,
    clusters: Sequence[object],
    confidence: float = 0.95,
    resamples: int = 4000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(hits) / sum(trials)``, resampling whole clusters.

    Rows of one cluster (a query's results) are alike more often than independent rows, so an
    interval that counts rows (Wilson's) is too narrow for what new clusters will show. Each
    resample draws as many clusters as there are, with replacement, and keeps all their rows.
    Resamples with no trials are left out. Deterministic for a given ``seed``.

    Raises:
        ValueError: lengths differ, or there are no trials at all.

    """
    h = np.asarray(hits, dtype=np.float64)
    t = np.asarray(trials, dtype=np.float64)
    if not (len(h) == len(t) == len(clusters)):
        raise ValueError(f"{len(h)} hits, {len(t)} trials and {len(clusters)} clusters")
    if t.sum() <= 0:
        raise ValueError("a ratio needs at least one trial")
    _, group = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    k = int(group.max()) + 1
    h_c, t_c = np.bincount(group, h, k), np.bincount(group, t, k)
    draws = np.random.default_rng(seed).integers(0, k, size=(resamples, k))
    num, den = h_c[draws].sum(1), t_c[draws].sum(1)
    ratios = num[den > 0] / den[den > 0]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def binary_metrics(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
) -> dict[str, float]:
    """AUC plus accuracy, precision, recall and F1 when ``score >= threshold`` means relevant."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "auc": roc_auc(y, s),
        "accuracy": float((pred == y).mean()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def pearson(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation of two score vectors (nan when one of them is constant)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom else float("nan")


def reliability(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, bins: int = 10
) -> dict[str, Any]:
    """Reliability curve over ``bins`` equal-width score bins, and the expected calibration error.

    ECE is the count-weighted mean of ``|observed rate - mean score|`` over the non-empty bins.
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    which = np.minimum((s * bins).astype(int), bins - 1)
    curve, ece = [], 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        if not n:
            continue
        mean_score, rate = float(s[m].mean()), float(y[m].mean())
        curve.append(
            {"bin": [b / bins, (b + 1) / bins], "n": n, "mean_score": mean_score, "rate": rate}
        )
        ece += n / len(s) * abs(rate - mean_score)
    return {"ece": ece, "curve": curve}


def grade_distributions(
    grades: Sequence[str], scores: Sequence[float] | np.ndarray, threshold: float
) -> dict[str, dict[str, float]]:
    """Per grade: count, mean, 10/50/90th percentiles and the share scoring below threshold."""
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(grades)
    out = {}
    for grade in sorted(set(grades)):
        x = s[g == grade]
        p10, p50, p90 = np.percentile(x, [10, 50, 90])
        out[grade or "?"] = {
            "n": len(x),
            "mean": float(x.mean()),
            "p10": float(p10),
            "p50": float(p50),
            "p90": float(p90),
            "below_threshold": float((x < threshold).mean()),
        }
    return out


def fit_polarisation(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """Fit ``alpha, beta`` of ``sigmoid(alpha * (s - beta))`` by maximum likelihood (Newton).

    A one-feature logistic regression of the labels on the scores, with a tiny ridge so it
    converges on separable data.
    """
    y = np.asarray(labels, dtype=np.float64)
    x = np.asarray(scores, dtype=np.float64)
    a, b = 1.0, 0.0  # logit = a * x + b
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        w = p * (1 - p)
        g = np.array([((p - y) * x).sum() + 1e-3 * a, (p - y).sum()])
        h = np.array([[(w * x * x).sum() + 1e-3, (w * x).sum()], [(w * x).sum(), w.sum()]])
        step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(-b / a) if a else 0.5


def evaluate_model(
    model_dir: Path | str,
    pairs_with_labels: Sequence[tuple[str, str, int]],
    *,
    threshold: float = 0.5,
    variants: Sequence[str] = ("fp32", "int8"),
    provider: Provider = "cpu",
    batch_size: int = 32,
    threads: int = 0,
    max_length: int = 64,
    grades: Sequence[str] | None = None,
    fit_calibration: bool = True,
) -> dict[str, Any]:
    """Score labelled pairs with each model variant present in ``model_dir``.

    Each variant's entry also holds ``calibration`` (reliability curve, ECE) and, when
    ``grades`` (one per pair) are given, ``by_grade`` score distributions; ``polarisation`` is
    the alpha/beta fitted on the fp32 scores.

    Returns ``{"n": ..., "positives": ..., "threshold": ..., "<variant>": {auc, accuracy,
    precision, recall, f1, pairs_per_s, provider}, "agreement": {...}}``; ``agreement`` (fp32 vs
    int8 Pearson correlation, share of equal decisions at the threshold, max absolute score
    difference) is there when both variants were scored.

    Raises:
        ModelNotFoundError: no model in ``model_dir``.

    """
    pairs = [(q, t) for q, t, _ in pairs_with_labels]
    labels = np.array([y for _, _, y in pairs_with_labels], dtype=np.int64)
    result: dict[str, Any] = {
        "n": len(pairs),
        "positives": int(labels.sum()),
        "threshold": threshold,
    }
    scores: dict[str, np.ndarray] = {}
    for variant in variants:
        if variant not in ("fp32", "int8"):
            raise ValueError(f"unknown variant {variant!r}")
        file = "model.onnx" if variant == "fp32" else "model.int8.onnx"
        if not (Path(model_dir) / file).is_file() and len(variants) > 1:
            continue
        scorer = Scorer(
            model_dir,
            provider=provider,
            variant=variant,  # type: ignore[arg-type]
            threads=threads,
            max_length=max_length,
        )
        t0 = time.perf_counter()
        scores[variant] = scorer.predict(pairs, batch_size=batch_size)
        elapsed = time.perf_counter() - t0
        result["model_version"] = scorer.model_version
        result[variant] = {
            **binary_metrics(labels, scores[variant], threshold),
            "pairs_per_s": len(pairs) / elapsed if elapsed > 0 else float("inf"),
            "provider": scorer.provider,
            "model_version": scorer.model_version,
            "calibration": reliability(labels, scores[variant]),
        }
        if grades is not None:
            result[variant]["by_grade"] = grade_distributions(grades, scores[variant], threshold)
    if "fp32" in scores and "int8" in scores:
        a, b = scores["fp32"], scores["int8"]
        result["agreement"] = {
            "pearson": pearson(a, b),
            "same_decision": float(((a >= threshold) == (b >= threshold)).mean()),
            "max_abs_diff": float(np.abs(a - b).max()) if len(a) else 0.0,
            "mean_abs_diff": float(np.abs(a - b).mean()) if len(a) else 0.0,
            "auc_drop": result["fp32"]["auc"] - result["int8"]["auc"],
        }
    if "fp32" in scores and fit_calibration:
        alpha, beta = fit_polarisation(labels, scores["fp32"])
        result["polarisation"] = {"alpha": alpha, "beta": beta}
    return result
