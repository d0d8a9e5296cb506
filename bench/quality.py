"""Model quality on real human labels: k-fold cross-validation by query on the ESCI judgments.

Run from the repository root with the venv's python:  ``python bench/quality.py``

Every scorer is measured on the same folds (the 150 bundled ESCI queries dealt into 5 folds by
``scoring.training.query_folds``; a query's pairs are never on both sides):

- the student: for each fold, ``relmon model build`` trains on the other four folds with the
  default recipe and exports ONNX; its held-out fold is scored with int8 (served on CPU) and
  fp32. A fold whose model is already in ``--workdir`` with the same recipe is reused
  (``models/relmon-minilm-ce`` is fold 0's model when it was built with the defaults).
- baselines: the untouched all-MiniLM-L6-v2's cosine of query and product embeddings
  (zero-shot, fp32; the better of title-only and title + fields), and the share of query words
  found in the title. The cosine tier as served (``cosine_*``, ``cv_auc_cosine_tier``), the
  page tier and its lone model (results that arrive alone: ``lone_*``, ``cv_auc_lone_tier``)
  read the served embedder's vectors (``cosine_tier_variant``: int8 on CPU).

Rates: calibration is *cross-fitted*: the Platt map and the flag's threshold applied to fold k
are fitted on the other folds, never on fold k (the page tier's P(good) and threshold come from
its model fitted on the other folds' pages, as the build fits them). The rate the dashboard shows
is the expected bad share, the mean calibrated P(bad): ``shown_rate``, with ``rate_abs_error``
against the pooled true bad share and ``per_query_rate_abs_error``, the mean over the 150 queries
of |expected share - true bad share|. The flag (``scoring.training.evaluate.operating_point``:
precision at least 0.6 with 95% confidence on the fitting pairs) is measured on the held-out
folds by ``flag_precision`` (with ``flags``, the flagged pairs, and ``flag_precision_ci``, a 95%
bootstrap interval that resamples queries, since one query's flags are right or wrong together),
``flag_recall`` and ``flagged_rate``.

End to end (``--e2e-impressions``, default 6000; 0 skips it): ``relmon demo`` machinery (broker,
store, worker with the published model, scoring budget off so that every sampled impression is
scored) replays real ESCI traffic with its natural composition;
every stored row's truth is its human grade. ``e2e_true_bad_share`` is the replayed
impressions' true bad share, ``e2e_shown_rate`` the expected bad share the dashboard shows
(weighted mean calibrated P(bad), read with the dashboard's own sums) with its 95% interval,
``e2e_flagged_rate`` the worker's weighted flagged rate, ``e2e_flag_precision`` the share of
flagged rows that people judged bad (``e2e_by_tier``: the same per tier: page, lone, and
cosine for a card without a lone model), and ``e2e_corrected_rate`` the bias-corrected rate
(``relmon.teacher.agreement``) with the review stream graded by a reference judge that answers
with the human grades.

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
from scoring import ModelCard, Scorer  # noqa: E402
from scoring.card import DataSplit  # noqa: E402
from scoring.esci import load_esci_judgments  # noqa: E402
from scoring.metrics import (  # noqa: E402
    cluster_ratio_interval,
    fit_polarisation,
    reliability,
    roc_auc,
)
from scoring.page import LONE_FEATURES, PageModel, fit_logistic  # noqa: E402
from scoring.scorer import polarise  # noqa: E402
from scoring.training import (  # noqa: E402
    DEFAULT_RECIPE,
    FOLDS,
    SERVED_TIER,
    build_model,
    embed,
    operating_point,
    query_folds,
)


def _same_build(model_dir: Path, fold: int, seed: int, epochs: int | None) -> bool:
    if not (model_dir / "card.json").is_file():
        return False
    card = ModelCard.load(model_dir)
    recipe = {**DEFAULT_RECIPE.as_dict(), "seed": seed}
    if epochs:
        recipe["epochs"] = epochs
    return bool(
        card.data == DataSplit(kind="esci-folds", seed=seed, heldout_fold=fold, folds=FOLDS)
        and card.recipe == recipe
        and (card.train_pairs or 0) > 0
        and "synthetic" not in (card.training_data or "").lower()
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


def page_models(
    scorer: Scorer, examples: list[Any], fold_of: np.ndarray, todo: list[int]
) -> dict[int, tuple[PageModel, float]]:
    """The page tier's model and flag threshold for each fold k, fitted as the build fits them.

    ``training_pages``: the other folds' queries' pools and pages cut from them; never fold k's.
    """
    from scoring.training.evaluate import training_pages

    out = {}
    for k in todo:
        other = [j for j in todo if j != k] or [k]
        fit = [e for e, f in zip(examples, fold_of, strict=True) if f in other]
        x, y, w = training_pages(scorer, fit)
        model = fit_logistic(x, y)
        out[k] = model, float(operating_point(y, model.p_good(x), weights=w)["threshold"])
    return out


def page_tier(
    scorer: Scorer,
    models: dict[int, tuple[PageModel, float]],
    examples: list[Any],
    fold_of: np.ndarray,
    fields: bool = True,
) -> np.ndarray:
    """The page tier's P(good), cross-fitted: fold k scored by ``models[k]``.

    Each query's judged pool stands in for its result page (titles only without ``fields``).
    """
    from scoring.training.evaluate import pool_features

    x = pool_features(scorer, examples, fields)
    out = np.zeros(len(examples))
    for k, (model, _) in models.items():
        out[fold_of == k] = model.p_good(x[fold_of == k])
    return out


def lone_tier(
    scorer: Scorer, examples: list[Any], fold_of: np.ndarray, todo: list[int]
) -> tuple[dict[int, tuple[PageModel, float]], np.ndarray, np.ndarray]:
    """The lone model (results that arrive alone), cross-fitted as the build fits it.

    For each fold k, fitted on the other folds' judged pairs (each once) with its threshold
    there; returns those models and thresholds, and every pair's P(good) from its fold's model
    with the product text and with the title only.
    """
    y = np.array([e.hard_label for e in examples])
    x = scorer.lone_features([(e.query, e.text()) for e in examples])
    x_title = scorer.lone_features([(e.query, e.text(False)) for e in examples])
    models, p, p_title = {}, np.zeros(len(examples)), np.zeros(len(examples))
    for k in todo:
        other = np.isin(fold_of, [j for j in todo if j != k] or [k])
        model = fit_logistic(x[other], y[other], names=LONE_FEATURES)
        threshold = float(operating_point(y[other], model.p_good(x[other]))["threshold"])
        models[k] = model, threshold
        p[fold_of == k] = model.p_good(x[fold_of == k])
        p_title[fold_of == k] = model.p_good(x_title[fold_of == k])
    return models, p, p_title


def short_pages(
    scorer: Scorer,
    models: dict[int, tuple[PageModel, float]],
    examples: list[Any],
    fold_of: np.ndarray,
) -> dict[str, float]:
    """The page tier on pages of 10 results (as the replay shows), cross-fitted by fold.

    Four random 10-result pages per held-out query, scored by the model fitted on the other
    folds: AUC, mean P(bad) against the true bad share.
    """
    import random

    from scoring.training.evaluate import example_page

    rng = random.Random(101)
    p_all, y_all, aucs = [], [], []
    for k, (model, _) in models.items():
        pools: dict[str, list[Any]] = {}
        for e, f in zip(examples, fold_of, strict=True):
            if f == k:
                pools.setdefault(e.query, []).append(e)
        ps, ys = [], []
        for query, pool in pools.items():
            for _ in range(4):
                page = rng.sample(pool, min(10, len(pool)))
                ps.append(model.p_good(scorer.page_features(query, example_page(page))))
                ys.append(np.array([e.hard_label for e in page]))
        p, y = np.concatenate(ps), np.concatenate(ys)
        aucs.append(roc_auc(y, p))
        p_all.append(p)
        y_all.append(y)
    p, y = np.concatenate(p_all), np.concatenate(y_all)
    return {
        "page10_cv_auc": float(np.mean(aucs)),
        "page10_expected_rate": float((1 - p).mean()),
        "page10_true_bad_share": float((1 - y).mean()),
        "page10_expected_rate_abs_error": abs(float((1 - p).mean()) - float((1 - y).mean())),
    }


def end_to_end(impressions: int, rate: float) -> dict[str, Any]:
    """Replay real traffic through broker, worker and store; compare rates with the truth."""
    import tempfile
    from datetime import UTC, datetime

    from relmon import db
    from relmon.demo import DemoOptions, run_demo
    from relmon.estimate import Sums, window_sums_sql
    from relmon.kafka import read_topic
    from relmon.settings import Settings, load_settings
    from relmon.stats import RateEstimate
    from relmon.teacher.agreement import Reviewed, corrected_rate
    from schemas.models import ReviewRequest
    from scoring.esci import BAD_GRADES

    grade = {(e.query, str(e.product_id)): e.grade for e in load_esci_judgments()}

    def inspect(s: Settings) -> dict[str, Any]:
        client = db.connect(s)
        try:
            rows = client.query(
                "SELECT query, product_id, is_bad, sample_weight, model_version "
                "FROM scored_impressions FINAL"
            ).result_rows
            # the window's sums as the dashboard reads them (relmon.estimate)
            sums = Sums.from_row(
                next(
                    client.query(
                        window_sums_sql("scored_impressions"),
                        parameters={"since": datetime(1970, 1, 1, tzinfo=UTC)},
                    ).named_results()
                )
            )
        finally:
            client.close()
        reviews = [
            ReviewRequest.model_validate_json(v)
            for _, v in read_topic(s, s.topics.review, idle_s=3.0)
            if v is not None
        ]
        return {"rows": rows, "reviews": reviews, "sums": sums}

    with tempfile.TemporaryDirectory(prefix="relmon-quality-") as home:
        # the scoring budget off: this measures the scorer's rates against the truth, on every
        # sampled impression, not how much of the sample a busy machine's budget lets through
        # (bench/stream.py measures that); the drain waits for the backlog
        settings = load_settings(
            home=Path(home),
            model_dir=ROOT / "models" / "relmon-minilm-ce",
            scoring_budget_pps="0",
        )
        out = run_demo(
            settings,
            DemoOptions(
                dashboard=False,
                alerts=False,
                rate=rate,
                impressions=impressions,
                inspect=inspect,
            ),
        )
    rows, reviews = out["inspected"]["rows"], out["inspected"]["reviews"]
    w = np.array([r[3] for r in rows], dtype=float)
    flagged = np.array([bool(r[2]) for r in rows])
    truly_bad = np.array([grade.get((r[0], r[1]), "E") in BAD_GRADES for r in rows])
    raw = RateEstimate.from_sums(
        len(rows),
        int(flagged.sum()),
        float(w.sum()),
        float((w * flagged).sum()),
        float((w * w).sum()),
    )
    reviewed = [
        Reviewed(
            student_bad=r.score < r.threshold,
            reference_bad=grade.get((r.query, r.product_id), "E") in BAD_GRADES,
            weight=r.sample_weight * r.review_weight,
        )
        for r in {r.impression_id: r for r in reviews}.values()
        if (r.query, r.product_id) in grade
    ]
    corrected = corrected_rate(raw, reviewed)
    expected = out["inspected"]["sums"].expected()
    truth = out["truly_irrelevant"] / max(1, out["impressions"])
    by_tier = {}  # the flag per tier, its precision against the human grades
    tiers = (("page", "minilm-page-"), ("lone", "minilm-lone-"), ("cosine", "minilm-cos-"))
    for name, version in tiers:
        m = np.array([version in str(r[4]) for r in rows])
        hit = m & flagged
        by_tier[name] = {
            "rows": int(m.sum()),
            "flagged_rate": float((w * hit).sum() / max(1e-9, (w * m).sum())),
            "flag_precision": float((w * (hit & truly_bad)).sum() / max(1e-9, (w * hit).sum())),
            "true_bad_share": float((w * (m & truly_bad)).sum() / max(1e-9, (w * m).sum())),
        }
    return {
        "e2e_by_tier": by_tier,
        "e2e_impressions": out["impressions"],
        "e2e_rows": len(rows),
        "e2e_reviews": len(reviewed),
        "e2e_true_bad_share": truth,
        "e2e_sample_true_bad_share": float((w * truly_bad).sum() / w.sum()),
        "e2e_shown_rate": expected.rate,
        "e2e_shown_ci": [expected.ci_low, expected.ci_high],
        "e2e_shown_abs_error": abs(expected.rate - truth),
        "e2e_flagged_rate": raw.rate,
        "e2e_flagged_ci": [raw.ci_low, raw.ci_high],
        "e2e_corrected_rate": corrected.rate,
        "e2e_corrected_ci": [corrected.ci_low, corrected.ci_high],
        "e2e_corrected_covers_truth": corrected.ci_low <= truth <= corrected.ci_high,
        "e2e_flag_precision": corrected.ppv,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    ap.add_argument("--workdir", default=str(ROOT / "build" / "quality"))
    ap.add_argument("--folds", default=None, help="only these folds, e.g. 0,1 (a partial run)")
    ap.add_argument("--e2e-impressions", type=int, default=6000, help="0: no end-to-end replay")
    ap.add_argument("--e2e-rate", type=float, default=200.0, help="impressions/s replayed")
    ap.add_argument(
        "--e2e-only", action="store_true", help="only the end-to-end replay (no cross-validation)"
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.e2e_only:
        out = end_to_end(args.e2e_impressions, args.e2e_rate)
        out.update(seconds=round(time.perf_counter() - t0, 1), cpu=cpu_model(), isa=isa_flags())
        print(json.dumps(out, sort_keys=True))
        return
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
    fields_vec = embed([e.text() for e in examples])
    cos_fields = (qv * fields_vec).sum(1)
    ov = np.array([overlap(e.query, e.title) for e in examples])

    def cv_auc(scores: np.ndarray) -> tuple[float, float]:
        aucs = [roc_auc(y[fold_of == k], scores[fold_of == k]) for k in todo]
        return float(np.mean(aucs)), float(np.std(aucs))

    def rates(
        scores: np.ndarray, page: dict[int, tuple[PageModel, float]] | None = None
    ) -> dict[str, float]:
        """Rate figures of a scorer, calibrated and thresholded by fits on the other folds.

        ``page``: the scores are the page tier's P(good), each fold's threshold fitted with its
        model (as served: no further calibration).
        """
        flags = np.zeros(n, dtype=bool)
        p_good = np.zeros(n)
        for k in todo:
            m = fold_of == k
            if page is not None:
                p_good[m], threshold = scores[m], page[k][1]
            else:
                other = np.isin(fold_of, [j for j in todo if j != k])
                if not other.any():
                    other = m  # a one-fold run has nothing else to calibrate on
                threshold = float(operating_point(y[other], scores[other])["threshold"])
                p_good[m] = polarise(scores[m], *fit_polarisation(y[other], scores[other]))
            flags[m] = scores[m] < threshold
        flagged, p_bad = flags[done], 1 - p_good[done]
        hit = flagged & (yd == 0)
        tp = float(hit.sum())
        # each query's flags rise and fall together: the interval resamples queries, not rows
        ci = cluster_ratio_interval(hit, flagged, qd) if flagged.any() else (0.0, 1.0)
        return {
            "shown_rate": float(p_bad.mean()),
            "rate_abs_error": abs(float(p_bad.mean()) - float(bad_true.mean())),
            "per_query_rate_abs_error": per_query_error(qd, bad_true, p_bad),
            "ece": reliability(yd, p_good[done])["ece"],
            "flagged_rate": float(flagged.mean()),
            "flag_precision": tp / max(1.0, float(flagged.sum())),
            "flag_precision_ci": list(ci),
            "flags": int(flagged.sum()),
            "flag_recall": tp / max(1.0, float(bad_true.sum())),
        }

    done = np.isin(fold_of, todo)
    yd, bad_true = y[done], (1 - y[done]).astype(float)
    qd = [q for q, d in zip(queries, done, strict=True) if d]
    # Fusion with the base model's knowledge: a logistic combination of the student's logit and
    # the zero-shot cosine, cross-fitted the same way (weights from the other folds).
    logit = np.log(np.clip(raw["int8"], 1e-6, 1 - 1e-6) / np.clip(1 - raw["int8"], 1e-6, 1))
    feats = np.c_[logit, cos_title, cos_fields]
    fused = np.zeros(n)
    for k in todo:
        other = np.isin(fold_of, [j for j in todo if j != k]) | (len(todo) == 1)
        fused[fold_of == k] = fit_logistic(feats[other], y[other]).p_good(feats[fold_of == k])
    cos_best = max(cv_auc(cos_title), cv_auc(cos_fields))
    print("the page tier (the served features, fitted per fold)", file=sys.stderr, flush=True)
    # one scorer (its embeddings cached) and one model per fold for every page-tier figure
    embedder = Scorer(ROOT / "models" / "relmon-minilm-ce", provider="cpu", tier="cosine")
    models = page_models(embedder, examples, fold_of, todo)
    page = page_tier(embedder, models, examples, fold_of)
    page_title_only = page_tier(embedder, models, examples, fold_of, fields=False)
    page10 = short_pages(embedder, models, examples, fold_of)
    lone_fits, lone, lone_title_only = lone_tier(embedder, examples, fold_of, todo)
    # the cosine tier as served: the served embedder's vectors (per-token int8 on CPU), not the
    # untouched fp32 model's of the zero-shot baseline above
    served_cos = (
        embedder.embed([e.query for e in examples]) * embedder.embed([e.text() for e in examples])
    ).sum(1)
    tier_rates = {
        "cosine": rates((served_cos + 1) / 2),
        "page": rates(page, models),
        "lone": rates(lone, lone_fits),
        "student": rates(raw["int8"]),
    }
    tiers = {"cosine": (served_cos + 1) / 2, "page": page, "cross-encoder": raw["int8"]}
    served = tiers[SERVED_TIER]
    result: dict[str, Any] = {
        "folds": len(todo),
        "pairs": int(done.sum()),
        "queries": len(set(qd)),
        "true_bad_share": float(bad_true.mean()),
        "served_tier": SERVED_TIER,
        "cv_auc_served": cv_auc(served)[0],
        "cv_auc_served_sd": cv_auc(served)[1],
        "cv_auc": cv_auc(raw["int8"])[0],
        "cv_auc_sd": cv_auc(raw["int8"])[1],
        "cv_auc_fp32": cv_auc(raw["fp32"])[0],
        "cv_auc_title_only": cv_auc(raw["int8_title"])[0],
        "cv_auc_zero_shot_cosine": cos_best[0],
        "cv_auc_zero_shot_cosine_sd": cos_best[1],
        "cv_auc_cosine_tier": cv_auc(served_cos)[0],
        "cosine_tier_variant": embedder.variant,
        "cv_auc_query_overlap": cv_auc(ov)[0],
        "cv_auc_fused_with_cosine": cv_auc(fused)[0],
        "cv_auc_page_tier": cv_auc(page)[0],
        "cv_auc_page_tier_sd": cv_auc(page)[1],
        "cv_auc_page_tier_title_only": cv_auc(page_title_only)[0],
        "cv_auc_lone_tier": cv_auc(lone)[0],
        "cv_auc_lone_tier_sd": cv_auc(lone)[1],
        "cv_auc_lone_tier_title_only": cv_auc(lone_title_only)[0],
        **page10,
        **{f"{name}_{k}": v for name, r in tier_rates.items() for k, v in r.items()},
        **tier_rates["student" if SERVED_TIER == "cross-encoder" else SERVED_TIER],
        "recipe": DEFAULT_RECIPE.as_dict() | ({"epochs": args.epochs} if args.epochs else {}),
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu": cpu_model(),
        "isa": isa_flags(),
    }
    result["cv_auc_lift_over_cosine"] = result["cv_auc"] - result["cv_auc_zero_shot_cosine"]
    result["cv_auc_served_lift_over_cosine"] = (
        result["cv_auc_served"] - result["cv_auc_zero_shot_cosine"]
    )
    if args.e2e_impressions > 0:
        print("end to end: replaying real traffic", file=sys.stderr, flush=True)
        result.update(end_to_end(args.e2e_impressions, args.e2e_rate))
        result["seconds"] = round(time.perf_counter() - t0, 1)
    result["int8_auc_drop"] = result["cv_auc_fp32"] - result["cv_auc"]
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
