"""Consumer lag per partition, computed from what the broker really returns.

Lag = (highest offset actually read back from the partition + 1) - the group's committed offset.
ListOffsets(LATEST) is asked too, and reported, but only used as the place to start reading:
the embedded tansu broker answers the last record batch's base offset + 1 there, too low when a
batch holds several records (20,000 records gave 19,681), so reading forward from it finds the
real end.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

__all__ = ["PartitionLag", "consumer_lag"]


@dataclass(frozen=True)
class PartitionLag:
    """Lag of one partition."""

    partition: int
    committed: int
    end: int
    lag: int
    list_offsets_latest: int


def consumer_lag(
    connection: Mapping[str, Any], topic: str, group: str, read_s: float = 3.0
) -> list[PartitionLag]:
    """Lag of consumer group ``group`` on every partition of ``topic``.

    ``connection``: kafka-python's keyword arguments to reach the cluster
    (:func:`relmon.kafka.kafka_connection`).
    """
    admin = KafkaAdminClient(**connection, request_timeout_ms=5000, bootstrap_timeout_ms=3000)
    try:
        committed = {
            tp.partition: meta.offset
            for tp, meta in admin.list_group_offsets({group: None}).get(group, {}).items()
            if tp.topic == topic
        }
    finally:
        admin.close()
    consumer = KafkaConsumer(
        **connection,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=5000,
        bootstrap_timeout_ms=3000,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        reported = consumer.end_offsets(tps)
        highest = {tp.partition: reported[tp] - 1 for tp in tps}
        for tp in tps:
            consumer.seek(tp, max(reported[tp] - 1, 0))
        deadline = time.monotonic() + read_s
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            if not batch:
                break
            for tp, records in batch.items():
                highest[tp.partition] = max(highest[tp.partition], records[-1].offset)
    finally:
        consumer.close()
    out = []
    for tp in tps:
        end = highest[tp.partition] + 1
        done = max(committed.get(tp.partition, 0), 0)
        out.append(PartitionLag(tp.partition, done, end, max(end - done, 0), reported[tp]))
    return out
