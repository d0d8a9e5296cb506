"""Model quality on real human labels: k-fold cross-validation by query on the ESCI judgments.

Run from the repository root with the venv's python:  ``python bench/quality.py``

Every scorer is measured on the same folds (the 150 bundled ESCI queries dealt into 5 folds by
``scoring.training.query_folds``; a query's pairs are never on both sides):

- the student: for each fold, ``relmon model build`` trains on the other four folds with the
  default recipe and exports ONNX; its held-out fold is scored with int8 (served on CPU) and
  fp32. A fold whose model is already in ``--workdir`` with the same recipe is reused
  (``models/relmon-minilm-ce`` is fold 0's model when it was built with the defaults).
- baselines: the untouched all-MiniLM-L6-v2's cosine of query and product embeddings
  (zero-shot; the better of title-only and title + fields), and the share of query words found
  in the title.

Rates: calibration is *cross-fitted*: the threshold (flagged share = true bad share) and the
Platt map applied to fold k are fitted on the other folds' held-out scores, never on fold k.
``rate_abs_error`` compares the pooled flagged rate with the pooled true bad share;
``per_query_rate_abs_error`` averages |flagged share - true bad share| over the 150 queries.
The same figures for the expected-rate estimator (mean calibrated P(bad)) are printed beside.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relmon.hostinfo import cpu_model, isa_flags  # noqa: E402
from scoring import Scorer  # noqa: E402
from scoring.build import DEFAULT_RECIPE, FOLDS, build_model, operating_point  # noqa: E402
from scoring.esci import load_esci_judgments  # noqa: E402
from scoring.metrics import fit_polarisation, reliability, roc_auc  # noqa: E402
from scoring.scorer import polarise  # noqa: E402
from scoring.training import embed, query_folds  # noqa: E402


def _same_build(model_dir: Path, fold: int, seed: int, epochs: int | None) -> bool:
    card_file = model_dir / "card.json"
    if not card_file.is_file():
        return False
    card = json.loads(card_file.read_text())
    recipe = {**DEFAULT_RECIPE.as_dict(), "seed": seed}
    if epochs:
        recipe["epochs"] = epochs
    return bool(
        card.get("data")
        == {"kind": "esci-folds", "seed": seed, "heldout_fold": fold, "folds": FOLDS}
        and card.get("recipe") == recipe
        and card.get("train_pairs", 0) > 0
        and "synthetic" not in str(card.get("training_data", "")).lower()
    )


def fold_model(workdir: Path, fold: int, seed: int, epochs: int | None) -> Path:
    """The model trained without ``fold``: reused when already built with the same recipe."""
    published = ROOT / "models" / "relmon-minilm-ce"
    if _same_build(published, fold, seed, epochs):
        return published
    out = workdir / f"fold-{fold}"
    if not _same_build(out, fold, seed, epochs):
        print(f"fold {fold}: building", file=sys.stderr, flush=True)
        build_model(
            out,
            seed=seed,
            heldout_fold=fold,
            epochs=epochs,
            force=True,
            progress=lambda m: print(f"  fold {fold}: {m}", file=sys.stderr, flush=True),
        )
    return out


def overlap(query: str, title: str) -> float:
    """Share of the query's words found in the title."""
    q = set(query.lower().split())
    t = set(title.lower().replace(",", " ").split())
    return len(q & t) / max(1, len(q))


