"""A deterministic synthetic e-commerce catalogue built around the 480 real WANDS queries.

``SyntheticCatalog.generate(seed)`` reads ``relmon/data/wands_query.tsv`` (query_id, query,
query_class), infers a class for the few queries that have none (or drops them when nothing
matches), and generates ``products_per_category`` products per class with believable titles
("Lark Manor 30'' Swivel Bar Stool in Walnut"). Part of each class's titles reuse words of that
class's real queries, so relevant pairs overlap lexically the way real results do.

Relevance is the category: a product is relevant to a query when it belongs to the query's class.
Negatives come in two kinds: *easy* (an unrelated category) and *hard* (a related category of the
same family with a different head noun, e.g. "Dining Chairs" for a "Bar Stools" query, or any
other category whose title shares a word with the query). Categories whose head nouns overlap
("Bar Stools" and "Patio Bar Stools") are never used as negatives for each other: they are too
close to call either way.

Everything is a pure function of the seed.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Literal, NamedTuple

__all__ = [
    "Product",
    "Query",
    "SyntheticCatalog",
    "labelled_pairs",
    "result_page",
    "zipf_popularities",
]

_QUERY_FILE = Path(__file__).parents[1] / "data" / "wands_query.tsv"
_VOCABULARY_FILE = Path(__file__).with_name("vocabulary.json")


class Family(NamedTuple):
    """Words of one family of classes (outdoor, lighting, ...) that titles are made of."""

    keywords: tuple[str, ...]
    """a class whose lower-case name contains one of these belongs to the family"""
    materials: tuple[str, ...]
    sizes: tuple[str, ...]
    features: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    """The words the catalogue is made of, read from ``vocabulary.json`` next to this module.

    They are data, not code, so that a reader sees the whole vocabulary in one place and can
    change a word without touching the generator. The file's order matters: a seed draws from
    these lists by position, and the first matching family wins; reorder a list and the same
    seed makes another catalogue.
    """

    stopwords: frozenset[str]
    """words too common to tie a query to a class or a product (typos of real queries included)"""
    brands: tuple[str, ...]
    colours: tuple[str, ...]
    styles: tuple[str, ...]
    title_forms: tuple[str, ...]
    """``str.format`` templates of a title (brand, noun, colour, material, size, style, feature)"""
    nouns: Mapping[str, tuple[str, ...]]
    """product nouns of the classes whose names the generic rule in ``_nouns`` gets wrong"""
    families: Mapping[str, Family]
    default_family: Family
    """the words of a class of no family"""

    @classmethod
    def load(cls, path: Path = _VOCABULARY_FILE) -> Vocabulary:
        """Read the vocabulary file (the ``about`` key is its documentation)."""
        raw = json.loads(path.read_text(encoding="utf-8"))

        def family(words: dict[str, list[str]]) -> Family:
            return Family(*(tuple(words[f]) for f in Family._fields))

        return cls(
            stopwords=frozenset(raw["stopwords"]),
            brands=tuple(raw["brands"]),
            colours=tuple(raw["colours"]),
            styles=tuple(raw["styles"]),
            title_forms=tuple(raw["title_forms"]),
            nouns=MappingProxyType({k: tuple(v) for k, v in raw["nouns"].items()}),
            families=MappingProxyType({k: family(v) for k, v in raw["families"].items()}),
            default_family=family(raw["default_family"]),
        )


VOCABULARY = Vocabulary.load()  # read once, at import
_STOP = VOCABULARY.stopwords


@dataclass(frozen=True)
class Product:
    """One catalogue item; ``attributes`` is a read-only mapping (colour, material, ...)."""

    product_id: str
    title: str
    category: str
    brand: str
    attributes: Mapping[str, str] = field(hash=False)


@dataclass(frozen=True)
class Query:
    """One search query with its traffic weight; the popularities of a catalogue sum to 1."""

    query_id: str
    text: str
    category: str
    tier: Literal["head", "torso", "tail"]
    popularity: float


def _words(text: str) -> list[str]:
    return re.findall(r"[a-zé'-]+", text.lower())


def _singular(word: str) -> str:
    for plural, single in (
        ("sses", "ss"),
        ("lves", "lf"),
        ("ies", "y"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("xes", "x"),
    ):
        if word.endswith(plural):
            return word[: -len(plural)] + single
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def _nouns(category: str) -> list[str]:
    """Singular product nouns of a class: "Coffee & Cocktail Tables" -> Coffee/Cocktail Table."""
    if category in VOCABULARY.nouns:
        return list(VOCABULARY.nouns[category])
    parts = [p.split() for p in re.split(r" & | and | And ", category) if p.strip()]
    first, last = parts[0], parts[-1]
    nouns = []
    for i, words in enumerate(parts):
        if len(words) == 1 and len(parts) > 1:
            if i < len(parts) - 1 and not words[0].endswith("s"):
                words = [*words, last[-1]]  # "Coffee & Cocktail Tables" -> "Coffee Tables"
            elif i == len(parts) - 1 and len(first) > 1:
                words = [*first[:-1], *words]  # "Bath Rugs & Mats" -> "Bath Mats"
        nouns.append(" ".join([*words[:-1], _singular(words[-1]).capitalize()]))
    return nouns


def _heads(category: str) -> frozenset[str]:
    return frozenset(_singular(n.split()[-1].lower()) for n in _nouns(category))


def _family(category: str) -> str:
    low = category.lower()
    for name, family in VOCABULARY.families.items():
        if any(k in low for k in family.keywords):
            return name
    return "other"


def _read_queries(path: Path = _QUERY_FILE) -> list[tuple[str, str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = [
            (r["query_id"], r["query"], r["query_class"])
            for r in csv.DictReader(fh, delimiter="\t")
        ]
    classes = sorted({c for _, _, c in rows if c})
    tokens = {c: {_singular(w) for w in _words(c)} - _STOP for c in classes}
    out = []
    for qid, text, cls in rows:
        if not cls:  # infer from the class whose name shares the most (singular) words
            qw = {_singular(w) for w in _words(text)}
            best = max(classes, key=lambda c: (len(tokens[c] & qw), -len(tokens[c]), c))
            if not tokens[best] & qw:
                continue
            cls = best
        out.append((qid, text, cls))
    return out


def zipf_popularities(n: int) -> list[float]:
    """Popularity of ranks 1..n (summing to 1): Zipf, the top 5% of ranks taking half."""
    s = _zipf_exponent(n, max(1, round(0.05 * n)))
    weights = [r**-s for r in range(1, n + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def _zipf_exponent(n: int, head: int, share: float = 0.5) -> float:
    lo, hi = 0.1, 3.0
    for _ in range(60):
        s = (lo + hi) / 2
        weights = [r**-s for r in range(1, n + 1)]
        lo, hi = (lo, s) if sum(weights[:head]) / sum(weights) > share else (s, hi)
    return (lo + hi) / 2


class SyntheticCatalog:
    """Products and queries of the synthetic catalogue; build it with :meth:`generate`."""

    def __init__(
        self,
        products: Sequence[Product],
        queries: Sequence[Query],
        seed: int,
        *,
        misfiled_negatives: bool = False,
    ) -> None:
        self.seed = seed
        self.misfiled_negatives = misfiled_negatives
        self.products: tuple[Product, ...] = tuple(products)
        self.queries: tuple[Query, ...] = tuple(queries)
        self._by_id = {p.product_id: p for p in self.products}
        self._by_cat: dict[str, list[Product]] = {}
        for p in self.products:
            self._by_cat.setdefault(p.category, []).append(p)
        self.categories: tuple[str, ...] = tuple(sorted(self._by_cat))

    @classmethod
    def generate(
        cls, seed: int = 7, products_per_category: int = 12, *, misfiled_negatives: bool = False
    ) -> SyntheticCatalog:
        """Generate the catalogue; the same seed always gives the same catalogue.

        ``misfiled_negatives``: every irrelevant product :meth:`irrelevant_for` picks comes filed
        under the query's category (and an id of its own, ``mis-<id>``), as a botched catalogue
        import or a ranker mixing up products within a category would show it. Stored rows
        carry the product's category, so without it a shift of one query category's bad share
        spreads over the negatives' categories; with it, the shift is a shift of that
        category's stored bad-case rate, which is what the alert detectors watch
        (:mod:`relmon.sim.alerts`). The draws are the same either way.
        """
        rng = random.Random(seed)
        rows = _read_queries()
        vocab: dict[str, list[str]] = {}
        for _, text, cat in rows:
            own = {w for n in _nouns(cat) for w in _words(n)} | set(_heads(cat))
            for w in _words(text):
                if len(w) > 2 and w not in _STOP and _singular(w) not in own:
                    vocab.setdefault(cat, [])
                    if w not in vocab[cat]:
                        vocab[cat].append(w)
        products: list[Product] = []
        for cat in sorted({c for _, _, c in rows}):
            words_of = VOCABULARY.families.get(_family(cat), VOCABULARY.default_family)
            for i in range(products_per_category):
                words = vocab.get(cat, [])
                attrs = {
                    "colour": rng.choice(VOCABULARY.colours),
                    "material": rng.choice(words_of.materials),
                    "size": rng.choice(words_of.sizes),
                    "style": rng.choice(VOCABULARY.styles),
                    # Half the titles reuse a word from the class's real queries.
                    "feature": (
                        rng.choice(words).title()
                        if words and i % 2 == 0
                        else rng.choice(words_of.features)
                    ),
                }
                brand = rng.choice(VOCABULARY.brands)
                noun = rng.choice(_nouns(cat))
                title = rng.choice(VOCABULARY.title_forms).format(brand=brand, noun=noun, **attrs)
                pid = f"p{len(products):05d}"
                attrs_ro = MappingProxyType(dict(attrs))
                products.append(Product(pid, " ".join(title.split()), cat, brand, attrs_ro))
        # Popularity: Zipf over a seeded ranking that favours short (generic) queries.
        order = sorted(rows, key=lambda r: len(r[1].split()) + 3 * rng.random())
        n = len(order)
        n_head, n_torso = max(1, round(0.05 * n)), round(0.25 * n)
        popularity = zipf_popularities(n)
        queries = []
        for rank, (qid, text, cat) in enumerate(order, start=1):
            tier: Literal["head", "torso", "tail"] = (
                "head" if rank <= n_head else "torso" if rank <= n_head + n_torso else "tail"
            )
            queries.append(Query(f"q{qid}", text, cat, tier, popularity[rank - 1]))
        queries.sort(key=lambda q: int(q.query_id[1:]))
        return cls(products, queries, seed, misfiled_negatives=misfiled_negatives)

    def product(self, product_id: str) -> Product:
        """Return the product with this id (KeyError if unknown)."""
        return self._by_id[product_id]

    def relevant_for(self, query: Query) -> list[Product]:
        """Products relevant to the query: those of its category."""
        return list(self._by_cat.get(query.category, ()))

    @cached_property
    def _by_word(self) -> dict[str, list[Product]]:
        index: dict[str, list[Product]] = {}
        for p in self.products:
            for w in set(_words(p.title)):
                index.setdefault(w, []).append(p)
        return index

    @cached_property
    def _negative_cats(self) -> dict[str, tuple[list[str], list[str]]]:
        """Per category: (related categories, unrelated categories) usable as negatives."""
        heads = {c: _heads(c) for c in self.categories}
        fams = {c: _family(c) for c in self.categories}
        out = {}
        for cat in self.categories:
            ok = [c for c in self.categories if c != cat and not (heads[c] & heads[cat])]
            related = [c for c in ok if fams[c] == fams[cat]]
            out[cat] = (related, [c for c in ok if fams[c] != fams[cat]])
        return out

    def irrelevant_for(
        self, query: Query, rng: random.Random, kind: Literal["any", "easy", "hard"] = "any"
    ) -> Product:
        """Pick a product not relevant to ``query``: easy, hard, or either (50/50).

        Filed under the query's category when the catalogue has ``misfiled_negatives``.
        """
        product = self._negative(query, rng, kind)
        if not self.misfiled_negatives:
            return product
        return replace(product, product_id=f"mis-{product.product_id}", category=query.category)

    def _negative(
        self, query: Query, rng: random.Random, kind: Literal["any", "easy", "hard"]
    ) -> Product:
        related, unrelated = self._negative_cats[query.category]
        if kind == "any":
            kind = "hard" if rng.random() < 0.5 else "easy"
        if kind == "hard":
            qwords = sorted({w for w in _words(query.text) if len(w) > 2 and w not in _STOP})
            allowed = set(related) | set(unrelated)
            sharing = sorted(
                {p for w in qwords for p in self._by_word.get(w, ()) if p.category in allowed},
                key=lambda p: p.product_id,
            )
            if sharing and (not related or rng.random() < 0.5):
                return rng.choice(sharing)
            if related:
                return rng.choice(self._by_cat[rng.choice(related)])
        return rng.choice(self._by_cat[rng.choice(unrelated or related)])


def labelled_pairs(
    catalog: SyntheticCatalog,
    n: int,
    seed: int,
    irrelevant_share: float = 0.5,
    queries: Sequence[Query] | None = None,
) -> list[tuple[str, str, int]]:
    """``n`` (query text, title, label) pairs; label 1 = relevant, 0 = irrelevant.

    Queries are drawn uniformly from ``queries`` (default: all of the catalogue's), so a caller
    can keep a held-out set of queries apart. Negatives are half easy, half hard.
    """
    rng = random.Random(seed)
    pool = list(queries if queries is not None else catalog.queries)
    out = []
    for _ in range(n):
        q = rng.choice(pool)
        if rng.random() < irrelevant_share:
            out.append((q.text, catalog.irrelevant_for(q, rng).title, 0))
        else:
            out.append((q.text, rng.choice(catalog.relevant_for(q)).title, 1))
    return out


def result_page(
    catalog: SyntheticCatalog, query: Query, rng: random.Random, size: int, bad_share: float
) -> list[tuple[Product, bool]]:
    """Build a result page of ``size`` products, ``round(size * bad_share)`` of them irrelevant.

    Returns (product, truly relevant) in display order; bad results land at random ranks.
    """
    n_bad = min(size, max(0, round(size * bad_share)))
    relevant = catalog.relevant_for(query)
    n_good = size - n_bad
    good = (
        rng.sample(relevant, n_good)
        if n_good <= len(relevant)
        else [rng.choice(relevant) for _ in range(n_good)]
    )
    page = [(p, True) for p in good] + [
        (catalog.irrelevant_for(query, rng), False) for _ in range(n_bad)
    ]
    rng.shuffle(page)
    return page
