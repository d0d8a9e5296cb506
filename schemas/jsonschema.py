"""JSON Schemas of relmon's records, generated from the models and shipped in ``schemas/json``.

Regenerate with ``relmon schemas export`` after changing a model; a test checks the shipped files
equal what the models generate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.alert import AlertRecord
from schemas.models import CatalogProduct, DeadLetter, Impression, ReviewRequest, ScoredImpression
from schemas.verdict import Verdict

SHIPPED_DIR = Path(__file__).parent / "json"
MODELS: dict[str, type[BaseModel]] = {
    "impression": Impression,
    "scored_impression": ScoredImpression,
    "review_request": ReviewRequest,
    "dead_letter": DeadLetter,
    "catalog_product": CatalogProduct,
    "verdict": Verdict,
    "alert": AlertRecord,
}


def generate() -> dict[str, dict[str, Any]]:
    """Return the JSON Schema of every record type, keyed by file stem."""
    out = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://relmon.dev/schemas/v1/{name}.schema.json"
        out[name] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    """Serialise a schema the way it is shipped."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path = SHIPPED_DIR) -> list[Path]:
    """Write every schema to ``directory``; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in generate().items():
        path = directory / f"{name}.schema.json"
        path.write_text(render(schema))
        paths.append(path)
    return paths