def per_query_error(queries: list[str], truth_bad: np.ndarray, est_bad: np.ndarray) -> float:
    """Mean over queries of |estimated bad share - true bad share|."""
    errs = []
    for q in sorted(set(queries)):
        m = np.array([x == q for x in queries])
        errs.append(abs(float(est_bad[m].mean()) - float(truth_bad[m].mean())))
    return float(np.mean(errs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    ap.add_argument("--workdir", default=str(ROOT / "build" / "quality"))
    ap.add_argument("--folds", default=None, help="only these folds, e.g. 0,1 (a partial run)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    workdir = Path(args.workdir)
    examples = load_esci_judgments()
    fold_of = np.array(query_folds(examples, FOLDS, args.seed))
    todo = [int(f) for f in args.folds.split(",")] if args.folds else list(range(FOLDS))
    y = np.array([e.hard_label for e in examples])
    queries = [e.query for e in examples]
    n = len(examples)
    raw = {v: np.full(n, np.nan) for v in ("int8", "fp32", "int8_title")}
    for k in todo:
        model_dir = fold_model(workdir, k, args.seed, args.epochs)
        idx = np.flatnonzero(fold_of == k)
        held = [examples[i] for i in idx]
        for variant in ("int8", "fp32"):
            s = Scorer(model_dir, provider="cpu", variant=variant, calibration=None)
            raw[variant][idx] = s.predict([(e.query, e.text()) for e in held])
            if variant == "int8":
                raw["int8_title"][idx] = s.predict([(e.query, e.text(False)) for e in held])
        print(
            f"fold {k}: AUC int8 {roc_auc(y[idx], raw['int8'][idx]):.4f} "
            f"fp32 {roc_auc(y[idx], raw['fp32'][idx]):.4f}",
            file=sys.stderr,
            flush=True,
        )

    print("zero-shot embeddings of the base model", file=sys.stderr, flush=True)
    qtexts = sorted(set(queries))
    qvec = dict(zip(qtexts, embed(qtexts), strict=True))
    qv = np.stack([qvec[q] for q in queries])
    cos_title = (qv * embed([e.text(False) for e in examples])).sum(1)
    cos_fields = (qv * embed([e.text() for e in examples])).sum(1)
    ov = np.array([overlap(e.query, e.title) for e in examples])

    def cv_auc(scores: np.ndarray) -> tuple[float, float]:
        aucs = [roc_auc(y[fold_of == k], scores[fold_of == k]) for k in todo]
        return float(np.mean(aucs)), float(np.std(aucs))

    # cross-fitted calibration of the served (int8) scores
    shown_bad = np.zeros(n, dtype=bool)
    p_good = np.zeros(n)
    for k in todo:
        other = np.isin(fold_of, [j for j in todo if j != k])
        if not other.any():
            other = fold_of == k  # a one-fold run has nothing else to calibrate on
        point = operating_point(y[other], raw["int8"][other])
        alpha, beta = fit_polarisation(y[other], raw["int8"][other])
        m = fold_of == k
        shown_bad[m] = raw["int8"][m] < point["threshold"]
        p_good[m] = polarise(raw["int8"][m], alpha, beta)
    done = np.isin(fold_of, todo)
    yd, bad_true = y[done], (1 - y[done]).astype(float)
    qd = [q for q, d in zip(queries, done, strict=True) if d]
    flagged, p_bad = shown_bad[done], 1 - p_good[done]
    tp = float((flagged & (yd == 0)).sum())
    cos_best = max(cv_auc(cos_title), cv_auc(cos_fields))
    result: dict[str, Any] = {
        "folds": len(todo),
        "pairs": int(done.sum()),
        "queries": len(set(qd)),
        "true_bad_share": float(bad_true.mean()),
        "cv_auc": cv_auc(raw["int8"])[0],
        "cv_auc_sd": cv_auc(raw["int8"])[1],
        "cv_auc_fp32": cv_auc(raw["fp32"])[0],
        "cv_auc_title_only": cv_auc(raw["int8_title"])[0],
        "cv_auc_zero_shot_cosine": cos_best[0],
        "cv_auc_zero_shot_cosine_sd": cos_best[1],
        "cv_auc_query_overlap": cv_auc(ov)[0],
        "shown_rate": float(flagged.mean()),
        "rate_abs_error": abs(float(flagged.mean()) - float(bad_true.mean())),
        "per_query_rate_abs_error": per_query_error(qd, bad_true, flagged.astype(float)),
        "flag_precision": tp / max(1.0, float(flagged.sum())),
        "flag_recall": tp / max(1.0, float(bad_true.sum())),
        "ece": reliability(yd, p_good[done])["ece"],
        "expected_rate": float(p_bad.mean()),
        "expected_rate_abs_error": abs(float(p_bad.mean()) - float(bad_true.mean())),
        "expected_per_query_rate_abs_error": per_query_error(qd, bad_true, p_bad),
        "recipe": DEFAULT_RECIPE.as_dict() | ({"epochs": args.epochs} if args.epochs else {}),
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu": cpu_model(),
        "isa": isa_flags(),
    }
    result["cv_auc_lift_over_cosine"] = result["cv_auc"] - result["cv_auc_zero_shot_cosine"]
    result["int8_auc_drop"] = result["cv_auc_fp32"] - result["cv_auc"]
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
