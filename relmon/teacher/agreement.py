"""Agreement between the student, the teacher and people, and the bias-corrected bad-case rate.

**Agreement.** The student flags a pair bad when its score is below the threshold; a verdict calls
it bad when its grade is Complement or Irrelevant. :func:`confusion` cross-tabulates the two,
:func:`flag_precision` is the share of flagged pairs the reference confirms, and
:func:`agreement_over_time` gives the agreement share and Cohen's kappa per period.

**Corrected rate.** The student's weighted rate ``p_obs`` (Horvitz-Thompson over the scored
rows) is biased by the student's errors. The review stream is a probability sample of the scored
rows: every flagged row (review weight 1), every uncertain row (1) and an audit share ``a`` of the
confident rest (``1/a``), so with weights ``w = sample_weight * review_weight`` the reviewed rows
stand for all scored rows. From them, per segment:

- ``PPV`` = weighted share of truly bad pairs among the flagged ones,
- ``FOR`` = weighted share of truly bad pairs among the unflagged ones (the student's misses),

and the estimated confusion matrix of the student follows: ``sens = p_obs*PPV / p``,
``spec = (1-p_obs)*(1-FOR) / (1-p)``. The corrected rate is Rogan-Gladen's
``p = (p_obs + spec - 1) / (sens + spec - 1)``, which with this matrix equals
``p_obs*PPV + (1-p_obs)*FOR``; estimating PPV and FOR within the flag strata keeps it unbiased
when flagged and unflagged cases are verified at different rates (people grade the worst first).
Its 95% interval is the delta method on that form, with Kish's effective sample sizes and
Agresti-Coull adjusted proportions (so a segment with no misses found still gets width),
clipped to [0, 1]. The reference verdict of a case is the latest person's grade if there is one,
else the teacher's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from relmon.estimate import Sums
from relmon.stats import Z95, RateEstimate
from relmon.teacher.verdict import BAD_GRADES, GRADES

__all__ = [
    "CorrectedRate",
    "Reviewed",
    "agreement_over_time",
    "confusion",
    "corrected_rate",
    "corrected_rates",
    "flag_precision",
    "reference_verdicts",
    "rogan_gladen",
]


@dataclass(frozen=True)
class Reviewed:
    """One verified review case: the student's flag, the reference's, and its weight."""

    student_bad: bool
    reference_bad: bool
    weight: float
    segment: str = "all"


@dataclass(frozen=True)
class CorrectedRate:
    """The bias-corrected bad-case rate of a segment beside the raw student rate."""

    segment: str
    raw: RateEstimate
    reviewed: int
    ppv: float
    false_omission: float
    sensitivity: float
    specificity: float
    rate: float
    ci_low: float
    ci_high: float

    def as_row(self) -> dict[str, object]:
        """A flat row for tables."""
        return {
            "segment": self.segment,
            "sampled": self.raw.sampled,
            "student_rate": self.raw.rate,
            "student_ci_low": self.raw.ci_low,
            "student_ci_high": self.raw.ci_high,
            "reviewed": self.reviewed,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "precision": self.ppv,
            "corrected_rate": self.rate,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
        }


def rogan_gladen(p_obs: float, sensitivity: float, specificity: float) -> float:
    """Rogan-Gladen: ``(p_obs + spec - 1) / (sens + spec - 1)``, clipped to [0, 1]."""
    j = sensitivity + specificity - 1.0
    if not j > 0:
        return float("nan")
    return min(1.0, max(0.0, (p_obs + specificity - 1.0) / j))


def _weighted_share(rows: Sequence[Reviewed]) -> tuple[float, float, float]:
    """(share truly bad, Agresti-Coull adjusted share, adjusted effective n)."""
    w = np.asarray([r.weight for r in rows], dtype=float)
    if len(w) == 0 or w.sum() <= 0:
        return float("nan"), 0.5, 0.0
    bad = np.asarray([r.reference_bad for r in rows], dtype=float)
    share = float((w * bad).sum() / w.sum())
    n_eff = float(w.sum() ** 2 / (w * w).sum())
    n_adj = n_eff + 4.0
    return share, (share * n_eff + 2.0) / n_adj, n_adj


def corrected_rate(
    raw: RateEstimate, reviewed: Sequence[Reviewed], segment: str = "all"
) -> CorrectedRate:
    """The corrected rate of one segment from its raw estimate and its verified cases."""
    p_obs = raw.rate
    flagged = [r for r in reviewed if r.student_bad]
    unflagged = [r for r in reviewed if not r.student_bad]
    ppv, ppv_adj, n_f = _weighted_share(flagged)
    fo, fo_adj, n_u = _weighted_share(unflagged)
    nan = float("nan")
    if math.isnan(p_obs) or (p_obs > 0 and not flagged) or (p_obs < 1 and not unflagged):
        return CorrectedRate(segment, raw, len(reviewed), ppv, fo, nan, nan, nan, 0.0, 1.0)
    ppv = 0.0 if not flagged else ppv
    fo = 0.0 if not unflagged else fo
    rate = p_obs * ppv + (1 - p_obs) * fo
    var_obs = p_obs * (1 - p_obs) / raw.n_eff if raw.n_eff > 0 else 0.25
    var_ppv = ppv_adj * (1 - ppv_adj) / n_f if flagged else 0.0
    var_fo = fo_adj * (1 - fo_adj) / n_u if unflagged else 0.0
    var = (ppv - fo) ** 2 * var_obs + p_obs**2 * var_ppv + (1 - p_obs) ** 2 * var_fo
    half = Z95 * math.sqrt(var)
    sens = p_obs * ppv / rate if rate > 0 else nan
    spec = (1 - p_obs) * (1 - fo) / (1 - rate) if rate < 1 else nan
    return CorrectedRate(
        segment,
        raw,
        len(reviewed),
        ppv,
        fo,
        sens,
        spec,
        min(1.0, max(0.0, rate)),
        max(0.0, rate - half),
        min(1.0, rate + half),
    )


def corrected_rates(
    student: pd.DataFrame, reviewed: Iterable[Reviewed], pooled_label: str = "all"
) -> pd.DataFrame:
    """Corrected rates per segment and for all segments together.

    ``student`` has one row per segment with ``segment, sampled, bad, sum_w, sum_w_bad,
    sum_w2`` (the scored rows' sums); ``reviewed`` are the verified cases with their segment.
    """
    cases = list(reviewed)
    by_segment: dict[str, list[Reviewed]] = {}
    for case in cases:
        by_segment.setdefault(case.segment, []).append(case)
    out: list[dict[str, object]] = []
    totals = Sums()
    for _, row in student.iterrows():
        sums = Sums.from_row(row)
        totals += sums
        seg = str(row["segment"])
        out.append(corrected_rate(sums.estimate(), by_segment.get(seg, []), seg).as_row())
    if len(out) != 1 or out[0]["segment"] != pooled_label:
        out.insert(0, corrected_rate(totals.estimate(), cases, pooled_label).as_row())
    return pd.DataFrame(out)


def reference_verdicts(verdicts: pd.DataFrame) -> pd.DataFrame:
    """One reference verdict per impression: the latest person's grade, else the teacher's."""
    if verdicts.empty:
        return verdicts
    ranked = verdicts.assign(_human=(verdicts["judge"] == "human").astype(int))
    ranked = ranked.sort_values(["impression_id", "_human", "judged_at"])
    return ranked.groupby("impression_id", as_index=False).tail(1).drop(columns="_human")


def confusion(
    verdicts: pd.DataFrame, rows: str = "student", columns: str = "grade"
) -> pd.DataFrame:
    """Counts of the student's flag (``rows="student"``) against the verdicts' grades.

    ``rows`` may also be a column of ``verdicts`` (e.g. ``"teacher_grade"`` when comparing the
    teacher with people after a merge); ``columns="bad"`` gives a 2x2 bad/ok table.
    """
    frame = verdicts.copy()
    if rows == "student":
        frame["student"] = np.where(frame["student_bad"].astype(bool), "flagged bad", "ok")
    if columns == "bad":
        frame["bad"] = np.where(frame["grade"].isin(list(BAD_GRADES)), "bad", "ok")
    table = pd.crosstab(frame[rows], frame[columns])
    if columns == "grade":
        table = table.reindex(columns=list(GRADES), fill_value=0)
    return table


def flag_precision(verdicts: pd.DataFrame) -> float:
    """Share of the student's flagged pairs that the verdicts call bad (NaN if none)."""
    flagged = verdicts[verdicts["student_bad"].astype(bool)]
    if flagged.empty:
        return float("nan")
    return float(flagged["is_bad"].astype(bool).mean())


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0:
        return float("nan")
    observed = float((a == b).mean())
    pa, pb = float(a.mean()), float(b.mean())
    expected = pa * pb + (1 - pa) * (1 - pb)
    return float("nan") if expected >= 1 else (observed - expected) / (1 - expected)


def agreement_over_time(verdicts: pd.DataFrame, freq: str = "1h") -> pd.DataFrame:
    """Per period and judge kind: cases, agreement share and Cohen's kappa with the student."""
    cols = ["period", "judge", "cases", "agreement", "kappa", "flag_precision"]
    if verdicts.empty:
        return pd.DataFrame(columns=cols)
    frame = verdicts.assign(
        period=pd.to_datetime(verdicts["judged_at"]).dt.floor(freq),
        s=verdicts["student_bad"].astype(bool),
        r=verdicts["is_bad"].astype(bool),
    )
    rows = []
    for (period, judge), g in frame.groupby(["period", "judge"], sort=True):
        a, b = g["s"].to_numpy(), g["r"].to_numpy()
        rows.append(
            {
                "period": period,
                "judge": judge,
                "cases": len(g),
                "agreement": float((a == b).mean()),
                "kappa": _kappa(a.astype(float), b.astype(float)),
                "flag_precision": float(b[a].mean()) if a.any() else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=cols)
