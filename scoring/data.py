"""Training and evaluation data for the cross-encoder, read from local files (never downloaded).

Every loader returns :class:`Example` rows: a (query, title) pair with a hard ``label`` and/or a
soft ``teacher_prob``, the original ``grade`` and the ``source``. The training target
(:attr:`Example.target`) is the teacher probability when there is one (distillation: BCE
against the teacher's probability), else the hard label.

Formats (:func:`load_examples` picks one from the path):

- **WANDS** (Wayfair; a directory with ``query.csv``, ``product.csv``, ``label.csv``, tab
  separated as in the released data set; commas are accepted too): grades Exact / Partial /
  Irrelevant.
- **Amazon ESCI / Shopping Queries** (a directory, or one of its files, with
  ``*_examples.parquet`` and ``*_products.parquet``): grades E / S / C / I; ``locale`` filters
  ``product_locale`` (e.g. ``"us"``).
- **Generic CSV / TSV / JSON Lines** with columns ``query``, ``title`` and ``label`` (0/1 or a
  grade name) and/or ``teacher_prob``; optional ``grade``, ``product_id``, ``source``.
- **The teacher loop's export** is defined as that JSON Lines format:
  ``{"query": ..., "title": ..., "label": 0|1, "teacher_prob": 0.0-1.0, "source": ...}``, where
  ``label`` or ``teacher_prob`` may be missing (not both).

Grades map to targets by :data:`GRADE_TARGETS`; a target >= 0.5 is the hard label 1 (relevant),
so WANDS Partial and ESCI Substitute count as relevant and ESCI Complement as not.

A built model's own evaluation data comes from its card: :func:`heldout_examples_of` rebuilds
the held-out examples it names.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from relmon.errors import ConfigError
from scoring.card import ModelCard
from scoring.text import product_text

__all__ = [
    "GRADE_TARGETS",
    "Example",
    "heldout_examples_of",
    "is_heldout_query",
    "load_esci",
    "load_examples",
    "load_pairs_file",
    "load_wands",
    "split_examples",
]

GRADE_TARGETS: dict[str, float] = {
    # WANDS
    "exact": 1.0,
    "partial": 0.5,
    "irrelevant": 0.0,
    # ESCI
    "e": 1.0,
    "s": 0.6,
    "c": 0.3,
    "i": 0.0,
    # synthetic / generic
    "relevant": 1.0,
    "1": 1.0,
    "0": 0.0,
}


@dataclass(frozen=True)
class Example:
    """One labelled (query, title) pair."""

    query: str
    title: str
    label: int | None = None
    teacher_prob: float | None = None
    grade: str = ""
    source: str = ""
    product_id: str | None = None
    brand: str | None = None
    color: str | None = None
    category: str | None = None

    def __post_init__(self) -> None:
        if self.label is None and self.teacher_prob is None:
            raise ValueError("an example needs a label or a teacher_prob")
        if self.teacher_prob is not None and not 0.0 <= self.teacher_prob <= 1.0:
            raise ValueError(f"teacher_prob {self.teacher_prob} outside [0, 1]")

    @property
    def target(self) -> float:
        """The training target: the teacher's probability if known, else the hard label."""
        if self.teacher_prob is not None:
            return self.teacher_prob
        return float(self.label or 0)

    def text(self, fields: bool = True) -> str:
        """The product text the model reads (:func:`scoring.text.product_text`).

        ``fields=False`` gives the title alone, as a catalogue without brand, colour and
        category would send it.
        """
        if not fields:
            return product_text(self.title)
        return product_text(self.title, self.brand, self.color, self.category)

    @property
    def hard_label(self) -> int:
        """0/1 label for evaluation (the teacher's probability thresholded at 0.5 if no label)."""
        if self.label is not None:
            return self.label
        return int(self.target >= 0.5)


def _grade_target(grade: str, where: str) -> float:
    try:
        return GRADE_TARGETS[grade.strip().lower()]
    except KeyError:
        raise ConfigError(f"{where}: unknown grade {grade!r}") from None


