"""The cosine tier: the base model's own embeddings, exported to ONNX and cached per text.

Measured on real human labels (README, "Model quality"; ``bench/quality.py``), the untouched
all-MiniLM-L6-v2 judges ESCI relevance better zero-shot (cosine of the query's and the product
text's mean-pooled embeddings) than the cross-encoder fine-tuned on 120 queries does. It is also
cheaper to serve: a query and a product are each embedded once and their vectors cached, so a
head query's page costs the products' first sightings only, and a pair costs one dot product.

:func:`scoring.training.export.export_embedder` (build time; needs torch) writes ``embed.onnx``:
token ids in, the last hidden states out (fp32). :class:`EmbeddingCache` (serving; onnxruntime and
tokenizers only) embeds texts through an onnxruntime session, mean-pools each text's own tokens
and normalises in numpy, with a bounded LRU cache keyed by the text. A text's vector does not
depend on its batch-mates: the kernels compute each row's hidden states independently of the
others and of the padding, and the pooling sums only the text's own tokens, always in the same
order (pooling inside the graph did not: a padded reduction changed the last bits). So a cached
vector equals a recomputed one, and a replay reproduces the same scores bit for bit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["EMBED_FILE", "EMBED_MAX_LENGTH", "EmbeddingCache"]

EMBED_FILE = "embed.onnx"
EMBED_MAX_LENGTH = 128  # product text with brand, colour and category: p99 under 100 tokens


Feeds = Callable[
    [list[list[int]], list[list[int]], int], Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]
]


class EmbeddingCache:
    """Unit-length embeddings of texts, computed by an onnxruntime session and LRU-cached.

    ``run(feed)`` runs the session on one padded batch and returns its ``(batch, tokens, dim)``
    hidden states;
    ``feeds`` pads length-sorted batches (the scorer's own batching, shared with the
    cross-encoder). ``size`` bounds the cached vectors (about 1.5 KB each).
    """

    def __init__(
        self,
        tokenizer_file: Path,
        run: Callable[[dict[str, np.ndarray]], np.ndarray],
        feeds: Feeds,
        size: int = 50_000,
    ) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file))
        tok.no_padding()
        tok.enable_truncation(EMBED_MAX_LENGTH)
        self._tok = tok
        self._run = run
        self._feeds = feeds
        self._size = max(0, size)
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

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
        if todo:
            encs = self._tok.encode_batch(todo)
            ids = [e.ids for e in encs]
            types = [e.type_ids for e in encs]
            fresh: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(todo)
            for idx, feed in self._feeds(ids, types, batch_size):
                hidden = np.asarray(self._run(feed), dtype=np.float32)
                for row, i in enumerate(idx):
                    fresh[int(i)] = _pool(hidden[row, : len(ids[int(i)])])
            with self._lock:
                for t, v in zip(todo, fresh, strict=True):
                    found[t] = v
                    if self._size:
                        self._vectors[t] = v
                        self._vectors.move_to_end(t)
                while len(self._vectors) > self._size:
                    self._vectors.popitem(last=False)
        if not texts:
            return np.empty((0, 0), dtype=np.float32)
        return np.stack([found[t] for t in texts])


def _pool(tokens: np.ndarray) -> np.ndarray:
    """Mean of one text's own token vectors, unit length (a zero vector stays zero)."""
    mean = tokens.astype(np.float64).sum(axis=0) / max(1, len(tokens))
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32)
