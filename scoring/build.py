"""Where ``build_model`` lived before :mod:`scoring.training`: the names ``relmon.cli`` imports.

New code imports :mod:`scoring.training`.
"""

from scoring.training import (
    DEFAULT_RECIPE,
    FOLDS,
    MAX_INT8_AUC_DROP,
    SERVED_TIER,
    ModelInfo,
    ModelRejectedError,
    build_model,
    heldout_examples,
    operating_point,
)

__all__ = [
    "DEFAULT_RECIPE",
    "FOLDS",
    "MAX_INT8_AUC_DROP",
    "SERVED_TIER",
    "ModelInfo",
    "ModelRejectedError",
    "build_model",
    "heldout_examples",
    "operating_point",
]
