"""The model card: ``card.json`` (machine-readable) and ``card.md`` (the same, for people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["card_markdown", "write_card"]


def _f(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def card_markdown(card: dict[str, Any]) -> str:
    """Render a card as Markdown: data, sizes, held-out numbers, calibration, file hashes."""
    lines = [
        f"# Model card: {card['model_version']}",
        "",
        f"- base model: {card.get('base_model', '?')}",
        f"- task: {card.get('task', '?')}",
        f"- training data: {card.get('training_data', '?')}",
        f"- held-out data: {card.get('heldout_data', '?')}",
        f"- training pairs: {card.get('train_pairs', '?')} "
        f"(with a teacher probability: {card.get('train_soft_targets', 0)}), "
        f"held-out pairs: {card.get('eval_pairs', '?')}",
        f"- epochs {card.get('epochs')}, batch {card.get('batch_size')}, "
        f"learning rate {card.get('learning_rate')}, max length {card.get('max_length')}, "
        f"seed {card.get('seed')}",
        f"- int8: {card.get('int8_quantisation', '?')}",
        f"- CPU default variant: {card.get('cpu_default_variant', 'int8')}",
        f"- build time: {card.get('build_seconds', '?')} s",
        "",
    ]
    held = card.get("heldout")
    if held:
        lines += ["## Held-out results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_f(v)} |" for k, v in held.items()]
        lines.append("")
    ev = card.get("evaluation")
    if ev:
        lines += _eval_markdown(ev)
    cal = card.get("calibration")
    if cal:
        lines += [
            "## Calibration option",
            "",
            f"Walmart sigmoid polarisation fitted on the held-out fp32 scores: "
            f"`sigmoid({cal['alpha']:.3f} * (s - {cal['beta']:.3f}))` "
            "(RELMON_SCORE_CALIBRATION=card).",
            "",
        ]
    prev = card.get("previous")
    if prev:
        lines += [
            f"Published model before this one: {prev['model_version']}, "
            f"AUC {_f(prev['auc'])} ({prev['variant']}) on the same held-out pairs.",
            "",
        ]
    lines += ["## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    for name, digest in card.get("sha256", {}).items():
        lines.append(f"| {name} | {card.get('sizes_bytes', {}).get(name, '?')} | `{digest}` |")
    return "\n".join(lines) + "\n"


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


def write_card(model_dir: Path | str, card: dict[str, Any]) -> None:
    """Write ``card.json`` and ``card.md`` into ``model_dir``."""
    d = Path(model_dir)
    (d / "card.json").write_text(json.dumps(card, indent=2, default=str) + "\n", encoding="utf-8")
    (d / "card.md").write_text(card_markdown(card), encoding="utf-8")
