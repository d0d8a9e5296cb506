"""The teacher loop on real labels: the bundled ESCI pairs as scored traffic, graded by people.

Every judged (query, product) pair of the bundled ESCI slice is one scored row (less the pairs
:func:`~relmon.teacher.fakes.esci_reference_grader` cannot tell apart: one title judged with
different grades for one query). The query's tier and the product's top-level category come
from :class:`~relmon.sim.realdata.EsciCatalog`; each row carries the inclusion probability of its
tier (:data:`SAMPLE_RATES`), as the worker's stratified sampler records it.

The student is a stand-in, since the point is the correction, not the student: it scores a pair
by the share of the query's words found in the title (:func:`student_score`) and flags it bad
below :data:`THRESHOLD`, i.e. when the title has none of the query's words. Real bad results
mostly share a word with their query (they were retrieved by it), so the rule misses most bad
pairs and flags good ones that merely use other words: its raw rate is biased, and the test
checks that it is.

The review requests are the worker's probability sample (as ``streams.route.Routing.review``
builds them, without an uncertain band): every flagged row with review weight 1 and an audit
share of the rest (by the worker's hash of the impression id) with review weight 1 / share.
They go through the real broker to the real :class:`~relmon.teacher.TeacherConsumer`, whose
chat API is :class:`~relmon.teacher.fakes.FakeChatServer` answering with the people's grade;
the verdicts land in the real store, and the dashboard's own functions
(:func:`relmon.teacher.store.student_sums`, :func:`relmon.teacher.store.reviewed_cases`,
:func:`relmon.teacher.agreement.corrected_rates`) give the corrected rate per tier and category,
which is compared with the true bad share of the scored rows (weighted by their sample weights).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from relmon import db
from relmon.kafka import ensure_topics, producer
from relmon.runtime import wait_until
from relmon.settings import Settings
from relmon.sim.realdata import EsciCatalog
from relmon.teacher import TeacherConsumer, build_judge, store
from relmon.teacher.agreement import corrected_rates
from relmon.teacher.fakes import (
    ESCI_GRADE_NAMES,
    EsciReferenceGrader,
    FakeChatServer,
    esci_reference_grader,
)
from relmon.teacher.verdict import BAD_GRADES, Grade
from schemas import Impression, ScoredImpression
from schemas.models import ReviewRequest
from scoring.esci import load_esci_judgments
from streams import repository
from streams.route import review_request
from streams.sampling import unit_hash

pytestmark = pytest.mark.integration

SAMPLE_RATES = {"head": 0.2, "torso": 0.5, "tail": 1.0}
"""Inclusion probability of a scored row, by its query's tier."""
AUDIT_SHARE = 0.25
"""Share of the unflagged rows sent for review (``RELMON_REVIEW_AUDIT_SHARE``)."""
THRESHOLD = 0.01
"""The student flags a pair whose score is below this: no query word is in the title."""
MIN_REVIEWED = 30
"""Categories with fewer verified cases are not judged for coverage."""

_WORD = re.compile(r"[a-z0-9]+")


def student_score(query: str, title: str) -> float:
    """The stand-in student: the share of the query's words that are in the title."""
    q = set(_WORD.findall(query.lower()))
    t = set(_WORD.findall(title.lower()))
    return len(q & t) / len(q) if q else 0.0


def scored_population(
    grader: EsciReferenceGrader, event_time: datetime
) -> tuple[list[ScoredImpression], dict[str, Grade]]:
    """The scored rows of every unambiguous judged pair, and each impression's human grade."""
    catalog = EsciCatalog.load()
    queries = {q.text: q for q in catalog.queries}
    positions: Counter[str] = Counter()
    rows: list[ScoredImpression] = []
    grades: dict[str, Grade] = {}
    for i, e in enumerate(load_esci_judgments()):
        if not grader.knows(e.query, e.title):
            continue
        query = queries[e.query]
        product = catalog.product(str(e.product_id))
        positions[query.query_id] += 1
        impression = Impression(
            impression_id=f"esci-{i:05d}",
            query_id=query.query_id,
            query=e.query,
            product_id=product.product_id,
            title=e.title,
            category=product.category,
            brand=product.brand or None,
            position=positions[query.query_id],
            event_time=event_time,
        )
        rows.append(
            ScoredImpression.of(
                impression,
                score=student_score(e.query, e.title),
                threshold=THRESHOLD,
                model_version="word-overlap",
                sample_rate=SAMPLE_RATES[query.tier],
                scored_at=event_time,
                tier=query.tier,
            )
        )
        grades[impression.impression_id] = ESCI_GRADE_NAMES[e.grade]
    return rows, grades


def review_requests(rows: list[ScoredImpression]) -> list[ReviewRequest]:
    """The worker's review sample: every flagged row, and an audit share of the rest."""
    out = []
    for row in rows:
        if row.is_bad:
            out.append(review_request(row, "below_threshold"))
        elif unit_hash("audit:" + row.impression_id) < AUDIT_SHARE:
            out.append(review_request(row, "audit", review_probability=AUDIT_SHARE))
    return out


