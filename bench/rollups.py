"""What one roll-up recomputation costs the store, by the rows in its hour, and per worker.

Run: ``python bench/rollups.py`` (about 15 s on 2 cores). A local store (the real
ClickHouse engine, served as the worker's store is) holds synthetic scored rows in one hour,
``--sizes`` of them in turn; at each size the worker's recomputation of that hour
(:func:`streams.repository.refresh_rollups`, from ``scored_impressions FINAL``) is timed
``--repeats`` times (median). The rows are inserted in large blocks and merged, as a store's
older rows are; a live hour also holds recent small parts, which make it slower, not faster.

Per worker, at the largest size, the store time a second the recomputations cost: after every
batch (this project's workers before ``RELMON_ROLLUP_REFRESH_S``; a paced worker closes about
2 batches a second) and at most every ``--refresh-s`` seconds (that setting's default). The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/*.py

from relmon import db  # noqa: E402
from relmon.hostinfo import cpu_model, isa_flags  # noqa: E402
from relmon.settings import load_settings  # noqa: E402
from relmon.store import StoreServer  # noqa: E402
from streams import repository  # noqa: E402

BATCHES_PER_S = 2.0
"""batches a paced worker closes a second (README: about 1.5-2)"""

_FILL = (
    "INSERT INTO scored_impressions (impression_id, query_id, query, product_id, title, "
    "category, position, event_time, locale, tier, position_bucket, score, threshold, is_bad, "
    "model_version, sample_rate, sample_weight, scored_at) "
    "SELECT concat('i', toString(number + {first:UInt64})), concat('q', toString(number % 5000)), "
    "'oak writing desk', concat('p', toString(number % 7000)), 'Oak Writing Desk', "
    "['Desks', 'Rugs', 'Sofas', 'Tables'][number % 4 + 1], number % 40 + 1, "
    "{hour:DateTime64(3, 'UTC')} + toIntervalMillisecond(number % 3500000), 'en-US', "
    "['head', 'torso', 'tail'][number % 3 + 1], ['1-3', '4-10', '11+'][number % 3 + 1], "
    "(number % 100) / 100, 0.5, (number % 100) < 20, 'bench', 0.1, 10, now64(3) "
    "FROM numbers({n:UInt64})"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 400_000, 1_000_000]
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--refresh-s", type=float, default=5.0)
    args = parser.parse_args()
    if sorted(args.sizes) != args.sizes or args.sizes[0] < 1:
        parser.error("--sizes must be positive and ascending (each adds rows to the same hour)")

    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    ms: dict[int, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="relmon-rollups-") as home,
        StoreServer(Path(home) / "store") as server,
    ):
        settings = load_settings(
            home=Path(home), clickhouse_port=server.port, clickhouse_password=""
        )
        db.migrate(settings)
        client = db.connect(settings)
        try:
            stored = 0
            for size in args.sizes:
                client.command(
                    _FILL, parameters={"first": stored, "n": size - stored, "hour": hour}
                )
                client.command("OPTIMIZE TABLE scored_impressions FINAL")
                stored = size
                times = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    repository.refresh_rollups(client, [hour + timedelta(minutes=5)])
                    times.append(time.perf_counter() - started)
                ms[size] = round(1000 * statistics.median(times), 1)
                print(f"{size:>9,} rows in the hour: {ms[size]} ms a recomputation")
        finally:
            client.close()

    largest = ms[args.sizes[-1]]
    every_batch = BATCHES_PER_S * largest / 1000
    coalesced = largest / 1000 / args.refresh_s
    print(
        json.dumps(
            {
                "bench": "rollups",
                "refresh_ms_by_rows_in_hour": ms,
                "store_s_per_s_every_batch": round(every_batch, 3),
                "store_s_per_s_coalesced": round(coalesced, 4),
                "batches_per_s": BATCHES_PER_S,
                "refresh_s": args.refresh_s,
                "cpu": cpu_model(),
                "isa": isa_flags(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
