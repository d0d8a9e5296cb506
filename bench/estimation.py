"""Are relmon's bad-case rates honest? Coverage of the 95% intervals against known truth, and
tail-query interval width of stratified vs uniform sampling at equal scoring budget.

Run: ``python bench/estimation.py`` (about 2 minutes on 2 cores). Synthetic traffic from a
scenario with known true bad-case rates goes through the real stream processor (sketch,
sampling plans, stratified sampling) with an oracle scorer; every one-minute window and tier is
compared with the true rate over all its impressions. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/*.py (bench/scoring.py)

from relmon.hostinfo import cpu_model, isa_flags  # noqa: E402
from relmon.settings import SamplingRates  # noqa: E402
from relmon.sim.validation import simulate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=240, help="simulated minutes")
    parser.add_argument("--pages-per-minute", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    t0 = time.perf_counter()
    strat = simulate(minutes=args.minutes, pages_per_minute=args.pages_per_minute, seed=args.seed)
    budget = strat.sampled / strat.impressions
    uniform = simulate(
        minutes=args.minutes,
        pages_per_minute=args.pages_per_minute,
        seed=args.seed,
        rates=SamplingRates.uniform_at(budget),
    )
    print(
        f"{strat.impressions} impressions over {args.minutes} simulated minutes; "
        f"scoring budget {budget:.3f} of impressions for both designs"
    )
    print(
        f"{'design':<11}{'sampled':>9}{'judged':>8}{'coverage':>10}"
        f"{'head width':>12}{'torso width':>13}{'tail width':>12}"
    )
    for name, res in (("stratified", strat), ("uniform", uniform)):
        judged = sum(w.judged for w in res.windows)
        print(
            f"{name:<11}{res.sampled:>9}{judged:>8}{res.coverage():>10.3f}"
            f"{res.mean_width('head'):>12.3f}{res.mean_width('torso'):>13.3f}"
            f"{res.mean_width('tail'):>12.3f}"
        )
    ratio = strat.mean_width("tail") / uniform.mean_width("tail")
    print(
        f"tail interval width, stratified / uniform: {ratio:.3f} (goal <= 0.70); "
        f"coverage goal >= 0.93; {time.perf_counter() - t0:.0f} s"
    )
    print(
        json.dumps(
            {
                "coverage": round(strat.coverage(), 4),
                "coverage_uniform": round(uniform.coverage(), 4),
                "judged_windows": sum(w.judged for w in strat.windows),
                "tail_ci_width_ratio_vs_uniform": round(ratio, 4),
                "scoring_budget_share": round(budget, 4),
                "impressions": strat.impressions,
                "cpu": cpu_model(),
                "isa": isa_flags(),
            }
        )
    )


if __name__ == "__main__":
    main()
