"""Experiments on the tiers and the student that were measured and not served (README, "Model").

Run from the repository root with the venv's python (needs the ``train`` extra: torch)::

    python bench/quality_experiments.py biencoder --split inner --lr 3e-5
    python bench/quality_experiments.py biencoder --split cv --lr 3e-5
    python bench/quality_experiments.py neighbours
    python bench/quality_experiments.py targets
    python bench/quality_experiments.py precision
    python bench/quality_experiments.py query-words
    python bench/quality_experiments.py layers
    python bench/quality_experiments.py complements
    python bench/quality_experiments.py negation
    python bench/quality_experiments.py lone

Every figure is an AUC of good (ESCI E, S) against bad (C, I) on the bundled real ESCI
judgments, split by query: ``cv`` is the 5 folds of ``bench/quality.py`` (each fold scored by
models fitted on the other four); ``inner`` splits fold 0's 120 training queries into 96 to fit
and 24 to validate (seeded), so that settings are chosen without looking at any test fold. The
page tier here is its four features from before the title heads (``scoring.page``: cosine,
anchored cosine, category share, page size) on each query's whole judged pool, with
the logistic model fitted on the fitting queries' pools (the build also fits on pages cut from
them).

- ``biencoder``: the base model fine-tuned as a bi-encoder with a RankNet loss inside each
  query's pool (every pair of products with different grades; softplus of ``--scale`` x the
  cosine gap, weighted by the grade gap), one query and its pool per step, the embeddings and
  ``--frozen`` lower layers frozen. Prints the cosine's and the page tier's AUC with the base
  model's embeddings and with the fine-tuned ones (and both embeddings' features together).
- ``neighbours``: label transfer without training: the share of good labels among a pair's
  nearest fitting pairs (by the cosines of their queries and products), alone and as a fifth
  feature of the page tier, on the inner split.
- ``targets``: the page tier's logistic model fitted on other targets than good/bad: the
  ESCI grade as a soft target (E 1.0, S 0.6, C 0.3, I 0.0), or exact against the rest; on the
  inner split and the 5 folds.
- ``query-words``: the page tier with features of the query's words added: its length, whether
  it has a digit (a size, a model, a count), the share of its numbers found in the product
  text (as is, and against the page's mean), and the digit's interaction with the cosine.
- ``layers``: smaller students (issue 12: less work per pair): the cross-encoder trained with
  the build's recipe on the body's lowest 3 layers instead of all 6 (with 0 or 1 of them
  frozen, chosen on the inner split), its AUC on each held-out fold (torch fp32, product text
  with fields), and each model's torch scoring speed on fold 0's held-out pairs (the same
  pairs, interleaved rounds).
- ``complements``: ESCI's complements (C: an accessory or part *for* the thing searched, such
  as a case for a phone) are close to the query in meaning and judged bad. The page tier with
  features of the title's head, the words before its first "for" / "compatible with" / "fits":
  whether the title has such a marker, the cosine of the query and the head alone, and that
  minus the whole text's cosine; then the variant served (:func:`scoring.text.title_head`: that
  difference only where the title has a marker and words before it, so that only those titles
  cost an embedding), and three more features measured on top of it and not served.
- ``negation``: a quarter of the ESCI queries ask for results *without* something ("cat
  treats without chicken"), which an embedding reads as close to the thing excluded. The page
  tier's six features before the negation features, then with features of the excluded words
  (:func:`scoring.text.without_words`): whether the query excludes something, whether the
  title mentions an excluded word at all, whether the product text or the title names one
  where it does not negate it (:func:`scoring.text.names_any`: "Chicken-Free" does not), the
  variant served (the first and the last of these), and the cosine of the excluded words and
  the product; on the inner split and the 5 folds.
- ``lone``: results that arrive without their page. The cosine alone against a logistic model
  of the page tier's features that need no page (:data:`scoring.page.LONE_FEATURES`: the
  cosine, the title head's two, the negation's two; served as the page tier's lone model), and
  each of the two groups on its own; fitted on the fitting queries' judged pairs, on the inner
  split and the 5 folds.
- ``precision``: the precision and recall of the bad flag as the threshold is raised, from the
  page tier's cross-fitted P(good) (how far a flag right 6 times in 10 reaches).

Each prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoring.data import GRADE_TARGETS, Example  # noqa: E402
from scoring.esci import load_esci_judgments  # noqa: E402
from scoring.metrics import roc_auc  # noqa: E402
from scoring.page import (  # noqa: E402
    FEATURES,
    LONE_COLUMNS,
    fit_logistic,
    negated_in_titles,
    page_features,
)
from scoring.text import category_leaf, names_any, title_head, without_words  # noqa: E402
from scoring.training import FOLDS, query_folds  # noqa: E402
from scoring.training.finetune import (  # noqa: E402
    base_model_path,
    pooled_embeddings,
    text_encodings,
)

EMBED_MAX_LENGTH = 128  # as served (scoring.embedding)


def inner_split(examples: Sequence[Example], fold_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold 0's training queries: 96 to fit, 24 to validate (rows of ``examples``)."""
    train = np.flatnonzero(fold_of != 0)
    queries = sorted({examples[i].query for i in train})
    random.Random(7).shuffle(queries)
    held = set(queries[:24])
    fit = np.array([i for i in train if examples[i].query not in held])
    val = np.array([i for i in train if examples[i].query in held])
    return fit, val


