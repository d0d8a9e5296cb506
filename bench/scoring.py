"""Scoring benchmark: relmon's Scorer vs sentence-transformers CrossEncoder vs plain ONNX.

Run from the repository root with the venv's python:  ``python bench/scoring.py``

Two pair sets are measured, interleaved in the same rounds in one process so that machine noise
hits every scorer alike; medians over rounds are reported. The last line is one JSON object,
with the CPU's model and ISA flags (``cpu``, ``isa``).

- Synthetic (``--pairs``): WANDS queries with titles of the synthetic catalogue, drawn as
  search result pages of 10 (Zipf query popularity, 25% irrelevant results). Short titles: a lower
  bound on the cost of a pair. relmon's cross-encoder Scorer, sentence-transformers
  CrossEncoder and a plain onnxruntime loop (fp32 and int8, padded to 64 tokens) score them
  with the same fine-tuned weights (``models/relmon-minilm-ce``: ONNX for relmon and the plain
  loop, the saved torch model ``torch/`` for CrossEncoder): ``ratio_vs_sentence_transformers``.
  The cosine tier (the base model's embeddings) is measured against sentence-transformers' own
  bi-encoder on the same base weights (``SentenceTransformer.encode`` of the batch's queries
  and titles, then the cosine): cold (a new scorer each round, built outside the timing: every
  text embedded once per round) and warm (its per-text cache filled by the previous round, as
  a worker's is after the first sighting of a head query or a product). It serves the per-token
  int8 embedder on CPU (``cosine_tier_variant``): its largest difference from the bi-encoder is
  ``max_abs_diff_st_biencoder_vs_cosine_tier``; the fp32 embedder's, which should be 0, is
  ``same_weights_max_abs_diff_st_biencoder_vs_cosine_tier_fp32``.
- Real (``--esci-pairs``): judged pairs of the bundled ESCI slice (``scoring.esci``), whole
  queries' judged pools in a seeded query order (the last one cut to size), each pool one
  result page, its products' text built from the real catalogue exactly as the worker builds it
  (``scoring.text.product_text``: title, brand, colour, category; the page's category leaves
  by ``category_leaf``). Real titles are long: the bench reports the cross-encoder's tokenised
  pair length (p50 / p90 before its 64-token truncation), which is why a real pair costs more
  than a synthetic one. relmon's cross-encoder and the CrossEncoder score them
  (``ratio_vs_sentence_transformers_esci``), and so does the served tier.

The served tier (the card's ``served_tier``) is the page tier: a result judged against the page
it was shown on (``scoring.page``; ``Scorer(tier="page")`` with each result's page passed to
``predict``). A result that arrives without its page is scored by its lone model (the cosine
and the features that need no page; not timed here). The page tier
is measured on both pair sets (the synthetic pairs are result pages of 10 too), against the
CrossEncoder on the same pairs: cold (a new scorer each round, as the cold cosine tier:
``ratio_page_tier_vs_st_crossencoder``, ``ratio_page_tier_vs_st_crossencoder_esci``), and with
the catalogue embedded ahead (``relmon model embed``: the pages' product and title-head vectors
in a local store the bench starts, ``streams.vectors.ClickHouseVectors``), as a worker serves
it: a new scorer
each round, each call one lookup in the store, the queries embedded cold every round (the
round's scorer writes nothing back) (``ratio_page_tier_embedded_vs_st_crossencoder``,
``ratio_page_tier_embedded_vs_st_crossencoder_esci``). The page tier reads the base model's
embeddings and its own small logistic model, not the cross-encoder's weights: these ratios
compare the two ways of judging the same pairs, which the model build chose between on real
labels (README, "Model quality"); ``ratio_vs_sentence_transformers*`` compare one model's
weights run two ways.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relmon import db  # noqa: E402
from relmon.demo import scratch_servers  # noqa: E402
from relmon.hostinfo import cpu_model, isa_flags  # noqa: E402
from relmon.sim.synth import SyntheticCatalog, result_page  # noqa: E402
from scoring import ModelCard, Scorer  # noqa: E402
from scoring.data import as_triples  # noqa: E402
from scoring.esci import load_esci_judgments, load_esci_products  # noqa: E402
from scoring.metrics import roc_auc  # noqa: E402
from scoring.page import PageContext, PageRef  # noqa: E402
from scoring.scorer import TOKEN_BUDGET, Variant, default_threads  # noqa: E402
from scoring.text import category_leaf, product_text  # noqa: E402
from scoring.training import heldout_examples  # noqa: E402
from streams.vectors import ClickHouseVectors  # noqa: E402


@dataclass(frozen=True)
class PagedPairs:
    """Pairs of result pages, in page order: what every scorer of a suite scores."""

    pairs: list[tuple[str, str]]
    """(query, product text) as the cross-encoder reads it"""
    keys: list[str]
    """the product ids"""
    pages: list[PageRef]
    """each pair's result page and its index there"""
    queries: int
    """result pages (ESCI: queries, each query's judged pool one page)"""

    @property
    def texts(self) -> list[str]:
        """Every product text of the pages, once."""
        return list(dict.fromkeys(t for page, _ in self.pages for t in page.texts))


