"""The build's *export* steps: ONNX files from torch models, per-token int8, fp16.

The cross-encoder (:func:`export_cross_encoder`): ``model.onnx`` (fp32), ``model.int8.onnx``
(:func:`quantise_per_token`: int8 per-channel weights, and activations quantised at run time
with one scale per token, so a pair's score does not depend on its batch-mates),
``model.fp16.onnx`` (for CUDA)
and ``torch/`` (the same weights as a Hugging Face model). The cosine tier
(:func:`export_embedder`): ``embed.onnx``, the untouched base model's hidden states (pooled in
numpy at serving time, :mod:`scoring.embedding`).

Every function here is deterministic: the same model and pairs give byte-identical files.
Needs the ``train`` extra (torch, onnx), imported when called.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from scoring.embedding import EMBED_FILE, EMBED_INT8_FILE
from scoring.training.finetune import base_model_path

__all__ = [
    "export_cross_encoder",
    "export_embedder",
    "export_onnx",
    "export_pair_model",
    "quantise_per_token",
    "quantise_static",
    "sha256",
    "to_fp16",
]

log = logging.getLogger(__name__)


def sha256(path: Path) -> str:
    """The file's SHA-256, hex (the card's ``sha256``, the model versions' suffixes)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_cross_encoder(
    model: Any,
    tokenizer_cls: Any,
    tmp: Path,
) -> list[Path]:
    """Write the cross-encoder's files into ``tmp``; returns the ONNX files written.

    ``model.onnx`` (fp32), the tokenizer and config, ``model.int8.onnx``
    (:func:`quantise_per_token`), ``model.fp16.onnx`` when the conversion works, and ``torch/``.
    A placeholder ``card.json`` lets scorers open the directory.
    """
    tokenizer = tokenizer_cls.from_pretrained(base_model_path(), local_files_only=True)
    fp32, int8, fp16 = tmp / "model.onnx", tmp / "model.int8.onnx", tmp / "model.fp16.onnx"
    export_pair_model(model, tokenizer, fp32)
    tokenizer.save_pretrained(str(tmp))
    model.config.save_pretrained(str(tmp))
    (tmp / "card.json").write_text('{"model_version": "building"}\n', encoding="utf-8")
    quantise_per_token(fp32, int8)
    to_fp16(fp32, fp16)
    model.save_pretrained(str(tmp / "torch"))  # same weights, for torch / CrossEncoder
    tokenizer.save_pretrained(str(tmp / "torch"))
    return [fp32, int8, fp16] if fp16.is_file() else [fp32, int8]


def export_pair_model(model: Any, tokenizer: Any, path: Path) -> None:
    """Export a cross-encoder (a pair in, its logit out) to ONNX at ``path``."""
    enc = tokenizer(
        ["velvet bar stool"], ["Lark Manor 30'' Swivel Bar Stool in Walnut"], return_tensors="pt"
    )
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    export_onnx(model, args, str(path), "logits", {0: "batch"})


def export_embedder(out_dir: Path, base: Any = None) -> Path:
    """Export a BERT body (hidden states out) to ``out_dir/embed.onnx``; returns its path.

    Also writes its per-token int8 copy, ``embed.int8.onnx`` (:func:`quantise_per_token`).
    ``base`` defaults to the untouched all-MiniLM-L6-v2 (tests pass a tiny model).
    """
    import torch
    from transformers import AutoModel

    if base is None:
        base = AutoModel.from_pretrained(base_model_path(), local_files_only=True)
    base = base.eval()

    class _Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.base(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.tensor([[101, 16904, 3347, 14425, 102]])  # "[CLS] velvet bar stool [SEP]"
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    path = out_dir / EMBED_FILE
    export_onnx(_Hidden().eval(), args, str(path), "hidden", {0: "batch", 1: "sequence"})
    quantise_per_token(path, out_dir / EMBED_INT8_FILE)
    return path


def export_onnx(
    module: Any, args: tuple[Any, ...], path: str, output: str, output_axes: dict[int, str]
) -> None:
    """Export a BERT-shaped module (input ids, attention mask, token types in) to ONNX opset 17.

    Batch and sequence axes of the inputs are dynamic; ``output_axes`` names the output's.
    Tracing warns about Python-level branches on shapes and the mask's index operator; every
    exported graph is checked against held-out labels by the build and against torch by tests.
    """
    import warnings

    import torch

    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        # The TorchScript exporter (dynamo=False) is chosen on purpose: the published models,
        # their int8 quantisation and the determinism tests are built on its graphs.
        # torch.export's graph is another model, to be measured on real labels before it ships.
        warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            path,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=[output],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "token_type_ids": axes,
                output: output_axes,
            },
            opset_version=17,
            dynamo=False,
        )


