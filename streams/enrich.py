"""Validate and enrich: the event-time window, and the texts an impression needs to be scored.

An impression is complete when its query text is known (a UBI impression event names only its
``query_id``: the text comes from the UBI query record, remembered in :class:`QueryTexts`) and
its product text is (a record that names only a product id, a page hit among them, takes it from
the catalogue). What is not known yet is a :data:`Problem` the processor waits on, then
dead-letters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.models import CatalogProduct, DeadLetterKind, Impression
from schemas.ubi import PageHit, UbiImpression
from scoring.page import PageContext
from scoring.text import category_leaf, product_text
from streams.catalog import Catalog

Problem = tuple[DeadLetterKind, str]
"""why an impression cannot be completed (yet): its dead letter's kind and reason"""


def impression_text(imp: Impression) -> str:
    """What the model reads of an impression's product: title, brand, colour, category path."""
    return _text(imp.title or "", imp.brand, imp.attributes, imp.category)


def _text(title: str, brand: str | None, attrs: dict[str, str], category: str | None) -> str:
    return product_text(
        title,
        brand,
        attrs.get("colour") or attrs.get("color"),
        attrs.get("category_path") or category,
    )


def catalog_text(product: CatalogProduct) -> str:
    """What the model reads of a catalogue product: the text of a hit that carries none itself."""
    return _text(product.title, product.brand, product.attributes, product.category)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class EventTimeWindow:
    """The event times the worker accepts: ``max_age_s`` before its clock to ``max_future_s`` after.

    Older events would be stored only to expire from ``scored_impressions`` (TTL 30 days of event
    time) while their roll-ups and reviews stay; later ones are clock skew. Both are refused.
    """

    max_age_s: float
    max_future_s: float

    def refusal(self, event_time: datetime, now: datetime) -> str | None:
        """Why ``event_time`` is refused at wall-clock time ``now`` (None: it is accepted)."""
        oldest = now - timedelta(seconds=self.max_age_s)
        latest = now + timedelta(seconds=self.max_future_s)
        if oldest <= event_time <= latest:
            return None
        return (
            f"event_time_out_of_range: event time {_iso(event_time)} is outside the accepted "
            f"window [{_iso(oldest)}, {_iso(latest)}] (RELMON_MAX_EVENT_AGE_S={self.max_age_s:g} "
            f"before the worker's clock, RELMON_MAX_EVENT_FUTURE_S={self.max_future_s:g} after it)"
        )


class QueryTexts:
    """The texts of recent UBI query ids, least recently used dropped beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity

    def remember(self, query_id: str, text: str) -> None:
        """Keep (or refresh) the text of ``query_id``."""
        self._texts[query_id] = text
        self._texts.move_to_end(query_id)
        while len(self._texts) > self._capacity:
            self._texts.popitem(last=False)

    def get(self, query_id: str) -> str | None:
        """The text of ``query_id``, if remembered."""
        return self._texts.get(query_id)

    def __contains__(self, query_id: object) -> bool:
        return query_id in self._texts


def complete(
    item: Impression | UbiImpression | PageHit, queries: QueryTexts, catalog: Catalog
) -> tuple[Impression | UbiImpression | PageHit, CatalogProduct | None, Problem | None]:
    """The item with its query text, the catalogue entry its product text needs, or what is unknown.

    The returned item carries what is known so far (a UBI impression gets its query text even
    when its product is still unknown), so a retry does not look the query up again. With no
    problem, the item is an :class:`Impression` or a :class:`PageHit`, and the entry is None
    only when the record carried the product text itself.
    """
    if isinstance(item, UbiImpression):
        text = queries.get(item.query_id)
        if text is None:
            return item, None, ("unknown_query", f"unknown query_id {item.query_id!r}")
        item = item.with_query(text)
    if item.needs_catalog:
        product = catalog.get(item.product_id)
        if product is None:
            problem: Problem = (
                "unknown_product",
                f"unknown product {item.product_id!r} at position {item.position}",
            )
            return item, None, problem
        return item, product, None
    return item, None, None


def page_context(
    hits: Sequence[tuple[PageHit, CatalogProduct | None]],
) -> tuple[PageContext, dict[int, int]]:
    """The page tier's view of a result page, and each hit's index on it by position.

    ``hits`` are the page's hits known in full, in page order, each with its catalogue entry
    (a hit whose product stayed unknown was dead-lettered and is not on the page): each is on
    the page with the text the model reads (:func:`impression_text`) and its category leaf.
    """
    texts: list[str] = []
    leaves: list[str] = []
    titles: list[str] = []
    index: dict[int, int] = {}
    for hit, product in hits:
        assert product is not None  # a page hit always needs, so has, its catalogue entry
        full = hit.enriched(product)
        index[hit.position] = len(texts)
        texts.append(impression_text(full))
        leaves.append(category_leaf(full.attributes.get("category_path") or full.category) or "")
        titles.append(full.title or "")
    return PageContext.of(texts, leaves, titles), index
