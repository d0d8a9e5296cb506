"""Dynamic batching across the stream: concurrent ``predict`` calls merged into one inference.

:class:`BatchingScorer` wraps a scorer. Callers (any number of threads) call
``predict(pairs, batch_size, keys=None)`` and block; one background thread collects the waiting
requests until ``max_batch`` pairs are queued or ``max_wait_ms`` passed since the oldest one
arrived, scores them in one call of the wrapped scorer, and hands each caller its own slice.
Because the wrapped scorer's scores depend on the pair only (see :mod:`scoring.scorer`), merging
never changes a score.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["BatchingScorer"]


class _Inner(Protocol):
    model_version: str
    provider: str

    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int = 32,
        keys: Sequence[Hashable] | None = None,
    ) -> np.ndarray: ...


@dataclass
class _Request:
    pairs: Sequence[tuple[str, str]]
    keys: Sequence[Hashable] | None
    future: Future[np.ndarray] = field(default_factory=Future)


class BatchingScorer:
    """Merge concurrent ``predict`` calls into batches of up to ``max_batch`` pairs.

    Args:
        scorer: the wrapped scorer (``scoring.Scorer``).
        max_batch: pairs per merged inference call (a single larger request runs alone).
        max_wait_ms: how long the first waiting request may wait for company.
        batch_size: the inference batch size used inside a merged call.

    """

    def __init__(
        self, scorer: _Inner, max_batch: int = 256, max_wait_ms: float = 5.0, batch_size: int = 32
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.scorer = scorer
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.batch_size = batch_size
        self.model_version: str = scorer.model_version
        self.provider: str = scorer.provider
        self.merged_calls = 0
        self.requests = 0
        self._queue: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="relmon-batcher", daemon=True)
        self._thread.start()

    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        batch_size: int | None = None,
        keys: Sequence[Hashable] | None = None,
    ) -> np.ndarray:
        """Score ``pairs`` (blocking); ``batch_size`` is accepted for interface compatibility."""
        if keys is not None and len(keys) != len(pairs):
            raise ValueError(f"{len(keys)} keys for {len(pairs)} pairs")
        if not pairs:
            return np.empty(0, dtype=np.float32)
        req = _Request(list(pairs), None if keys is None else list(keys))
        with self._cond:
            if self._closed:
                raise RuntimeError("BatchingScorer is closed")
            self._queue.append(req)
            self.requests += 1
            self._cond.notify_all()
        return req.future.result()

    def stats(self) -> dict[str, Any]:
        """The wrapped scorer's stats plus requests and merged calls."""
        inner = getattr(self.scorer, "stats", None)
        base: dict[str, Any] = dict(inner()) if callable(inner) else {}
        base.update(requests=self.requests, merged_calls=self.merged_calls)
        return base

    def _take(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while sum(len(r.pairs) for r in self._queue) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken: list[_Request] = []
            size = 0
            while self._queue and (not taken or size + len(self._queue[0].pairs) <= self.max_batch):
                req = self._queue.pop(0)
                taken.append(req)
                size += len(req.pairs)
            return taken

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            pairs = [p for r in batch for p in r.pairs]
            keyed = any(r.keys is not None for r in batch)
            keys: list[Hashable] | None = None
            if keyed:
                keys = [
                    k
                    for r in batch
                    for k in (r.keys if r.keys is not None else [None] * len(r.pairs))
                ]
            try:
                scores = self.scorer.predict(pairs, self.batch_size, keys=keys)
            except BaseException as exc:
                for r in batch:
                    r.future.set_exception(exc)
                continue
            self.merged_calls += 1
            start = 0
            for r in batch:
                r.future.set_result(scores[start : start + len(r.pairs)].copy())
                start += len(r.pairs)

    def close(self) -> None:
        """Finish queued requests and stop the background thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> BatchingScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
