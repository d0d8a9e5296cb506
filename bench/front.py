"""The worker's front (decode, resolve, sample) per record, with Python's default garbage
collector and with the worker's (:func:`relmon.runtime.settle_heap`).

Run: ``python bench/front.py`` (under a minute on 2 cores). The real processor runs in memory on
fake ports (no Kafka, no store; :func:`streams.testing.memory_processor`), on ESCI result pages
of 10 hits (the stream bench's traffic) against the real catalogue, sampling 0.2% of the
impressions as the budgeted worker does. Batches of 4,000 records; each round builds a fresh
processor and times the same batches. The two collectors alternate round by round in one
process, so machine noise hits both alike; medians over rounds. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/*.py

from relmon.hostinfo import cpu_model, isa_flags  # noqa: E402
from relmon.runtime import GC_THRESHOLDS, settle_heap  # noqa: E402
from relmon.settings import SamplingRates  # noqa: E402
from relmon.sim.replay import (  # noqa: E402
    ReplayConfig,
    TrafficGenerator,
    load_catalog,
    to_catalog_product,
)
from streams.catalog import Catalog  # noqa: E402
from streams.records import RawRecord  # noqa: E402
from streams.testing import memory_processor  # noqa: E402

BATCH = 4000


def page_records(pages: int) -> tuple[Catalog, list[RawRecord]]:
    """The catalogue and ``pages`` ESCI result-page records (UBI query records with hit ids)."""
    config = ReplayConfig.clean_pages(seed=7, dataset="esci", page_size=10)  # bench/stream.py's
    source = load_catalog(config)
    gen = TrafficGenerator(source, config)
    now = datetime.now(UTC)
    records: list[RawRecord] = []
    while len(records) < pages:
        for key, value in gen.page(now):
            records.append(RawRecord("impressions", 0, len(records), key, value))
    return Catalog(to_catalog_product(p) for p in source.products), records[:pages]


async def one_round(catalog: Catalog, records: list[RawRecord]) -> float:
    """Seconds of CPU per record for the batches after the first (a warm-up)."""
    proc = memory_processor(catalog=catalog, rates=SamplingRates.uniform_at(0.002))
    batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
    await proc.submit(batches[0])
    await proc.drain()
    began = time.process_time()
    for batch in batches[1:]:
        await proc.submit(batch)
    await proc.drain()
    return (time.process_time() - began) / sum(len(b) for b in batches[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=6 * BATCH)
    args = parser.parse_args()
    catalog, records = page_records(args.records)
    default_thresholds = gc.get_threshold()
    times: dict[str, list[float]] = {"default": [], "tuned": []}
    for _ in range(args.rounds):
        for mode in times:
            gc.unfreeze()
            gc.set_threshold(*default_thresholds)
            gc.collect()
            if mode == "tuned":
                settle_heap()
            times[mode].append(asyncio.run(one_round(catalog, records)))
    us = {mode: statistics.median(t) * 1e6 for mode, t in times.items()}
    print(
        json.dumps(
            {
                "bench": "front",
                "records_per_round": args.records - BATCH,
                "rounds": args.rounds,
                "default_gc_thresholds": list(default_thresholds),
                "tuned_gc_thresholds": list(GC_THRESHOLDS),
                "front_us_per_record_default_gc": round(us["default"], 1),
                "front_us_per_record_tuned_gc": round(us["tuned"], 1),
                "ratio_default_vs_tuned": round(us["default"] / us["tuned"], 3),
                "cpu": cpu_model(),
                "isa": isa_flags(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
