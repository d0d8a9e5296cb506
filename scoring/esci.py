"""The bundled real relevance data: a 150-query slice of Amazon's ESCI judgments.

``relmon/data/esci/`` (Apache-2.0; attribution in its README) holds 6,678 human-judged (query,
product) pairs with grades E / S / C / I and the 6,764 real products behind them. It is the
ground truth of every quality figure relmon reports: the model is trained and evaluated on it
(split by query), the calibration of the shown rates is fitted on it, and
``relmon replay --dataset esci`` replays it as live traffic whose truth is known.

A pair is a bad case when its grade is C (complement) or I (irrelevant).
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scoring.data import GRADE_TARGETS, Example

__all__ = ["BAD_GRADES", "EsciProduct", "esci_dir", "load_esci_judgments", "load_esci_products"]

BAD_GRADES = frozenset({"C", "I"})


def esci_dir() -> Path:
    """The folder of the bundled ESCI slice."""
    return Path(str(resources.files("relmon") / "data" / "esci"))


@dataclass(frozen=True)
class EsciProduct:
    """One product of the bundled catalogue."""

    product_id: str
    title: str
    brand: str | None
    color: str | None
    category: str | None  # "A > B > C"


def load_esci_judgments(path: Path | str | None = None) -> list[Example]:
    """The judged pairs (``judgments.tsv``) as examples; label 1 = E or S, 0 = C or I."""
    p = Path(path) if path is not None else esci_dir() / "judgments.tsv"
    out = []
    with p.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            grade = row["grade"].strip().upper()
            if grade.lower() not in GRADE_TARGETS:
                raise ValueError(f"{p}: unknown grade {grade!r}")
            out.append(
                Example(
                    query=row["query"],
                    title=row["title"],
                    label=int(grade not in BAD_GRADES),
                    teacher_prob=None,
                    grade=grade,
                    source="esci",
                    product_id=row["product_id"],
                    brand=row["brand"] or None,
                    color=row["color"] or None,
                    category=row["category"] or None,
                )
            )
    return out


def load_esci_products(path: Path | str | None = None) -> list[EsciProduct]:
    """The bundled catalogue (``products.ndjson.gz``)."""
    p = Path(path) if path is not None else esci_dir() / "products.ndjson.gz"
    out = []
    with gzip.open(p, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            r = json.loads(line)
            cat = r.get("category") or []
            out.append(
                EsciProduct(
                    product_id=str(r["asin"]),
                    title=str(r["title"]),
                    brand=r.get("brand") or None,
                    color=r.get("color") or None,
                    category=" > ".join(cat) if isinstance(cat, list) and cat else None,
                )
            )
    return out