def realistic_pairs(n: int, seed: int = 7) -> PagedPairs:
    """Result pages of popularity-weighted WANDS queries over the synthetic catalogue.

    The product text is the title alone (short: the lower bound on a pair's cost); each page
    also carries its results' category leaves, for the page tier. The last page is cut short.
    """
    catalog = SyntheticCatalog.generate(seed=seed)
    rng = random.Random(seed)
    queries = list(catalog.queries)
    weights = [q.popularity for q in queries]
    pairs: list[tuple[str, str]] = []
    keys: list[str] = []
    pages: list[PageRef] = []
    count = 0
    while len(pairs) < n:
        q = rng.choices(queries, weights)[0]
        results = result_page(catalog, q, rng, size=10, bad_share=0.25)[: n - len(pairs)]
        page = PageContext.of(
            [p.title for p, _ in results],
            [category_leaf(p.category) or "" for p, _ in results],
            [p.title for p, _ in results],
        )
        pairs.extend((q.text, p.title) for p, _ in results)
        keys.extend(p.product_id for p, _ in results)
        pages.extend((page, i) for i in range(len(results)))
        count += 1
    return PagedPairs(pairs, keys, pages, count)


def esci_pairs(n: int, seed: int = 7) -> PagedPairs:
    """``n`` judged ESCI pairs: whole queries' judged pools in a seeded order, the last cut short.

    A query's judged pool is its result page (as in the model build); each product's text and
    category leaf come from the real catalogue, built as the worker builds them for an
    impression that names only its product id.
    """
    catalogue = {p.product_id: p for p in load_esci_products()}
    pools: dict[str, list[str]] = {}
    for e in load_esci_judgments():
        pools.setdefault(e.query, []).append(str(e.product_id))
    order = sorted(pools)
    random.Random(seed).shuffle(order)
    pairs: list[tuple[str, str]] = []
    keys: list[str] = []
    pages: list[PageRef] = []
    queries = 0
    for query in order:
        ids = pools[query][: n - len(pairs)]
        if not ids:
            break
        products = [catalogue[pid] for pid in ids]
        texts = [product_text(p.title, p.brand, p.color, p.category) for p in products]
        page = PageContext.of(
            texts, [category_leaf(p.category) or "" for p in products], [p.title for p in products]
        )
        pairs.extend((query, t) for t in texts)
        keys.extend(ids)
        pages.extend((page, i) for i in range(len(texts)))
        queries += 1
    return PagedPairs(pairs, keys, pages, queries)


def pair_tokens(model_dir: Path, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The cross-encoder's tokenised length of each pair, before its truncation."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return np.array([len(e.ids) for e in tok.encode_batch(list(pairs))])


class PlainOnnx:
    """The straightforward loop: fixed padding to 64 tokens, batches in arrival order."""

    def __init__(self, model_dir: Path, variant_file: str, threads: int) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_dir / variant_file), opts, providers=["CPUExecutionProvider"]
        )
        self.tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

    def predict(self, pairs: list[tuple[str, str]], batch_size: int) -> np.ndarray:
        out = []
        for i in range(0, len(pairs), batch_size):
            b = pairs[i : i + batch_size]
            enc = self.tok(
                [q for q, _ in b],
                [t for _, t in b],
                padding="max_length",
                truncation=True,
                max_length=64,
                return_tensors="np",
            )
            feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
            feed["token_type_ids"] = enc["token_type_ids"].astype(np.int64)
            logits = self.session.run(None, feed)[0][:, 0]
            out.append(1 / (1 + np.exp(-logits)))
        return np.concatenate(out)