def splits(split: str, examples: Sequence[Example], fold_of: np.ndarray) -> list[Any]:
    """(name, fitting rows, scored rows) of each split."""
    if split == "inner":
        return [("inner", *inner_split(examples, fold_of))]
    return [
        (f"fold {k}", np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k))
        for k in range(FOLDS)
    ]


class Embedder:
    """Mean-pooled, unit-length embeddings of a (maybe fine-tuned) MiniLM body, as served."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def pooled(self, texts: Sequence[str], max_length: int) -> Any:
        """Embeddings of ``texts`` as a torch tensor (with gradients when training)."""
        return pooled_embeddings(self.model, text_encodings(texts, max_length))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self.model.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float64)
        with torch.inference_mode():
            for s in range(0, len(order), 64):
                idx = order[s : s + 64]
                out[idx] = self.pooled([texts[i] for i in idx], EMBED_MAX_LENGTH).numpy()
        return out


def base_body() -> Any:
    from transformers import AutoModel

    return AutoModel.from_pretrained(base_model_path(), local_files_only=True)


def vectors(embedder: Embedder, examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    """Every example's query and product (title + fields) vectors."""
    queries = sorted({e.query for e in examples})
    qv = dict(zip(queries, embedder.embed(queries), strict=True))
    return np.stack([qv[e.query] for e in examples]), embedder.embed([e.text() for e in examples])


def features(
    examples: Sequence[Example],
    q: np.ndarray,
    p: np.ndarray,
    heads: Sequence[np.ndarray | None] | None = None,
    negation: bool = False,
) -> np.ndarray:
    """The page tier's features of every example, each query's whole pool as its page.

    Without ``heads`` (each example's title-head vector, or None), the four features served
    before the title heads (cosine, anchored cosine, category share, page size), which most
    experiments below were measured on; with them, the six served before the negation
    features; with ``negation`` too, all of :data:`scoring.page.FEATURES`.
    """
    out = np.zeros((len(examples), len(FEATURES)))
    pools: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        pools.setdefault(e.query, []).append(i)
    for rows in pools.values():
        cats = [category_leaf(examples[i].category) or "" for i in rows]
        on_page = [None] * len(rows) if heads is None else [heads[i] for i in rows]
        query = examples[rows[0]].query
        negated = negated_in_titles(query, [examples[i].title for i in rows])
        out[rows] = page_features(q[rows[0]], p[rows], cats, on_page, negated)
    if heads is None:
        return out[:, :4]
    return out if negation else out[:, :6]


def page_auc(x: np.ndarray, y: np.ndarray, fit: np.ndarray, scored: np.ndarray) -> float:
    return roc_auc(y[scored], fit_logistic(x[fit], y[fit]).p_good(x[scored]))


def print_variant_aucs(
    variants: dict[str, np.ndarray],
    y: np.ndarray,
    examples: Sequence[Example],
    fold_of: np.ndarray,
) -> None:
    """The page tier's AUC with each variant's features, on the inner split and the 5 folds."""
    for name, xv in variants.items():
        for split in ("inner", "cv"):
            aucs = [
                page_auc(xv, y, fit, scored) for _, fit, scored in splits(split, examples, fold_of)
            ]
            print(
                json.dumps(
                    {"variant": name, "split": split, "auc": float(np.mean(aucs)), "folds": aucs}
                )
            )


