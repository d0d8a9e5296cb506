"""Ranking and classification metrics in plain numpy, and :func:`evaluate_model`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scoring.scorer import Provider, Scorer

__all__ = ["binary_metrics", "evaluate_model", "pearson", "roc_auc"]


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


def evaluate_model(
    model_dir: Path | str,
    pairs_with_labels: Sequence[tuple[str, str, int]],
    *,
    threshold: float = 0.5,
    variants: Sequence[str] = ("fp32", "int8"),
    provider: Provider = "cpu",
    batch_size: int = 32,
    intra_op_threads: int = 0,
    max_length: int = 64,
) -> dict[str, Any]:
    """Score labelled pairs with each model variant present in ``model_dir``.

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
            intra_op_threads=intra_op_threads,
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
        }
    if "fp32" in scores and "int8" in scores:
        a, b = scores["fp32"], scores["int8"]
        result["agreement"] = {
            "pearson": pearson(a, b),
            "same_decision": float(((a >= threshold) == (b >= threshold)).mean()),
            "max_abs_diff": float(np.abs(a - b).max()) if len(a) else 0.0,
        }
    return result
