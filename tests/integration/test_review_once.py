"""Review requests after SIGKILLs (issue 11 item 6): none lost, repeats only from the batch a
kill caught between delivery and the ledger (real tansu, real store, real worker and model)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaAdminClient

from relmon import db
from relmon.kafka import producer, read_topic
from relmon.replay import ReplayConfig, TrafficGenerator, publish_catalog
from relmon.runtime import wait_until
from relmon.synth import SyntheticCatalog
from schemas import ReviewRequest
from streams import repository

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
KILLS = 3


def produce(settings, pages: int) -> dict[int, int]:
    """Three minutes of recent event time; return the end offset of each partition."""
    catalog = SyntheticCatalog.generate(seed=23)
    publish_catalog(settings, catalog)
    gen = TrafficGenerator(catalog, ReplayConfig(seed=23, malformed_share=0.0))
    start = (datetime.now(UTC) - timedelta(minutes=10)).replace(second=0, microsecond=0)
    prod = producer(settings)
    ends: dict[int, int] = {}
    for i in range(pages):
        for key, value in gen.page(start + timedelta(seconds=180 * i / pages), 180 * i / pages):
            meta = prod.send(settings.topic_impressions, key=key, value=value).get(30)
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    prod.close()
    return ends


def committed_all(settings, ends: dict[int, int]) -> bool:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_servers)
    try:
        offsets = admin.list_group_offsets(settings.consumer_group).get(settings.consumer_group, {})
    finally:
        admin.close()
    got = {
        tp.partition: m.offset
        for tp, m in offsets.items()
        if tp.topic == settings.topic_impressions
    }
    return all(got.get(p, -1) >= end for p, end in ends.items())


def test_kills_lose_no_review_and_repeat_only_the_batch_in_flight(settings, start_worker):
    s = settings.with_overrides(unknown_product_retry_s=2.0)
    ends = produce(s, pages=150)
    rng = random.Random(7)
    for n in range(KILLS):
        victim = start_worker(f"victim-{n}", s=s)
        deadline = datetime.now() + timedelta(seconds=rng.uniform(1.0, 4.0))
        wait_until(
            lambda d=deadline: datetime.now() >= d or committed_all(s, ends),
            timeout=60,
            interval=0.1,
            what="kill moment",
        )
        victim.kill()
    worker = start_worker("survivor", s=s)
    wait_until(
        lambda: committed_all(s, ends), timeout=240, interval=1.0, what="drain", alive=worker.alive
    )
    worker.stop()

    client = db.connect(s)
    try:
        rows = client.query(
            "SELECT impression_id, is_bad FROM scored_impressions FINAL"
        ).result_rows
        ledger = repository.done_impressions(client, [str(r[0]) for r in rows])
    finally:
        client.close()
    assert ledger == {str(r[0]) for r in rows}
    reviews = [
        ReviewRequest.model_validate_json(v or b"")
        for _, v in read_topic(s, s.topic_review, idle_s=3.0, timeout_s=60)
    ]
    sent = Counter(r.impression_id for r in reviews)
    bad = {str(i) for i, is_bad in rows if is_bad}
    assert bad and bad <= set(sent)  # every bad case reached the teacher
    assert set(sent) <= {str(r[0]) for r in rows}
    by_id = {r.impression_id: r for r in reviews}
    assert all(r == by_id[r.impression_id] for r in reviews)  # repeats are the same request
    repeats = sum(n - 1 for n in sent.values())
    print(f"{len(sent)} impressions reviewed, {repeats} repeated requests after {KILLS} kills")
    # a kill repeats at most the requests of the one batch it caught after their delivery
    assert repeats <= KILLS * s.take_max