def fine_tune(examples: Sequence[Example], args: argparse.Namespace) -> Any:
    """The base body fine-tuned with an in-pool RankNet loss on ``examples``."""
    import torch

    torch.manual_seed(args.seed)
    body = base_body()
    for p in body.embeddings.parameters():
        p.requires_grad = False
    for layer in body.encoder.layer[: args.frozen]:
        for p in layer.parameters():
            p.requires_grad = False
    params = [p for p in body.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    pools: dict[str, list[Example]] = {}
    for e in examples:
        pools.setdefault(e.query, []).append(e)
    queries = sorted(pools)
    total = len(queries) * args.epochs
    warm = max(1, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    embedder = Embedder(body)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        body.train()
        rng.shuffle(queries)
        for step, query in enumerate(queries, 1):
            pool = pools[query]
            texts = [e.text(rng.random() >= 0.3) for e in pool]  # fields dropped for 30%
            target = torch.tensor([GRADE_TARGETS[e.grade.lower()] for e in pool])
            cos = embedder.pooled(texts, args.max_length) @ embedder.pooled([query], 64)[0]
            gap = target[:, None] - target[None, :]  # > 0: i better than j
            better = gap > 0
            if not better.any():
                continue
            loss = torch.nn.functional.softplus(args.scale * (cos[None, :] - cos[:, None]))
            loss = (loss * gap)[better].sum() / gap[better].sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step % 30 == 0:
                print(f"  step {step}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return body.eval()


def biencoder(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(2)
    examples = load_esci_judgments()
    fold_of = np.array(query_folds(examples, FOLDS, 13))
    y = np.array([e.hard_label for e in examples])
    base_x = features(examples, *vectors(Embedder(base_body()), examples))
    rows = []
    for name, fit, scored in splits(args.split, examples, fold_of):
        tuned = fine_tune([examples[i] for i in fit], args)
        x = features(examples, *vectors(Embedder(tuned), examples))
        both = np.c_[x, base_x[:, :3]]
        row = {
            "split": name,
            "cosine_base": roc_auc(y[scored], base_x[scored, 0]),
            "cosine_tuned": roc_auc(y[scored], x[scored, 0]),
            "page_base": page_auc(base_x, y, fit, scored),
            "page_tuned": page_auc(x, y, fit, scored),
            "page_both": page_auc(both, y, fit, scored),
            "settings": {k: getattr(args, k) for k in ("lr", "epochs", "frozen", "scale")},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = ("cosine_base", "cosine_tuned", "page_base", "page_tuned", "page_both")
    print(json.dumps({"mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}}))


def neighbour_labels(
    q: np.ndarray, p: np.ndarray, y: np.ndarray, fit: np.ndarray, scored: np.ndarray, k: int
) -> np.ndarray:
    """Share of good labels among each scored pair's ``k`` nearest fitting pairs."""
    sim = q[scored] @ q[fit].T + p[scored] @ p[fit].T
    top = np.argpartition(-sim, k, axis=1)[:, :k]
    return y[fit][top].mean(axis=1)


def neighbours(args: argparse.Namespace) -> None:
    examples = load_esci_judgments()
    fold_of = np.array(query_folds(examples, FOLDS, 13))
    y = np.array([e.hard_label for e in examples])
    queries = np.array([e.query for e in examples])
    q, p = vectors(Embedder(base_body()), examples)
    x = features(examples, q, p)
    fit, val = inner_split(examples, fold_of)
    for k in (20, 100):
        on_val = neighbour_labels(q, p, y, fit, val, k)
        on_fit = np.empty(len(fit))  # each fitting query's own pairs left out
        for query in set(queries[fit]):
            own = queries[fit] == query
            on_fit[own] = neighbour_labels(q, p, y, fit[~own], fit[own], k)
        model = fit_logistic(np.c_[x[fit], on_fit], y[fit])
        row = {
            "neighbours": k,
            "alone": roc_auc(y[val], on_val),
            "page": page_auc(x, y, fit, val),
            "page_with_neighbours": roc_auc(y[val], model.p_good(np.c_[x[val], on_val])),
        }
        print(json.dumps(row), flush=True)


def targets(args: argparse.Namespace) -> None:
    examples = load_esci_judgments()
    fold_of = np.array(query_folds(examples, FOLDS, 13))
    y = np.array([e.hard_label for e in examples])
    grade = np.array([GRADE_TARGETS[e.grade.lower()] for e in examples])
    x = features(examples, *vectors(Embedder(base_body()), examples))
    for name, target in (("good", y), ("graded", grade), ("exact", (grade == 1.0) * 1.0)):
        for split in ("inner", "cv"):
            aucs = [
                roc_auc(y[scored], fit_logistic(x[fit], target[fit]).p_good(x[scored]))
                for _, fit, scored in splits(split, examples, fold_of)
            ]
            print(json.dumps({"target": name, "split": split, "auc": float(np.mean(aucs))}))


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _numbers_found(e: Example) -> float:
    """Share of the query's numbers that the product text contains (0 without any)."""
    numbers = _NUMBER.findall(e.query.lower())
    if not numbers:
        return 0.0
    text = set(_NUMBER.findall(e.text().lower()))
    return sum(n in text for n in numbers) / len(numbers)


def query_words(args: argparse.Namespace) -> None:
    examples = load_esci_judgments()
    fold_of = np.array(query_folds(examples, FOLDS, 13))
    y = np.array([e.hard_label for e in examples])
    x = features(examples, *vectors(Embedder(base_body()), examples))
    words = np.log([len(e.query.split()) for e in examples])
    digit = np.array([any(c.isdigit() for c in e.query) for e in examples], dtype=np.float64)
    found = np.array([_numbers_found(e) for e in examples])
    pools: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        pools.setdefault(e.query, []).append(i)
    found_rel = found.copy()  # against the page's mean
    for rows in pools.values():
        found_rel[rows] -= found[rows].mean()
    print(
        json.dumps(
            {
                "queries_with_a_digit": len(
                    {e.query for e, d in zip(examples, digit, strict=True) if d}
                )
            }
        )
    )
    variants = {
        "page tier": x,
        "+ log query words": np.c_[x, words],
        "+ query has a digit": np.c_[x, digit],
        "+ digit, numbers found": np.c_[x, digit, found],
        "+ digit, numbers found against the page": np.c_[x, digit, found_rel],
        "+ digit, digit x cosine": np.c_[x, digit, digit * x[:, 0]],
    }
    print_variant_aucs(variants, y, examples, fold_of)


_FOR = re.compile(r"\b(?:for|compatible with|fits)\b", re.IGNORECASE)


def judged_vectors() -> tuple[list[Example], np.ndarray, np.ndarray, Embedder, np.ndarray, Any]:
    """The judgments, their folds, good labels, the base embedder, and query / product vectors."""
    examples = load_esci_judgments()
    fold_of = np.array(query_folds(examples, FOLDS, 13))
    y = np.array([e.hard_label for e in examples])
    embedder = Embedder(base_body())
    return examples, fold_of, y, embedder, *vectors(embedder, examples)


def head_vectors(embedder: Embedder, examples: Sequence[Example]) -> list[np.ndarray | None]:
    """Each example's title-head vector as served (:func:`scoring.text.title_head`), or None."""
    heads = [title_head(e.title) for e in examples]
    found = sorted({h for h in heads if h})
    vector = dict(zip(found, embedder.embed(found), strict=True))
    return [None if h is None else vector[h] for h in heads]


def complements(args: argparse.Namespace) -> None:
    examples, fold_of, y, embedder, q, p = judged_vectors()
    x = features(examples, q, p)
    heads = [_FOR.split(e.title, maxsplit=1)[0].strip() or e.title for e in examples]
    marker = np.array([bool(_FOR.search(e.title)) for e in examples], dtype=np.float64)
    h = embedder.embed(heads)
    cos_head = (q * h).sum(axis=1)
    cos_full = (q * p).sum(axis=1)
    grades = np.array([e.grade for e in examples])
    print(
        json.dumps(
            {
                "with_marker_by_grade": {
                    g: float(marker[grades == g].mean()) for g in ("E", "S", "C", "I")
                }
            }
        )
    )
    # as served (scoring.page): a head only where the title has a marker and words before it,
    # so that only those titles cost an embedding
    served_heads = [title_head(e.title) for e in examples]
    found = [t for t in served_heads if t is not None]
    vector = dict(zip(found, embedder.embed(found), strict=True))
    served = features(examples, q, p, [None if t is None else vector[t] for t in served_heads])
    variants = {
        "page tier": x,
        "+ marker": np.c_[x, marker],
        "+ head cosine": np.c_[x, cos_head],
        "+ marker, head cosine minus whole": np.c_[x, marker, cos_head - cos_full],
        "+ marker, head cosine, marker x head cosine": np.c_[
            x, marker, cos_head, marker * cos_head
        ],
        "+ marker, head cosine minus whole, with a marker only (served)": served,
    }
    print_variant_aucs(variants, y, examples, fold_of)
    # measured after the served variant was chosen, on top of it; none served (README)
    query_marker = np.array([bool(_FOR.search(e.query)) for e in examples], dtype=np.float64)
    accessory = np.array(
        [bool(_ACCESSORY.search(e.title)) and not _ACCESSORY.search(e.query) for e in examples],
        dtype=np.float64,
    )
    digit = np.array([any(c.isdigit() for c in e.query) for e in examples], dtype=np.float64)
    after = {
        "served + the query has a marker": np.c_[served, query_marker],
        "served + an accessory word in the title, not in the query": np.c_[served, accessory],
        "served + the query has a digit": np.c_[served, digit],
    }
    print_variant_aucs(after, y, examples, fold_of)


def negation(args: argparse.Namespace) -> None:
    examples, fold_of, y, embedder, q, p = judged_vectors()
    on_page = head_vectors(embedder, examples)
    before = features(examples, q, p, on_page)  # the six features served before
    words = [without_words(e.query) for e in examples]
    asks = np.array([bool(w) for w in words], dtype=np.float64)
    print(
        json.dumps(
            {
                "queries_that_exclude": len(
                    {e.query for e, w in zip(examples, words, strict=True) if w}
                )
            }
        )
    )

    def flag(named: Any) -> np.ndarray:
        return np.array(
            [bool(w) and named(e, w) for e, w in zip(examples, words, strict=True)], np.float64
        )

    def mentioned(e: Example, w: Sequence[str]) -> bool:  # even where the title negates it
        return any(re.search(rf"\b{re.escape(x)}", e.title, re.IGNORECASE) for x in w)

    in_title = flag(lambda e, w: names_any(e.title, w))
    for name, f in (("named in the title", in_title), ("mentioned at all", flag(mentioned))):
        asked = asks == 1
        print(
            json.dumps(
                {
                    name: {
                        "results": int(f[asked].sum()),
                        "bad_share_named": float(1 - y[asked & (f == 1)].mean()),
                        "bad_share_not_named": float(1 - y[asked & (f == 0)].mean()),
                    }
                }
            )
        )
    phrases = sorted({" ".join(w) for w in words if w})
    pv = dict(zip(phrases, embedder.embed(phrases), strict=True))
    cos_excluded = np.array(
        [float(pv[" ".join(w)] @ p[i]) if w else 0.0 for i, w in enumerate(words)]
    )
    variants = {
        "six features (served before)": before,
        "+ the query excludes something": np.c_[before, asks],
        "+ the title mentions an excluded word": np.c_[before, flag(mentioned)],
        "+ the product text names one, not negated there": np.c_[
            before, flag(lambda e, w: names_any(e.text(), w))
        ],
        "+ the title names one, not negated there": np.c_[before, in_title],
        "+ the query excludes, the title names one (served)": features(
            examples, q, p, on_page, negation=True
        ),
        "+ the cosine of the excluded words and the product": np.c_[before, cos_excluded],
        "+ the title names one, that cosine": np.c_[before, in_title, cos_excluded],
    }
    print_variant_aucs(variants, y, examples, fold_of)


_ACCESSORY = re.compile(
    r"\b(?:case|cover|replacement|accessor(?:y|ies)|adapter|charger|cable|protector|holder|mount"
    r"|strap|refill|parts?)\b",
    re.IGNORECASE,
)


STUDENTS = {  # name: (transformer layers kept, lowest layers frozen)
    "6 layers, 3 frozen (the build's)": (6, 3),
    "3 layers, none frozen": (3, 0),
    "3 layers, 1 frozen": (3, 1),
}


def student(examples: Sequence[Example], rows: np.ndarray, name: str) -> Any:
    """The cross-encoder ``name`` (:data:`STUDENTS`) trained on ``rows`` with the build's recipe."""
    from dataclasses import replace

    from scoring.training import DEFAULT_RECIPE
    from scoring.training.finetune import fit_cross_encoder

    kept, frozen = STUDENTS[name]
    cfg = replace(DEFAULT_RECIPE, frozen_layers=frozen)
    return fit_cross_encoder([examples[i] for i in rows], cfg, layers=kept)


def layers(args: argparse.Namespace) -> None:
    from scoring.training import DEFAULT_RECIPE
    from scoring.training.finetune import torch_scores

    examples = load_esci_judgments()
    fold_of = np.array(query_folds(examples, FOLDS, 13))
    y = np.array([e.hard_label for e in examples])
    pairs = [(e.query, e.text()) for e in examples]
    length = DEFAULT_RECIPE.max_length

    def auc(model: Any, rows: np.ndarray) -> float:
        return roc_auc(y[rows], torch_scores(model, [pairs[i] for i in rows], length))

    fold0: dict[str, Any] = {}
    for split in ("inner", "cv"):
        for name in STUDENTS:
            aucs = []
            for fold, fit, scored in splits(split, examples, fold_of):
                model = student(examples, fit, name)
                aucs.append(auc(model, scored))
                if fold == "fold 0":
                    fold0[name] = model
            row: dict[str, Any] = {"student": name, "split": split, "auc": float(np.mean(aucs))}
            if split == "cv":
                row |= {"sd": float(np.std(aucs, ddof=1)), "folds": aucs}
            print(json.dumps(row), flush=True)
    timed = [pairs[i] for i in np.flatnonzero(fold_of == 0)]
    speeds: dict[str, list[float]] = {name: [] for name in fold0}
    for model in fold0.values():
        torch_scores(model, timed[:64], length)  # warm-up
    for _ in range(3):  # interleaved rounds
        for name, model in fold0.items():
            t = time.perf_counter()
            torch_scores(model, timed, length)
            speeds[name].append(len(timed) / (time.perf_counter() - t))
    print(
        json.dumps(
            {
                "torch_pairs_per_s_fold0": {n: float(np.median(v)) for n, v in speeds.items()},
                "pairs_timed": len(timed),
            }
        )
    )


def lone(args: argparse.Namespace) -> None:
    examples, fold_of, y, embedder, q, p = judged_vectors()
    x = features(examples, q, p, head_vectors(embedder, examples), negation=True)
    column = {name: FEATURES.index(name) for name in FEATURES}
    variants = {
        "the cosine (the cosine tier)": x[:, [column["cosine"]]],
        "+ the title head": x[:, [column[f] for f in ("cosine", "for_marker", "head_gain")]],
        "+ the negation": x[:, [column[f] for f in ("cosine", "negation", "negated_in_title")]],
        "+ both: the features that need no page (served)": x[:, list(LONE_COLUMNS)],
    }
    print_variant_aucs(variants, y, examples, fold_of)


def precision(args: argparse.Namespace) -> None:
    examples = load_esci_judgments()
    fold_of = np.array(query_folds(examples, FOLDS, 13))
    y = np.array([e.hard_label for e in examples])
    x = features(examples, *vectors(Embedder(base_body()), examples))
    p_good = np.zeros(len(examples))
    for _, fit, scored in splits("cv", examples, fold_of):
        p_good[scored] = fit_logistic(x[fit], y[fit]).p_good(x[scored])
    bad = (y == 0)[np.argsort(p_good, kind="stable")]  # the least likely good first
    flagged = np.arange(1, len(bad) + 1)
    prec, recall = np.cumsum(bad) / flagged, np.cumsum(bad) / bad.sum()
    for share in (0.05, 0.1, 0.2, 0.3):
        i = int(np.searchsorted(recall, share))
        print(json.dumps({"recall": share, "precision": prec[i], "flagged": flagged[i] / len(bad)}))
    ok = np.flatnonzero((prec >= 0.6) & (flagged >= 20))
    i = int(ok.max())
    print(
        json.dumps(
            {"precision_at_least": 0.6, "recall": recall[i], "flagged": flagged[i] / len(bad)}
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    bi = sub.add_parser("biencoder")
    bi.add_argument("--split", choices=("inner", "cv"), default="inner")
    bi.add_argument("--lr", type=float, default=3e-5)
    bi.add_argument("--epochs", type=int, default=1)
    bi.add_argument("--frozen", type=int, default=3)
    bi.add_argument("--scale", type=float, default=20.0)
    bi.add_argument("--max-length", type=int, default=64)
    bi.add_argument("--seed", type=int, default=13)
    sub.add_parser("neighbours")
    sub.add_parser("targets")
    sub.add_parser("precision")
    sub.add_parser("query-words")
    sub.add_parser("layers")
    sub.add_parser("complements")
    sub.add_parser("negation")
    sub.add_parser("lone")
    args = ap.parse_args()
    experiments = {
        "biencoder": biencoder,
        "neighbours": neighbours,
        "targets": targets,
        "precision": precision,
        "query-words": query_words,
        "layers": layers,
        "complements": complements,
        "negation": negation,
        "lone": lone,
    }
    experiments[args.what](args)


if __name__ == "__main__":
    main()
