"""The build's *gate* and *publish* steps: never replace a model by a worse one, nor by half a one.

The new build is scored against the published model on the same held-out pairs
(:func:`previous_auc`); a build worse by more than the tolerance is moved to
``<out_dir>.rejected`` for inspection and refused (:func:`reject_if_worse`), unless forced. A
build that passes replaces ``out_dir`` by renames (:func:`publish`), so a reader sees the old
model or the new one, never a mix.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from relmon.errors import RelmonError
from scoring.card import ModelCard, PreviousModel
from scoring.data import Example
from scoring.metrics import evaluate_model

__all__ = ["ModelRejectedError", "previous_auc", "publish", "reject_if_worse"]

log = logging.getLogger(__name__)


class ModelRejectedError(RelmonError):
    """The new model is worse than the published one on the same held-out set."""


def previous_auc(
    out_dir: Path, heldout: Sequence[Example], variant: str, max_length: int
) -> PreviousModel | None:
    """AUC of the published model (if any) on the new build's held-out examples."""
    if not (out_dir / "card.json").is_file():
        return None
    try:
        ev = evaluate_model(
            out_dir,
            [(e.query, e.text(), e.hard_label) for e in heldout],
            variants=(variant,),
            max_length=max_length,
            fit_calibration=False,
        )
    except (RelmonError, OSError, ValueError) as exc:  # unreadable: nothing to compare with
        log.warning("cannot evaluate the published model in %s: %s", out_dir, exc)
        return None
    return PreviousModel(model_version=ev["model_version"], auc=ev[variant]["auc"], variant=variant)


def reject_if_worse(
    tmp: Path, out_dir: Path, card: ModelCard, force: bool, tolerance: float, n: int
) -> None:
    """Keep a build worse than the published model in ``<out_dir>.rejected`` and raise.

    Raises:
        ModelRejectedError: ``card``'s served variant's held-out AUC is below the previous
            model's minus ``tolerance``, and not ``force``.

    """
    served = card.cpu_default_variant or "int8"
    previous = card.previous
    if card.heldout is None:
        raise ValueError("the card has no held-out figures: evaluate the build first")
    new_auc = card.heldout.auc(served)
    if previous and new_auc < previous.auc - tolerance and not force:
        rejected = out_dir.with_name(f"{out_dir.name}.rejected")
        shutil.rmtree(rejected, ignore_errors=True)
        tmp.rename(rejected)
        raise ModelRejectedError(
            f"new model {card.model_version} has held-out AUC {new_auc:.4f} ({served}), worse "
            f"than the published {previous.model_version} ({previous.auc:.4f}) on the same "
            f"{n} pairs; kept in {rejected}; use --force to publish anyway"
        )


def publish(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` with the finished build (a rename each: never half a model)."""
    if out_dir.exists():
        old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