ScoreFn = Callable[[slice], object]
"""scores the pairs of a slice of a pair set (one call, as a stream would hand them over)"""
Timing = tuple[float, list[float]]
"""pairs per second over a pair set, and each call's latency in seconds"""


@dataclass(frozen=True)
class Peer:
    """A scorer under test: ``start`` gives a round's scoring function, ``batch`` pairs a call.

    ``start`` runs before the round's timing: a peer measured cold builds its scorer there, so a
    round times the scoring and not the loading of a model.
    """

    start: Callable[[], ScoreFn]
    batch: int


def steady(fn: ScoreFn, batch: int) -> Peer:
    """A peer that keeps its scorer (and whatever it caches) from round to round."""
    return Peer(lambda: fn, batch)


@dataclass(frozen=True)
class Suite:
    """Peers that score the same pair set."""

    pairs: int
    peers: Mapping[str, Peer]


def timed_batches(fn: ScoreFn, n: int, batch_size: int) -> Timing:
    """Score pairs ``0..n`` batch by batch (as a stream hands them over); per-batch latencies."""
    lat = []
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        t = time.perf_counter()
        fn(slice(i, min(i + batch_size, n)))
        lat.append(time.perf_counter() - t)
    return n / (time.perf_counter() - t0), lat


def measure(suites: Sequence[Suite], rounds: int) -> dict[str, list[Timing]]:
    """Every peer of every suite over its pair set, interleaved in rounds; timings by peer name."""
    results: dict[str, list[Timing]] = {n: [] for s in suites for n in s.peers}
    for r in range(rounds):
        for suite in suites:
            for name, peer in suite.peers.items():
                results[name].append(timed_batches(peer.start(), suite.pairs, peer.batch))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def summary(timings: Sequence[Timing], batch: int) -> dict[str, float]:
    """Median pairs/s over rounds, and p50 / p99 call latency over all of them."""
    lats = [v for _, lat in timings for v in lat]
    return {
        "pairs_per_s": statistics.median(x for x, _ in timings),
        "p50_ms": 1000 * float(np.percentile(lats, 50)),
        "p99_ms": 1000 * float(np.percentile(lats, 99)),
        "batch": batch,
    }


def print_table(title: str, table: Mapping[str, dict[str, float]]) -> None:
    """The suite's figures; ratio = the first peer's pairs/s over the row's."""
    base = next(iter(table.values()))["pairs_per_s"]
    print(title)
    print(f"{'scorer':58s} {'pairs/s':>8s} {'batch':>6s} {'p50 ms':>8s} {'p99 ms':>8s} ratio")
    for n, s in table.items():
        print(
            f"{n:58s} {s['pairs_per_s']:8.0f} {s['batch']:6.0f} {s['p50_ms']:8.1f} "
            f"{s['p99_ms']:8.1f} {base / s['pairs_per_s']:5.2f}"
        )


