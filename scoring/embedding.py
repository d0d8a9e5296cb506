"""The cosine tier: the base model's own embeddings, exported to ONNX and cached per text.

Measured on real human labels (README, "Model quality"; ``bench/quality.py``), the untouched
all-MiniLM-L6-v2 judges ESCI relevance better zero-shot (cosine of the query's and the product
text's mean-pooled embeddings) than the cross-encoder fine-tuned on 120 queries does. It is also
cheaper to serve: a query and a product are each embedded once and their vectors cached, so a
head query's page costs the products' first sightings only, and a pair costs one dot product.

:func:`scoring.training.export.export_embedder` (build time; needs torch) writes ``embed.onnx``:
token ids in, the last hidden states out (fp32), and its per-token int8 copy ``embed.int8.onnx``
(about twice as fast on a VNNI CPU; the scorer serves it on CPU, and the tiers' models are fitted
on its vectors; fp32 on CUDA). :class:`EmbeddingCache` (serving; onnxruntime and
tokenizers only) embeds texts through an onnxruntime session, mean-pools each text's own tokens
and normalises in numpy, with a bounded LRU cache keyed by the text. A text's vector does not
depend on its batch-mates: the kernels compute each row's hidden states independently of the
others and of the padding, and the pooling sums only the text's own tokens, always in the same
order (pooling inside the graph did not: a padded reduction changed the last bits). So a cached
vector equals a recomputed one, and a replay reproduces the same scores bit for bit.

A product text's vector is worth keeping beyond one process: embedding a product text costs
about 20 ms of a core on a 2-core AVX2 EPYC, and a page brings ten of them, so a cold worker
spends most of its scoring time there. ``shared`` (a :class:`SharedVectors`, e.g. the worker's
ClickHouse table ``text_embeddings``, :mod:`streams.vectors`) is asked for the texts the LRU
cache misses before any is computed, and is given the vectors computed, so a text is embedded
once across workers and restarts, and `relmon model embed` can embed a catalogue ahead of its
traffic. A shared store that fails is logged and skipped: its vectors only save time.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from relmon.errors import ServiceError

__all__ = [
    "EMBED_FILE",
    "EMBED_INT8_FILE",
    "EMBED_MAX_LENGTH",
    "EmbeddingCache",
    "SharedVectors",
    "text_key",
]

log = logging.getLogger(__name__)

EMBED_FILE = "embed.onnx"
EMBED_INT8_FILE = "embed.int8.onnx"
"""the same embedder, per-token int8 (:func:`scoring.training.export.quantise_per_token`)"""
EMBED_MAX_LENGTH = 128  # product text with brand, colour and category: p99 under 100 tokens


def text_key(text: str) -> str:
    """A text's key in a shared store: 128-bit BLAKE2b of its UTF-8 bytes, hex."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class SharedVectors(Protocol):
    """Vectors of one embedder kept outside the process, keyed by :func:`text_key`.

    Either method may raise :class:`~relmon.errors.ServiceError` when the store is down.
    """

    def fetch(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these keys (keys not stored are left out)."""

    def keep(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Store vectors by key (storing a key twice stores the same vector)."""


Feeds = Callable[
    [list[list[int]], list[list[int]], int], Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]
]


