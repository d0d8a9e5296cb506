"""The typed model card reads and writes the same ``card.json`` as the plain dict did.

Cards written before the types must load and write back unchanged (every key, null or absent,
unknown keys too), and the serving face must not pull in the build side (torch).
"""

import subprocess
import sys
from pathlib import Path

import pytest

from relmon.errors import ModelNotFoundError
from scoring.card import ModelCard
from scoring.scorer import operating_threshold
from scoring.training.data import heldout_examples


def test_old_and_unknown_keys_nulls_and_absences_are_kept(tmp_path: Path) -> None:
    old = {
        "model_version": "minilm-ce-old",
        "calibration": {"alpha": 8, "beta": 0.5},
        "previous": None,
        "from_the_future": {"x": [1, 2]},
        "heldout": {"auc_fp32": 0.9, "auc_fp32_title_only": 0.8, "new_metric": 1},
    }
    card = ModelCard.from_json(old)
    assert card.to_json() == {**old, "calibration": {"alpha": 8.0, "beta": 0.5}}
    assert "served_tier" not in card.to_json() and card.served_tier is None
    card.save(tmp_path)
    assert ModelCard.load(tmp_path) == card
    # a card without tiers serves the cross-encoder, whose entries are the top-level ones
    assert card.tier("cross-encoder").calibration == card.calibration
    with pytest.raises(ModelNotFoundError, match="rebuild"):
        card.tier("cosine")


def test_loading_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"card\.json missing"):
        ModelCard.load(tmp_path)
    (tmp_path / "card.json").write_text('{"served_tier": "cosine"}')
    with pytest.raises(ModelNotFoundError, match="no model_version"):
        ModelCard.load(tmp_path)
    (tmp_path / "card.json").write_text('{"model_version": "v", "calibration": {"alpha": 1}}')
    with pytest.raises(ModelNotFoundError, match="not a model card"):
        ModelCard.load(tmp_path)


def test_readers_take_a_plain_json_card_too() -> None:
    card = {"model_version": "v", "operating_point": {"threshold": 0.25}}
    assert operating_threshold(card) == 0.25
    assert operating_threshold({"model_version": "v"}) == 0.5
    with pytest.raises(Exception, match="rebuild"):
        heldout_examples(card)
    split = {"kind": "esci-folds", "seed": 13, "heldout_fold": 0, "folds": 5}
    held = heldout_examples({"model_version": "v", "data": split})
    assert held == heldout_examples(ModelCard.from_json({"model_version": "v", "data": split}))
    assert len({e.query for e in held}) == 30


def test_the_serving_face_does_not_import_the_build_side() -> None:
    code = (
        "import sys, scoring, scoring.scorer, scoring.card; "
        "bad = [m for m in ('torch', 'transformers', 'scoring.training') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
