"""``relmon export distill``: teacher- and human-labelled pairs as a training set.

Writes the teacher loop's JSON Lines export that :func:`scoring.data.load_pairs_file` (and so
``relmon model build --data``) reads: one line per (query, product) pair with ``query``,
``title``, ``label`` (0/1), ``teacher_prob`` (the soft target of the grade: Exact 1.0,
Substitute 0.6, Complement 0.3, Irrelevant 0.0), ``grade``, ``product_id`` and ``source``
(``human:<reviewer>`` or ``teacher:<model>:<prompt version>``). A person's latest grade wins
over the teacher's; among teacher verdicts the latest wins.
"""

from __future__ import annotations

import json
from pathlib import Path

from clickhouse_connect.driver.client import Client

from relmon.teacher.judge import normalise_query
from relmon.teacher.verdict import grade_target

__all__ = ["export_distill", "training_rows"]


def training_rows(client: Client, *, include_teacher: bool = True) -> list[dict[str, object]]:
    """One training row per (normalised query, product id), people first."""
    result = client.query(
        "SELECT query, title, product_id, judge, judge_id, prompt_version, grade, judged_at "
        "FROM verdicts FINAL WHERE judge = 'human' OR {teacher:Bool} "
        "ORDER BY judged_at, impression_id",
        parameters={"teacher": include_teacher},
    )
    best: dict[tuple[str, str], tuple[int, dict[str, object]]] = {}
    for query, title, pid, judge, judge_id, version, grade, _ in result.result_rows:
        rank = 1 if judge == "human" else 0
        target = grade_target(str(grade))
        source = f"human:{judge_id}" if judge == "human" else f"teacher:{judge_id}:{version}"
        row: dict[str, object] = {
            "query": str(query),
            "title": str(title),
            "label": int(target >= 0.5),
            "teacher_prob": target,
            "grade": str(grade),
            "product_id": str(pid),
            "source": source,
        }
        key = (normalise_query(str(query)), str(pid))
        if key not in best or rank >= best[key][0]:
            best[key] = (rank, row)
    return [row for _, row in best.values()]


def export_distill(client: Client, out: Path, *, include_teacher: bool = True) -> dict[str, int]:
    """Write the training set to ``out`` (JSON Lines); return counts by judge kind."""
    rows = training_rows(client, include_teacher=include_teacher)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    counts = {"pairs": len(rows), "human": 0, "teacher": 0}
    for row in rows:
        counts[str(row["source"]).split(":", 1)[0]] += 1
    return counts
