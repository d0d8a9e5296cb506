"""Shared text embeddings in ClickHouse: the scorer's :class:`~scoring.embedding.SharedVectors`.

The table ``text_embeddings`` (migration 0009) keeps one vector per (embedder, text key). The
worker gives its scorer a :class:`ClickHouseVectors` of its own client, used from the scoring
thread only (the store thread keeps the worker's other client), so a cold text is looked up in
the store and embedded only where no process has embedded it before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client

from relmon import db
from schemas.models import CatalogProduct
from scoring.text import title_head
from streams.enrich import catalog_text

__all__ = ["KEEP_FIRST", "ClickHouseVectors", "embed_catalog"]

KEEP_FIRST = 1 << 63
"""``keep`` is this minus the write time in ms: the engine keeps the highest, the first written"""


class ClickHouseVectors:
    """One embedder's vectors in ``text_embeddings``, through a client of their own.

    ``client`` opens the client on first use. A store failure is raised as
    :class:`~relmon.errors.StoreUnavailable`; the embedding cache then embeds the texts itself.
    """

    def __init__(self, client: Callable[[], Client], embedder: str) -> None:
        self._open = client
        self._client: Client | None = None
        self.embedder = embedder
        self._lock = threading.Lock()

    def _call(self, what: str, fn: Callable[[Client], object]) -> object:
        with self._lock:
            try:
                if self._client is None:
                    self._client = self._open()
                return fn(self._client)
            except Exception as exc:
                if db.is_store_failure(exc):
                    raise db.store_error(exc, what) from exc
                raise

    def fetch(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of ``keys`` (the first written, where two processes raced)."""
        if not keys:
            return {}

        def read(client: Client) -> dict[str, np.ndarray]:
            result = client.query(
                "SELECT text_key, argMax(vector, keep) FROM text_embeddings "
                "WHERE embedder = {embedder:String} AND text_key IN {keys:Array(String)} "
                "GROUP BY text_key",
                parameters={"embedder": self.embedder, "keys": list(keys)},
            )
            return {k: np.asarray(v, dtype=np.float32) for k, v in result.result_rows}

        out = self._call("embedding lookup", read)
        assert isinstance(out, dict)
        return out

    def keep(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Store vectors by text key."""
        if not vectors:
            return
        keep = KEEP_FIRST - int(time.time() * 1000)
        data = [
            [self.embedder, k, np.asarray(v, dtype=np.float32).tolist(), keep]
            for k, v in vectors.items()
        ]

        def write(client: Client) -> None:
            db.insert(client, "text_embeddings", data, ["embedder", "text_key", "vector", "keep"])

        self._call("embedding write", write)

    def count(self) -> int:
        """How many texts this embedder has vectors of."""

        def read(client: Client) -> int:
            result = client.query(
                "SELECT uniqExact(text_key) FROM text_embeddings "
                "WHERE embedder = {embedder:String}",
                parameters={"embedder": self.embedder},
            )
            return int(result.result_rows[0][0])

        out = self._call("embedding count", read)
        assert isinstance(out, int)
        return out

    def close(self) -> None:
        """Close the client (a later call opens a new one)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def embed_catalog(
    scorer: Any,
    products: Iterable[CatalogProduct],
    *,
    chunk: int = 512,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Embed every text of a catalogue that the scorer's shared store lacks.

    The texts are each product's text and its title's head (:func:`scoring.text.title_head`,
    which the page tier reads), where it has one. ``scorer`` is a :class:`scoring.Scorer` on an
    embedding tier, given its shared store (:meth:`~scoring.Scorer.share_embeddings`): texts
    found there are skipped, the others are embedded and stored, ``chunk`` at a time. Returns
    the texts, how many were stored already, how many were embedded and the seconds taken.
    """
    texts = list(
        dict.fromkeys(t for p in products for t in (catalog_text(p), title_head(p.title)) if t)
    )
    before = scorer.stats()
    started = time.perf_counter()
    for first in range(0, len(texts), chunk):
        scorer.embed(texts[first : first + chunk])
        if progress is not None:
            progress(f"embedded {min(first + chunk, len(texts))}/{len(texts)} product texts")
    seconds = time.perf_counter() - started
    after = scorer.stats()
    found = after["embedding_shared_hits"] - before["embedding_shared_hits"]
    missed = after["embedding_cache_misses"] - before["embedding_cache_misses"]
    return {
        "texts": len(texts),
        "stored_before": found,
        "embedded": missed - found,
        "store_errors": after["embedding_shared_errors"] - before["embedding_shared_errors"],
        "seconds": round(seconds, 2),
    }
