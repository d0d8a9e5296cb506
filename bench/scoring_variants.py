"""Graph variants of the cross-encoder and the embedder that were measured and not shipped.

Run from the repository root with the venv's python (after ``relmon model build``)::

    python bench/scoring_variants.py

Each variant is written into ``build/scoring_variants/`` from the shipped fp32 file and timed
against the shipped files in the same rounds (interleaved, medians), on real ESCI text built as
the worker builds it, with 2 intra-op threads and the session options the scorer uses:

- ``fused``: onnxruntime's transformer optimizer (``model_type="bert"``: attention,
  SkipLayerNorm, BiasGelu and embedding-LayerNorm fusions) on the fp32 cross-encoder and on the
  embedder;
- ``static_int8``: the int8 the build shipped before the per-token one (``quantise_static``:
  QDQ, MinMax activation scales from 256 pairs of the training folds, the attention-output and
  FFN-output projections kept fp32), against the shipped per-token int8 (``per_token_int8``,
  ``quantise_per_token``: one activation scale per token, computed at run time);
- ``dynamic_int8``: ``quantize_dynamic`` of every MatMul, int8 per-channel weights. Its
  activation scales are computed at run time over the whole input tensor, so a pair's score
  depends on the other pairs of its batch: the bench scores the first pairs alone and inside
  their batch and prints the largest difference (per-token and static int8 give 0);
- ``dynamic_int8_alone``: the same file with every pair scored alone (batches of 1): its score
  then depends on nothing else, at the cost of batching (timed at batch 1, every other variant
  at 32);
- ``static_int8_every_matmul``: that static int8 without its exception: the attention-output
  and FFN-output projections quantised too;
- ``per_token_int8_7bit_weights``: the per-token int8 with weights in [-63, 63]
  (``quantise_per_token(weight_max=63)``, onnxruntime's ``reduce_range``). On a CPU without
  VNNI, onnxruntime multiplies uint8 by int8 with an instruction that adds each pair of
  products in int16 and saturates; 7-bit weights keep every such pair in range. Its AUC
  against ``per_token_int8``'s, on such a CPU, shows what saturation costs there.

For the cross-encoder it also prints the AUC of good against bad on every judged pair and on
fold 0's held-out queries (those the published model was not trained on). The last line is one
JSON object with the CPU's model and ISA flags.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relmon.hostinfo import cpu_model, isa_flags  # noqa: E402
from scoring.esci import load_esci_judgments  # noqa: E402
from scoring.metrics import roc_auc  # noqa: E402
from scoring.training import FOLDS, query_folds  # noqa: E402

MODEL = ROOT / "models" / "relmon-minilm-ce"
OUT = ROOT / "build" / "scoring_variants"
TIMED = 1024
ROUNDS = 3
BATCH = 32


def session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def encodings(texts: Sequence[Any], max_length: int, pairs: bool) -> list[Any]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    tok.no_padding()
    if pairs:
        tok.enable_truncation(max_length, strategy="longest_first")
    else:
        tok.enable_truncation(max_length)
    return list(tok.encode_batch(list(texts)))


def feeds(encs: Sequence[Any], names: set[str], batch: int) -> list[tuple[np.ndarray, dict]]:
    """Length-sorted batches, each padded to its longest row (as the scorer feeds them)."""
    order = np.argsort([len(e.ids) for e in encs], kind="stable")
    out = []
    for start in range(0, len(encs), batch):
        idx = order[start : start + batch]
        width = max(len(encs[i].ids) for i in idx)
        ids = np.zeros((len(idx), width), np.int64)
        mask, types = np.zeros_like(ids), np.zeros_like(ids)
        for row, i in enumerate(idx):
            k = len(encs[i].ids)
            ids[row, :k], mask[row, :k], types[row, :k] = encs[i].ids, 1, encs[i].type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        out.append((idx, {k: v for k, v in feed.items() if k in names}))
    return out


def names(sess: Any) -> set[str]:
    return {i.name for i in sess.get_inputs()}


def timed(
    sessions: dict[str, Any], encs: Sequence[Any], batch: dict[str, int] | None = None
) -> dict[str, float]:
    """Rows per second of each session over ``encs``, interleaved rounds, median.

    ``batch``: rows per call by session name (default :data:`BATCH`).
    """
    batches = {k: feeds(encs, names(s), (batch or {}).get(k, BATCH)) for k, s in sessions.items()}
    seconds: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():  # untimed: lazy initialisation
        s.run(None, batches[k][0][1])
    for _ in range(ROUNDS):
        for k, s in sessions.items():
            started = time.perf_counter()
            for _, feed in batches[k]:
                s.run(None, feed)
            seconds[k].append(time.perf_counter() - started)
    return {k: round(len(encs) / statistics.median(v), 1) for k, v in seconds.items()}


def scores(sess: Any, encs: Sequence[Any], batch: int = 64) -> np.ndarray:
    out = np.zeros(len(encs))
    for idx, feed in feeds(encs, names(sess), batch):
        out[idx] = sess.run(None, feed)[0].reshape(-1)
    return out


def batch_dependence(sess: Any, encs: Sequence[Any]) -> float:
    """Largest change of a pair's score between scored alone and inside its batch."""
    batch = feeds(encs[:BATCH], names(sess), BATCH)[0]
    together = sess.run(None, batch[1])[0].reshape(-1)
    alone = np.array(
        [sess.run(None, feeds([encs[i]], names(sess), 1)[0][1])[0].item() for i in batch[0]]
    )
    return float(np.abs(together - alone).max())


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from scoring.training.export import quantise_per_token, quantise_static

    OUT.mkdir(parents=True, exist_ok=True)
    fused: dict[str, int] = {}
    for name in ("model.onnx", "embed.onnx"):
        model = optimize_model(
            str(MODEL / name), model_type="bert", num_heads=12, hidden_size=384, use_gpu=False
        )
        stats = model.get_fused_operator_statistics()
        fused.update({f"{name}:{op}": n for op, n in stats.items() if n})
        model.save_model_to_file(str(OUT / f"fused.{name}"))
    quantize_dynamic(
        str(MODEL / "model.onnx"),
        str(OUT / "dynamic_int8.model.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )
    examples = load_esci_judgments()
    fold0 = np.array(query_folds(examples, FOLDS, 13)) == 0
    training = [e for e, held in zip(examples, fold0, strict=True) if not held]
    calibration = [(e.query, e.text()) for e in random.Random(16).sample(training, 256)]
    quantise_static(MODEL, calibration, target=OUT / "static_int8.model.onnx")
    quantise_static(
        MODEL, calibration, target=OUT / "static_int8_every_matmul.model.onnx", every_matmul=True
    )
    quantise_per_token(
        MODEL / "model.onnx", OUT / "per_token_int8_7bit_weights.model.onnx", weight_max=63
    )
    pairs = encodings([(e.query, e.text()) for e in examples], 64, pairs=True)
    texts = encodings([e.text() for e in examples[:TIMED]], 128, pairs=False)
    cross = {
        "fp32": session(MODEL / "model.onnx"),
        "per_token_int8": session(MODEL / "model.int8.onnx"),
        "static_int8": session(OUT / "static_int8.model.onnx"),
        "fused_fp32": session(OUT / "fused.model.onnx"),
        "dynamic_int8": session(OUT / "dynamic_int8.model.onnx"),
        "static_int8_every_matmul": session(OUT / "static_int8_every_matmul.model.onnx"),
        "per_token_int8_7bit_weights": session(OUT / "per_token_int8_7bit_weights.model.onnx"),
    }
    cross["dynamic_int8_alone"] = cross["dynamic_int8"]
    alone = {"dynamic_int8_alone": 1}
    embedders = {
        "fp32": session(MODEL / "embed.onnx"),
        "fused_fp32": session(OUT / "fused.embed.onnx"),
    }
    labels = np.array([e.hard_label for e in examples])
    auc, auc0, dependence = {}, {}, {}
    for k, s in cross.items():
        sc = scores(s, pairs, alone.get(k, 64))
        auc[k], auc0[k] = roc_auc(labels, sc), roc_auc(labels[fold0], sc[fold0])
        if k not in alone:  # scored alone, a pair has no batch-mates to depend on
            dependence[k] = batch_dependence(s, pairs)
    line = {
        "bench": "scoring_variants",
        "pairs_timed": TIMED,
        "cross_encoder_pairs_per_s": timed(cross, pairs[:TIMED], alone),
        "embedder_texts_per_s": timed(embedders, texts),
        "cross_encoder_auc": {k: round(v, 4) for k, v in auc.items()},
        "cross_encoder_auc_fold0": {k: round(v, 4) for k, v in auc0.items()},
        "max_score_change_alone_vs_in_batch": dependence,
        "fused_operators": fused,
        "cpu": cpu_model(),
        "isa": isa_flags(),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