class CatalogueOnly:
    """A store's vectors, read only: what the bench's round scorers find, never what they add."""

    def __init__(self, vectors: ClickHouseVectors) -> None:
        self._vectors = vectors

    def fetch(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return self._vectors.fetch(keys)

    def keep(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Nothing: each round's queries stay cold."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=str(ROOT / "models" / "relmon-minilm-ce"))
    ap.add_argument("--pairs", type=int, default=1024, help="synthetic pairs")
    ap.add_argument(
        "--esci-pairs", type=int, default=1024, help="real judged ESCI pairs (whole query pools)"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--stream-batch", type=int, default=256, help="pairs per worker call")
    args = ap.parse_args()
    model_dir = Path(args.model_dir)
    threads = default_threads()
    import torch

    torch.set_num_threads(threads)
    card = ModelCard.load(model_dir)
    esci = esci_pairs(args.esci_pairs)
    synth = realistic_pairs(args.pairs)
    with scratch_servers("relmon-scoring-", model_dir) as store:
        db.migrate(store)
        filler = Scorer(model_dir, provider="cpu", tier="page", threads=threads)
        assert filler.embedder is not None
        vectors = ClickHouseVectors(lambda: db.connect(store), filler.embedder)
        filler.share_embeddings(vectors)  # `relmon model embed` of the pages' products
        heads = [h for paged in (synth, esci) for page, _ in paged.pages for h in page.heads if h]
        filler.embed(list(dict.fromkeys([*synth.texts, *esci.texts, *heads])))
        try:
            run(args, model_dir, threads, card, synth, esci, CatalogueOnly(vectors))
        finally:
            vectors.close()


def run(
    args: argparse.Namespace,
    model_dir: Path,
    threads: int,
    card: ModelCard,
    synth: PagedPairs,
    esci: PagedPairs,
    catalogue: CatalogueOnly,
) -> None:
    """Measure every peer; print the tables and the JSON line."""
    from sentence_transformers import CrossEncoder

    pairs, keys = synth.pairs, synth.keys
    ep = esci.pairs

    relmon = Scorer(model_dir, provider="cpu", variant="auto", threads=threads)
    cached = Scorer(model_dir, provider="cpu", variant="auto", threads=threads, cache_size=100_000)
    st = CrossEncoder(str(model_dir / "torch"), device="cpu", max_length=64)
    plain = PlainOnnx(model_dir, "model.onnx", threads)
    plain_int8 = PlainOnnx(model_dir, "model.int8.onnx", threads)
    bs, sb = args.batch_size, args.stream_batch

    def st_predict(p: Sequence[tuple[str, str]], b: int) -> np.ndarray:
        return np.asarray(st.predict(list(p), batch_size=b, show_progress_bar=False))

    from sentence_transformers import SentenceTransformer

    from scoring.training import base_model_path

    bi = SentenceTransformer(base_model_path(), device="cpu")

    def bi_predict(p: Sequence[tuple[str, str]], b: int) -> np.ndarray:
        q = bi.encode([x for x, _ in p], batch_size=b, normalize_embeddings=True)
        t = bi.encode([y for _, y in p], batch_size=b, normalize_embeddings=True)
        return np.asarray(((q * t).sum(1) + 1) / 2)

    def cosine_scorer(variant: Variant = "auto") -> Scorer:
        return Scorer(model_dir, provider="cpu", tier="cosine", variant=variant, threads=threads)

    def cold(make: Callable[[], Scorer], score: Callable[[Scorer, slice], object]) -> Peer:
        """A peer with a new scorer each round (built before the round's timing)."""

        def start() -> ScoreFn:
            scorer = make()
            return lambda s: score(scorer, s)

        return Peer(start, sb)

    def page_scorer() -> Scorer:
        return Scorer(model_dir, provider="cpu", tier="page", threads=threads)

    def embedded_page_scorer() -> Scorer:
        scorer = page_scorer()
        scorer.share_embeddings(catalogue)
        return scorer

    def on_pages(data: PagedPairs) -> Callable[[Scorer, slice], object]:
        """The served tier's call: each result with its page."""
        return lambda sc, s: sc.predict(data.pairs[s], bs, keys=data.keys[s], pages=data.pages[s])

    warm = cosine_scorer()
    # the same base weights: the bi-encoder against the fp32 embedder (exact), and the served
    # int8 embedder's difference from both (quantisation)
    fp32_cosine = cosine_scorer("fp32")
    bi_scores = bi_predict(pairs[:64], 32)
    same_cosine = float(np.abs(bi_scores - fp32_cosine.predict(pairs[:64])).max())
    int8_cosine = float(np.abs(bi_scores - warm.predict(pairs[:64])).max())

    relmon_name = f"relmon ({relmon.variant}, bucketed, stream batch {sb})"
    st_name = "sentence-transformers CrossEncoder (torch fp32)"
    plain_name = "plain onnxruntime fp32, padded to 64"
    plain_int8_name = "plain onnxruntime int8, padded to 64"
    cold_name = f"relmon cosine tier, cold (stream batch {sb})"
    warm_name = f"relmon cosine tier, warm cache (stream batch {sb})"
    bi_name = "sentence-transformers bi-encoder, same base weights"
    page_name = f"relmon page tier (served), cold (stream batch {sb})"
    embedded_name = f"relmon page tier (served), catalogue embedded (stream batch {sb})"
    synthetic = Suite(
        len(pairs),
        {
            relmon_name: steady(lambda s: relmon.predict(pairs[s], bs), sb),
            st_name: steady(lambda s: st_predict(pairs[s], bs), bs),
            plain_name: steady(lambda s: plain.predict(pairs[s], bs), bs),
            plain_int8_name: steady(lambda s: plain_int8.predict(pairs[s], bs), bs),
            cold_name: cold(cosine_scorer, lambda sc, s: sc.predict(pairs[s], bs)),
            warm_name: steady(lambda s: warm.predict(pairs[s], bs), sb),
            bi_name: steady(lambda s: bi_predict(pairs[s], bs), bs),
            page_name: cold(page_scorer, on_pages(synth)),
            embedded_name: cold(embedded_page_scorer, on_pages(synth)),
        },
    )
    # the head-query cache tier on the same stream (warm from the second round on)
    cached_name = f"relmon, head-query cache (stream batch {sb})"
    head_cache = Suite(
        len(pairs), {cached_name: steady(lambda s: cached.predict(pairs[s], bs, keys=keys[s]), sb)}
    )
    esci_relmon = f"ESCI: relmon ({relmon.variant}, bucketed, stream batch {sb})"
    esci_st = "ESCI: sentence-transformers CrossEncoder (torch fp32)"
    esci_page = f"ESCI: relmon page tier (served), cold (stream batch {sb})"
    esci_embedded = f"ESCI: relmon page tier (served), catalogue embedded (stream batch {sb})"

    real = Suite(
        len(ep),
        {
            esci_relmon: steady(lambda s: relmon.predict(ep[s], bs), sb),
            esci_st: steady(lambda s: st_predict(ep[s], bs), bs),
            esci_page: cold(page_scorer, on_pages(esci)),
            esci_embedded: cold(embedded_page_scorer, on_pages(esci)),
        },
    )
    # same weights: the three agree on the scores (int8 within quantisation error)
    ref = relmon.predict(pairs[:64])
    st_s = st_predict(pairs[:64], 32)
    fp = Scorer(model_dir, provider="cpu", variant="fp32", threads=threads)
    same_weights = float(np.abs(st_s - fp.predict(pairs[:64])).max())
    # ... on real text too, where both truncate the longer pairs to 64 tokens
    same_weights_esci = float(np.abs(st_predict(ep[:64], 32) - fp.predict(ep[:64])).max())
    for suite in (synthetic, real):  # warm-up
        for peer in suite.peers.values():
            peer.start()(slice(0, min(64, suite.pairs)))
    results = measure([synthetic, head_cache, real], args.rounds)

    table = {n: summary(results[n], p.batch) for n, p in synthetic.peers.items()}
    esci_table = {n: summary(results[n], p.batch) for n, p in real.peers.items()}
    base = table[relmon_name]["pairs_per_s"]
    print_table(
        f"{len(pairs)} realistic pairs, {threads} threads, {args.rounds} interleaved rounds", table
    )
    cached_rates = [x for x, _ in results[cached_name][1:]]
    cached_pps = statistics.median(cached_rates) if cached_rates else 0.0
    print(f"relmon with the warm head-query cache on the same stream: {cached_pps:.0f} pairs/s")
    tokens = pair_tokens(model_dir, ep)
    synth_tokens = pair_tokens(model_dir, pairs)
    t50, t90 = (float(np.percentile(tokens, q)) for q in (50, 90))
    over = float((tokens > relmon.max_length).mean())
    print_table(
        f"{len(ep)} judged ESCI pairs of {esci.queries} queries (each query's pool one page); "
        f"cross-encoder pair tokens p50 {t50:.0f}, p90 {t90:.0f} ({over:.0%} truncated to "
        f"{relmon.max_length}); synthetic pairs p50 {np.percentile(synth_tokens, 50):.0f}, "
        f"p90 {np.percentile(synth_tokens, 90):.0f}",
        esci_table,
    )

    held = heldout_examples(card)
    labels = np.array([e.hard_label for e in held])
    hp = [(q, t) for q, t, _ in as_triples(held)]
    auc32 = roc_auc(labels, fp.predict(hp))
    auc8 = roc_auc(labels, Scorer(model_dir, provider="cpu", variant="int8").predict(hp))
    print(f"held-out AUC fp32 {auc32:.4f} int8 {auc8:.4f} ({len(hp)} pairs)")
    st_pps = table[st_name]["pairs_per_s"]
    out = {
        "relmon_variant": relmon.variant,
        "relmon_pairs_per_s": round(base, 1),
        "relmon_cached_pairs_per_s": round(cached_pps, 1),
        "sentence_transformers_pairs_per_s": round(st_pps, 1),
        "ratio_vs_sentence_transformers": round(base / st_pps, 2),
        "plain_onnx_pairs_per_s": round(table[plain_name]["pairs_per_s"], 1),
        "ratio_vs_plain_onnx": round(base / table[plain_name]["pairs_per_s"], 2),
        "plain_onnx_int8_pairs_per_s": round(table[plain_int8_name]["pairs_per_s"], 1),
        "ratio_vs_plain_onnx_int8": round(base / table[plain_int8_name]["pairs_per_s"], 2),
        "relmon_p99_ms": round(table[relmon_name]["p99_ms"], 1),
        "same_weights_max_abs_diff_st_vs_fp32": round(same_weights, 6),
        "relmon_vs_fp32_first64_max_abs_diff": round(
            float(np.abs(ref - fp.predict(pairs[:64])).max()), 4
        ),
        "auc_fp32": round(auc32, 4),
        "auc_int8": round(auc8, 4),
        "int8_auc_drop": round(auc32 - auc8, 4),
        "threads": threads,
        "relmon_batch_token_budget": TOKEN_BUDGET,
        "pairs": len(pairs),
        "cpu": cpu_model(),
        "isa": isa_flags(),
    }
    cold_pps, warm_pps, st_bi = (table[n]["pairs_per_s"] for n in (cold_name, warm_name, bi_name))
    out.update(
        served_tier=card.served_tier or "cross-encoder",
        cosine_tier_pairs_per_s=round(cold_pps, 1),
        cosine_tier_warm_pairs_per_s=round(warm_pps, 1),
        sentence_transformers_biencoder_pairs_per_s=round(st_bi, 1),
        ratio_cosine_tier_vs_st_biencoder=round(cold_pps / st_bi, 2),
        ratio_cosine_tier_vs_st_crossencoder=round(cold_pps / st_pps, 2),
        ratio_cosine_tier_warm_vs_st_crossencoder=round(warm_pps / st_pps, 2),
        same_weights_max_abs_diff_st_biencoder_vs_cosine_tier_fp32=round(same_cosine, 6),
        cosine_tier_variant=warm.variant,
        max_abs_diff_st_biencoder_vs_cosine_tier=round(int8_cosine, 6),
        synthetic_pages=synth.queries,
        page_tier_pairs_per_s=round(table[page_name]["pairs_per_s"], 1),
        ratio_page_tier_vs_st_crossencoder=round(table[page_name]["pairs_per_s"] / st_pps, 2),
        page_tier_embedded_pairs_per_s=round(table[embedded_name]["pairs_per_s"], 1),
        ratio_page_tier_embedded_vs_st_crossencoder=round(
            table[embedded_name]["pairs_per_s"] / st_pps, 2
        ),
    )
    relmon_esci, st_esci, page_esci = (
        esci_table[n]["pairs_per_s"] for n in (esci_relmon, esci_st, esci_page)
    )
    out.update(
        esci_pairs=len(ep),
        esci_queries=esci.queries,
        esci_tokens_p50=round(t50, 1),
        esci_tokens_p90=round(t90, 1),
        esci_tokens_truncated_share=round(over, 4),
        relmon_esci_pairs_per_s=round(relmon_esci, 1),
        sentence_transformers_esci_pairs_per_s=round(st_esci, 1),
        ratio_vs_sentence_transformers_esci=round(relmon_esci / st_esci, 2),
        page_tier_esci_pairs_per_s=round(page_esci, 1),
        ratio_page_tier_vs_st_crossencoder_esci=round(page_esci / st_esci, 2),
        page_tier_embedded_esci_pairs_per_s=round(esci_table[esci_embedded]["pairs_per_s"], 1),
        ratio_page_tier_embedded_vs_st_crossencoder_esci=round(
            esci_table[esci_embedded]["pairs_per_s"] / st_esci, 2
        ),
        same_weights_max_abs_diff_st_vs_fp32_esci=round(same_weights_esci, 6),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
