"""Pipeline health page: worker throughput, scoring budget, consumer lag, latency, DLQ, model.

Worker figures come from the counters each worker publishes under ``$RELMON_HOME/run``
(``worker-*.json``, rewritten every second). Rates are the workers' own rates over the last
minute (``impressions_per_s``), not averages since start, which would hide a worker that stalled
ten minutes ago behind an hour of history. The scoring budget's figures (capacity, factor, the
lag the worker measures) come from :mod:`streams.budget`. Consumer lag is computed from what the
broker really returns: the group's committed offsets against the highest offset actually read back
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
from relmon.kafka import kafka_connection
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
        nan = float("nan")
        consumed = int(m.get("consumed", 0) or 0)
        dlq = int(m.get("dead_lettered", 0) or 0)
        rows.append(
            {
                "worker": path.stem.removeprefix("worker-"),
                "live": now - path.stat().st_mtime < 10,
                "uptime_s": round(uptime),
                "impressions": int(m.get("impressions", 0) or 0),
                "impressions_per_s": float(m.get("impressions_per_s", nan)),
                "scored_per_s": float(m.get("scored_per_s", nan)),
                "capacity_pps": float(m.get("scoring_capacity_pps", nan)),
                "budget": str(m.get("budget_mode", "?")),
                "budget_factor": float(m.get("budget_factor", nan)),
                "lag_records": float(m.get("processing_lag_records", nan)),
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


def _figure(value: float, fmt: str) -> str:
    return "n/a" if value != value else fmt.format(value)


def _tiles(shown: pd.DataFrame) -> None:
    """Throughput and budget tiles, then latency, DLQ and cache, then model and provider.

    Model version and provider are text of any length: shown in full as text, not as metric
    tiles, which cut long values ("minilm…").
    """
    cols = st.columns(4)
    cols[0].metric("impressions/s", _figure(shown["impressions_per_s"].sum(min_count=1), "{:.1f}"))
    cols[1].metric(
        "scoring capacity", _figure(shown["capacity_pps"].sum(min_count=1), "{:.0f} pairs/s")
    )
    modes = ", ".join(sorted(set(shown["budget"])))
    cols[2].metric("budget factor", _figure(shown["budget_factor"].min(), "{:.2f}"), help=modes)
    cols[3].metric("processing lag", _figure(shown["lag_records"].sum(min_count=1), "{:,.0f}"))
    cols = st.columns(4)
    p50 = shown["score_p50_ms"].median()
    cols[0].metric("scoring latency p50", _figure(p50, "{:.0f} ms"))
    consumed = int(shown["consumed"].sum())
    dlq = int(shown["dead_lettered"].sum())
    cols[1].metric("DLQ rate", f"{dlq / consumed:.2%}" if consumed else "n/a")
    cols[2].metric("cache hit rate", f"{shown['cache_hit_rate'].mean():.1%}")
    cols[3].metric("scored/s", _figure(shown["scored_per_s"].sum(min_count=1), "{:.1f}"))
    models = ", ".join(f"`{v}`" for v in sorted(set(shown["model_version"])))
    providers = ", ".join(f"`{v}`" for v in sorted(set(shown["provider"])))
    st.markdown(f"**model version** {models}  \n**provider** {providers}")


@st.cache_data(ttl=10)
def consumer_lag(bootstrap: str, topic: str, group: str) -> pd.DataFrame:
    """Per partition: committed offset, highest offset read back + 1, lag, ListOffsets' answer."""
    # the settings' cluster (bootstrap: the cache key); TLS and SASL as every client has them
    rows = lag.consumer_lag(kafka_connection(get_settings()), topic, group)
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
        _tiles(shown)
        st.caption(
            f"{len(live)} live worker(s) of {len(workers)} file(s). impressions/s: over the last "
            "minute. Scoring capacity: pairs/s the scorers achieve while busy (sum). Budget "
            "factor: multiplies every inclusion probability of new sampling plans, lowered when "
            "a worker cannot keep up (RELMON_SCORING_BUDGET_PPS; the lowest worker's shown). "
            "Processing lag: records waiting behind what the workers have taken."
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
        frame = consumer_lag(s.kafka.bootstrap, s.topics.impressions, s.kafka.consumer_group)
    except Exception as exc:  # the page must render even when Kafka is down
        st.warning(f"cannot read consumer lag from Kafka at {s.kafka.bootstrap}: {exc}")
        return
    st.metric("total lag (records)", f"{int(frame['lag'].sum()) if not frame.empty else 0:,}")
    st.dataframe(frame, hide_index=True, width="stretch")
