"""Pipeline health page: worker throughput, consumer lag, scoring latency, DLQ, model, cache.

Worker figures come from the counters each worker publishes under ``$RELMON_HOME/run``
(``worker-*.json``, rewritten every second). Consumer lag is computed from what the broker
really returns: the group's committed offsets against the highest offset actually read back
from each partition. End offsets from ListOffsets(LATEST) are shown beside it but not trusted:
the embedded tansu broker answers the last record batch's base offset + 1 there, which is too
low whenever a batch holds several records (see FINDINGS).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from relmon.settings import get_settings
from streams.metrics import read_metrics

__all__ = ["consumer_lag", "render", "worker_frame"]


def worker_frame(run_dir: Path) -> pd.DataFrame:
    """One row per worker metrics file, with derived rates."""
    rows = []
    now = time.time()
    for path in sorted(run_dir.glob("worker-*.json")):
        m = read_metrics(path)
        if not m:
            continue
        uptime = float(m.get("uptime_s", 0) or 0)
        consumed = int(m.get("consumed", 0) or 0)
        dlq = int(m.get("dead_lettered", 0) or 0)
        rows.append(
            {
                "worker": path.stem.removeprefix("worker-"),
                "live": now - path.stat().st_mtime < 10,
                "uptime_s": round(uptime),
                "impressions": int(m.get("impressions", 0) or 0),
                "impressions_per_s": int(m.get("impressions", 0) or 0) / uptime if uptime else 0.0,
                "consumed": consumed,
                "scored": int(m.get("scored", 0) or 0),
                "dead_lettered": dlq,
                "dlq_share": dlq / consumed if consumed else 0.0,
                "pending": int(m.get("pending", 0) or 0),
                "score_p50_ms": float(m.get("score_latency_p50_ms", float("nan"))),
                "score_p99_ms": float(m.get("score_latency_p99_ms", float("nan"))),
                "cache_hit_rate": float(m.get("cache_hit_rate", 0.0) or 0.0),
                "model_version": str(m.get("model_version", "?")),
                "provider": str(m.get("provider", "?")),
            }
        )
    return pd.DataFrame(rows)


@st.cache_data(ttl=10)
def consumer_lag(bootstrap: str, topic: str, group: str) -> pd.DataFrame:
    """Per partition: committed offset, highest offset read back, lag, and ListOffsets' answer."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    servers = bootstrap.split(",")
    admin = KafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=5000)
    try:
        committed = {
            tp.partition: meta.offset
            for tp, meta in admin.list_consumer_group_offsets(group).items()
            if tp.topic == topic
        }
    finally:
        admin.close()
    consumer = KafkaConsumer(
        bootstrap_servers=servers, group_id=None, enable_auto_commit=False, max_poll_records=5000
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        reported = consumer.end_offsets(tps)
        highest = {tp.partition: reported[tp] - 1 for tp in tps}
        for tp in tps:
            consumer.seek(tp, max(reported[tp] - 1, 0))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            if not batch:
                break
            for tp, records in batch.items():
                highest[tp.partition] = max(highest[tp.partition], records[-1].offset)
    finally:
        consumer.close()
    rows = []
    for tp in tps:
        end = highest[tp.partition] + 1
        done = committed.get(tp.partition, 0)
        rows.append(
            {
                "partition": tp.partition,
                "committed": done,
                "highest_offset_seen_plus_1": end,
                "lag": max(end - done, 0),
                "list_offsets_latest (untrusted)": reported[tp],
            }
        )
    return pd.DataFrame(rows)


def render() -> None:
    """Render the pipeline health page."""
    st.title("Pipeline health")
    s = get_settings()
    workers = worker_frame(s.home / "run")
    st.subheader("Workers")
    if workers.empty:
        st.info(f"No worker has published counters under {s.home / 'run'} yet.")
    else:
        live = workers[workers["live"]]
        shown = live if not live.empty else workers
        cols = st.columns(6)
        cols[0].metric("impressions/s", f"{shown['impressions_per_s'].sum():.1f}")
        p50 = shown["score_p50_ms"].median()
        cols[1].metric("scoring latency p50", "n/a" if p50 != p50 else f"{p50:.0f} ms")
        consumed = int(shown["consumed"].sum())
        dlq = int(shown["dead_lettered"].sum())
        cols[2].metric("DLQ rate", f"{dlq / consumed:.2%}" if consumed else "n/a")
        cols[3].metric("cache hit rate", f"{shown['cache_hit_rate'].mean():.1%}")
        cols[4].metric("model version", ", ".join(sorted(set(shown["model_version"]))))
        cols[5].metric("provider", ", ".join(sorted(set(shown["provider"]))))
        st.caption(
            f"{len(live)} live worker(s) of {len(workers)} file(s); impressions/s is the "
            "average over each worker's uptime."
        )
        st.dataframe(workers, hide_index=True, use_container_width=True)
    st.subheader("Consumer lag per partition")
    st.caption(
        "Lag = highest offset actually read back from the partition + 1 - the group's committed "
        "offset. The broker's ListOffsets(LATEST) answer is shown but not used: the embedded "
        "tansu broker reports the last batch's base offset + 1 there, too low when a batch holds "
        "several records."
    )
    try:
        lag = consumer_lag(s.kafka_bootstrap, s.topic_impressions, s.consumer_group)
    except Exception as exc:  # the page must render even when Kafka is down
        st.warning(f"cannot read consumer lag from Kafka at {s.kafka_bootstrap}: {exc}")
        return
    st.metric("total lag (records)", f"{int(lag['lag'].sum()) if not lag.empty else 0:,}")
    st.dataframe(lag, hide_index=True, use_container_width=True)
