"""Scoring benchmark: relmon's Scorer vs sentence-transformers CrossEncoder vs plain ONNX.

The served tier is the cosine tier (the base model's embeddings, the card's ``served_tier``), so it
is measured too, against sentence-transformers' own bi-encoder on the same base weights
(``SentenceTransformer.encode`` of the batch's queries and titles, then the cosine): cold (a new
scorer each round: every text embedded once per round) and warm (its per-text cache filled by
the previous round, as a worker's is after the first sighting of a head query or a product).

Run from the repository root with the venv's python:  ``python bench/scoring.py``

All three score the same realistic pairs (WANDS queries with titles of the synthetic catalogue,
drawn like search result pages: Zipf query popularity, 25% irrelevant results), with the same
fine-tuned weights (``models/relmon-minilm-ce``: ONNX for relmon and the plain loop, the saved
torch model ``torch/`` for CrossEncoder), interleaved in rounds in one process so that machine
noise hits all of them alike; medians over rounds are reported. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relmon.hostinfo import cpu_model, isa_flags  # noqa: E402
from relmon.sim.synth import SyntheticCatalog, result_page  # noqa: E402
from scoring import ModelCard, Scorer  # noqa: E402
from scoring.data import as_triples  # noqa: E402
from scoring.metrics import roc_auc  # noqa: E402
from scoring.scorer import default_threads  # noqa: E402
from scoring.training import heldout_examples  # noqa: E402


def realistic_pairs(n: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """(query, title, product_id) of result pages of popularity-weighted WANDS queries."""
    catalog = SyntheticCatalog.generate(seed=seed)
    rng = random.Random(seed)
    queries = list(catalog.queries)
    weights = [q.popularity for q in queries]
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        q = rng.choices(queries, weights)[0]
        for product, _ in result_page(catalog, q, rng, size=10, bad_share=0.25):
            out.append((q.text, product.title, product.product_id))
    return out[:n]


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


def timed_batches(fn, pairs, batch_size):  # type: ignore[no-untyped-def]
    """Score pairs batch by batch (as a stream would hand them over); per-batch latencies."""
    lat = []
    t0 = time.perf_counter()
    for i in range(0, len(pairs), batch_size):
        t = time.perf_counter()
        fn(pairs[i : i + batch_size], batch_size)
        lat.append(time.perf_counter() - t)
    return len(pairs) / (time.perf_counter() - t0), lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=str(ROOT / "models" / "relmon-minilm-ce"))
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--stream-batch", type=int, default=256, help="pairs per worker call")
    args = ap.parse_args()
    model_dir = Path(args.model_dir)
    threads = default_threads()
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    card = ModelCard.load(model_dir)
    rows = realistic_pairs(args.pairs)
    pairs = [(q, t) for q, t, _ in rows]
    keys = [pid for _, _, pid in rows]

    relmon = Scorer(model_dir, provider="cpu", variant="auto", intra_op_threads=threads)
    cached = Scorer(
        model_dir, provider="cpu", variant="auto", intra_op_threads=threads, cache_size=100_000
    )
    st = CrossEncoder(str(model_dir / "torch"), device="cpu", max_length=64)
    plain = PlainOnnx(model_dir, "model.onnx", threads)
    plain_int8 = PlainOnnx(model_dir, "model.int8.onnx", threads)
    bs, sb = args.batch_size, args.stream_batch

    def st_predict(p, b):  # type: ignore[no-untyped-def]
        return st.predict(p, batch_size=b, show_progress_bar=False)

    from sentence_transformers import SentenceTransformer

    from scoring.training import base_model_path

    bi = SentenceTransformer(base_model_path(), device="cpu")

    def bi_predict(p, b):  # type: ignore[no-untyped-def]
        q = bi.encode([x for x, _ in p], batch_size=b, normalize_embeddings=True)
        t = bi.encode([y for _, y in p], batch_size=b, normalize_embeddings=True)
        return ((q * t).sum(1) + 1) / 2

    def cosine_scorer() -> Scorer:
        return Scorer(model_dir, provider="cpu", tier="cosine", intra_op_threads=threads)

    warm = cosine_scorer()
    same_cosine = float(np.abs(bi_predict(pairs[:64], 32) - warm.predict(pairs[:64])).max())

    peers = {
        f"relmon ({relmon.variant}, bucketed, stream batch {sb})": (
            lambda p, b: relmon.predict(p, bs),
            sb,
        ),
        "sentence-transformers CrossEncoder (torch fp32)": (st_predict, bs),
        "plain onnxruntime fp32, padded to 64": (plain.predict, bs),
        "plain onnxruntime int8, padded to 64": (plain_int8.predict, bs),
        f"relmon cosine tier, cold (stream batch {sb})": (
            lambda p, b: cosine_scorer().predict(p, bs),
            sb,
        ),
        f"relmon cosine tier, warm cache (stream batch {sb})": (
            lambda p, b: warm.predict(p, bs),
            sb,
        ),
        "sentence-transformers bi-encoder, same base weights": (bi_predict, bs),
    }
    # same weights: the three agree on the scores (int8 within quantisation error)
    ref = relmon.predict(pairs[:64])
    st_s = np.asarray(st_predict(pairs[:64], 32))
    fp = Scorer(model_dir, provider="cpu", variant="fp32", intra_op_threads=threads)
    same_weights = float(np.abs(st_s - fp.predict(pairs[:64])).max())
    for fn, b in peers.values():  # warm-up
        fn(pairs[:64], b)
    results: dict[str, list[tuple[float, list[float]]]] = {n: [] for n in peers}
    cached_rates = []
    for r in range(args.rounds):
        for name, (fn, b) in peers.items():
            results[name].append(timed_batches(fn, pairs, b))
        # the head-query cache tier on the same stream (warm after the first round)
        cached_rates.append(
            timed_batches(lambda p, b: cached.predict(p, bs, keys=keys[: len(p)]), pairs, sb)[0]
            if r
            else 0.0
        )
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    def summary(name: str) -> dict[str, float]:
        rates = [x for x, _ in results[name]]
        lats = [v for _, lat in results[name] for v in lat]
        return {
            "pairs_per_s": statistics.median(rates),
            "p50_ms": 1000 * float(np.percentile(lats, 50)),
            "p99_ms": 1000 * float(np.percentile(lats, 99)),
            "batch": peers[name][1],
        }

    table = {n: summary(n) for n in peers}
    names = list(peers)
    base = table[names[0]]["pairs_per_s"]
    print(f"{len(pairs)} realistic pairs, {threads} threads, {args.rounds} interleaved rounds")
    print(f"{'scorer':58s} {'pairs/s':>8s} {'batch':>6s} {'p50 ms':>8s} {'p99 ms':>8s} ratio")
    for n, s in table.items():
        print(
            f"{n:58s} {s['pairs_per_s']:8.0f} {s['batch']:6.0f} {s['p50_ms']:8.1f} "
            f"{s['p99_ms']:8.1f} {base / s['pairs_per_s']:5.2f}"
        )
    cached_pps = statistics.median(cached_rates[1:]) if args.rounds > 1 else 0.0
    print(f"relmon with the warm head-query cache on the same stream: {cached_pps:.0f} pairs/s")

    held = heldout_examples(card)
    labels = np.array([e.hard_label for e in held])
    hp = [(q, t) for q, t, _ in as_triples(held)]
    auc32 = roc_auc(labels, fp.predict(hp))
    auc8 = roc_auc(labels, Scorer(model_dir, provider="cpu", variant="int8").predict(hp))
    print(f"held-out AUC fp32 {auc32:.4f} int8 {auc8:.4f} ({len(hp)} pairs)")
    out = {
        "relmon_variant": relmon.variant,
        "relmon_pairs_per_s": round(base, 1),
        "relmon_cached_pairs_per_s": round(cached_pps, 1),
        "sentence_transformers_pairs_per_s": round(table[names[1]]["pairs_per_s"], 1),
        "ratio_vs_sentence_transformers": round(base / table[names[1]]["pairs_per_s"], 2),
        "plain_onnx_pairs_per_s": round(table[names[2]]["pairs_per_s"], 1),
        "ratio_vs_plain_onnx": round(base / table[names[2]]["pairs_per_s"], 2),
        "plain_onnx_int8_pairs_per_s": round(table[names[3]]["pairs_per_s"], 1),
        "ratio_vs_plain_onnx_int8": round(base / table[names[3]]["pairs_per_s"], 2),
        "relmon_p99_ms": round(table[names[0]]["p99_ms"], 1),
        "same_weights_max_abs_diff_st_vs_fp32": round(same_weights, 6),
        "relmon_vs_fp32_first64_max_abs_diff": round(
            float(np.abs(ref - fp.predict(pairs[:64])).max()), 4
        ),
        "auc_fp32": round(auc32, 4),
        "auc_int8": round(auc8, 4),
        "int8_auc_drop": round(auc32 - auc8, 4),
        "threads": threads,
        "pairs": len(pairs),
        "cpu": cpu_model(),
        "isa": isa_flags(),
    }
    cold, warm_pps, st_bi = (table[n]["pairs_per_s"] for n in names[4:7])
    out.update(
        served_tier=card.served_tier or "cross-encoder",
        cosine_tier_pairs_per_s=round(cold, 1),
        cosine_tier_warm_pairs_per_s=round(warm_pps, 1),
        sentence_transformers_biencoder_pairs_per_s=round(st_bi, 1),
        ratio_cosine_tier_vs_st_biencoder=round(cold / st_bi, 2),
        ratio_cosine_tier_vs_st_crossencoder=round(cold / table[names[1]]["pairs_per_s"], 2),
        ratio_cosine_tier_warm_vs_st_crossencoder=round(
            warm_pps / table[names[1]]["pairs_per_s"], 2
        ),
        same_weights_max_abs_diff_st_biencoder_vs_cosine_tier=round(same_cosine, 6),
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
