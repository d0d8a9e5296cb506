"""Real traffic to replay: the bundled ESCI queries, products and human grades as a catalogue.

:class:`EsciCatalog` has the shape of :class:`relmon.sim.synth.SyntheticCatalog`, so the replayer
sends real queries and real products the same way it sends synthetic ones:

- products: the 6,764 real products (``category`` is the top level of the product's category
  path, the dashboard's segment; the full path and the colour are attributes);
- queries: the 150 judged queries, given Zipf-like popularities (head / torso / tail) by a seeded
  ranking, like the synthetic ones; a query's category is the most common top level among its
  judged products;
- pages: by default, a page of a query is drawn from that query's human-judged results, so its
  true bad share is what the people who judged it said (about 21% overall); a scenario can ask
  for a given bad share instead, drawing bad results from the query's C/I-judged pool and good
  ones from its E/S-judged pool.

Every replayed impression of a judged pair therefore has a known truth. For the queries that have
no C/I-judged result (18 of 150), a scenario's bad results are products judged irrelevant (I)
for another query: not judged for this one, but as good as certain to be irrelevant.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from functools import cached_property
from types import MappingProxyType
from typing import Literal

from relmon.sim.synth import Product, Query, SyntheticCatalog, zipf_popularities
from scoring.esci import BAD_GRADES, load_esci_judgments, load_esci_products

__all__ = ["EsciCatalog"]

OTHER_CATEGORY = "Other"


def _top(category: str | None) -> str:
    if not category:
        return OTHER_CATEGORY
    return category.split(">")[0].strip() or OTHER_CATEGORY


class EsciCatalog(SyntheticCatalog):
    """The bundled ESCI slice as a replayable catalogue (see the module docstring)."""

    def __init__(
        self,
        products: Sequence[Product],
        queries: Sequence[Query],
        seed: int,
        judged: dict[str, list[tuple[str, str]]],
    ) -> None:
        super().__init__(products, queries, seed)
        self._judged = judged  # query text -> [(product_id, grade)]

    @classmethod
    def load(cls, seed: int = 7) -> EsciCatalog:
        """Read the bundled data; the same seed always gives the same popularities."""
        products = [
            Product(
                p.product_id,
                p.title,
                _top(p.category),
                p.brand or "",
                MappingProxyType(
                    {k: v for k, v in (("colour", p.color), ("category_path", p.category)) if v}
                ),
            )
            for p in load_esci_products()
        ]
        by_id = {p.product_id: p for p in products}
        judged: dict[str, list[tuple[str, str]]] = {}
        for e in load_esci_judgments():
            if e.product_id in by_id:
                judged.setdefault(e.query, []).append((str(e.product_id), e.grade))
        rng = random.Random(seed)
        texts = sorted(judged)
        order = sorted(texts, key=lambda t: len(t.split()) + 3 * rng.random())
        popularity = zipf_popularities(len(order))
        n = len(order)
        n_head, n_torso = max(1, round(0.05 * n)), round(0.25 * n)
        queries = []
        for rank, text in enumerate(order, start=1):
            tier: Literal["head", "torso", "tail"] = (
                "head" if rank <= n_head else "torso" if rank <= n_head + n_torso else "tail"
            )
            cats = Counter(by_id[pid].category for pid, g in judged[text] if g not in BAD_GRADES)
            category = cats.most_common(1)[0][0] if cats else OTHER_CATEGORY
            qid = f"e{texts.index(text):03d}"
            queries.append(Query(qid, text, category, tier, popularity[rank - 1]))
        queries.sort(key=lambda q: q.query_id)
        return cls(products, queries, seed, judged)

    def judgments(self, query: Query) -> list[tuple[str, str]]:
        """The query's judged results: (product id, human grade E/S/C/I), in the data's order."""
        return list(self._judged.get(query.text, ()))

    def grade(self, query: Query, product_id: str) -> str | None:
        """The human grade of (query, product), if judged."""
        return dict(self._judged.get(query.text, ())).get(product_id)

    @cached_property
    def _pools(self) -> dict[str, tuple[list[Product], list[Product]]]:
        out = {}
        for text, pairs in self._judged.items():
            good = [self.product(pid) for pid, g in pairs if g not in BAD_GRADES]
            bad = [self.product(pid) for pid, g in pairs if g in BAD_GRADES]
            out[text] = (good, bad)
        return out

    @cached_property
    def _irrelevant_anywhere(self) -> list[Product]:
        return sorted(
            {self.product(pid) for pairs in self._judged.values() for pid, g in pairs if g == "I"},
            key=lambda p: p.product_id,
        )

    def relevant_for(self, query: Query) -> list[Product]:
        """Products judged E or S for the query."""
        return list(self._pools[query.text][0])

    def irrelevant_for(
        self, query: Query, rng: random.Random, kind: Literal["any", "easy", "hard"] = "any"
    ) -> Product:
        """A product judged C or I for the query (else one judged I for another query)."""
        bad = self._pools[query.text][1]
        if bad:
            return rng.choice(bad)
        own = {pid for pid, _ in self._judged[query.text]}
        while True:
            p = rng.choice(self._irrelevant_anywhere)
            if p.product_id not in own:
                return p

    def natural_page(
        self, query: Query, rng: random.Random, size: int
    ) -> list[tuple[Product, bool]]:
        """A page drawn from the query's judged results; (product, judged good) in order."""
        pairs = self._judged[query.text]
        shown = rng.sample(pairs, min(size, len(pairs)))
        return [(self.product(pid), g not in BAD_GRADES) for pid, g in shown]
