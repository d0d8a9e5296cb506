"""Chaos bench: the whole pipeline under faults gives the rows and rates of a clean run.

Run: ``python bench/chaos.py`` (about 3 minutes on 2 cores, 60 s of it the store outage). It
starts a tansu broker and a local store in a temporary RELMON_HOME, then
:func:`relmon.sim.chaos.run_chaos` runs the pipeline (real workers, a real teacher, a fake chat
API) twice on one deterministic input of valid and hostile records: clean, and with the chat
API failing (500, 429, slow, hanging), the chaos run's store down ``--store-down-s`` and its
worker SIGKILLed during the outage. Progress goes to stderr; the last line on stdout is one JSON
object with the chaos run's accounting and its comparison with the clean run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/scoring.py, for `import scoring`

from relmon.demo import scratch_servers  # noqa: E402
from relmon.hostinfo import cpu_model, isa_flags  # noqa: E402
from relmon.sim.chaos import ChaosConfig, run_chaos  # noqa: E402


def main() -> int:
    started = time.monotonic()
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=defaults.pages, help="result pages of input")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--store-down-s", type=float, default=defaults.store_down_s)
    parser.add_argument("--teacher-budget", type=int, default=defaults.teacher_budget)
    parser.add_argument("--timeout-s", type=float, default=defaults.timeout_s)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "relmon-minilm-ce")
    parser.add_argument("--keep", action="store_true", help="keep the temporary RELMON_HOME")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = ChaosConfig(
        pages=args.pages,
        seed=args.seed,
        store_down_s=args.store_down_s,
        teacher_budget=args.teacher_budget,
        timeout_s=args.timeout_s,
    )
    with scratch_servers("relmon-chaos-", args.model_dir, keep=args.keep) as settings:
        report = run_chaos(settings, config)
    report["wall_s"] = round(time.monotonic() - started, 1)  # broker and store start included
    report.update(cpu=cpu_model(), isa=isa_flags())
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
