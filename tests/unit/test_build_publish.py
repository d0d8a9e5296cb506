"""Publishing a build: a worse one is kept aside and refused unless forced; a good one replaces
the published model in one rename."""

from pathlib import Path

import pytest

from scoring.card import ModelCard
from scoring.training.publish import ModelRejectedError, publish, reject_if_worse


def _build(root: Path, name: str, version: str) -> Path:
    d = root / name
    d.mkdir()
    (d / "card.json").write_text(f'{{"model_version": "{version}"}}')
    return d


def _card(version: str, auc: float, previous_auc: float | None) -> ModelCard:
    card: dict[str, object] = {
        "model_version": version,
        "cpu_default_variant": "int8",
        "heldout": {"auc_int8": auc},
    }
    if previous_auc is not None:
        card["previous"] = {"model_version": "old", "auc": previous_auc, "variant": "int8"}
    return ModelCard.from_json(card)


def test_a_worse_build_is_kept_aside_and_refused(tmp_path: Path) -> None:
    out = _build(tmp_path, "model", "old")
    tmp = _build(tmp_path, "model.tmp-1", "new")
    with pytest.raises(ModelRejectedError, match="--force") as err:
        reject_if_worse(tmp, out, _card("new", 0.60, 0.65), False, 0.002, 1331)
    assert "0.6000" in str(err.value) and "0.6500" in str(err.value)
    assert (tmp_path / "model.rejected" / "card.json").read_text() == '{"model_version": "new"}'
    assert (out / "card.json").read_text() == '{"model_version": "old"}'  # untouched
    assert not tmp.exists()


@pytest.mark.parametrize(
    ("auc", "previous", "force"),
    [(0.60, 0.65, True), (0.649, 0.65, False), (0.70, 0.65, False), (0.50, None, False)],
)
def test_a_build_within_tolerance_forced_or_first_is_published(
    tmp_path: Path, auc: float, previous: float | None, force: bool
) -> None:
    out = _build(tmp_path, "model", "old")
    tmp = _build(tmp_path, "model.tmp-1", "new")
    reject_if_worse(tmp, out, _card("new", auc, previous), force, 0.002, 1331)
    publish(tmp, out)
    assert (out / "card.json").read_text() == '{"model_version": "new"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
