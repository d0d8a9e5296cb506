"""ONNX Runtime cross-encoder scorer: (query, title) pairs in, relevance probabilities out.

Provider choice (``provider``):

- ``"cpu"``: CPUExecutionProvider only.
- ``"cuda"``: CUDAExecutionProvider, and nothing else will do: if the session does not really
  run on CUDA (onnxruntime-gpu silently falls back to CPU when the CUDA 13 / cuDNN 9 libraries
  or the GPU are missing), :class:`~relmon.errors.ConfigError` is raised.
- ``"auto"``: CUDA where it really works, CPU otherwise (the fallback is logged at INFO).

``variant="auto"`` picks ``model.int8.onnx`` on CPU and ``model.onnx`` (fp32) on CUDA.
:attr:`Scorer.provider` is what ``session.get_providers()`` reports, never what was asked for.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from relmon.errors import ConfigError, ModelNotFoundError

__all__ = ["Provider", "Scorer", "Variant", "default_threads"]

log = logging.getLogger(__name__)

Provider = Literal["auto", "cuda", "cpu"]
Variant = Literal["auto", "int8", "fp32"]
_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def default_threads() -> int:
    """Cores this process may run on (the affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@cache
def _cuda_loadable() -> bool:
    """Whether onnxruntime's CUDA provider library and its CUDA/cuDNN dependencies load."""
    if _CUDA not in ort.get_available_providers():
        return False
    if importlib.util.find_spec("nvidia") is not None:  # the [cuda,cudnn] extras' wheels
        try:
            ort.preload_dlls()
        except Exception as exc:  # best effort: the probe below decides
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        log.debug("CUDA provider not loadable: %s", exc)
        return False
    return True


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)
    return out


class Scorer:
    """Score (query, title) pairs with the ONNX cross-encoder built by ``build_model``.

    Args:
        model_dir: directory holding ``model.onnx`` and/or ``model.int8.onnx``, the tokenizer
            files and ``card.json``.
        provider: ``"auto"`` (CUDA where it really works, else CPU), ``"cuda"`` (raise
            ``ConfigError`` unless CUDA is really active) or ``"cpu"``.
        variant: ``"int8"``, ``"fp32"`` or ``"auto"`` (int8 on CPU, fp32 on CUDA).
        intra_op_threads: onnxruntime intra-op threads; 0 = the cores this process may use.
        max_length: pairs are truncated to this many tokens (longest side first).
        device_id: CUDA device.

    Raises:
        ModelNotFoundError: the directory or one of its files is missing.
        ConfigError: ``provider="cuda"`` but the session does not run on CUDA.

    """

    def __init__(
        self,
        model_dir: Path | str,
        provider: Provider = "auto",
        variant: Variant = "auto",
        intra_op_threads: int = 0,
        max_length: int = 64,
        *,
        device_id: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.max_length = max_length
        self.intra_op_threads = intra_op_threads or default_threads()
        card = self._check_files(variant)
        self.card: dict[str, Any] = card
        want_cuda = provider == "cuda" or (provider == "auto" and _cuda_loadable())
        chosen: Literal["int8", "fp32"] = (
            variant if variant != "auto" else ("fp32" if want_cuda else "int8")
        )
        if not (self.model_dir / _FILES[chosen]).is_file():  # auto: take what the dir has
            chosen = "int8" if chosen == "fp32" else "fp32"
        self._session = self._open(chosen, want_cuda, device_id)
        self.provider: str = self._session.get_providers()[0]
        if want_cuda and self.provider != _CUDA:
            if provider == "cuda":
                raise ConfigError(
                    f"provider='cuda' but onnxruntime runs this model on {self.provider}: CUDA 13 "
                    "/ cuDNN 9 or the GPU is missing (install relmon[cuda] on a GPU host), or use "
                    "provider='auto' or 'cpu'"
                )
            log.info("CUDA did not initialise; scoring on %s", self.provider)
            if (
                variant == "auto"
                and chosen == "fp32"
                and (self.model_dir / _FILES["int8"]).is_file()
            ):
                chosen = "int8"
                self._session = self._open(chosen, False, device_id)
                self.provider = self._session.get_providers()[0]
        self.variant: Literal["int8", "fp32"] = chosen
        # int8 scores differ slightly from fp32: the variant is part of the version on each row
        base = str(card["model_version"])
        self.model_version: str = f"{base}-int8" if chosen == "int8" else base
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = self._load_tokenizer()

    def _check_files(self, variant: Variant) -> dict[str, Any]:
        hint = "run `relmon model build` to build it"
        d = self.model_dir
        if not d.is_dir():
            raise ModelNotFoundError(f"no model directory at {d}: {hint}")
        wanted = [_FILES[variant]] if variant != "auto" else list(_FILES.values())
        if not any((d / f).is_file() for f in wanted):
            raise ModelNotFoundError(f"{' or '.join(wanted)} missing in {d}: {hint}")
        for name in ("tokenizer.json", "tokenizer_config.json", "card.json"):
            if not (d / name).is_file():
                raise ModelNotFoundError(f"{name} missing in {d}: {hint}")
        card: dict[str, Any] = json.loads((d / "card.json").read_text(encoding="utf-8"))
        if "model_version" not in card:
            raise ModelNotFoundError(f"{d / 'card.json'} has no model_version: {hint}")
        return card

    def _open(self, variant: str, cuda: bool, device_id: int) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list[Any] = [_CPU]
        if cuda:
            cuda_opts = {
                "device_id": device_id,
                "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_algo_search": "HEURISTIC",
                "do_copy_in_default_stream": True,
            }
            providers = [(_CUDA, cuda_opts), _CPU]
        path = str(self.model_dir / _FILES[variant])
        return ort.InferenceSession(path, sess_options=opts, providers=providers)

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)

    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """Return the relevance probability (sigmoid of the logit) of each pair, in order.

        Pairs are sorted by token length and batched so that each batch is padded only to its
        own longest pair; the scores come back in the input order.
        """
        out = np.empty(len(pairs), dtype=np.float32)
        for idx, feed in self._batches(pairs, batch_size):
            logits = np.asarray(self._session.run(None, feed)[0])
            out[idx] = _sigmoid(logits.reshape(len(idx), -1)[:, 0])
        return out

    def _batches(
        self, pairs: Sequence[tuple[str, str]], batch_size: int
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield (input positions, model inputs) per length-sorted, dynamically padded batch."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not pairs:
            return
        enc = self._tokenizer(
            [q for q, _ in pairs],
            [t for _, t in pairs],
            truncation=True,
            max_length=self.max_length,
            padding=False,
        )
        ids: list[list[int]] = enc["input_ids"]
        types: list[list[int]] = enc.get("token_type_ids") or [[0] * len(x) for x in ids]
        order = np.argsort([len(x) for x in ids], kind="stable")
        pad = self._tokenizer.pad_token_id or 0
        for start in range(0, len(ids), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = np.full((len(idx), width), pad, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            token_types = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                k = len(ids[i])
                input_ids[row, :k] = ids[i]
                mask[row, :k] = 1
                token_types[row, :k] = types[i]
            feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_types}
            yield idx, {k: v for k, v in feed.items() if k in self._inputs}

    def __repr__(self) -> str:
        return (
            f"Scorer({str(self.model_dir)!r}, provider={self.provider!r}, "
            f"variant={self.variant!r}, model_version={self.model_version!r})"
        )
