"""Traffic replayer: a catalogue and a query stream with known truth, pushed into Kafka.

Two data sets (``ReplayConfig.dataset``):

- ``"esci"`` (the default): real queries, real products and real human grades
  (:mod:`relmon.sim.realdata`): pages are drawn from each query's judged results, so every replayed
  impression's truth is a person's judgment;
- ``"synthetic"``: the synthetic catalogue built around the 480 real WANDS queries
  (:mod:`relmon.sim.synth`), each page with a known share of irrelevant products.

Queries are drawn by popularity (head / torso / tail, Zipf-like). A page goes out in one of four
formats, by configurable shares:

- a UBI query record whose ``query_response_hit_ids`` list the page (the default and most
  common: one record per page, as OpenSearch's UBI query records carry it);
- a UBI query record and one UBI impression event per result;
- relmon impressions without product text (enriched from the catalogue);
- relmon impressions with product text (the rest).

A configurable share of malformed records and of impressions for products missing from the
catalogue exercises the dead-letter path.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from relmon.kafka import producer
from relmon.settings import Settings
from relmon.sim.realdata import EsciCatalog
from relmon.sim.scenario import Scenario
from relmon.sim.synth import Product, Query, SyntheticCatalog, result_page
from schemas.models import CatalogProduct, Impression, hash_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayConfig:
    """What traffic to make."""

    seed: int = 7
    dataset: Literal["esci", "synthetic"] = "esci"
    rate: float = 100.0
    """impressions per second (0 = as fast as possible)"""
    duration_s: float | None = None
    impressions: int | None = None
    page_size: int = 10
    bad_share: float | None = None
    """share of irrelevant results on every page (default: the data's own: the judged results
    of each ESCI query, 0.25 for the synthetic catalogue)"""
    page_share: float = 0.5
    """share of pages sent as one UBI query record with ``query_response_hit_ids``"""
    ubi_share: float = 0.2
    """share of pages sent as a UBI query record and UBI impression events"""
    catalog_share: float = 0.15
    """share of pages sent as relmon impressions without product text (enriched from the
    catalogue); the rest go as relmon impressions with product text"""
    malformed_share: float = 0.01
    unknown_product_share: float = 0.005
    locales: tuple[str, ...] = ("en-US", "en-GB", "de-DE")
    scenario: Scenario | None = None
    """true bad shares per segment and their shifts (default: ``bad_share`` everywhere)"""

    @classmethod
    def clean_impressions(cls, **fields: Any) -> ReplayConfig:
        """Every result its own relmon impression with product text, and no faulty record.

        For simulations that count per record or compare with a known population.
        """
        shares = dict.fromkeys(("page_share", "ubi_share", "catalog_share", "malformed_share"), 0.0)
        return cls(**{**shares, "unknown_product_share": 0.0, **fields})

    @classmethod
    def clean_pages(cls, **fields: Any) -> ReplayConfig:
        """Every page one UBI query record with its hit ids, and no faulty record.

        The throughput benches' traffic (``bench/stream.py``, ``bench/front.py``).
        """
        shares = dict.fromkeys(("ubi_share", "catalog_share", "malformed_share"), 0.0)
        return cls(**{**shares, "page_share": 1.0, "unknown_product_share": 0.0, **fields})


SYNTHETIC_BAD_SHARE = 0.25
PageFormat = Literal["page", "ubi", "catalog", "text"]
"""How a page goes out (see the module docstring)."""


def _check_shares(config: ReplayConfig) -> None:
    shares = {
        "page_share": config.page_share,
        "ubi_share": config.ubi_share,
        "catalog_share": config.catalog_share,
    }
    for name, share in shares.items():
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, not {share}")
    if sum(shares.values()) > 1.0 + 1e-9:
        raise ValueError(
            "page_share + ubi_share + catalog_share must be at most 1 (the rest of the pages go "
            f"as relmon impressions with product text), not {sum(shares.values()):g}"
        )


def load_catalog(config: ReplayConfig) -> SyntheticCatalog:
    """The catalogue ``config.dataset`` names."""
    if config.dataset == "esci":
        return EsciCatalog.load(seed=config.seed)
    return SyntheticCatalog.generate(seed=config.seed)


def to_catalog_product(product: Product) -> CatalogProduct:
    """The catalogue record of a synthetic product."""
    return CatalogProduct(
        product_id=product.product_id,
        title=product.title,
        category=product.category,
        brand=product.brand or None,
        attributes=dict(product.attributes),
    )


class TrafficGenerator:
    """Generates the records of result pages, deterministically from a seed."""

    def __init__(self, catalog: SyntheticCatalog, config: ReplayConfig) -> None:
        _check_shares(config)
        self.catalog = catalog
        self.config = config
        self._rng = random.Random(config.seed)
        self._queries = list(catalog.queries)
        mix = config.scenario.tier_traffic_weight if config.scenario else {}
        self._weights = [q.popularity * mix.get(q.tier, 1.0) for q in self._queries]
        self.counts: Counter[str] = Counter()

    def page_truth(self, query: Query, at_s: float) -> float | None:
        """The true bad share of a page of ``query`` at ``at_s`` seconds into the replay.

        ``None``: the data's own (a page of an ESCI query drawn from its judged results).
        """
        cfg = self.config
        natural = isinstance(self.catalog, EsciCatalog)
        default = cfg.bad_share
        if default is None and not natural:
            default = SYNTHETIC_BAD_SHARE
        if cfg.scenario is None:
            return default
        if not natural:
            return cfg.scenario.bad_share(query.tier, query.category, at_s)
        share = cfg.scenario.explicit_bad_share(query.tier, query.category, at_s)
        return default if share is None else share

    def _shown(self, query: Query, share: float | None) -> list[tuple[Product, bool]]:
        cfg, rng = self.config, self._rng
        if share is None and isinstance(self.catalog, EsciCatalog):
            return self.catalog.natural_page(query, rng, cfg.page_size)
        share = SYNTHETIC_BAD_SHARE if share is None else share
        n_bad = sum(rng.random() < share for _ in range(cfg.page_size))  # binomial
        return result_page(self.catalog, query, rng, cfg.page_size, n_bad / cfg.page_size)

    def page(self, now: datetime, at_s: float = 0.0) -> list[tuple[bytes, bytes]]:
        """Records (key, value) of one result page shown ``at_s`` seconds into the replay."""
        return [(key, value) for key, value, _ in self.labelled_page(now, at_s)]

    def labelled_page(
        self, now: datetime, at_s: float = 0.0
    ) -> list[tuple[bytes, bytes, bool | None]]:
        """Records of one page with the truth of each impression.

        The truth is None for records that are not one impression: UBI query records (a page
        in one record among them), malformed records.
        """
        cfg, rng = self.config, self._rng
        query: Query = rng.choices(self._queries, weights=self._weights, k=1)[0]
        query_id = f"{query.query_id}-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
        key = query_id.encode()
        shown = self._shown(query, self.page_truth(query, at_s))
        locale = rng.choice(cfg.locales)
        session = hash_id(f"session-{rng.randrange(100_000)}")
        style = self._style(rng.random())
        records: list[tuple[bytes, bytes, bool | None]] = []
        hits: list[str] = []
        if style == "ubi":
            records.append((key, self._ubi_query(query_id, query.text, now), None))
            self.counts["ubi_query_records"] += 1
        for position, (product, relevant) in enumerate(shown, 1):
            if rng.random() < cfg.malformed_share:
                records.append((key, self._malformed(rng), None))
                self.counts["malformed"] += 1
                continue
            product_id = product.product_id
            if rng.random() < cfg.unknown_product_share:
                product_id = f"missing-{rng.randrange(10**9)}"
                self.counts["unknown_product"] += 1
            self.counts["impressions"] += 1
            self.counts["truly_irrelevant"] += int(not relevant)
            if style == "page":
                hits.append(product_id)
                continue
            if style == "ubi":
                value = self._ubi_impression(query_id, product_id, position, now, session)
            else:
                with_text = style == "text" and product_id == product.product_id
                imp = Impression(
                    impression_id=f"{query_id}:{position}",
                    query_id=query_id,
                    query=query.text,
                    product_id=product_id,
                    title=product.title if with_text else None,
                    category=product.category if with_text else None,
                    brand=(product.brand or None) if with_text else None,
                    attributes=dict(product.attributes) if with_text else {},
                    position=position,
                    event_time=now,
                    session_hash=session,
                    locale=locale,
                )
                value = imp.to_bytes()
            records.append((key, value, relevant))
        if style == "page":  # after the page's malformed records, like a late UBI query record
            records.append((key, self._ubi_query(query_id, query.text, now, hits), None))
            self.counts["ubi_page_records"] += 1
        self.counts["pages"] += 1
        return records

    def _style(self, draw: float) -> PageFormat:
        """The format of a page, from a uniform draw and the configured shares."""
        cfg = self.config
        shares: tuple[tuple[PageFormat, float], ...] = (
            ("page", cfg.page_share),
            ("ubi", cfg.ubi_share),
            ("catalog", cfg.catalog_share),
        )
        for style, share in shares:
            if draw < share:
                return style
            draw -= share
        return "text"

    @staticmethod
    def _ubi_query(query_id: str, text: str, now: datetime, hits: list[str] | None = None) -> bytes:
        record: dict[str, Any] = {
            "query_id": query_id,
            "user_query": text,
            "client_id": f"client-{query_id[-4:]}",
            "application": "relmon-replay",
            "timestamp": now.isoformat(),
        }
        if hits is not None:
            record["query_response_hit_ids"] = hits
        return json.dumps(record).encode()

    @staticmethod
    def _ubi_impression(
        query_id: str, product_id: str, position: int, now: datetime, session: str
    ) -> bytes:
        return json.dumps(
            {
                "action_name": "impression",
                "query_id": query_id,
                "session_id": session,
                "timestamp": now.isoformat(),
                "message_type": "IMPRESSION",
                "event_attributes": {
                    "object": {"object_id": product_id, "object_id_type": "product"},
                    # UBI ordinals count from 0 (as OpenSearch's UBI sample does)
                    "position": {"ordinal": position - 1},
                },
            }
        ).encode()

    @staticmethod
    def _malformed(rng: random.Random) -> bytes:
        return rng.choice(
            [
                b'{"impression_id": "broken", "query": ',
                b"\xff\xfe not utf-8",
                b'{"impression_id": "x1", "query_id": "q", "query": "sofa", "product_id": "p",'
                b' "position": -3, "event_time": "2024-01-01T00:00:00Z"}',
                b"[1, 2, 3]",
                b'{"hello": "world"}',
            ]
        )


def publish_catalog(settings: Settings, catalog: SyntheticCatalog) -> int:
    """Send every product to the catalogue topic (keyed by product id); return the count."""
    prod = producer(settings)
    try:
        for product in catalog.products:
            record = to_catalog_product(product)
            prod.send(
                settings.topics.catalog, key=product.product_id.encode(), value=record.to_bytes()
            )
        prod.flush(timeout=60)
    finally:
        prod.close()
    return len(catalog.products)


def replay(
    settings: Settings,
    config: ReplayConfig,
    *,
    catalog: SyntheticCatalog | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Publish the catalogue, then impressions at ``config.rate`` until done; return counts.

    Ctrl-C (KeyboardInterrupt) ends the replay early; the counts then include
    ``"interrupted": 1``.
    """
    catalog = catalog or load_catalog(config)
    gen = TrafficGenerator(catalog, config)
    gen.counts["catalog_products"] = publish_catalog(settings, catalog)
    prod = producer(settings)
    start = time.monotonic()
    last_report = start
    produced = 0
    interrupted = 0
    try:
        while not should_stop():
            elapsed = time.monotonic() - start
            if config.duration_s is not None and elapsed >= config.duration_s:
                break
            if config.impressions is not None and gen.counts["impressions"] >= config.impressions:
                break
            for key, value in gen.page(datetime.now(UTC), time.monotonic() - start):
                prod.send(settings.topics.impressions, key=key, value=value)
                produced += 1
            if config.rate > 0:
                ahead = gen.counts["impressions"] / config.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            if progress is not None and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                progress(
                    {"produced": produced, "elapsed_s": round(last_report - start, 1), **gen.counts}
                )
    except KeyboardInterrupt:
        interrupted = 1
    finally:
        prod.flush(timeout=60)
        prod.close()
    return {"produced": produced, "interrupted": interrupted, **gen.counts}
