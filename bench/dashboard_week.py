"""How fast do the dashboard pages render over a week of data?

Run: ``python bench/dashboard_week.py`` (a few minutes). Starts a local store (in a temporary
directory) and broker, seeds a week of scored rows (``--rows-per-minute`` per minute of event
time, 40 categories, 3 tiers, 3 locales), then renders every page with Streamlit's
AppTest at the "7 days" and "24 hours" ranges and prints the wall time of each render (queries
and page code; the browser's drawing is not included). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/*.py (bench/scoring.py)

from relmon import db  # noqa: E402
from relmon.demo import store_process  # noqa: E402
from relmon.hostinfo import cpu_model, isa_flags  # noqa: E402
from relmon.kafka import broker_process, ensure_topics  # noqa: E402
from relmon.runtime import free_port  # noqa: E402
from relmon.settings import load_settings  # noqa: E402
from streams import repository  # noqa: E402

PAGES = ["overview", "segments", "drilldown", "alerts_page", "health"]


def seed(settings, rows_per_minute: int, days: int) -> int:
    rng = random.Random(3)
    client = db.connect(settings)
    cats = [f"Category {i:02d}" for i in range(40)]
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    total = 0
    minute = start
    batch = []
    while minute < end:
        for j in range(rows_per_minute):
            tier = rng.choices(["head", "torso", "tail"], [0.2, 0.3, 0.5])[0]
            rate = {"head": 0.05, "torso": 0.25, "tail": 1.0}[tier]
            bad = rng.random() < 0.2
            score = rng.random() * 0.5 if bad else 0.5 + rng.random() * 0.5
            batch.append(
                [
                    f"{minute:%Y%m%d%H%M}-{j}",
                    f"q{rng.randrange(5000)}",
                    f"query {rng.randrange(500)}",
                    f"p{rng.randrange(20000)}",
                    f"Product {rng.randrange(20000)}",
                    rng.choice(cats),
                    "Brand",
                    1 + j % 10,
                    minute + timedelta(seconds=rng.random() * 60),
                    rng.choice(["en-US", "en-GB", "de-DE"]),
                    "s",
                    "relmon",
                    tier,
                    "top" if j % 10 < 3 else "rest",
                    "plan",
                    score,
                    0.5,
                    int(bad),
                    "minilm-ce-week-int8",
                    rate,
                    1 / rate,
                    minute,
                ]
            )
        minute += timedelta(minutes=1)
        if len(batch) >= 100_000:
            client.insert("scored_impressions", batch, column_names=repository.SCORED_COLUMNS)
            total += len(batch)
            batch = []
    if batch:
        client.insert("scored_impressions", batch, column_names=repository.SCORED_COLUMNS)
        total += len(batch)
    client.close()
    return total


def render_times(label: str) -> dict[str, float]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    out = {}
    for name in PAGES:
        st.cache_data.clear()
        at = AppTest.from_string(
            f"from dashboards import {name}\n{name}.render()", default_timeout=120
        )
        at.run()
        if name != "health":  # the only page without a time range
            at.sidebar.selectbox(key="range").select(label)
        st.cache_data.clear()
        t0 = time.perf_counter()
        at.run()
        out[name] = time.perf_counter() - t0
        assert not at.exception, at.exception
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows-per-minute", type=int, default=60)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="relmon-week-"))
    settings = load_settings(
        home=home,
        clickhouse_port=free_port(),
        store_dir=home / "store",
        clickhouse_database="week",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
    )
    for key, value in {
        "RELMON_HOME": str(home),
        "RELMON_CLICKHOUSE_PORT": str(settings.clickhouse.port),
        "RELMON_CLICKHOUSE_DATABASE": "week",
        "RELMON_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
    }.items():
        os.environ[key] = value
    port = int(settings.kafka.bootstrap.rsplit(":", 1)[1])
    with store_process(settings), broker_process(settings, port):
        ensure_topics(settings)
        db.migrate(settings)
        t0 = time.perf_counter()
        rows = seed(settings, args.rows_per_minute, args.days)
        print(f"seeded {rows:,} rows over {args.days} days in {time.perf_counter() - t0:.0f} s")
        result = {}
        for label in ("7 days", "24 hours"):
            times = render_times(label)
            result[label] = {k: round(v, 3) for k, v in times.items()}
            print(f"{label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
        worst = max(max(v.values()) for v in result.values())
        print(
            json.dumps(
                {
                    "rows": rows,
                    "worst_page_s": worst,
                    **result,
                    "cpu": cpu_model(),
                    "isa": isa_flags(),
                }
            )
        )


if __name__ == "__main__":
    main()
