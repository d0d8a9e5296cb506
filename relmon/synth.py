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
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Literal

__all__ = [
    "Product",
    "Query",
    "SyntheticCatalog",
    "labelled_pairs",
    "result_page",
    "zipf_popularities",
]

_QUERY_FILE = Path(__file__).parent / "data" / "wands_query.tsv"
_STOP = frozenset(
    re.findall(
        r"\w+",
        "a an and the for with of in on to by that have has set sets x ft inch inches my me "
        "is are be at or from it its this what which tjat ate year old cool",
    )
)
_NOUNS = {  # classes whose names the generic rule in _nouns() gets wrong
    "Accent Chests / Cabinets": ["Accent Chest", "Accent Cabinet"],
    "Bird Play Stand & Playcenters": ["Bird Play Stand", "Bird Playcenter"],
    "Boxes, Bins, Baskets, & Buckets": ["Storage Box", "Storage Bin", "Basket", "Bucket"],
    "Curtain Hardware & Accessories": ["Curtain Rod", "Curtain Ring", "Curtain Hardware"],
    "Dog and Cat Bowls, Feeders & Accessories": ["Dog Bowl", "Cat Feeder", "Pet Feeder"],
    "Fencing & Accessories": ["Garden Fence Panel", "Privacy Fence"],
    "Glassware & Barware": ["Glassware Set", "Barware Set"],
    "Licensed Products": ["Licensed Throw Blanket", "Licensed Wall Art"],
    "Molding & Millwork": ["Molding", "Millwork Trim"],
    "Strainers, Colanders, & Salad Spinners": ["Strainer", "Colander", "Salad Spinner"],
    "Uniters Outdoor Furniture": ["Outdoor Furniture Set"],
    "Vases, Urns, Jars, & Bottles": ["Vase", "Urn", "Jar", "Bottle"],
}
_BRANDS = (
    "Lark Manor", "Wade Logan", "Andover Mills", "Three Posts", "Red Barrel Studio",
    "Latitude Run", "Mercury Row", "Zipcode Design", "Ebern Designs", "Gracie Oaks",
    "Winston Porter", "Birch Lane", "Joss & Main", "AllModern", "Highland Dunes",
    "Beachcrest Home", "Union Rustic", "Mistana", "Foundstone", "Orren Ellis", "Brayden Studio",
    "Charlton Home", "Alcott Hill", "Darby Home Co", "Rosdorf Park", "Sand & Stable",
    "Wrought Studio", "Harriet Bee", "Zoomie Kids", "Sol 72 Outdoor", "Symple Stuff", "Rebrilliant",
)  # fmt: skip
_COLOURS = (
    "Black", "White", "Grey", "Navy", "Walnut", "Espresso", "Natural", "Ivory", "Beige",
    "Turquoise", "Sage Green", "Charcoal", "Brown", "Blush", "Gold", "Teal", "Cream", "Oak",
)  # fmt: skip
_STYLES = ("Modern", "Farmhouse", "Mid-Century", "Rustic", "Coastal", "Industrial", "Glam",
           "Traditional", "Bohemian", "Scandinavian", "Contemporary", "Vintage")  # fmt: skip

