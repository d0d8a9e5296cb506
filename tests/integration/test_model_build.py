"""The model `make test` builds (`relmon model build`, the default recipe on real labels), checked
as published: files, card, held-out split, operating point, cosine and page tiers, the eval CLI.

The build itself runs once, before the suite (CI builds from a clean clone); building a second,
smaller model here only re-ran the same code for 5 more minutes of CI. The refusal of a worse
build is unit-tested (tests/unit/test_build_publish.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from relmon.cli import main
from scoring import ModelCard, Scorer, roc_auc
from scoring.card import card_markdown, write_card
from scoring.page import PageRef
from scoring.scorer import polarise
from scoring.training.data import esci_split
from scoring.training.evaluate import pool_pages
from scoring.training.publish import previous_auc

pytestmark = pytest.mark.slow


def test_the_built_model_on_real_labels_separates_good_from_bad(
    model_dir: Path, tmp_path: Path
) -> None:
    out = model_dir
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    card = json.loads((out / "card.json").read_text())
    assert ModelCard.load(out).to_json() == card  # the typed card reads and writes the same JSON
    version = card["model_version"]
    assert version == f"minilm-ce-{card['sha256']['model.onnx'][:12]}"
    assert card["training_data"].startswith("real ESCI judgments")
    assert card["data"] == {"kind": "esci-folds", "seed": 13, "heldout_fold": 0, "folds": 5}
    assert card["sizes_bytes"]["model.int8.onnx"] < card["sizes_bytes"]["model.onnx"]
    assert (out / "card.md").is_file() and version in (out / "card.md").read_text()
    assert (out / "torch" / "config.json").is_file()  # same weights for torch / CrossEncoder
    assert card["build_seconds"] > 0

    # Held out: whole queries, never trained on; the card's held-out set is rebuilt from it.
    train, held = esci_split(13, 0)
    assert not {e.query for e in train} & {e.query for e in held}
    assert card["train_pairs"] >= len(train)  # every training-fold pair, plus any extra
    assert card["eval_pairs"] == len(held) and sorted(card["heldout_queries"]) == sorted(
        {e.query for e in held}
    )
    heldout = card["heldout"]
    assert abs(heldout["int8_auc_drop"]) < 0.05 and heldout["fp32_int8_pearson"] > 0.9
    assert heldout["auc_int8"] > 0.6  # one held-out fold; cross-validated: bench/quality.py

    # The operating point: chosen for the flag's precision (a 95% lower bound of at least 0.6
    # where the scorer gets there), and the scorer serves it on the calibrated scale.
    point = card["operating_point"]
    assert point["min_precision"] == 0.6
    assert point["rule"] == ("precision" if point["precision_lower_bound"] >= 0.6 else "rate")
    assert point["precision"] > point["true_bad_share"]  # the flag finds bad cases, not noise
    card_variant = card["cpu_default_variant"]
    auto = Scorer(out)  # on CPU: int8 (if the card allows it) unless fp32 is clearly faster here
    if card_variant == "int8":
        assert set(auto.variant_speeds) == {"int8", "fp32"}
    else:
        assert auto.variant == "fp32" and not auto.variant_speeds
    scorer = Scorer(out, variant=card_variant, calibration="card")
    assert scorer.provider == "CPUExecutionProvider"
    pairs = [(e.query, e.text()) for e in held]
    labels = np.array([e.hard_label for e in held])
    raw = Scorer(out, variant=card_variant).predict(pairs)
    assert scorer.calibration is not None  # calibrated scores are polarise(raw): one inference
    calibrated = polarise(raw, *scorer.calibration)
    assert (calibrated < scorer.operating_threshold).mean() == pytest.approx(
        point["flagged_share"], abs=0.01
    )
    assert roc_auc(labels, raw) == pytest.approx(roc_auc(labels, calibrated), abs=1e-3)

    # The cosine tier (a tier of its own; before the lone model, results that arrive alone):
    # calibrated on training-fold pairs, figures out of sample.
    assert (out / "embed.onnx").is_file() and card["served_tier"] == "page"
    tier = card["tiers"]["cosine"]
    assert tier["model_version"] == f"minilm-cos-{card['sha256']['embed.onnx'][:12]}"
    assert tier["operating_point"]["min_precision"] == 0.6
    assert tier["operating_point"]["precision"] > tier["operating_point"]["true_bad_share"]
    cosine = Scorer(out, tier="cosine", calibration="card")
    int8 = f"-int8.{card['sha256']['embed.int8.onnx'][:8]}"  # the embedder served on CPU
    assert cosine.tier == "cosine" and cosine.model_version == tier["model_version"] + int8 + "-cal"
    assert roc_auc(labels, cosine.predict(pairs)) == pytest.approx(tier["heldout"]["auc"], abs=1e-6)
    assert tier["heldout"]["auc"] > 0.6  # the untouched base model on the held-out queries
    flagged = cosine.predict(pairs) < cosine.operating_threshold
    assert flagged.mean() == pytest.approx(tier["heldout"]["flagged_share"], abs=1e-9)

    # The page tier (served): each held-out query's judged pool as its page, scored as served.
    page = card["tiers"]["page"]
    served = Scorer(out, tier="card", calibration="card")
    assert served.tier == "page" and served.page is not None
    lone = card["tiers"]["lone"]
    assert served.page.model_version == page["model_version"] + int8
    assert served.lone is not None and served.model_version == lone["model_version"] + int8
    p_good = np.zeros(len(held))
    rows: dict[str, list[int]] = {}
    for i, e in enumerate(held):
        rows.setdefault(e.query, []).append(i)
    for query, context in pool_pages(held):
        refs: list[PageRef | None] = [(context, n) for n in range(len(rows[query]))]
        p_good[rows[query]] = served.predict([(query, t) for t in context.texts], pages=refs)
    assert roc_auc(labels, p_good) == pytest.approx(page["heldout"]["auc"], abs=1e-6)
    assert page["heldout"]["auc"] > tier["heldout"]["auc"]  # the page helps on unseen queries
    flags = p_good < served.page.operating_threshold
    assert flags.mean() == pytest.approx(page["heldout"]["flagged_share"], abs=1e-9)
    # the served tier's flag reaches its precision target on the training pages, and holds up
    # on the held-out queries (one fold; all five: bench/quality.py)
    assert page["operating_point"]["rule"] == "precision"
    assert page["heldout"]["flag_precision"] == pytest.approx((labels[flags] == 0).mean())
    assert page["heldout"]["flag_precision"] > 0.5

    # A result that arrives alone: the lone model (the page tier's features that need no page),
    # fitted on the training pairs. On the held-out queries it ranks better than the cosine it
    # starts from, and its flag is the served scorer's own threshold.
    alone = served.predict(pairs)
    assert roc_auc(labels, alone) == pytest.approx(lone["heldout"]["auc"], abs=1e-6)
    assert lone["heldout"]["auc"] > tier["heldout"]["auc"]
    assert lone["operating_point"]["threshold"] == served.operating_threshold
    assert (alone < served.operating_threshold).mean() == pytest.approx(
        lone["heldout"]["flagged_share"], abs=1e-9
    )

    # The CLI evaluates on the card's held-out set (scoring.metrics.evaluate_model, fp32 and
    # int8) and writes the card (JSON + Markdown); its served variant's AUC is the scorer's.
    assert main(["model", "eval", "--model-dir", str(out), "--card-out", str(tmp_path / "c")]) == 0
    ev = json.loads((tmp_path / "c" / "card.json").read_text())["evaluation"]
    assert ev["n"] == len(held)
    assert ev[scorer.variant]["auc"] == pytest.approx(roc_auc(labels, raw), abs=1e-9)
    assert 0.9 < ev["agreement"]["pearson"] <= 1.0
    assert "Reliability curve" in (tmp_path / "c" / "card.md").read_text()

    # The next build compares itself with this one on its held-out pairs (the refusal of a worse
    # build is tested in tests/unit/test_build_publish.py without a second build).
    previous = previous_auc(out, held, scorer.variant, 64)
    assert previous is not None and previous.model_version.startswith(version)
    assert previous.auc == pytest.approx(heldout[f"auc_{scorer.variant}"], abs=1e-9)


def test_the_published_card_round_trips_and_renders_the_same_markdown(
    model_dir: Path, tmp_path: Path
) -> None:
    raw = json.loads((model_dir / "card.json").read_text())
    card = ModelCard.load(model_dir)
    assert card.to_json() == raw
    assert json.dumps(card.to_json(), sort_keys=True) == json.dumps(raw, sort_keys=True)
    assert card_markdown(card) == (model_dir / "card.md").read_text()
    assert card.tier("cosine").model_version.startswith("minilm-cos-")
    assert card.tier("page").model_version.startswith("minilm-page-")
    assert card.tier("lone").model_version.startswith("minilm-lone-")
    write_card(tmp_path, raw)  # the CLI's path: a card read as plain JSON
    assert json.loads((tmp_path / "card.json").read_text()) == raw
