"""Agreement statistics and the bias-corrected bad-case rate, checked against known truth.

A replay with known relevance runs through the real processor in memory (as
relmon/sim/validation.py does) with a student whose errors are known: it misses 40% of bad pairs and
flags 3% of good ones. The review stream's cases get the true grade (a perfect reference), and
the corrected rate must cover the true rate of all impressions, where the raw rate does not.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from relmon.settings import PlannerConfig, SamplingRates
from relmon.sim.replay import ReplayConfig, TrafficGenerator
from relmon.sim.scenario import Scenario
from relmon.sim.synth import SyntheticCatalog
from relmon.stats import RateEstimate
from relmon.teacher.agreement import (
    Reviewed,
    agreement_over_time,
    confusion,
    corrected_rate,
    corrected_rates,
    flag_precision,
    reference_verdicts,
    rogan_gladen,
)
from schemas.models import Impression
from streams import RawRecord, Routing, impression_text
from streams.catalog import Catalog
from streams.metrics import Metrics
from streams.plans import Planner
from streams.sampling import unit_hash
from streams.testing import MemoryPorts, memory_processor

MISS, FALSE_FLAG, UNCERTAIN = 0.4, 0.03, 0.1


class NoisyStudent:
    """Scores with known errors: bad pairs missed with probability MISS, good ones flagged
    with probability FALSE_FLAG, and some good ones just above the threshold (uncertain)."""

    model_version = "noisy"
    provider = "none"

    def __init__(self) -> None:
        self.truth: dict[tuple[str, str], bool] = {}

    def predict(self, pairs, batch_size=32, keys=None):
        out = []
        for pair in pairs:
            u = unit_hash("student:" + "|".join(pair))
            if not self.truth[pair]:  # truly bad
                out.append(0.9 if u < MISS else 0.2)
            elif u < FALSE_FLAG:
                out.append(0.3)
            elif u < FALSE_FLAG + UNCERTAIN:
                out.append(0.55)
            else:
                out.append(0.9)
        return np.asarray(out, dtype=np.float32)


def replay(minutes: int = 25, pages: int = 100, seed: int = 3):
    catalog = SyntheticCatalog.generate(seed=seed)
    scenario = Scenario(
        tier_bad_share={"head": 0.1, "torso": 0.2, "tail": 0.3},
        category_bad_share={"Desks": 0.45},
    )
    gen = TrafficGenerator(
        catalog,
        ReplayConfig.clean_impressions(seed=seed, scenario=scenario),
    )
    student = NoisyStudent()
    ports = MemoryPorts(scorer=student)
    proc = memory_processor(
        ports=ports,
        catalog=Catalog(),
        planner=Planner(PlannerConfig()),
        rates=SamplingRates(head=0.2, torso=0.5),
        routing=Routing(0.5, uncertain_band=0.1, audit_share=0.15),
        model_version="noisy",
        metrics=Metrics(),
    )
    population: list[tuple[str, bool]] = []
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    offsets = [0] * 4

    async def run() -> None:
        for minute in range(minutes):
            batch = []
            for i in range(pages):
                now = t0 + timedelta(minutes=minute, seconds=i * 60 / pages)
                for key, value, relevant in gen.labelled_page(now, minute * 60.0):
                    part = zlib.crc32(key) % 4
                    batch.append(RawRecord("sim", part, offsets[part], key, value))
                    offsets[part] += 1
                    imp = Impression.model_validate_json(value)
                    # the worker scores the product text; reviews carry the title
                    student.truth[(imp.query, impression_text(imp))] = bool(relevant)
                    student.truth[(imp.query, imp.title or "")] = bool(relevant)
                    population.append((imp.category, not relevant))
            await proc.process(batch)

    asyncio.run(run())
    return ports, student, population


def sums_by_category(rows) -> pd.DataFrame:
    acc: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0, 0.0, 0.0])
    for r in rows:
        a = acc[r.category]
        a[0] += 1
        a[1] += r.is_bad
        a[2] += r.sample_weight
        a[3] += r.sample_weight * r.is_bad
        a[4] += r.sample_weight**2
        a[5] += r.sample_weight * (1.0 - r.score)
    return pd.DataFrame(
        [[seg, *v] for seg, v in sorted(acc.items())],
        columns=["segment", "sampled", "bad", "sum_w", "sum_w_bad", "sum_w2", "sum_w_pbad"],
    )


@pytest.fixture(scope="module")
def simulated():
    return replay()


def test_corrected_rate_covers_the_truth_the_raw_rate_misses(simulated):
    ports, student, population = simulated
    reasons = Counter(r.reason for r in ports.reviews)
    assert reasons["below_threshold"] and reasons["uncertain"] and reasons["audit"]
    reviewed = [
        Reviewed(
            student_bad=r.score < r.threshold,
            reference_bad=not student.truth[(r.query, r.title)],
            weight=r.sample_weight * r.review_weight,
            segment=r.category,
        )
        for r in ports.reviews
    ]
    table = corrected_rates(sums_by_category(ports.rows.values()), reviewed).set_index("segment")
    truth = Counter(cat for cat, bad in population if bad)
    total = Counter(cat for cat, _ in population)
    overall = table.loc["all"]
    true_all = sum(truth.values()) / len(population)
    # the student's raw rate is biased (misses 40%) and its interval excludes the truth ...
    assert overall.student_ci_high < true_all
    # ... the corrected one covers it, with a usable width
    assert overall.ci_low <= true_all <= overall.ci_high, (overall.to_dict(), true_all)
    assert overall.ci_high - overall.ci_low < 0.08
    assert overall.sensitivity == pytest.approx(1 - MISS, abs=0.08)
    assert overall.specificity == pytest.approx(1 - FALSE_FLAG, abs=0.03)
    # per category: 95% intervals should cover the truth nearly always
    covered = [
        table.loc[c].ci_low <= truth[c] / total[c] <= table.loc[c].ci_high
        for c in total
        if c in table.index and table.loc[c].reviewed >= 30
    ]
    assert len(covered) >= 8
    assert sum(covered) / len(covered) >= 0.8, covered


def test_rogan_gladen_is_the_same_estimate():
    raw = RateEstimate.from_sums(1000, 160, 1000.0, 160.0, 1000.0)
    cases = (
        [Reviewed(True, True, 1.0)] * 120
        + [Reviewed(True, False, 1.0)] * 40
        + [Reviewed(False, True, 10.0)] * 8
        + [Reviewed(False, False, 10.0)] * 76
    )
    est = corrected_rate(raw, cases)
    # PPV = 0.75, FOR = 8/84; p = 0.16*0.75 + 0.84*8/84 = 0.2
    assert est.rate == pytest.approx(0.2)
    assert rogan_gladen(0.16, est.sensitivity, est.specificity) == pytest.approx(0.2)
    assert est.ci_low < 0.2 < est.ci_high
    assert math.isnan(rogan_gladen(0.3, 0.4, 0.5))
    # no verified unflagged case: the misses are unknown, the interval says so
    blind = corrected_rate(raw, [Reviewed(True, True, 1.0)])
    assert math.isnan(blind.rate) and (blind.ci_low, blind.ci_high) == (0.0, 1.0)


def test_confusion_precision_and_agreement_over_time():
    t = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pd.DataFrame(
        {
            "impression_id": ["a", "b", "c", "d", "a"],
            "judge": ["teacher", "teacher", "teacher", "teacher", "human"],
            "student_bad": [1, 1, 0, 0, 1],
            "grade": ["Irrelevant", "Exact", "Complement", "Exact", "Substitute"],
            "is_bad": [1, 0, 1, 0, 0],
            "judged_at": [t, t, t + timedelta(hours=1), t + timedelta(hours=1), t],
        }
    )
    teach = frame[frame.judge == "teacher"]
    table = confusion(teach)
    assert list(table.columns) == ["Exact", "Substitute", "Complement", "Irrelevant"]
    assert table.loc["flagged bad", "Irrelevant"] == 1 and table.loc["ok", "Complement"] == 1
    assert flag_precision(teach) == 0.5
    ref = reference_verdicts(frame)
    assert len(ref) == 4 and ref.set_index("impression_id").loc["a", "judge"] == "human"
    over = agreement_over_time(teach)
    assert list(over.cases) == [2, 2] and list(over.agreement) == [0.5, 0.5]