class EmbeddingCache:
    """Unit-length embeddings of texts, computed by an onnxruntime session and LRU-cached.

    ``run_each(feeds)`` runs the session on each padded batch and yields, in order, its
    ``(batch, tokens, dim)`` hidden states (the scorer runs several batches at once on CPU);
    ``feeds`` pads length-sorted batches (the scorer's own batching, shared with the
    cross-encoder). ``size`` bounds the cached vectors (about 1.5 KB each). ``shared``: vectors
    kept outside the process (see the module's docstring); :attr:`shared` can also be set later.
    """

    WARN_EVERY_S = 60.0

    def __init__(
        self,
        tokenizer_file: Path,
        run_each: Callable[[Iterable[dict[str, np.ndarray]]], Iterable[np.ndarray]],
        feeds: Feeds,
        size: int = 50_000,
        shared: SharedVectors | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file))
        tok.no_padding()
        tok.enable_truncation(EMBED_MAX_LENGTH)
        self._tok = tok
        self._run_each = run_each
        self._feeds = feeds
        self._size = max(0, size)
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.shared = shared
        self.hits = 0
        """texts found in this process's cache"""
        self.misses = 0
        """texts not in this process's cache (found in the shared store, or computed)"""
        self.shared_hits = 0
        """missed texts whose vectors the shared store had"""
        self.shared_errors = 0
        """calls to the shared store that failed (the texts were computed here)"""
        self._warned = -float("inf")

    def __len__(self) -> int:
        return len(self._vectors)

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """One unit vector per text, in order (each distinct text is embedded once)."""
        unique = list(dict.fromkeys(texts))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for t in unique:
                v = self._vectors.get(t)
                if v is not None:
                    self._vectors.move_to_end(t)
                    found[t] = v
            self.hits += len(found)
            self.misses += len(unique) - len(found)
        todo = [t for t in unique if t not in found]
        if todo and self.shared is not None:
            stored = self._fetch(todo)
            if stored:
                self._remember(stored)
                found.update(stored)
                todo = [t for t in todo if t not in stored]
        if todo:
            encs = self._tok.encode_batch(todo)
            ids = [e.ids for e in encs]
            types = [e.type_ids for e in encs]
            fresh: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(todo)
            batches = list(self._feeds(ids, types, batch_size))
            outputs = self._run_each(feed for _, feed in batches)
            for (idx, _), out in zip(batches, outputs, strict=True):
                hidden = np.asarray(out, dtype=np.float32)
                for row, i in enumerate(idx):
                    fresh[int(i)] = _pool(hidden[row, : len(ids[int(i)])])
            computed = dict(zip(todo, fresh, strict=True))
            self._remember(computed)
            found.update(computed)
            if self.shared is not None:
                self._keep(computed)
        if not texts:
            return np.empty((0, 0), dtype=np.float32)
        return np.stack([found[t] for t in texts])

    def _remember(self, vectors: Mapping[str, np.ndarray]) -> None:
        with self._lock:
            if self._size:
                for t, v in vectors.items():
                    self._vectors[t] = v
                    self._vectors.move_to_end(t)
            while len(self._vectors) > self._size:
                self._vectors.popitem(last=False)

    def _fetch(self, texts: list[str]) -> dict[str, np.ndarray]:
        assert self.shared is not None
        keys = {text_key(t): t for t in texts}
        try:
            stored = self.shared.fetch(list(keys))
        except ServiceError as exc:
            self._failed("read", exc)
            return {}
        out = {keys[k]: np.asarray(v, dtype=np.float32) for k, v in stored.items() if k in keys}
        with self._lock:
            self.shared_hits += len(out)
        return out

    def _keep(self, vectors: Mapping[str, np.ndarray]) -> None:
        assert self.shared is not None
        try:
            self.shared.keep({text_key(t): v for t, v in vectors.items()})
        except ServiceError as exc:
            self._failed("write", exc)

    def _failed(self, what: str, exc: ServiceError) -> None:
        with self._lock:
            self.shared_errors += 1
            now = time.monotonic()
            warn = now - self._warned >= self.WARN_EVERY_S
            if warn:
                self._warned = now
        if warn:  # once a minute, not once per batch, while the store is down
            log.warning("shared embeddings: %s failed (%s); embedding here meanwhile", what, exc)


def _pool(tokens: np.ndarray) -> np.ndarray:
    """Mean of one text's own token vectors, unit length (a zero vector stays zero)."""
    mean = tokens.astype(np.float64).sum(axis=0) / max(1, len(tokens))
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)
