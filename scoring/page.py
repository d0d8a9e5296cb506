"""The page tier: a result judged against the page it was shown on.

A result that looks unlike the page's most query-like results, or sits in a category few of the
page's results share, is more often judged irrelevant by people. The page tier scores a result
with three features of its page, all from the base model's embeddings (each text embedded once
and cached, as in the cosine tier), and the page's size:

1. ``cosine``: the cosine of the query and the product text (the cosine tier's score);
2. ``anchored_cosine``: the cosine of the product and the centroid of the page's
   :data:`ANCHORS` results most similar to the query (anchoring on the most query-like results
   keeps a page flooded with junk from agreeing with itself);
3. ``category_share``: the share of the page's results in the product's category leaf
   (:func:`scoring.text.category_leaf`; an unknown category is a leaf of its own);
4. ``log_page_size``: the log of the page's number of results. The other features read
   differently on a page of 10 results than on one of 45 (5 anchors are half of a short page;
   a category share moves in steps of 1/10), and a model fitted on one size misjudges the
   other's bad share: fitted on whole judged pools (about 45 results), its mean P(bad) on
   held-out 10-result pages was 0.169 against a true 0.211. With the size as an input, and
   fitted on pages of several sizes, it reads 0.202 against 0.208 on held-out 10-result pages
   and 0.208 against 0.208 on whole pools (``bench/quality.py``).

A logistic model of the standardised features (fitted on real labels by the model build, its
weights in the model card) gives P(good) directly. A result's score depends on its page only,
never on which other results were sampled or batched with it, so a replay reproduces it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FEATURES = ("cosine", "anchored_cosine", "category_share", "log_page_size")
ANCHORS = 5


@dataclass(frozen=True)
class PageContext:
    """A result page: every result's product text and category leaf, in page order.

    ``categories`` holds :func:`scoring.text.category_leaf` of each result's category path
    (``""`` when unknown).
    """

    texts: tuple[str, ...]
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.categories) or not self.texts:
            raise ValueError("a page needs one category per text, and at least one result")


PageRef = tuple[PageContext, int]
"""a result's page, and the result's index on it"""


def page_features(query: np.ndarray, products: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """The features (:data:`FEATURES`) of every result of one page, one row per result.

    ``query`` is the query's unit vector, ``products`` the page's unit vectors in page order.
    """
    cos = products @ query
    top = np.argsort(-cos, kind="stable")[:ANCHORS]
    centroid = products[top].mean(axis=0)
    norm = float(np.linalg.norm(centroid))
    anchored = products @ (centroid / norm) if norm > 0 else np.zeros(len(products))
    counts = Counter(categories)
    share = np.array([counts[c] / len(categories) for c in categories])
    size = np.full(len(products), np.log(len(products)))
    return np.c_[cos, anchored, share, size].astype(np.float64)


@dataclass(frozen=True)
class PageModel:
    """The logistic model of the page tier: standardisation, then weights and a bias."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def p_good(self, features: np.ndarray) -> np.ndarray:
        """P(good) of feature rows."""
        z = (features - np.asarray(self.mean)) / np.asarray(self.std)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))

    def to_json(self) -> dict[str, object]:
        """The model as the card stores it."""
        return {
            "features": list(FEATURES),
            "anchors": ANCHORS,
            "mean": list(self.mean),
            "std": list(self.std),
            "weights": list(self.weights),
            "bias": self.bias,
        }


def fit_logistic(features: np.ndarray, good: np.ndarray, l2: float = 1e-2) -> PageModel:
    """A logistic regression of ``good`` (0/1) on standardised features (Newton steps, ridge)."""
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-9
    x = np.c_[(features - mean) / std, np.ones(len(features))]
    y = np.asarray(good, dtype=np.float64)
    w = np.zeros(x.shape[1])
    ridge = l2 * np.eye(x.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        step = np.linalg.solve((x.T * (p * (1 - p))) @ x + ridge, x.T @ (p - y) + l2 * w)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return PageModel(
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        weights=tuple(float(v) for v in w[:-1]),
        bias=float(w[-1]),
    )
