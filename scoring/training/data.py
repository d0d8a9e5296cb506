"""The build's data: the ESCI folds by query, and the training pairs around the held-out fold.

Held-out data is never trained on: the 150 bundled ESCI queries are dealt into :data:`FOLDS`
folds by a seeded shuffle (:func:`query_folds`, the same folds ``bench/quality.py``
cross-validates over); the model trains on all folds but the held-out one and is evaluated and
calibrated on that one. Pairs from elsewhere (a local file, the caller's) whose query is a
held-out query are dropped. The card names the split (:class:`~scoring.card.DataSplit`), so
:func:`heldout_examples` rebuilds it later (``relmon model eval``, ``bench/scoring.py``).

Needs no torch: the serving side's evaluation reads it too.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relmon.errors import RelmonError
from scoring.card import DataSplit, ModelCard
from scoring.data import Example, load_examples
from scoring.esci import load_esci_judgments

__all__ = [
    "FOLDS",
    "TrainingData",
    "esci_split",
    "heldout_examples",
    "load_training_data",
    "query_folds",
]

FOLDS = 5


def query_folds(examples: Sequence[Example], k: int, seed: int = 13) -> list[int]:
    """The fold (0..k-1) of each example: queries shuffled by ``seed`` and dealt round-robin."""
    queries = sorted({e.query for e in examples})
    random.Random(seed).shuffle(queries)
    fold_of = {q: i % k for i, q in enumerate(queries)}
    return [fold_of[e.query] for e in examples]


def esci_split(
    seed: int = 13, heldout_fold: int = 0, folds: int = FOLDS
) -> tuple[list[Example], list[Example]]:
    """(training, held-out) ESCI examples: one fold of queries held out."""
    examples = load_esci_judgments()
    fold = query_folds(examples, folds, seed)
    train = [e for e, f in zip(examples, fold, strict=True) if f != heldout_fold]
    held = [e for e, f in zip(examples, fold, strict=True) if f == heldout_fold]
    return train, held


def heldout_examples(card: ModelCard | Mapping[str, Any]) -> list[Example]:
    """Rebuild the held-out examples a model card names (one fold of the ESCI queries)."""
    data = (card if isinstance(card, ModelCard) else ModelCard.from_json(card)).data
    if (
        data is None
        or data.kind != "esci-folds"
        or data.seed is None
        or data.heldout_fold is None
        or data.folds is None
    ):
        raise RelmonError(
            "this model card predates training on real labels: rebuild it (relmon model build)"
        )
    return esci_split(data.seed, data.heldout_fold, data.folds)[1]


@dataclass(frozen=True)
class TrainingData:
    """The build's pairs, and how the card describes them."""

    train: list[Example]
    heldout: list[Example]
    training_data: str  # where the training pairs come from, for people
    heldout_data: str
    heldout_queries: list[str]
    split: DataSplit


def _norm(query: str) -> str:
    return " ".join(query.lower().split())


def load_training_data(
    seed: int,
    heldout_fold: int,
    data: Path | str | None = None,
    data_format: str = "auto",
    locale: str | None = None,
    extra: tuple[Sequence[Example], str] | None = None,
    train_pairs: int | None = None,
) -> TrainingData:
    """The training folds plus ``data`` and ``extra`` (held-out queries dropped), the held-out fold.

    ``train_pairs`` subsamples the training pairs (seeded by ``seed``).
    """
    train, held = esci_split(seed, heldout_fold)
    held_queries = {_norm(e.query) for e in held}
    sources = [f"real ESCI judgments (bundled): {len(train)} human-judged pairs"]
    if data is not None:
        loaded = [
            e
            for e in load_examples(data, data_format, locale)
            if _norm(e.query) not in held_queries
        ]
        train += loaded
        sources.append(f"{data}: {len(loaded)} pairs (held-out queries dropped)")
    if extra is not None:
        pairs, label = extra
        train += [e for e in pairs if _norm(e.query) not in held_queries]
        sources.append(label)
    if train_pairs is not None and len(train) > train_pairs:
        train = random.Random(seed).sample(train, train_pairs)
        sources.append(f"subsampled to {train_pairs} pairs")
    held_q = sorted({e.query for e in held})
    return TrainingData(
        train=train,
        heldout=held,
        training_data="; ".join(sources),
        heldout_data=f"real ESCI judgments: {len(held)} pairs of {len(held_q)} queries "
        f"(fold {heldout_fold} of {FOLDS}, seed {seed}), never trained on",
        heldout_queries=held_q,
        split=DataSplit(kind="esci-folds", seed=seed, heldout_fold=heldout_fold, folds=FOLDS),
    )
