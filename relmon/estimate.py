"""The bad-case rate estimate of a window: its sums, the SQL that reads them, and the judged cut.

A window's weighted (Horvitz-Thompson) bad-case rate, its 95% interval and its Kish effective
sample size (:class:`relmon.stats.RateEstimate`) are functions of five sums a GROUP BY gives:
rows, bad (flagged) rows, sum of weights, weighted bad and sum of squared weights
(:class:`Sums`). A sixth sum, the weighted P(bad) of the rows (one minus the calibrated score,
:data:`P_BAD_SQL`), gives the window's *expected* bad share (:meth:`Sums.expected`). They
are read from the raw rows (``scored_impressions FINAL``) or from the hourly and daily roll-ups
(``bad_case_rollup_1h``/``_1d``, which hold the same sums per hour or day and segment),
always with :func:`window_sums_sql`, so the dashboard, the alert runner and the teacher's
corrected rates add up the same numbers.

A window is *judged* (:func:`judged`) when its effective sample reaches
``RELMON_MIN_WINDOW_SAMPLE`` (``Settings.min_window_sample``); thinner windows are shown but
marked too thin to judge.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relmon.settings import get_settings
from relmon.stats import RateEstimate

__all__ = [
    "KEYS",
    "P_BAD_SQL",
    "SOURCES",
    "SUM_COLUMNS",
    "Sums",
    "judged",
    "segment_filter",
    "window_sums_sql",
]

SUM_COLUMNS = ("sampled", "bad", "sum_w", "sum_w_bad", "sum_w2", "sum_w_pbad")
"""The sums, in this order, as :func:`window_sums_sql` names them."""

P_BAD_SQL = "least(greatest(1 - toFloat64(score), 0), 1)"
"""A stored row's P(bad): one minus its score, which the served tiers calibrate to P(good)."""

KEYS = frozenset({"tier", "category", "locale", "position_bucket", "model_version", "query"})
"""Columns a window's sums may be grouped or filtered by (the roll-ups have all but ``query``)."""


@dataclass(frozen=True)
class _Source:
    table: str  # what follows FROM
    time: str  # the time column the range applies to
    sums: str  # the select-list of SUM_COLUMNS
    keys: frozenset[str]


_RAW_SUMS = (
    "count() AS sampled, sum(is_bad) AS bad, sum(sample_weight) AS sum_w, "
    "sum(sample_weight * is_bad) AS sum_w_bad, sum(sample_weight * sample_weight) AS sum_w2, "
    f"sum(sample_weight * {P_BAD_SQL}) AS sum_w_pbad"
)
_ROLLUP_SUMS = ", ".join(f"sum({c}) AS {c}" for c in SUM_COLUMNS)
SOURCES: Mapping[str, _Source] = {
    "scored_impressions": _Source("scored_impressions FINAL", "event_time", _RAW_SUMS, KEYS),
    "bad_case_rollup_1h": _Source(
        "bad_case_rollup_1h", "window_start", _ROLLUP_SUMS, KEYS - {"query"}
    ),
    "bad_case_rollup_1d": _Source(
        "bad_case_rollup_1d", "window_start", _ROLLUP_SUMS, KEYS - {"query"}
    ),
}
"""The tables :func:`window_sums_sql` reads: the raw rows (deduplicated) and the roll-ups."""

