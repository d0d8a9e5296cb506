"""Pipeline health page: worker throughput, consumer lag, scoring latency, DLQ, model, cache.

Worker figures come from the counters each worker publishes under ``$RELMON_HOME/run``
(``worker-*.json``, rewritten every second). Consumer lag is computed from what the broker
really returns: the group's committed offsets against the highest offset actually read back
from each partition. End offsets from ListOffsets(LATEST) are shown beside it but not trusted:
the embedded tansu broker answers the last record batch's base offset + 1 there, which is too
low whenever a batch holds several records (20,000 records gave 19,681).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from relmon import lag
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
    """Per partition: committed offset, highest offset read back + 1, lag, ListOffsets' answer."""
    rows = lag.consumer_lag(bootstrap.split(","), topic, group)
    return pd.DataFrame(
        [
            {
                "partition": r.partition,
                "committed": r.committed,
                "highest_offset_seen_plus_1": r.end,
                "lag": r.lag,
                "list_offsets_latest (untrusted)": r.list_offsets_latest,
            }
            for r in rows
        ],
        columns=[
            "partition",
            "committed",
            "highest_offset_seen_plus_1",
            "lag",
            "list_offsets_latest (untrusted)",
        ],
    )


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
        st.dataframe(workers, hide_index=True, width="stretch")
    st.subheader("Consumer lag per partition")
    st.caption(
        "Lag = highest offset actually read back from the partition + 1 - the group's committed "
        "offset. The broker's ListOffsets(LATEST) answer is shown but not used: the embedded "
        "tansu broker reports the last batch's base offset + 1 there, too low when a batch holds "
        "several records."
    )
    try:
        frame = consumer_lag(s.kafka_bootstrap, s.topic_impressions, s.consumer_group)
    except Exception as exc:  # the page must render even when Kafka is down
        st.warning(f"cannot read consumer lag from Kafka at {s.kafka_bootstrap}: {exc}")
        return
    st.metric("total lag (records)", f"{int(frame['lag'].sum()) if not frame.empty else 0:,}")
    st.dataframe(frame, hide_index=True, width="stretch")
