"""The build's *evaluate and calibrate* steps: held-out figures, Platt maps, operating points.

The cross-encoder (:func:`evaluate_and_calibrate`) is measured on the held-out fold, fp32 and
int8, with and without product fields; the served CPU variant is int8 unless it loses more than
:data:`MAX_INT8_AUC_DROP` AUC. Its Platt fit maps the raw score to P(good) (applied by the scorer
with RELMON_SCORE_CALIBRATION=card, the default), and its *operating point* is the worker's
default threshold: the highest score below which the flagged pairs are truly bad at least
:data:`FLAG_MIN_PRECISION` of the time with 95% confidence (:func:`operating_point`). A flag is a
case worth a person's time; the bad share itself is estimated by the mean calibrated P(bad)
(README, "What the dashboard shows").

The cosine tier (:func:`cosine_tier`) is not trained, so its calibration and operating point are
fitted on training-fold pairs and its held-out figures are out-of-sample.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from relmon.stats import wilson
from scoring.card import (
    Calibration,
    CrossEncoderHeldout,
    ModelCard,
    OperatingPoint,
    PageModelCard,
    TierCard,
    TierHeldout,
)
from scoring.data import Example
from scoring.embedding import EMBED_INT8_FILE
from scoring.metrics import evaluate_model, fit_polarisation, reliability, roc_auc
from scoring.page import ANCHORS, FEATURES, LONE_FEATURES, PageContext, fit_logistic
from scoring.scorer import Scorer, polarise
from scoring.text import category_leaf
from scoring.training.data import esci_split

__all__ = [
    "COSINE_FIT_PAIRS",
    "MAX_INT8_AUC_DROP",
    "cosine_tier",
    "embedding_tiers",
    "evaluate_and_calibrate",
    "lone_tier",
    "operating_point",
    "page_tier",
    "pool_features",
    "pool_pages",
]

MAX_INT8_AUC_DROP = 0.005  # above it, the card makes fp32 the CPU default
FLAG_MIN_PRECISION = 0.6  # a flagged case is truly bad at least this often
FLAG_CONFIDENCE_Z = 1.645  # one-sided 95%: the precision's lower bound must reach it
COSINE_FIT_PAIRS = 2000  # training-fold pairs the cosine tier's calibration is fitted on


def operating_point(
    labels: np.ndarray,
    scores: np.ndarray,
    min_precision: float = FLAG_MIN_PRECISION,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """The flag's threshold: the highest score below which the flag is right often enough.

    Labels are 1 = good; a pair is flagged bad when its score is below the threshold. Rule
    ``"precision"``: among the cut points between distinct scores, the highest one whose flagged
    pairs' precision has a one-sided 95% Wilson lower bound of at least ``min_precision`` (a
    bound, not the observed share, so that the precision holds on new queries too, not only on
    the fitting ones). A scorer too weak to get there gets rule
    ``"rate"``: the cut point at which the share flagged equals the true bad share, so that it
    still flags as many results as are bad, at the precision it has. Returns the threshold with
    the rule, the flagged share, the true bad share, and the precision (with its lower bound)
    and recall of the flag.

    ``weights`` (default 1 each) count each pair: a pair that is in several fitting pages
    (:func:`training_pages`) is one judgment, so its rows are weighted 1/their number, and the
    bound is as wide as the judgments it rests on, not as the rows.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    w = np.ones(len(s)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    ranked, bad, w = s[order], ~y[order], w[order]
    flagged = np.cumsum(w)
    hits = np.cumsum(w * bad)
    low = np.array(
        [wilson(h / n, n, FLAG_CONFIDENCE_Z)[0] for h, n in zip(hits, flagged, strict=True)]
    )
    cut = np.flatnonzero(np.r_[ranked[1:] > ranked[:-1], False])  # a threshold fits after i
    met = cut[low[cut] >= min_precision]
    if len(met):
        i = int(met.max())
    else:  # the cut point nearest to flagging the true bad share
        bad_weight = float((w * bad).sum())
        i = int(cut[np.argmin(np.abs(flagged[cut] - bad_weight))]) if len(cut) else len(s) - 1
    last = i + 1 == len(s)  # every score equal: everything flagged
    threshold = float(np.nextafter(ranked[i], np.inf) if last else (ranked[i] + ranked[i + 1]) / 2)
    tp = float(hits[i])
    return {
        "threshold": threshold,
        "rule": "precision" if len(met) else "rate",
        "flagged_share": float(flagged[i] / flagged[-1]),
        "true_bad_share": float(hits[-1] / flagged[-1]),
        "precision": float(tp / flagged[i]),
        "precision_lower_bound": float(low[i]),
        "min_precision": min_precision,
        "recall": tp / max(1.0, float(hits[-1])),
    }


def _card_point(point: dict[str, Any], alpha: float, beta: float, **where: str) -> OperatingPoint:
    """:func:`operating_point`'s point for the card, with its threshold on the calibrated scale."""
    calibrated = float(polarise(np.array([point["threshold"]]), alpha, beta)[0])
    return OperatingPoint.model_validate({**point, "threshold_calibrated": calibrated, **where})


def _heldout(
    y: np.ndarray,
    scores: np.ndarray,
    title_only: np.ndarray,
    threshold: float,
    p_good: np.ndarray | None = None,
) -> TierHeldout:
    """A tier's held-out figures: AUC, with titles only, the flag at ``threshold`` and the ECE.

    ``scores`` are what the threshold applies to; ``p_good`` their calibrated P(good) (by
    default the scores themselves) for the ECE.
    """
    flagged = scores < threshold
    tp = float((flagged & (y == 0)).sum())
    return TierHeldout(
        auc=roc_auc(y, scores),
        auc_title_only=roc_auc(y, title_only),
        true_bad_share=float((y == 0).mean()),
        flagged_share=float(flagged.mean()),
        flag_precision=tp / max(1.0, float(flagged.sum())),
        flag_recall=tp / max(1.0, float((y == 0).sum())),
        ece=reliability(y, scores if p_good is None else p_good)["ece"],
    )


def _version(prefix: str, digest: str, spec: dict[str, Any]) -> str:
    """A fitted model's version: ``prefix`` and a hash of the embedder's digest and the model."""
    h = hashlib.sha256((digest + json.dumps(spec, sort_keys=True)).encode()).hexdigest()
    return f"{prefix}-{h[:12]}"


def evaluate_and_calibrate(
    model_dir: Path, card: ModelCard, heldout: Sequence[Example], max_length: int
) -> ModelCard:
    """``card`` with the served CPU variant, held-out figures, calibration and operating point.

    ``model_dir`` holds the exported cross-encoder and ``card`` (its versions name the scores).
    """
    triples = [(e.query, e.text(), e.hard_label) for e in heldout]
    ev = evaluate_model(
        model_dir, triples, max_length=max_length, grades=[e.grade for e in heldout]
    )
    drop = ev["fp32"]["auc"] - ev["int8"]["auc"]
    served: Literal["int8", "fp32"] = "int8" if drop <= MAX_INT8_AUC_DROP else "fp32"
    title_only = evaluate_model(
        model_dir,
        [(e.query, e.text(fields=False), e.hard_label) for e in heldout],
        variants=(served,),
        max_length=max_length,
        fit_calibration=False,
    )
    labels = np.array([e.hard_label for e in heldout])
    raw = Scorer(model_dir, provider="cpu", variant=served, max_length=max_length).predict(
        [(e.query, e.text()) for e in heldout]
    )
    alpha, beta = fit_polarisation(labels, raw)
    point = operating_point(labels, raw)
    heldout_figures = CrossEncoderHeldout.model_validate(
        {
            "auc_fp32": ev["fp32"]["auc"],
            "auc_int8": ev["int8"]["auc"],
            "int8_auc_drop": drop,
            f"auc_{served}_title_only": title_only[served]["auc"],
            "auc_served_check": roc_auc(labels, raw),
            "true_bad_share": point["true_bad_share"],
            "flag_precision": point["precision"],
            "flag_recall": point["recall"],
            "ece_fp32": ev["fp32"]["calibration"]["ece"],
            "ece_int8": ev["int8"]["calibration"]["ece"],
            "fp32_int8_pearson": ev["agreement"]["pearson"],
            "fp32_int8_max_abs_diff": ev["agreement"]["max_abs_diff"],
        }
    )
    return card.model_copy(
        update={
            "cpu_default_variant": served,
            "calibration": Calibration(
                alpha=alpha,
                beta=beta,
                method="Platt (logistic) fit of the good/bad labels on the served variant's "
                "raw held-out scores",
            ),
            "operating_point": _card_point(
                point, alpha, beta, variant=served, fitted_on=f"{len(heldout)} held-out pairs"
            ),
            "heldout": heldout_figures,
            "evaluation": ev,
        }
    )


def embedding_tiers(
    model_dir: Path, digest: str, seed: int, heldout_fold: int
) -> dict[str, TierCard]:
    """The card entries of the tiers on ``embed.onnx`` (in ``model_dir``): cosine, page, lone.

    Both are fitted on training-fold pairs (the base model is not trained, so their figures on
    the held-out fold are out of sample) and share one scorer, so each text is embedded once.
    ``card.json`` in ``model_dir`` is a placeholder naming the cosine tier afterwards (the scorer
    reads its version from it); the build rewrites it.
    """
    train, held = esci_split(seed, heldout_fold)
    entry = TierCard(
        model_version=f"minilm-cos-{digest[:12]}",
        file=EMBED_INT8_FILE,  # the vectors its figures and model come from
        task="cosine of the untouched all-MiniLM-L6-v2's mean-pooled embeddings of the query "
        "and the product text; (cos + 1) / 2 = raw score, the tier's calibration maps it to "
        "P(good: ESCI E or S)",
    )
    placeholder = ModelCard(model_version="building", tiers={"cosine": entry})
    (model_dir / "card.json").write_text(json.dumps(placeholder.to_json()), encoding="utf-8")
    # the tiers are fitted on the vectors served on CPU: the per-token int8 embedder's
    scorer = Scorer(model_dir, provider="cpu", tier="cosine", variant="int8")
    return {
        "cosine": cosine_tier(scorer, entry, seed, train, held),
        "page": page_tier(scorer, digest, train, held),
        "lone": lone_tier(scorer, digest, train, held),
    }


def cosine_tier(
    scorer: Scorer,
    entry: TierCard,
    seed: int,
    train: Sequence[Example],
    held: Sequence[Example],
) -> TierCard:
    """The cosine tier's ``entry`` with its calibration, operating point and held-out figures."""
    fit = random.Random(seed + 5).sample(list(train), min(COSINE_FIT_PAIRS, len(train)))
    y_fit = np.array([e.hard_label for e in fit])
    s_fit = scorer.predict([(e.query, e.text()) for e in fit])
    alpha, beta = fit_polarisation(y_fit, s_fit)
    point = operating_point(y_fit, s_fit)
    y = np.array([e.hard_label for e in held])
    raw = scorer.predict([(e.query, e.text()) for e in held])
    title_only = scorer.predict([(e.query, e.text(fields=False)) for e in held])
    return entry.model_copy(
        update={
            "calibration": Calibration(
                alpha=alpha,
                beta=beta,
                method=f"Platt (logistic) fit on {len(fit)} training-fold pairs",
            ),
            "operating_point": _card_point(
                point, alpha, beta, fitted_on=f"{len(fit)} training-fold pairs"
            ),
            "heldout": _heldout(y, raw, title_only, point["threshold"], polarise(raw, alpha, beta)),
        }
    )


def pool_pages(examples: Sequence[Example], fields: bool = True) -> list[tuple[str, PageContext]]:
    """Each query's judged pool as its result page (in data order), with the examples' order.

    The judged pool is the closest thing to a result page the real labels have: the products
    one query's results were drawn from. Without ``fields`` the page is titles only and no
    category is known (as a catalogue that sends titles only).
    """
    pools: dict[str, list[Example]] = {}
    for e in examples:
        pools.setdefault(e.query, []).append(e)
    return [(query, example_page(pool, fields)) for query, pool in pools.items()]


def example_page(page: Sequence[Example], fields: bool = True) -> PageContext:
    """Judged examples of one query as a result page, in order (titles only without ``fields``)."""
    return PageContext.of(
        texts=[e.text(fields) for e in page],
        categories=[(category_leaf(e.category) or "") if fields else "" for e in page],
        titles=[e.title for e in page],
    )


def pool_features(scorer: Scorer, examples: Sequence[Example], fields: bool = True) -> np.ndarray:
    """The page features of every example (rows in ``examples``' order), pools as pages."""
    rows: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        rows.setdefault(e.query, []).append(i)
    out = np.empty((len(examples), len(FEATURES)))
    for query, page in pool_pages(examples, fields):
        out[rows[query]] = scorer.page_features(query, page)
    return out


PAGE_SIZES = ((10, 4), (20, 2))
"""Besides each whole pool, the page tier is fitted on random pages cut from it: (results, pages
per query). A served page has 10-50 results; a pool about 45 (see :data:`scoring.page.FEATURES`,
``log_page_size``)."""


def training_pages(
    scorer: Scorer, examples: Sequence[Example], seed: int = 13
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The page features, labels and weights the page tier is fitted on: pools and pages.

    Each query's whole judged pool, then :data:`PAGE_SIZES` random pages drawn from it without
    replacement (seeded). A pair is in several pages, each time with its page's features; its
    rows' weights are 1/their number, so that the weights add up to the judged pairs (what
    :func:`operating_point`'s bound may count).
    """
    pools: dict[str, list[Example]] = {}
    for e in examples:
        pools.setdefault(e.query, []).append(e)
    rng = random.Random(seed)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    pair: list[int] = []  # the row's judged pair, by its index in ``examples``
    index = {id(e): i for i, e in enumerate(examples)}
    for query, pool in pools.items():
        pages = [pool] + [
            rng.sample(pool, min(size, len(pool))) for size, n in PAGE_SIZES for _ in range(n)
        ]
        for page in pages:
            xs.append(scorer.page_features(query, example_page(page)))
            ys.extend(e.hard_label for e in page)
            pair.extend(index[id(e)] for e in page)
    rows_of_pair = np.bincount(pair, minlength=len(examples))
    return np.vstack(xs), np.array(ys), 1.0 / rows_of_pair[pair]


def page_tier(
    scorer: Scorer, digest: str, train: Sequence[Example], held: Sequence[Example]
) -> TierCard:
    """The page tier's card entry: its model fitted on the training queries' pages.

    ``scorer`` serves the cosine tier (its embeddings are the features' source); ``digest`` is
    ``embed.onnx``'s sha256. The model and its operating point are fitted on the training
    queries' pools and pages cut from them (:func:`training_pages`); the held-out figures are
    out of sample, on the held-out queries' whole pools.
    """
    x_fit, y_fit, w_fit = training_pages(scorer, train)
    model = fit_logistic(x_fit, y_fit)
    p_fit = model.p_good(x_fit)
    point = operating_point(y_fit, p_fit, weights=w_fit)
    y = np.array([e.hard_label for e in held])
    p = model.p_good(pool_features(scorer, held))
    title_only = model.p_good(pool_features(scorer, held, fields=False))
    spec = model.to_json()
    queries = len({e.query for e in train})
    return TierCard(
        model_version=_version("minilm-page", digest, spec),
        file=EMBED_INT8_FILE,  # the vectors its figures and model come from
        task="P(good: ESCI E or S) of a result on its result page: a logistic model of the "
        "cosine of query and product, the product's cosine to the centroid of the page's "
        f"{ANCHORS} most query-like results, the page's share in its category leaf, the "
        "log of the page's size, whether the title names what the product is for, the "
        "cosine of query and title head minus the whole text's, whether the query asks for "
        "results without something, and whether the title names that (scoring.page)",
        operating_point=OperatingPoint.model_validate(
            {
                **point,
                "fitted_on": f"{len(y_fit)} results of training-fold pages, each of their "
                f"{round(float(w_fit.sum()))} judged pairs counted once",
            }
        ),
        heldout=_heldout(y, p, title_only, point["threshold"]),
        page_model=PageModelCard.model_validate(
            {
                **spec,
                "fitted_on": f"{len(y_fit)} results of {queries} training queries' pools and "
                f"pages of {' and '.join(str(n) for n, _ in PAGE_SIZES)} cut from them",
            }
        ),
    )


def lone_tier(
    scorer: Scorer, digest: str, train: Sequence[Example], held: Sequence[Example]
) -> TierCard:
    """The lone model's card entry: the page tier's model of results that arrive alone.

    A logistic model of the features that need no page (:data:`scoring.page.LONE_FEATURES`,
    computed as served: :meth:`Scorer.lone_features`), fitted on the training queries' judged
    pairs, each once; its operating point on the same pairs; held-out figures out of sample.
    """
    y_fit = np.array([e.hard_label for e in train])
    x_fit = scorer.lone_features([(e.query, e.text()) for e in train])
    model = fit_logistic(x_fit, y_fit, names=LONE_FEATURES)
    point = operating_point(y_fit, model.p_good(x_fit))
    y = np.array([e.hard_label for e in held])
    p = model.p_good(scorer.lone_features([(e.query, e.text()) for e in held]))
    title_only = model.p_good(scorer.lone_features([(e.query, e.text(False)) for e in held]))
    spec = model.to_json()
    queries = len({e.query for e in train})
    return TierCard(
        model_version=_version("minilm-lone", digest, spec),
        file=EMBED_INT8_FILE,
        task="P(good: ESCI E or S) of a result that arrives without its page: a logistic "
        "model of the page tier's features that need no page (the cosine of query and "
        "product, whether the title names what the product is for, the cosine of query and "
        "title head minus the whole text's, whether the query asks for results without "
        "something, and whether the title names that; scoring.page.LONE_FEATURES)",
        operating_point=OperatingPoint.model_validate(
            {**point, "fitted_on": f"{len(y_fit)} judged pairs of {queries} training queries"}
        ),
        heldout=_heldout(y, p, title_only, point["threshold"]),
        page_model=PageModelCard.model_validate(
            {**spec, "fitted_on": f"{len(y_fit)} judged pairs of {queries} training queries"}
        ),
    )