def quantise_static(
    model_dir: Path,
    pairs: list[tuple[str, str]],
    *,
    target: Path | None = None,
    every_matmul: bool = False,
) -> None:
    """Static int8 (QDQ) with activation scales calibrated on ``pairs``; per-channel weights.

    The int8 the build shipped before :func:`quantise_per_token`; ``bench/scoring_variants.py``
    measures both. Writes ``target`` (default ``model_dir/model.int8.onnx``) from
    ``model_dir/model.onnx``.
    The attention-output and FFN-output projections stay fp32 unless ``every_matmul`` (a
    variant ``bench/scoring_variants.py`` measures: faster, and less accurate).
    """
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

    target = (target or model_dir / "model.int8.onnx").resolve()
    work = target.parent
    pre = work / "model.pre.onnx"
    cwd = os.getcwd()
    os.chdir(work)  # onnxruntime writes temporary files into the working directory
    try:
        quant_pre_process(str(model_dir / "model.onnx"), str(pre), skip_symbolic_shape=True)
        # The output projections (attention output and FFN output: their inputs have the widest
        # activation ranges) stay fp32; measured: held-out AUC drop 0.0027 instead of 0.0059.
        import onnx

        keep_fp32 = [
            n.name
            for n in onnx.load(str(pre), load_external_data=False).graph.node
            if n.op_type == "MatMul" and "output/dense" in n.name and not every_matmul
        ]
        quantize_static(
            str(pre),
            str(target),
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
        for leftover in work.glob("*.data"):
            leftover.unlink()
        (work / "sym_shape_infer_temp.onnx").unlink(missing_ok=True)


def quantise_per_token(fp32: Path, target: Path, *, weight_max: int = 127) -> int:
    """int8 of every weight MatMul, each token's activations with their own scale; returns how many.

    Weights: symmetric int8, one scale per output column. Activations: quantised at run time,
    symmetric, one scale per token row (its largest absolute value / 127; uint8 with zero point
    128), and the int32 product scaled back by both (onnxruntime's ``MatMulIntegerToFloat``, then
    a ``Mul`` by the row's scale). A row's scale depends on nothing but that row, so a pair's
    score does not depend on its batch-mates or on padding, as with static scales; unlike static
    scales there is no calibration set, and no activation range is clipped. onnxruntime's own
    ``quantize_dynamic`` has one scale per tensor, i.e. per batch, and so is not deterministic
    per pair (``bench/scoring_variants.py`` measures both). Byte-identical output for the same
    input file.

    ``weight_max``: the weights' largest integer. 127 (the build's) uses all of int8. 63 (7-bit
    weights, onnxruntime's ``reduce_range``) keeps every pair of uint8 x int8 products within
    int16, which CPUs without VNNI need: onnxruntime's AVX2 kernel adds such pairs in int16
    with saturation (README, "Scoring performance"); ``bench/scoring_variants.py`` measures it.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(fp32))
    graph = model.graph
    multiplied = {n.input[1] for n in graph.node if n.op_type == "MatMul"}
    weights = {  # only these: the word embeddings alone are a 47 MB copy
        i.name: numpy_helper.to_array(i)
        for i in graph.initializer
        if len(i.dims) == 2 and i.name in multiplied
    }
    shared = [
        numpy_helper.from_array(np.array(1.0, np.float32), "per_token/one"),
        numpy_helper.from_array(np.array(127.0, np.float32), "per_token/int8_max"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "per_token/min_range"),
        numpy_helper.from_array(np.array(128, np.uint8), "per_token/zero_point"),
        numpy_helper.from_array(np.array(0, np.int8), "per_token/weight_zero_point"),
    ]
    quantised: dict[str, tuple[str, str]] = {}  # activation -> (its uint8 rows, their scales)
    nodes: list[Any] = []
    added: list[Any] = []
    replaced: set[str] = set()

    def rows(x: str, p: str) -> tuple[str, str]:
        """``x`` as uint8 rows and their scales; once per activation (Q, K and V share one)."""
        if x not in quantised:
            node = helper.make_node
            nodes.extend(
                [
                    node("ReduceMax", [x], [f"{p}/max"], axes=[-1], keepdims=1),
                    node("ReduceMin", [x], [f"{p}/min"], axes=[-1], keepdims=1),
                    node("Neg", [f"{p}/min"], [f"{p}/neg_min"]),
                    node("Max", [f"{p}/max", f"{p}/neg_min", "per_token/min_range"], [f"{p}/abs"]),
                    node("Div", [f"{p}/abs", "per_token/int8_max"], [f"{p}/scale"]),
                    node("Div", ["per_token/int8_max", f"{p}/abs"], [f"{p}/inverse"]),
                    node("Mul", [x, f"{p}/inverse"], [f"{p}/scaled"]),
                    node(
                        "QuantizeLinear",
                        [f"{p}/scaled", "per_token/one", "per_token/zero_point"],
                        [f"{p}/uint8"],
                    ),
                ]
            )
            quantised[x] = (f"{p}/uint8", f"{p}/scale")
        return quantised[x]

    for i, n in enumerate(graph.node):
        if n.op_type != "MatMul" or n.input[1] not in weights:
            nodes.append(n)
            continue
        p = f"per_token/{n.name or i}"
        w = weights[n.input[1]].astype(np.float32)
        w_scale = (np.maximum(np.abs(w).max(axis=0), 1e-12) / weight_max).astype(np.float32)
        w_int8 = np.clip(np.round(w / w_scale), -weight_max, weight_max).astype(np.int8)
        added += [
            numpy_helper.from_array(w_int8, f"{p}/weight"),
            numpy_helper.from_array(w_scale, f"{p}/weight_scale"),
        ]
        x_uint8, x_scale = rows(n.input[0], f"per_token/{n.input[0]}")
        nodes += [
            helper.make_node(
                "MatMulIntegerToFloat",
                [
                    *(x_uint8, f"{p}/weight", "per_token/one", f"{p}/weight_scale"),
                    *("per_token/zero_point", "per_token/weight_zero_point"),
                ],
                [f"{p}/product"],
                domain="com.microsoft",
            ),
            helper.make_node("Mul", [f"{p}/product", x_scale], [n.output[0]]),
        ]
        replaced.add(n.input[1])
    still_used = {name for n in nodes for name in n.input}  # e.g. a weight tied elsewhere
    kept = [i for i in graph.initializer if i.name not in replaced - still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + shared + added)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))
    return len(replaced)


def to_fp16(fp32: Path, fp16: Path) -> None:
    """fp16 copy for CUDA (inputs and output stay int64 / float32). Best effort."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        onnx.save(model, str(fp16))
    except Exception as exc:  # the CPU variants do not need it
        log.warning("fp16 conversion failed, no model.fp16.onnx: %s", exc)
        fp16.unlink(missing_ok=True)
