"""The page tier: a result judged against the page it was shown on.

A result that looks unlike the page's most query-like results, or sits in a category few of the
page's results share, is more often judged irrelevant by people. The page tier scores a result
with features of its page and of its title, all from the base model's embeddings (each text
embedded once and cached, as in the cosine tier), and the page's size:

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
   and 0.208 against 0.208 on whole pools (``bench/quality.py``);
5. ``for_marker``: whether the title names what the product is *for*
   (:func:`scoring.text.title_head`: "for", "compatible with", "fits" after its first words).
   Accessories and parts for the thing searched (ESCI's complements: a case for the phone
   searched) are close to the query in meaning and judged bad; 65% of their titles have such a
   word, against 29-32% of the other grades';
6. ``head_gain``: with a marker, the cosine of the query and the title's head (its words
   before the marker: "Case" of "Case for iPhone 12") minus the cosine of the query and the
   whole product text; 0 without one. It is low when the query matches what the product is
   for rather than what it is. Only titles with a marker (about 3 in 10) cost an embedding.
7. ``negation``: whether the query asks for results *without* something
   (:func:`scoring.text.without_words`: "cat treats without chicken"). An embedding reads such a
   query as close to the thing it excludes, and people judge more of its results bad;
8. ``negated_in_title``: whether the title names what the query excludes, not negated there
   (:func:`scoring.text.names_any`: "Chicken Cat Treats", but not "Cat Treats, Chicken-Free").
   Both read text only and cost no embedding.

A logistic model of the standardised features (fitted on real labels by the model build, its
weights in the model card) gives P(good) directly. A result's score depends on its page only,
never on which other results were sampled or batched with it, so a replay reproduces it.

A result that arrives alone (no page) is scored by a second logistic model, of the features
that need no page (:data:`LONE_FEATURES`: the cosine, the title head's two and the negation's
two), fitted on the same training queries' judged pairs: the *lone* model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scoring.text import names_any, title_head, without_words

FEATURES = (
    "cosine",
    "anchored_cosine",
    "category_share",
    "log_page_size",
    "for_marker",
    "head_gain",
    "negation",
    "negated_in_title",
)
ANCHORS = 5
LONE_FEATURES = ("cosine", "for_marker", "head_gain", "negation", "negated_in_title")
"""the features of a result that do not depend on its page: the lone model's"""
LONE_COLUMNS = tuple(FEATURES.index(f) for f in LONE_FEATURES)
"""where :data:`LONE_FEATURES` are among :data:`FEATURES`"""


@dataclass(frozen=True)
class PageContext:
    """A result page: every result's product text, category leaf, title head and title, in order.

    ``categories`` holds :func:`scoring.text.category_leaf` of each result's category path
    (``""`` when unknown), ``heads`` :func:`scoring.text.title_head` of each result's title
    (``None`` when it has none). :meth:`of` builds a page from titles.
    """

    texts: tuple[str, ...]
    categories: tuple[str, ...]
    heads: tuple[str | None, ...]
    titles: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.texts)
        if not n or not (n == len(self.categories) == len(self.heads) == len(self.titles)):
            raise ValueError(
                "a page needs one category, head and title per text, and at least one result"
            )

    @classmethod
    def of(
        cls, texts: Sequence[str], categories: Sequence[str], titles: Sequence[str]
    ) -> PageContext:
        """The page of these product texts, category leaves and titles (their heads taken)."""
        heads = tuple(title_head(t) for t in titles)
        return cls(tuple(texts), tuple(categories), heads, tuple(titles))


PageRef = tuple[PageContext, int]
"""a result's page, and the result's index on it"""


def negated_in_titles(query: str, titles: Sequence[str]) -> list[bool] | None:
    """Whether each title names what ``query`` asks to be without; None when it asks nothing."""
    words = without_words(query)
    return [names_any(t, words) for t in titles] if words else None


def page_features(
    query: np.ndarray,
    products: np.ndarray,
    categories: Sequence[str],
    heads: Sequence[np.ndarray | None],
    negated: Sequence[bool] | None = None,
) -> np.ndarray:
    """The features (:data:`FEATURES`) of every result of one page, one row per result.

    ``query`` is the query's unit vector, ``products`` the page's unit vectors in page order,
    ``heads`` the unit vector of each result's title head (None without one), ``negated``
    :func:`negated_in_titles` of the query and the page's titles.
    """
    if not len(products) == len(categories) == len(heads):
        raise ValueError("one category and one head per product")
    if negated is not None and len(negated) != len(products):
        raise ValueError("one negated flag per product")
    cos = products @ query
    top = np.argsort(-cos, kind="stable")[:ANCHORS]
    centroid = products[top].mean(axis=0)
    norm = float(np.linalg.norm(centroid))
    anchored = products @ (centroid / norm) if norm > 0 else np.zeros(len(products))
    counts = Counter(categories)
    share = np.array([counts[c] / len(categories) for c in categories])
    size = np.full(len(products), np.log(len(products)))
    marker = np.array([h is not None for h in heads], dtype=np.float64)
    gain = np.array(
        [0.0 if h is None else float(h @ query) - c for h, c in zip(heads, cos, strict=True)]
    )
    negation = np.full(len(products), 0.0 if negated is None else 1.0)
    in_title = np.zeros(len(products)) if negated is None else np.asarray(negated, np.float64)
    return np.c_[cos, anchored, share, size, marker, gain, negation, in_title].astype(np.float64)


@dataclass(frozen=True)
class PageModel:
    """A logistic model of the page tier: standardisation, then weights and a bias.

    ``features`` names its inputs: :data:`FEATURES` (the page model) or :data:`LONE_FEATURES`
    (the lone model).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    features: tuple[str, ...] = FEATURES

    def p_good(self, features: np.ndarray) -> np.ndarray:
        """P(good) of feature rows."""
        z = (features - np.asarray(self.mean)) / np.asarray(self.std)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))

    def to_json(self) -> dict[str, object]:
        """The model as the card stores it."""
        return {
            "features": list(self.features),
            "anchors": ANCHORS if self.features == FEATURES else 0,
            "mean": list(self.mean),
            "std": list(self.std),
            "weights": list(self.weights),
            "bias": self.bias,
        }


def fit_logistic(
    features: np.ndarray,
    good: np.ndarray,
    l2: float = 1e-2,
    names: tuple[str, ...] | None = None,
) -> PageModel:
    """A logistic regression of ``good`` (0/1) on standardised features (Newton steps, ridge).

    ``names``: the features' names, one per column; by default :data:`FEATURES` when there are
    as many columns, else ``x0``, ``x1``, ... (experiments).
    """
    columns = features.shape[1]
    if names is None:
        names = FEATURES if columns == len(FEATURES) else tuple(f"x{i}" for i in range(columns))
    if columns != len(names):
        raise ValueError(f"{columns} feature columns for {len(names)} names")
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
        features=names,
    )
