"""The model card: ``card.json`` (machine-readable) and ``card.md`` (the same, for people).

:class:`ModelCard` is ``card.json`` as types: the build writes it, the scorer reads its tiers,
calibrations and operating points, ``relmon model eval`` rewrites its evaluation. It reads and
writes the same JSON as the untyped dict did, so a card written before the types still loads:
every field but ``model_version`` is optional (cards grew over time), keys the types do not know
are kept and written back, and a key is written only when the card has it (``"previous": null``
stays null, an absent key stays absent). The serving side needs only pydantic to read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from relmon.errors import ModelNotFoundError

__all__ = [
    "CARD_FILE",
    "Calibration",
    "CrossEncoderHeldout",
    "DataSplit",
    "ModelCard",
    "OperatingPoint",
    "PageModelCard",
    "PreviousModel",
    "TierCard",
    "TierHeldout",
    "card_markdown",
    "write_card",
]

CARD_FILE = "card.json"
_HINT = "run `relmon model build` to build it"


class _Part(BaseModel):
    """A part of the card: immutable, and keeps the keys it does not know (newer cards')."""

    model_config = ConfigDict(frozen=True, extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The part as JSON: the keys it was given, in the declared order, then unknown ones."""
        return self.model_dump(exclude_unset=True)


class Calibration(_Part):
    """A Platt map of the raw score to P(good): ``sigmoid(alpha * (s - beta))``."""

    alpha: float
    beta: float
    method: str | None = None


class OperatingPoint(_Part):
    """The raw-score threshold below which a result is flagged bad, and how the flag did.

    ``rule`` ``"precision"``: the highest threshold at which the flag's precision on the fitting
    pairs has a one-sided 95% lower bound of at least ``min_precision``; ``"rate"``: no threshold
    got there, so the tier flags the share of results that is truly bad
    (``scoring.training.evaluate.operating_point``). Cards built before rules had the rate rule.
    """

    threshold: float
    rule: str | None = None
    flagged_share: float | None = None
    true_bad_share: float | None = None
    precision: float | None = None
    precision_lower_bound: float | None = None
    min_precision: float | None = None
    recall: float | None = None
    threshold_calibrated: float | None = None
    variant: str | None = None
    fitted_on: str | None = None


class DataSplit(_Part):
    """Which ESCI fold was held out (``kind`` ``"esci-folds"``), so it can be rebuilt."""

    kind: str
    seed: int | None = None
    heldout_fold: int | None = None
    folds: int | None = None


class CrossEncoderHeldout(_Part):
    """The cross-encoder's figures on the held-out fold.

    The title-only AUC is measured on the served variant only, so one of its two keys is set.
    """

    auc_fp32: float | None = None
    auc_int8: float | None = None
    int8_auc_drop: float | None = None
    auc_int8_title_only: float | None = None
    auc_fp32_title_only: float | None = None
    auc_served_check: float | None = None
    true_bad_share: float | None = None
    flag_precision: float | None = None
    flag_recall: float | None = None
    ece_fp32: float | None = None
    ece_int8: float | None = None
    fp32_int8_pearson: float | None = None
    fp32_int8_max_abs_diff: float | None = None

    def auc(self, variant: str) -> float:
        """The held-out AUC of ``variant`` (``"int8"`` or ``"fp32"``)."""
        value = getattr(self, f"auc_{variant}", None)
        if value is None:
            raise KeyError(f"the card has no held-out AUC of the {variant} variant")
        return float(value)


class TierHeldout(_Part):
    """A non-default tier's figures on the held-out fold (fitted on training-fold pairs)."""

    auc: float | None = None
    auc_title_only: float | None = None
    true_bad_share: float | None = None
    flagged_share: float | None = None
    flag_precision: float | None = None
    flag_recall: float | None = None
    ece: float | None = None


class PageModelCard(_Part):
    """The page tier's logistic model (:class:`scoring.page.PageModel`) and its features."""

    features: list[str]
    anchors: int
    mean: list[float]
    std: list[float]
    weights: list[float]
    bias: float
    fitted_on: str | None = None


class TierCard(_Part):
    """What the scorer needs of one tier: its version, calibration and operating point."""

    model_version: str
    file: str | None = None
    task: str | None = None
    calibration: Calibration | None = None
    operating_point: OperatingPoint | None = None
    heldout: TierHeldout | None = None
    page_model: PageModelCard | None = None


class PreviousModel(_Part):
    """The model this build replaced, scored on the new build's held-out pairs."""

    model_version: str
    auc: float
    variant: str


class ModelCard(_Part):
    """``card.json``. Fields are declared in the order the build writes them.

    The cross-encoder tier's version, calibration and operating point are the top-level fields
    (cards before the cosine tier had only those); other tiers are under ``tiers``.
    ``evaluation`` is :func:`scoring.metrics.evaluate_model`'s report, kept as it is.
    """

    model_version: str
    base_model: str | None = None
    task: str | None = None
    training_data: str | None = None
    heldout_data: str | None = None
    heldout_queries: list[str] | None = None
    data: DataSplit | None = None
    train_pairs: int | None = None
    train_soft_targets: int | None = None
    eval_pairs: int | None = None
    recipe: dict[str, Any] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    max_length: int | None = None
    seed: int | None = None
    onnx_opset: int | None = None
    int8_quantisation: str | None = None
    sizes_bytes: dict[str, int] | None = None
    sha256: dict[str, str] | None = None
    cpu_default_variant: str | None = None
    calibration: Calibration | None = None
    operating_point: OperatingPoint | None = None
    heldout: CrossEncoderHeldout | None = None
    evaluation: dict[str, Any] | None = None
    previous: PreviousModel | None = None
    tiers: dict[str, TierCard] | None = None
    served_tier: str | None = None
    build_seconds: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelCard:
        """The card of ``card.json``'s content (a card read as plain JSON, as the CLI does)."""
        return cls.model_validate(dict(data))

    @classmethod
    def load(cls, model_dir: Path | str) -> ModelCard:
        """Read ``model_dir/card.json``.

        Raises:
            ModelNotFoundError: no card, or one without a ``model_version`` or of the wrong shape.

        """
        path = Path(model_dir) / CARD_FILE
        if not path.is_file():
            raise ModelNotFoundError(f"{CARD_FILE} missing in {model_dir}: {_HINT}")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "model_version" not in data:
            raise ModelNotFoundError(f"{path} has no model_version: {_HINT}")
        try:
            return cls.from_json(data)
        except ValidationError as exc:
            raise ModelNotFoundError(f"{path} is not a model card ({exc}): {_HINT}") from exc

    def save(self, model_dir: Path | str) -> None:
        """Write ``card.json`` and ``card.md`` into ``model_dir``."""
        write_card(model_dir, self)

    def tier(self, name: str) -> TierCard:
        """The card entries of tier ``name``: its version, calibration and operating point.

        Raises:
            ModelNotFoundError: the card has no such tier (it predates it: rebuild).

        """
        if name == "cross-encoder":
            return TierCard(
                model_version=self.model_version,
                calibration=self.calibration,
                operating_point=self.operating_point,
            )
        entry = (self.tiers or {}).get(name)
        if entry is None:
            raise ModelNotFoundError(
                f"the model card has no {name!r} tier: rebuild the model (relmon model build)"
            )
        return entry


def _as_card(card: ModelCard | Mapping[str, Any]) -> ModelCard:
    return card if isinstance(card, ModelCard) else ModelCard.from_json(card)


def _f(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def card_markdown(card: ModelCard | Mapping[str, Any]) -> str:
    """Render a card as Markdown: data, sizes, held-out numbers, calibration, file hashes."""
    c = _as_card(card)
    lines = [
        f"# Model card: {c.model_version}",
        "",
        f"- base model: {_or(c.base_model, '?')}",
        f"- task: {_or(c.task, '?')}",
        f"- training data: {_or(c.training_data, '?')}",
        f"- held-out data: {_or(c.heldout_data, '?')}",
        f"- training pairs: {_or(c.train_pairs, '?')} "
        f"(with a teacher probability: {_or(c.train_soft_targets, 0)}), "
        f"held-out pairs: {_or(c.eval_pairs, '?')}",
        f"- epochs {c.epochs}, batch {c.batch_size}, "
        f"learning rate {c.learning_rate}, max length {c.max_length}, "
        f"seed {c.seed}",
        f"- int8: {_or(c.int8_quantisation, '?')}",
        f"- CPU default variant: {_or(c.cpu_default_variant, 'int8')}",
        f"- build time: {_or(c.build_seconds, '?')} s",
        "",
    ]
    held = c.heldout.to_json() if c.heldout else {}
    if held:
        lines += ["## Held-out results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_f(v)} |" for k, v in held.items()]
        lines.append("")
    if c.evaluation:
        lines += _eval_markdown(c.evaluation)
    cal = c.calibration
    if cal:
        lines += [
            "## Calibration option",
            "",
            f"Walmart sigmoid polarisation fitted on the held-out fp32 scores: "
            f"`sigmoid({cal.alpha:.3f} * (s - {cal.beta:.3f}))` "
            "(RELMON_SCORE_CALIBRATION=card).",
            "",
        ]
    lines += _points_markdown(c)
    prev = c.previous
    if prev:
        lines += [
            f"Published model before this one: {prev.model_version}, "
            f"AUC {_f(prev.auc)} ({prev.variant}) on the same held-out pairs.",
            "",
        ]
    lines += ["## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    sizes = c.sizes_bytes or {}
    for name, digest in (c.sha256 or {}).items():
        lines.append(f"| {name} | {sizes.get(name, '?')} | `{digest}` |")
    return "\n".join(lines) + "\n"


def _points_markdown(c: ModelCard) -> list[str]:
    """Each tier's operating point: the threshold below which the worker flags a result bad."""
    tiers = {"cross-encoder": c.operating_point} | {
        name: tier.operating_point for name, tier in (c.tiers or {}).items()
    }
    rows = [(name, point) for name, point in tiers.items() if point is not None]
    if not rows:
        return []
    lines = [
        "## Operating points (the flag)",
        "",
        "A result is flagged bad below its tier's threshold: rule *precision*, the highest "
        "threshold at which the flag's precision has a one-sided 95% lower bound of at least the "
        "target on the fitting pairs; rule *rate*, for a tier that cannot reach the target, the "
        "threshold at which the share flagged equals the true bad share.",
        "",
        "| tier | threshold, P(good) | rule | target | precision (lower bound) | recall | "
        "flagged share | true bad share | fitted on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, pt in rows:
        threshold = _or(pt.threshold_calibrated, pt.threshold)
        lines.append(
            f"| {name} | {_f(threshold)} | {_or(pt.rule, 'rate')} | "
            f">= {_f(pt.min_precision)} | "
            f"{_f(pt.precision)} ({_f(pt.precision_lower_bound)}) | "
            f"{_f(pt.recall)} | {_f(pt.flagged_share)} | {_f(pt.true_bad_share)} | "
            f"{_or(pt.fitted_on, '?')} |"
        )
    return [*lines, ""]


def _eval_markdown(ev: dict[str, Any]) -> list[str]:
    lines = [
        f"## Evaluation ({ev.get('n')} pairs, {ev.get('positives')} relevant, "
        f"threshold {ev.get('threshold')})",
        "",
        "| variant | AUC | accuracy | F1 | ECE | pairs/s |",
        "|---|---|---|---|---|---|",
    ]
    for v in ("fp32", "int8"):
        if v in ev:
            m = ev[v]
            lines.append(
                f"| {v} | {_f(m['auc'])} | {_f(m['accuracy'])} | {_f(m['f1'])} | "
                f"{_f(m['calibration']['ece'])} | {m['pairs_per_s']:.0f} |"
            )
    lines.append("")
    if "agreement" in ev:
        a = ev["agreement"]
        lines += [
            f"fp32 vs int8: Pearson {_f(a['pearson'])}, same decision {_f(a['same_decision'])}, "
            f"max |diff| {_f(a['max_abs_diff'])}, AUC drop {_f(a['auc_drop'])}.",
            "",
        ]
    for v in ("fp32", "int8"):
        by_grade = ev.get(v, {}).get("by_grade")
        if by_grade:
            lines += [
                f"Score distribution per grade ({v}):",
                "",
                "| grade | n | mean | p10 | p50 | p90 | below threshold |",
                "|---|---|---|---|---|---|---|",
            ]
            for g, d in by_grade.items():
                lines.append(
                    f"| {g} | {d['n']} | {_f(d['mean'], 3)} | {_f(d['p10'], 3)} | "
                    f"{_f(d['p50'], 3)} | {_f(d['p90'], 3)} | {_f(d['below_threshold'], 3)} |"
                )
            lines.append("")
    curve = ev.get("int8", ev.get("fp32", {})).get("calibration", {}).get("curve")
    if curve:
        lines += ["Reliability curve (served variant):", "", "| bin | n | mean score | rate |"]
        lines.append("|---|---|---|---|")
        for c in curve:
            lines.append(
                f"| {c['bin'][0]:.1f}-{c['bin'][1]:.1f} | {c['n']} | "
                f"{c['mean_score']:.3f} | {c['rate']:.3f} |"
            )
        lines.append("")
    return lines


def write_card(model_dir: Path | str, card: ModelCard | Mapping[str, Any]) -> None:
    """Write ``card.json`` and ``card.md`` into ``model_dir`` (a plain dict is checked first)."""
    typed = _as_card(card)
    d = Path(model_dir)
    (d / CARD_FILE).write_text(
        json.dumps(typed.to_json(), indent=2, default=str) + "\n", encoding="utf-8"
    )
    (d / "card.md").write_text(card_markdown(typed), encoding="utf-8")
