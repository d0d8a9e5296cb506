"""Builds a real (small) cross-encoder end to end: fine-tune, ONNX export, int8, card, scoring."""

import json
from pathlib import Path

import numpy as np
import pytest

from relmon.cli import main
from relmon.synth import SyntheticCatalog, labelled_pairs
from scoring import ModelRejectedError, Scorer, build_model, evaluate_model, roc_auc


def test_small_build_separates_relevant_from_irrelevant(tmp_path: Path) -> None:
    out = tmp_path / "model"
    messages: list[str] = []
    info = build_model(out, train_pairs=960, eval_pairs=400, seed=13, progress=messages.append)

    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob("model.tmp-*"))
    card = json.loads((out / "card.json").read_text())
    assert card == info.card
    assert card["model_version"] == info.model_version
    assert info.model_version.startswith("minilm-ce-")
    assert info.model_version[len("minilm-ce-") :] == card["sha256"]["model.onnx"][:12]
    assert "relmon.synth" in card["training_data"] and "seed 13" in card["training_data"]
    assert card["train_pairs"] == 960 and card["eval_pairs"] == 400
    assert card["sizes_bytes"]["model.int8.onnx"] < card["sizes_bytes"]["model.onnx"]
    assert (out / "card.md").is_file() and info.model_version in (out / "card.md").read_text()
    assert (out / "torch" / "config.json").is_file()  # same weights for torch / CrossEncoder
    assert abs(card["heldout"]["int8_auc_drop"]) < 0.05
    assert card["cpu_default_variant"] in ("int8", "fp32")
    held = card["heldout"]
    assert held["auc_fp32"] > 0.65 and held["auc_int8"] > 0.65
    assert held["fp32_int8_pearson"] > 0.9
    assert card["build_seconds"] > 0
    assert any("ETA" in m for m in messages)

    # Held-out queries were never trained on: score pairs of those queries on a fresh catalogue.
    held_ids = set(card["heldout_query_ids"])
    assert held_ids and len(held_ids) < 150
    catalog = SyntheticCatalog.generate(seed=99)
    queries = [q for q in catalog.queries if q.query_id in held_ids]
    pairs = labelled_pairs(catalog, 300, seed=5, queries=queries)
    scorer = Scorer(out)
    assert scorer.variant == card["cpu_default_variant"]
    assert scorer.provider == "CPUExecutionProvider"
    scores = scorer.predict([(q, t) for q, t, _ in pairs])
    labels = np.array([y for _, _, y in pairs])
    assert roc_auc(labels, scores) > 0.65

    ev = evaluate_model(out, pairs)
    assert ev[scorer.variant]["auc"] == roc_auc(labels, scores)
    assert ev["fp32"]["provider"] == "CPUExecutionProvider"
    assert 0.9 < ev["agreement"]["pearson"] <= 1.0

    # The CLI evaluates on the card's held-out set and writes the card (JSON + Markdown).
    assert main(["model", "eval", "--model-dir", str(out), "--card-out", str(tmp_path / "c")]) == 0
    evaluated = json.loads((tmp_path / "c" / "card.json").read_text())
    assert (
        evaluated["evaluation"]["n"] == 400
        and "ece" in evaluated["evaluation"]["int8"]["calibration"]
    )
    assert "Reliability curve" in (tmp_path / "c" / "card.md").read_text()

    # A much worse model (64 training pairs) is refused, unless forced.
    with pytest.raises(ModelRejectedError, match="--force"):
        build_model(out, train_pairs=64, eval_pairs=400, seed=13)
    assert json.loads((out / "card.json").read_text())["model_version"] == info.model_version