def _sniff_reader(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        head = fh.readline()
        fh.seek(0)
        delimiter = "\t" if head.count("\t") >= head.count(",") else ","
        return list(csv.DictReader(fh, delimiter=delimiter))


def load_wands(directory: Path | str) -> list[Example]:
    """Read WANDS ``query.csv``, ``product.csv`` and ``label.csv`` (tab separated)."""
    d = Path(directory)
    for name in ("query.csv", "product.csv", "label.csv"):
        if not (d / name).is_file():
            raise ConfigError(f"WANDS: {d / name} missing")
    queries = {r["query_id"]: r["query"] for r in _sniff_reader(d / "query.csv")}
    titles = {r["product_id"]: r["product_name"] for r in _sniff_reader(d / "product.csv")}
    out = []
    for r in _sniff_reader(d / "label.csv"):
        q, t = queries.get(r["query_id"]), titles.get(r["product_id"])
        if q is None or t is None:
            continue
        target = _grade_target(r["label"], "WANDS label.csv")
        out.append(Example(q, t, int(target >= 0.5), None, r["label"], "wands", r["product_id"]))
    return out


def load_esci(path: Path | str, locale: str | None = None) -> list[Example]:
    """Read Shopping Queries ``*_examples.parquet`` joined with ``*_products.parquet``."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is installed with chdb
        raise ImportError("ESCI loading needs pyarrow: pip install pyarrow") from exc
    p = Path(path)
    d = p if p.is_dir() else p.parent
    examples = sorted(d.glob("*examples*.parquet"))
    products = sorted(d.glob("*products*.parquet"))
    if not examples or not products:
        raise ConfigError(f"ESCI: need *_examples.parquet and *_products.parquet in {d}")
    prod = pq.read_table(
        products[0], columns=["product_id", "product_locale", "product_title"]
    ).to_pylist()
    titles = {(r["product_id"], r["product_locale"]): r["product_title"] for r in prod}
    rows = pq.read_table(
        examples[0], columns=["query", "product_id", "product_locale", "esci_label"]
    ).to_pylist()
    out = []
    for r in rows:
        if locale is not None and r["product_locale"] != locale:
            continue
        title = titles.get((r["product_id"], r["product_locale"]))
        if not title:
            continue
        target = _grade_target(r["esci_label"], "ESCI esci_label")
        out.append(
            Example(
                r["query"],
                title,
                int(target >= 0.5),
                None,
                r["esci_label"],
                "esci",
                r["product_id"],
            )
        )
    return out


def _opt_float(value: object) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return float(value)  # type: ignore[arg-type]


def load_pairs_file(path: Path | str) -> list[Example]:
    """Read a generic CSV / TSV / JSON Lines file (also the teacher loop's JSONL export)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    if p.suffix in (".jsonl", ".json", ".ndjson"):
        with p.open(encoding="utf-8") as fh:
            rows: list[dict[str, object]] = [json.loads(line) for line in fh if line.strip()]
    else:
        rows = [dict(r) for r in _sniff_reader(p)]
    out = []
    for n, r in enumerate(rows, start=1):
        where = f"{p} row {n}"
        try:
            query, title = str(r["query"]), str(r["title"])
            raw_label = r.get("label")
            grade = str(r.get("grade") or "")
            label: int | None = None
            if raw_label is not None and str(raw_label).strip() != "":
                try:
                    label = int(float(str(raw_label)) >= 0.5)
                except ValueError:  # a grade name
                    grade = grade or str(raw_label)
                    label = int(_grade_target(str(raw_label), where) >= 0.5)
            prob = _opt_float(r.get("teacher_prob"))
            pid = r.get("product_id")
            out.append(
                Example(
                    query,
                    title,
                    label,
                    prob,
                    grade or ("" if label is None else ("relevant" if label else "irrelevant")),
                    str(r.get("source") or p.name),
                    None if pid in (None, "") else str(pid),
                )
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"{where}: needs query, title and label and/or teacher_prob ({exc})"
            ) from None
    return out


def load_examples(path: Path | str, fmt: str = "auto", locale: str | None = None) -> list[Example]:
    """Load examples from ``path``; ``fmt`` is auto, wands, esci or pairs."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file or directory")
    if fmt == "auto":
        if p.is_dir() and (p / "label.csv").is_file():
            fmt = "wands"
        elif p.suffix == ".parquet" or (p.is_dir() and any(p.glob("*examples*.parquet"))):
            fmt = "esci"
        elif p.is_file():
            fmt = "pairs"
        else:
            raise ConfigError(f"{p}: not a WANDS or ESCI directory nor a CSV/JSONL file")
    if fmt == "wands":
        return load_wands(p)
    if fmt == "esci":
        return load_esci(p, locale)
    if fmt == "pairs":
        return load_pairs_file(p)
    raise ConfigError(f"unknown data format {fmt!r} (auto, wands, esci, pairs)")


def is_heldout_query(query: str, share: float) -> bool:
    """Whether a query belongs to the held-out split: a stable hash of its normalised text."""
    digest = hashlib.sha256(" ".join(query.lower().split()).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split_examples(
    examples: Iterable[Example], share: float, max_heldout: int | None = None, seed: int = 13
) -> tuple[list[Example], list[Example]]:
    """Split by query (no held-out query is ever trained on); cap the held-out set by a seed."""
    train: list[Example] = []
    held: list[Example] = []
    for ex in examples:
        (held if is_heldout_query(ex.query, share) else train).append(ex)
    if max_heldout is not None and len(held) > max_heldout:
        held = random.Random(seed).sample(held, max_heldout)
    return train, held


def as_triples(examples: Sequence[Example]) -> list[tuple[str, str, int]]:
    """(query, product text, hard label) triples for :func:`scoring.metrics.evaluate_model`."""
    return [(e.query, e.text(), e.hard_label) for e in examples]


def heldout_examples_of(model_dir: Path | str) -> list[Example]:
    """The held-out examples named in ``model_dir``'s card: queries its training never saw.

    Raises:
        ModelNotFoundError: there is no card; the message names the command that builds one.

    """
    # imported here: scoring.training imports this module (and torch with it)
    from scoring.training.data import heldout_examples

    return heldout_examples(ModelCard.load(model_dir))
