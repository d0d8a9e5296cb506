"""Do relmon's alerts catch real spikes fast, and stay quiet otherwise?

Run: ``python bench/alerts.py`` (about 5 minutes on 2 cores). Synthetic traffic from scenarios
with known truth goes through the real stream processor (sketch, sampling plans, stratified
sampling, oracle scorer: see relmon/sim/validation.py); the scored rows are summed per alert window
and segment and fed to the same detector and alert lifecycle that `relmon alerts` runs on
ClickHouse query results.

- spike replays, one per seed: Wall Art's bad-case rate doubles (0.2 -> 0.4) for 40 minutes,
  then returns; later Accent Chairs' doubles (0.15 -> 0.30). The detection delay is the number
  of windows from the first spiked window to the window whose evaluation fired the category's
  alert (1 = at once; a miss counts as the number of spiked windows replayed + 1).
- stationary replays: ``--calm-days`` simulated days with nothing changing; every alert is a
  false alarm.

``detection_delay_windows`` is the mean delay over every injected spike of every seed (the
average detection delay of change-point detection); the median, the worst and each spike's are
printed too. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/*.py (bench/scoring.py)

from relmon.alerts import AlertBook, Detector, Sums, window_sums  # noqa: E402
from relmon.hostinfo import cpu_model, isa_flags  # noqa: E402
from relmon.settings import DetectorConfig  # noqa: E402
from relmon.sim.alerts import simulate_rows  # noqa: E402
from relmon.sim.scenario import Scenario, Shift  # noqa: E402

BASE = {"head": 0.05, "torso": 0.15, "tail": 0.3}
CATEGORIES = {"Wall Art": 0.2, "Accent Chairs": 0.15, "Area Rugs": 0.15, "Desks": 0.45}
START = datetime(2026, 1, 1, tzinfo=UTC)


def run(rows_by_window, window_s, config):
    detector = Detector(config)
    book = AlertBook(window_s=window_s)
    fired: list[tuple[datetime, Any]] = []
    if not rows_by_window:
        return fired, book
    first, last = min(rows_by_window), max(rows_by_window)
    t = first
    while t <= last:
        for event in book.apply(detector.step(t, rows_by_window.get(t, {}))):
            if event.kind == "fired":
                fired.append((t, event.alert))
        t += timedelta(seconds=window_s)
    return fired, book


def _sums(minutes, pages_per_minute, seed, scenario, window_s):
    rows = simulate_rows(
        minutes=minutes,
        pages_per_minute=pages_per_minute,
        seed=seed,
        scenario=scenario,
        start=START,
    )
    return len(rows), window_sums(rows, window_s)


SPIKES = (("Wall Art", 120 * 60, 160 * 60), ("Accent Chairs", 200 * 60, None))
SPIKE_MINUTES = 260


def spike_scenario() -> Scenario:
    """The two doublings of ``SPIKES`` on the stationary rates."""
    shifts = []
    for category, at, until in SPIKES:
        shifts.append(Shift(at_s=at, category=category, bad_share=2 * CATEGORIES[category]))
        if until is not None:
            shifts.append(Shift(at_s=until, category=category, bad_share=CATEGORIES[category]))
    return Scenario(tier_bad_share=BASE, category_bad_share=CATEGORIES, shifts=tuple(shifts))


def spike_delays(sums, window_s, config, seed):
    """Per spiked category: windows until its alert fired; plus what else fired."""
    fired, book = run(sums, window_s, config)
    delays = {}
    for category, at, until in SPIKES:
        spike_window = START + timedelta(seconds=at)
        end = until if until is not None else SPIKE_MINUTES * 60
        hits = [t for t, a in fired if a.segment == ("category", category) and t >= spike_window]
        missed = (end - at) // window_s + 1
        delay = (hits[0] - spike_window) // timedelta(seconds=window_s) + 1 if hits else missed
        delays[category] = delay
        n_eff = sorted(sums[t].get(("category", category), Sums()).estimate().n_eff for t in sums)[
            len(sums) // 2
        ]
        print(
            f"  seed {seed} {category}: {CATEGORIES[category]:.2f} -> "
            f"{2 * CATEGORIES[category]:.2f} at minute {at // 60}: "
            + (f"detected after {delay} window(s)" if hits else "NOT detected")
            + f" (median effective sample per window {n_eff:.0f})"
        )
    resolved = any(a.segment == ("category", "Wall Art") for a in book.resolved.values())
    others = [
        a.segment
        for _t, a in fired
        if a.segment not in {("category", c) for c, _a, _u in SPIKES}
        and a.dimension not in ("overall", "tier")
    ]
    print(f"  seed {seed}: Wall Art resolved after it returned: {resolved}; other alerts {others}")
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window-s", type=int, default=600)
    parser.add_argument("--pages-per-minute", type=int, default=120)
    parser.add_argument("--seeds", default="31,41,57,71", help="seeds of the spike replays")
    parser.add_argument("--calm-days", type=int, default=2, help="stationary simulated days")
    args = parser.parse_args()
    t0 = time.perf_counter()
    config = DetectorConfig()
    w = args.window_s
    seeds = [int(x) for x in args.seeds.split(",")]
    calm = Scenario(tier_bad_share=BASE, category_bad_share=CATEGORIES)
    with ProcessPoolExecutor(2) as pool:
        calm_jobs = [
            pool.submit(_sums, 1440, args.pages_per_minute, 1000 + day, calm, w)
            for day in range(args.calm_days)
        ]
        spike_jobs = {
            seed: pool.submit(
                _sums, SPIKE_MINUTES, args.pages_per_minute, seed, spike_scenario(), w
            )
            for seed in seeds
        }
        print(f"spike replays: {SPIKE_MINUTES} simulated minutes each, {w} s windows")
        delays = {}
        for seed, job in spike_jobs.items():
            _n, sums = job.result()
            delays[seed] = spike_delays(sums, w, config, seed)
        calm_alerts = []
        for day, job in enumerate(calm_jobs):
            n_calm, sums = job.result()
            fired, _ = run(sums, w, config)
            calm_alerts += [a.segment for _t, a in fired]
            print(
                f"stationary day {day}: {n_calm} scored rows: {len(fired)} alert(s) "
                f"{[a.segment for _t, a in fired]}"
            )
    all_delays = sorted(d for per in delays.values() for d in per.values())
    mean = sum(all_delays) / len(all_delays)
    median = statistics.median(all_delays)
    per_day = len(calm_alerts) / args.calm_days
    print(
        f"goal: a doubled category detected within 3 windows (mean {mean:.2f}, median "
        f"{median}, worst {all_delays[-1]} over {len(all_delays)} spikes); <= 1 false alarm "
        f"per 24 h ({per_day:.2f} over {args.calm_days} days); {time.perf_counter() - t0:.0f} s"
    )
    print(
        json.dumps(
            {
                "detection_delay_windows": round(mean, 2),
                "false_alarms_per_day": round(per_day, 3),
                "detection_delay_median": median,
                "detection_delay_worst": all_delays[-1],
                "window_s": w,
                "pages_per_minute": args.pages_per_minute,
                "stationary_days": args.calm_days,
                "delays_by_seed": {str(k): v for k, v in delays.items()},
                "cpu": cpu_model(),
                "isa": isa_flags(),
            }
        )
    )


if __name__ == "__main__":
    main()
