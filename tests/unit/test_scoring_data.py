"""Training-data loaders on small files written here in the real formats (no downloads)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from relmon.errors import ConfigError, RelmonError
from scoring.data import (
    Example,
    heldout_examples_of,
    is_heldout_query,
    load_esci,
    load_examples,
    load_pairs_file,
    load_wands,
    split_examples,
)


def _write_wands(d: Path) -> None:
    # The released WANDS files are tab separated despite their .csv names.
    (d / "query.csv").write_text(
        "query_id\tquery\tquery_class\n0\tsalon chair\tMassage Chairs\n1\tsmart coffee table\t\n"
    )
    (d / "product.csv").write_text(
        "product_id\tproduct_name\tproduct_class\tcategory hierarchy\tproduct_description\n"
        "10\tsalon massage chair\tMassage Chairs\tFurniture / Chairs\tnice\n"
        "11\tgreen velvet sofa\tSofas\tFurniture\tsoft, with a comma\n"
        "12\tlift top coffee table\tCoffee & Cocktail Tables\tFurniture\t\n"
    )
    (d / "label.csv").write_text(
        "id\tquery_id\tproduct_id\tlabel\n"
        "0\t0\t10\tExact\n1\t0\t11\tIrrelevant\n2\t1\t12\tPartial\n3\t1\t99\tExact\n"
    )


def test_wands(tmp_path: Path) -> None:
    _write_wands(tmp_path)
    rows = load_wands(tmp_path)
    assert [(e.query, e.title, e.label, e.grade) for e in rows] == [
        ("salon chair", "salon massage chair", 1, "Exact"),
        ("salon chair", "green velvet sofa", 0, "Irrelevant"),
        ("smart coffee table", "lift top coffee table", 1, "Partial"),
    ]  # the label of unknown product 99 is skipped
    assert all(e.source == "wands" for e in rows)
    assert rows[0].product_id == "10"
    assert load_examples(tmp_path) == rows  # auto-detected


def test_esci(tmp_path: Path) -> None:
    examples = pa.table(
        {
            "example_id": [1, 2, 3, 4, 5],
            "query": ["usb c cable", "usb c cable", "usb c cable", "usb c cable", "kabel"],
            "query_id": [7, 7, 7, 7, 8],
            "product_id": ["B1", "B2", "B3", "B4", "B1"],
            "product_locale": ["us", "us", "us", "us", "de"],
            "esci_label": ["E", "S", "C", "I", "E"],
            "small_version": [1, 1, 1, 1, 1],
            "large_version": [1, 1, 1, 1, 1],
            "split": ["train"] * 5,
        }
    )
    products = pa.table(
        {
            "product_id": ["B1", "B2", "B3", "B4", "B1"],
            "product_title": ["USB-C Cable 2m", "Lightning Cable", "USB-C Charger", "Mug", "Kabel"],
            "product_description": [None] * 5,
            "product_bullet_point": [None] * 5,
            "product_brand": ["A"] * 5,
            "product_color": [None] * 5,
            "product_locale": ["us", "us", "us", "us", "de"],
        }
    )
    pq.write_table(examples, tmp_path / "shopping_queries_dataset_examples.parquet")
    pq.write_table(products, tmp_path / "shopping_queries_dataset_products.parquet")
    rows = load_esci(tmp_path, locale="us")
    assert [(e.title, e.grade, e.label) for e in rows] == [
        ("USB-C Cable 2m", "E", 1),
        ("Lightning Cable", "S", 1),
        ("USB-C Charger", "C", 0),
        ("Mug", "I", 0),
    ]
    everything = load_examples(tmp_path / "shopping_queries_dataset_examples.parquet")
    assert len(everything) == 5 and everything[-1].title == "Kabel"


def test_generic_csv_tsv_and_teacher_jsonl(tmp_path: Path) -> None:
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text('query,title,label\nrug,"Wool Rug, 5x8",1\nrug,Lamp,0\nlamp,Lamp,Exact\n')
    rows = load_pairs_file(csv_file)
    assert [(e.title, e.label, e.target) for e in rows] == [
        ("Wool Rug, 5x8", 1, 1.0),
        ("Lamp", 0, 0.0),
        ("Lamp", 1, 1.0),
    ]
    assert rows[2].grade == "Exact"
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("query\ttitle\tteacher_prob\nrug\tWool Rug\t0.8\n")
    (soft,) = load_pairs_file(tsv)
    assert soft.label is None and soft.target == pytest.approx(0.8) and soft.hard_label == 1
    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"query": "rug", "title": "Wool Rug", "teacher_prob": 0.9, "source": "gpt"},
                {"query": "rug", "title": "Lamp", "label": 0, "teacher_prob": 0.2, "source": "x"},
                {"query": "lamp", "title": "Lamp", "label": 1, "product_id": 42},
            ]
        )
        + "\n"
    )
    rows = load_examples(teacher)
    assert [(e.target, e.hard_label, e.source) for e in rows] == [
        (0.9, 1, "gpt"),
        (0.2, 0, "x"),  # the teacher's probability is the training target
        (1.0, 1, "teacher.jsonl"),
    ]
    assert rows[2].product_id == "42"


def test_bad_input_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "rug", "title": "Rug"}) + "\n")
    with pytest.raises(ConfigError, match="row 1"):
        load_pairs_file(bad)
    bad.write_text(json.dumps({"query": "rug", "title": "Rug", "teacher_prob": 1.5}) + "\n")
    with pytest.raises(ConfigError, match="row 1"):
        load_pairs_file(bad)
    with pytest.raises(ConfigError, match="no such"):
        load_examples(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="csv missing"):
        load_wands(tmp_path)


def test_split_is_by_query_and_stable() -> None:
    examples = [Example(f"query {i % 50}", f"title {i}", i % 2) for i in range(500)]
    train, held = split_examples(examples, 0.2)
    assert {e.query for e in train}.isdisjoint({e.query for e in held})
    assert 0.05 < len(held) / len(examples) < 0.4
    assert split_examples(examples, 0.2) == (train, held)
    assert is_heldout_query("Query 3 ", 0.2) == is_heldout_query("query  3", 0.2)
    _, capped = split_examples(examples, 0.2, max_heldout=10, seed=1)
    assert len(capped) == 10 and set(capped) <= set(held)


def test_the_heldout_examples_of_a_model_come_from_its_card(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run `relmon model build`"):
        heldout_examples_of(tmp_path)
    (tmp_path / "card.json").write_text(json.dumps({"model_version": "m1"}))
    with pytest.raises(RelmonError, match="rebuild"):  # no held-out folds named in this card
        heldout_examples_of(tmp_path)
