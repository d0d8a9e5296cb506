"""Exactly-once effect: a worker SIGKILLed 10 times during a replay ends with the same rows and
rates as a run without crashes (real tansu, real store, real worker and model)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaAdminClient

from relmon import db
from relmon.kafka import ensure_topics, producer
from relmon.replay import ReplayConfig, TrafficGenerator, publish_catalog
from relmon.runtime import wait_until
from relmon.synth import SyntheticCatalog

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
KILLS = 10


def produce(settings, pages: int) -> dict[int, int]:
    """Three minutes of event time of traffic; return the end offset of each partition."""
    catalog = SyntheticCatalog.generate(seed=21)
    publish_catalog(settings, catalog)
    gen = TrafficGenerator(catalog, ReplayConfig(seed=21, malformed_share=0.01))
    start = (datetime.now(UTC) - timedelta(minutes=10)).replace(second=0, microsecond=0)
    prod = producer(settings)
    ends: dict[int, int] = {}
    for i in range(pages):
        when = start + timedelta(seconds=180 * i / pages)
        for key, value in gen.page(when, 180 * i / pages):
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
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == settings.topic_impressions
    }
    return all(got.get(p, -1) >= end for p, end in ends.items())


def rows(settings):
    client = db.connect(settings)
    try:
        data = client.query(
            "SELECT impression_id, tier, position_bucket, sample_rate, is_bad, plan_id "
            "FROM scored_impressions ORDER BY impression_id"
        ).result_rows
        rates = client.query(
            "SELECT window_start, tier, category, locale, position_bucket, sampled, bad, "
            "round(weighted_rate, 9), round(ci_low, 9), round(ci_high, 9) FROM bad_case_rates "
            "ORDER BY window_start, tier, category, locale, position_bucket"
        ).result_rows
    finally:
        client.close()
    return data, rates


def test_sigkill_ten_times_changes_nothing(settings, start_worker):
    # the default scorer: a pair's score does not depend on its batch-mates. No scoring budget:
    # an adaptive one samples by the lag each run meets, so runs could not be compared row by row
    base = settings.with_overrides(unknown_product_retry_s=2.0, scoring_budget_pps="0")
    ends = produce(base, pages=200)
    clean = base.with_overrides(
        consumer_group=base.consumer_group + "-clean",
        clickhouse_database=base.clickhouse_database + "_clean",
    )
    crashy = base.with_overrides(
        consumer_group=base.consumer_group + "-crashy",
        clickhouse_database=base.clickhouse_database + "_crashy",
    )
    for s in (clean, crashy):
        ensure_topics(s)

    worker = start_worker("clean", s=clean)
    wait_until(
        lambda: committed_all(clean, ends),
        timeout=240,
        interval=1.0,
        what="clean run",
        alive=worker.alive,
    )
    worker.stop()

    rng = random.Random(4)
    for n in range(KILLS):
        victim = start_worker(f"crashy-{n}", s=crashy)
        deadline = datetime.now() + timedelta(seconds=rng.uniform(0.5, 4.0))
        wait_until(
            lambda d=deadline: datetime.now() >= d or committed_all(crashy, ends),
            timeout=30,
            interval=0.1,
            what="kill moment",
        )
        victim.kill()
    worker = start_worker("crashy-final", s=crashy)
    wait_until(
        lambda: committed_all(crashy, ends),
        timeout=240,
        interval=1.0,
        what="crashy run",
        alive=worker.alive,
    )
    worker.stop()

    clean_rows, clean_rates = rows(clean)
    crash_rows, crash_rates = rows(crashy)
    ids = [r[0] for r in crash_rows]
    assert len(ids) == len(set(ids)), "an impression was stored twice"
    assert clean_rows and crash_rows == clean_rows
    assert crash_rates == clean_rates