# Family -> (keywords in the class name, materials, sizes, features). First matching family wins.
_FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "outdoor": (
        (
            "patio",
            "outdoor",
            "garden",
            "deck",
            "pergola",
            "awning",
            "fencing",
            "fountain",
            "planter",
            "landscape",
            "lawn",
            "swing",
            "playhouse",
            "umbrella",
            "mailbox",
            "log",
            "sauna",
            "weather",
            "ride-on",
            "uniters",
        ),
        ("Teak", "Resin Wicker", "Aluminum", "Acacia Wood", "Steel", "Polyethylene"),
        ("2 Piece", "4 Piece", "Large", "Small", "72''", "10' x 10'"),
        ("Weather Resistant", "with Cushions", "Solar", "Folding", "Stackable"),
    ),
    "lighting": (
        ("light", "lamp", "chandelier", "sconce", "lantern", "fan", "bulb", "shade"),
        ("Glass", "Metal", "Crystal", "Brass", "Linen", "Rattan"),
        ("1 - Light", "3 - Light", "5 - Light", "6 - Light", "LED", "Dimmable"),
        ("Dimmable", "Drum", "Globe", "Lantern", "Empire"),
    ),
    "bath": (
        ("bath", "shower", "tub", "toilet", "towel", "faucet", "sink", "vanit", "whirlpool"),
        ("Brass", "Stainless Steel", "Porcelain", "Ceramic", "Chrome", "Marble"),
        ("24''", "30''", "36''", "48''", "Single", "Double"),
        ("Widespread", "Single Handle", "Freestanding", "Wall Mounted", "Rainfall"),
    ),
    "bed": (
        ("bed", "mattress", "headboard", "sheet", "crib", "daybed"),
        ("Cotton", "Microfiber", "Memory Foam", "Upholstered", "Solid Wood", "Linen"),
        ("Twin", "Full", "Queen", "King", "California King", "Twin over Full"),
        ("Platform", "Storage", "Tufted", "Cooling", "Hypoallergenic", "Bunk"),
    ),
    "table": (
        ("table", "desk", "nightstand", "island", "lectern"),
        ("Solid Wood", "Marble", "Glass", "Metal", "Reclaimed Wood", "Manufactured Wood"),
        ("36''", "42''", "48''", "60''", "72''", "Round", "Rectangular"),
        ("Lift Top", "Extendable", "with Storage", "Drop Leaf", "Nesting", "Pedestal"),
    ),
    "seating": (
        (
            "chair",
            "stool",
            "bench",
            "ottoman",
            "recliner",
            "sofa",
            "sectional",
            "lounge",
            "rocker",
            "massage",
        ),
        ("Velvet", "Leather", "Linen", "Solid Wood", "Metal", "Faux Leather", "Boucle"),
        ("24''", "26''", "30''", "32''", "78''", "Oversized", "Wide"),
        ("Swivel", "Tufted", "Reclining", "Upholstered", "Armless", "Counter Height"),
    ),
    "storage": (
        (
            "dresser",
            "chest",
            "cabinet",
            "bookcase",
            "shelv",
            "storage",
            "armoire",
            "wardrobe",
            "drawer",
            "rack",
            "sideboard",
            "buffet",
            "stand",
            "cart",
            "organizer",
            "hamper",
            "box",
            "bin",
            "basket",
            "hook",
            "trash",
        ),
        ("Solid Wood", "Metal", "Manufactured Wood", "Bamboo", "Wicker", "Plastic"),
        ("3 Drawer", "5 Drawer", "6 Drawer", "36''", "60''", "Tall", "Wide"),
        ("with Doors", "Wall Mounted", "Freestanding", "Rolling", "Stackable"),
    ),
    "kitchen": (
        (
            "kitchen",
            "cook",
            "utensil",
            "pan",
            "bowl",
            "plate",
            "dish",
            "glass",
            "flatware",
            "serving",
            "canister",
            "espresso",
            "crock",
            "strainer",
            "food",
            "refrigerator",
            "range",
            "dining linens",
            "dryer",
            "washing",
        ),
        ("Stainless Steel", "Ceramic", "Glass", "Stoneware", "Cast Iron", "Porcelain"),
        ("12 Piece", "4 Piece", "16 oz", "10''", "Large", "Set of 4"),
        ("Dishwasher Safe", "Non-Stick", "Programmable", "Airtight", "Energy Star"),
    ),
    "textile": (
        ("rug", "mat", "pillow", "curtain", "drape", "cushion", "cover", "bedding", "linen"),
        ("Wool", "Cotton", "Polyester", "Jute", "Velvet", "Outdoor Polypropylene"),
        ("5' x 8'", "8' x 10'", "18'' x 18''", "20'' x 20''", "84''", "Runner"),
        ("Ombre", "Geometric", "Striped", "Floral", "Shag", "Blackout"),
    ),
    "decor": (
        (
            "wall",
            "art",
            "décor",
            "mirror",
            "clock",
            "frame",
            "vase",
            "wreath",
            "floral",
            "plant",
            "tree",
            "candle",
            "decorative",
            "statue",
            "memo",
            "object",
            "tray",
        ),
        ("Metal", "Wood", "Glass", "Canvas", "Resin", "Ceramic"),
        ("Small", "Medium", "Large", "24''", "36''", "Set of 3"),
        ("Abstract", "Botanical", "Sunburst", "Framed", "Handmade", "Rustic"),
    ),
}
_DEFAULT_FAMILY = (
    (),
    ("Metal", "Wood", "Plastic", "Steel", "Brass"),
    ("Small", "Large", "Standard", "Heavy Duty"),
    ("Adjustable", "Easy Install", "Universal"),
)
_TITLE_FORMS = (
    "{brand} {size} {feature} {noun} in {colour}",
    "{brand} {style} {material} {noun}",
    "{brand} {size} {material} {noun}",
    "{brand} {colour} {feature} {noun}",
    "{brand} {feature} {style} {noun} in {colour}",
)


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
    if category in _NOUNS:
        return _NOUNS[category]
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
    for name, (keys, *_rest) in _FAMILIES.items():
        if any(k in low for k in keys):
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

    def __init__(self, products: Sequence[Product], queries: Sequence[Query], seed: int) -> None:
        self.seed = seed
        self.products: tuple[Product, ...] = tuple(products)
        self.queries: tuple[Query, ...] = tuple(queries)
        self._by_id = {p.product_id: p for p in self.products}
        self._by_cat: dict[str, list[Product]] = {}
        for p in self.products:
            self._by_cat.setdefault(p.category, []).append(p)
        self.categories: tuple[str, ...] = tuple(sorted(self._by_cat))

    @classmethod
    def generate(cls, seed: int = 7, products_per_category: int = 12) -> SyntheticCatalog:
        """Generate the catalogue; the same seed always gives the same catalogue."""
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
            _keys, materials, sizes, features = _FAMILIES.get(_family(cat), _DEFAULT_FAMILY)
            for i in range(products_per_category):
                words = vocab.get(cat, [])
                attrs = {
                    "colour": rng.choice(_COLOURS),
                    "material": rng.choice(materials),
                    "size": rng.choice(sizes),
                    "style": rng.choice(_STYLES),
                    # Half the titles reuse a word from the class's real queries.
                    "feature": (
                        rng.choice(words).title() if words and i % 2 == 0 else rng.choice(features)
                    ),
                }
                brand = rng.choice(_BRANDS)
                noun = rng.choice(_nouns(cat))
                title = rng.choice(_TITLE_FORMS).format(brand=brand, noun=noun, **attrs)
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
        return cls(products, queries, seed)

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
        """Pick a product not relevant to ``query``: easy, hard, or either (50/50)."""
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
