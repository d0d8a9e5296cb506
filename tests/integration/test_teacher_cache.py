"""The stored-verdict cache finds verdicts of non-ASCII queries (real local store)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_connect.driver.client import Client

from relmon import db
from relmon.teacher import Verdict, store
from relmon.teacher.judge import cache_key, normalise_query
from schemas.models import ReviewRequest
from tests.conftest import migrated_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    with migrated_store(tmp_path_factory.mktemp("teacher-cache")) as settings:
        conn = db.connect(settings)
        yield conn
        conn.close()


def request(query: str, impression: str, product: str = "p-1") -> ReviewRequest:
    return ReviewRequest(
        impression_id=impression,
        query_id=f"q-{impression}",
        query=query,
        product_id=product,
        title="Table de café",
        category="Tables",
        score=0.2,
        threshold=0.5,
        model_version="m1",
        reason="below_threshold",
        priority=2.3,
        sample_weight=2.0,
        event_time=datetime.now(UTC),
    )


def teacher_verdict(req: ReviewRequest, grade: str, at: datetime) -> Verdict:
    verdict = Verdict.of(
        req, judge="teacher", judge_id="judge-1", grade=grade, rationale=grade, prompt_version="v1"
    )
    return verdict.model_copy(update={"judged_at": at})


def test_non_ascii_queries_hit_the_stored_cache(client: Client) -> None:
    now = datetime.now(UTC)
    stored = [
        request("TABLE DE CAFÉ  Ø60", "i-1"),
        request("GROSSE Straße", "i-2"),
        request("\uff2f\uff21\uff2b desk", "i-3"),  # full-width letters
    ]
    store.insert_verdicts(client, [teacher_verdict(r, "Exact", now) for r in stored])
    asked = [
        request("table de café ø60", "j-1"),
        request("grosse strasse", "j-2"),
        request("oak   DESK", "j-3"),
        request("table de café ø60", "j-4", product="p-2"),  # another product: a miss
    ]
    keys = [cache_key(r, "v1") for r in asked]
    found = store.lookup_cached(client, keys)
    assert set(found) == set(keys[:3])
    assert {hit.grade for hit in found.values()} == {"Exact"}


def test_the_latest_verdict_of_any_spelling_wins(client: Client) -> None:
    now = datetime.now(UTC)
    older, newer = request("ÉCRAN 4K", "k-1", "p-9"), request("écran 4k", "k-2", "p-9")
    store.insert_verdicts(
        client,
        [
            teacher_verdict(older, "Irrelevant", now - timedelta(hours=1)),
            teacher_verdict(newer, "Substitute", now),
        ],
    )
    key = cache_key(request("Écran 4K", "k-3", "p-9"), "v1")
    assert store.lookup_cached(client, [key])[key].grade == "Substitute"


def test_normalisation_folds_case_width_and_spaces() -> None:
    assert normalise_query("  CAFÉ\u00a0Größe\tTISCH ") == "café grösse tisch"
    assert normalise_query("\uff2f\uff21\uff2b Desk") == normalise_query("oak desk") == "oak desk"