def true_rates(
    rows: list[ScoredImpression], grades: dict[str, Grade], segment: str
) -> dict[str, float]:
    """Per segment (and ``all``): the weighted share of the rows that people call bad."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        bad = grades[row.impression_id] in BAD_GRADES
        for key in ("all", str(getattr(row, segment))):
            acc[key][0] += row.sample_weight
            acc[key][1] += row.sample_weight * bad
    return {key: w_bad / w for key, (w, w_bad) in acc.items()}


def run_until_judged(consumer: TeacherConsumer, client, n: int, timeout: float) -> None:
    """Run the consumer in a thread until ``n`` teacher verdicts are stored."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run(poll_ms=200)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: bool(errors) or store.count_verdicts(client, "teacher") >= n,
            timeout=timeout,
            interval=0.5,
            what="teacher verdicts on the ESCI review sample",
        )
    finally:
        consumer.stop()
        thread.join(timeout=30)
    assert not errors, errors


@pytest.fixture
def teacher_settings(settings: Settings) -> Settings:
    """The test's topics and database, with a teacher that is neither throttled nor capped."""
    s = settings.with_overrides(
        topic_labels=f"{settings.topics.review}.labels",
        teacher_group=f"teacher-{uuid.uuid4().hex[:8]}",
        teacher_backoff_s=0.01,
        teacher_backoff_max_s=0.05,
        teacher_timeout_s=10.0,
        teacher_rate_per_s=0.0,
        teacher_daily_budget=0,
        teacher_concurrency=8,
    )
    ensure_topics(s)
    db.migrate(s)
    return s


def test_corrected_rate_on_human_grades_covers_the_truth_the_raw_rate_misses(
    teacher_settings: Settings,
) -> None:
    s = teacher_settings
    grader = esci_reference_grader()
    now = datetime.now(UTC)
    rows, grades = scored_population(grader, now - timedelta(minutes=10))
    reviews = review_requests(rows)
    reasons = Counter(r.reason for r in reviews)
    assert len(rows) > 6000 and reasons["below_threshold"] > 500
    assert reasons["audit"] > 1000

    client = db.connect(s)
    repository.insert_scored(client, rows)
    prod = producer(s)
    for r in reviews:
        prod.send(s.topics.review, key=r.impression_id.encode(), value=r.to_bytes())
    prod.flush(60)
    prod.close()

    with FakeChatServer(grader=grader) as server:
        s = s.with_overrides(teacher_base_url=server.url, teacher_model="esci-people")
        consumer = TeacherConsumer(s, build_judge(s, client), client=client, max_poll_records=500)
        try:
            # generous: about 2,000 verdicts; a loaded 2-core machine took over 150 s
            run_until_judged(consumer, client, len(reviews), timeout=420)
        finally:
            consumer.close()
        assert len(server.requests) == len(reviews)  # one call per case: no pair twice

    # every reviewed case got its people's grade, with the weight it was sent with
    verdicts = store.verdict_frame(client).set_index("impression_id")
    assert sorted(verdicts.index) == sorted(r.impression_id for r in reviews)
    expected = pd.Series({r.impression_id: grades[r.impression_id] for r in reviews})
    assert (verdicts["grade"] == expected.reindex(verdicts.index)).all()
    assert (verdicts["judge"] == "teacher").all()
    audit = verdicts["reason"] == "audit"
    assert (verdicts.loc[audit, "review_weight"] == 1 / AUDIT_SHARE).all()
    assert (verdicts.loc[~audit, "review_weight"] == 1.0).all()

    since = now - timedelta(hours=1)
    tables = {}
    for segment in ("tier", "category"):
        sums = store.student_sums(client, segment, since)
        cases = store.reviewed_cases(client, segment, since)
        table = corrected_rates(sums, cases).set_index("segment")
        table["truth"] = pd.Series(true_rates(rows, grades, segment))
        table["covered"] = (table["ci_low"] <= table["truth"]) & (
            table["truth"] <= table["ci_high"]
        )
        tables[segment] = table
        print(f"\nby {segment}:\n" + table.round(3).to_string())
    client.close()

    by_tier = tables["tier"]
    assert set(by_tier.index) == {"all", "head", "torso", "tail"}
    assert int(by_tier.loc["all", "sampled"]) == len(rows)
    assert int(by_tier.loc["all", "reviewed"]) == len(reviews)
    # the corrected interval covers the truth overall and in every tier ...
    assert by_tier["covered"].all(), by_tier
    # ... where the raw student rate is off by more than the corrected one, and overall its
    # own interval misses the truth
    raw_error = (by_tier["student_rate"] - by_tier["truth"]).abs()
    corrected_error = (by_tier["corrected_rate"] - by_tier["truth"]).abs()
    assert (raw_error > corrected_error).all(), by_tier
    overall = by_tier.loc["all"]
    assert not overall.student_ci_low <= overall.truth <= overall.student_ci_high
    assert overall.ci_high - overall.ci_low < 0.06

    # per category: 95% intervals, so nearly all judged ones cover their truth
    by_category = tables["category"]
    judged = by_category[by_category["reviewed"] >= MIN_REVIEWED]
    assert len(judged) >= 10
    assert judged["covered"].mean() >= 0.8, judged