_RAW_WINDOW = "toStartOfInterval(event_time, toIntervalSecond({w:UInt32})) AS window_start"
_PARAM = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class Sums:
    """The sums behind a weighted rate (see :data:`SUM_COLUMNS`); they add up window by window.

    ``sum_w_pbad`` is NaN for hours rolled up before relmon stored it whose raw rows have expired:
    their expected share is unknown, and so is that of any window holding them.
    """

    sampled: int = 0
    bad: int = 0
    sum_w: float = 0.0
    sum_w_bad: float = 0.0
    sum_w2: float = 0.0
    sum_w_pbad: float = 0.0

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | Any) -> Sums:
        """The sums of a row that holds :data:`SUM_COLUMNS` by name (a dict, a pandas row)."""
        return cls(
            int(row["sampled"]),
            int(row["bad"]),
            float(row["sum_w"]),
            float(row["sum_w_bad"]),
            float(row["sum_w2"]),
            float(row["sum_w_pbad"]),
        )

    def __add__(self, other: Sums) -> Sums:
        return Sums(
            self.sampled + other.sampled,
            self.bad + other.bad,
            self.sum_w + other.sum_w,
            self.sum_w_bad + other.sum_w_bad,
            self.sum_w2 + other.sum_w2,
            self.sum_w_pbad + other.sum_w_pbad,
        )

    def __sub__(self, other: Sums) -> Sums:
        return Sums(
            self.sampled - other.sampled,
            self.bad - other.bad,
            self.sum_w - other.sum_w,
            self.sum_w_bad - other.sum_w_bad,
            self.sum_w2 - other.sum_w2,
            self.sum_w_pbad - other.sum_w_pbad,
        )

    def estimate(self) -> RateEstimate:
        """The weighted flagged rate, effective sample size and 95% interval."""
        return RateEstimate.from_sums(
            self.sampled, self.bad, self.sum_w, self.sum_w_bad, self.sum_w2
        )

    def expected(self) -> RateEstimate:
        """The expected bad share: the weighted mean P(bad), with a 95% interval.

        Each row adds its calibrated P(bad) instead of a 0/1 flag. The interval is the Wilson
        interval on the same (Kish) effective sample size: with equal weights, a mean of values
        in [0, 1] varies at most as much as a share of 0/1 flags with that mean does, so the
        interval errs wide. Like the flagged rate's, it counts sampling error only, not the
        scorer's own error.
        The rate is NaN when a window holds an hour whose P(bad) was never stored.
        """
        if not math.isfinite(self.sum_w_pbad):
            return RateEstimate(self.sampled, self.bad, math.nan, 0.0, 0.0, 1.0)
        return RateEstimate.from_sums(
            self.sampled, self.bad, self.sum_w, self.sum_w_pbad, self.sum_w2
        )


def judged(estimate: RateEstimate, min_sample: float | None = None) -> bool:
    """True if the window's effective sample is large enough to judge its rate.

    ``min_sample`` defaults to ``RELMON_MIN_WINDOW_SAMPLE`` of the process's settings.
    """
    if min_sample is None:
        min_sample = get_settings().min_window_sample
    return estimate.n_eff >= min_sample


def _param(name: str) -> str:
    if not _PARAM.fullmatch(name):
        raise ValueError(f"not a parameter name: {name!r}")
    return name


def segment_filter(params: Mapping[str, str]) -> str:
    """A WHERE condition keeping the rows whose ``column`` is in the bound ``Array(String)``.

    ``params`` maps each column (of :data:`KEYS`) to the name of its bound parameter; an empty
    array keeps every value. The SQL holds names only, the values are bound at query time.
    """
    out = []
    for column, name in params.items():
        if column not in KEYS:
            raise ValueError(f"cannot filter by {column!r}: not one of {sorted(KEYS)}")
        p = f"{{{_param(name)}:Array(String)}}"
        out.append(f"(empty({p}) OR has({p}, toString({column})))")
    return " AND ".join(out) or "1 = 1"


def window_sums_sql(
    source: str = "scored_impressions",
    keys: Sequence[str] = (),
    *,
    bucket: bool = False,
    until: bool = False,
    filters: Mapping[str, str] | None = None,
) -> str:
    """The query of :data:`SUM_COLUMNS` per (window,) ``keys`` of one of :data:`SOURCES`.

    Selects ``[window_start,] *keys, *SUM_COLUMNS`` of the rows from ``{since}`` (and before
    ``{until}`` with ``until``), ordered by the group. ``bucket`` groups by window too: windows
    of ``{w}`` seconds of event time on the raw rows, the roll-up's own hour or day on a
    roll-up. ``filters`` adds :func:`segment_filter`. Bound parameters: ``since``,
    ``until`` (``DateTime64(3, 'UTC')``), ``w`` (``UInt32``) and the filters' arrays.

    Table and column names come from :data:`SOURCES` and :data:`KEYS` only: anything else
    raises ``ValueError``.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: not one of {sorted(SOURCES)}")
    src = SOURCES[source]
    named = [*keys, *(filters or {})]
    if any(k not in src.keys for k in named) or len(set(keys)) != len(keys):
        raise ValueError(f"bad keys {named} for {source}: choose from {sorted(src.keys)}")
    group = list(keys)
    select = list(keys)
    if bucket:
        group.insert(0, "window_start")
        select.insert(0, "window_start" if src.time == "window_start" else _RAW_WINDOW)
    where = [f"{src.time} >= {{since:DateTime64(3, 'UTC')}}"]
    if until:
        where.append(f"{src.time} < {{until:DateTime64(3, 'UTC')}}")
    if filters:
        where.append(segment_filter(filters))
    sql = f"SELECT {', '.join([*select, src.sums])} FROM {src.table} WHERE {' AND '.join(where)}"
    if group:
        sql += f" GROUP BY {', '.join(group)} ORDER BY {', '.join(group)}"
    return sql
