"""Spike detection on per-window segment sums: a pure function of the sums, no I/O.

Input per window is, for every segment, the five sums a GROUP BY gives (rows, bad rows, sum of
weights, weighted bad, sum of squared weights), from ClickHouse in production
(:func:`relmon.alerts.repository.query_window_sums`) or from simulated rows
(:func:`window_sums`). Segments are ``("overall", "all")`` and one per value of each of tier,
category, locale, position bucket and model version.

For each segment and window the detector compares the window's weighted (Horvitz-Thompson) rate
with a rolling baseline, the sums of the segment's ``baseline_windows`` windows before the last
``baseline_gap`` ones (the gap keeps the first windows of a spike out of its own baseline):

- **z-test**: ``z = (p - p0) / sqrt(p0 (1 - p0) (1/n + 1/n0))`` on Kish effective sample sizes,
  divided by ``sqrt(phi)``, where ``phi`` (>= 1) is the mean ``z^2`` of the segment's own
  baseline windows against the baseline (overdispersion: a segment's true rate moves with its
  query mix). The same test is also run on the sums of the last 2 .. ``scan_windows`` windows
  (a scan over short spans: a spike too small to show in one window of a small segment shows in
  two or three), and the segment's p-value is the smallest over the spans times their number
  (Bonferroni). One-sided p-values of all segments tested in the window are then corrected with
  **Benjamini-Hochberg** at ``fdr``.
- **EWMA** of the standardised z: alarm above ``ewma_limit * sqrt(lambda / (2 - lambda))``.
- **CUSUM**: ``S = max(0, S + z - k)``, alarm above ``h``.

A segment is tested only with an effective sample of at least ``min_sample`` in the window and
``min_baseline_sample`` over at least ``min_baseline_windows`` windows of baseline (minimum-sample
guard), and flagged only if the window has ``min_bad`` bad rows and its rate is at least
``min_lift`` times the baseline. Once flagged, the segment is *alarmed*: its baseline is
frozen (a spike never becomes the new normal), EWMA and CUSUM restart, and it stays alarmed until
``resolve_windows`` windows in a row are no longer significantly above the frozen baseline
(one-sided p >= ``resolve_p``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from relmon.estimate import Sums
from relmon.settings import DetectorConfig
from relmon.stats import RateEstimate

__all__ = [
    "SEGMENT_DIMENSIONS",
    "Detector",
    "DetectorConfig",
    "Segment",
    "SegmentTest",
    "Sums",
    "benjamini_hochberg",
    "rollup",
    "window_sums",
]

SEGMENT_DIMENSIONS = ("tier", "category", "locale", "position_bucket", "model_version")
Segment = tuple[str, str]
OVERALL: Segment = ("overall", "all")


def rollup(cells: Iterable[tuple[Mapping[str, str], Sums]]) -> dict[Segment, Sums]:
    """Sum finest-grain cells (a value per dimension) into every segment of one window."""
    out: dict[Segment, Sums] = {}
    for dims, sums in cells:
        for segment in (OVERALL, *((d, str(dims[d])) for d in SEGMENT_DIMENSIONS)):
            out[segment] = out.get(segment, Sums()) + sums
    return out


def window_sums(rows: Iterable[Any], window_s: int) -> dict[datetime, dict[Segment, Sums]]:
    """Per-window segment sums of scored rows (objects with the ``scored_impressions`` fields)."""
    cells: dict[datetime, list[tuple[Mapping[str, str], Sums]]] = {}
    for row in rows:
        t = row.event_time
        start = t - timedelta(seconds=(t.timestamp() % window_s))
        start = start.replace(microsecond=0)
        w = float(row.sample_weight)
        bad = int(row.is_bad)
        dims = {d: str(getattr(row, d)) for d in SEGMENT_DIMENSIONS}
        cells.setdefault(start, []).append((dims, Sums(1, bad, w, w * bad, w * w)))
    return {start: rollup(c) for start, c in sorted(cells.items())}


def _norm_sf(z: float) -> float:
    """One-sided upper-tail probability of the standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def benjamini_hochberg(p_values: Sequence[float], q: float) -> list[bool]:
    """Which hypotheses are rejected by the Benjamini-Hochberg step-up procedure at FDR ``q``."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    cutoff = -1
    for rank, i in enumerate(order, 1):
        if p_values[i] <= q * rank / m:
            cutoff = rank
    rejected = [False] * m
    for rank, i in enumerate(order, 1):
        if rank <= cutoff:
            rejected[i] = True
    return rejected


@dataclass(frozen=True)
class SegmentTest:
    """What the detectors said about one segment in one window."""

    segment: Segment
    window_start: datetime
    current: RateEstimate
    baseline: RateEstimate
    z: float
    p_value: float
    span: int
    ewma: float
    cusum: float
    detectors: tuple[str, ...]
    alarmed: bool
    started: bool
    resolved: bool


@dataclass
class _State:
    history: deque[Sums]
    baseline: Sums = field(default_factory=Sums)
    ewma: float = 0.0
    cusum: float = 0.0
    alarmed: bool = False
    frozen: Sums | None = None
    calm: int = 0


@dataclass(frozen=True)
class _Candidate:
    segment: Segment
    state: _State
    current: Sums
    base: Sums
    z: float = math.nan
    p: float = 1.0
    span: int = 1
    span_sums: Sums = field(default_factory=Sums)


class Detector:
    """Rolling-baseline spike detector over all segments; feed it one window at a time."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._states: dict[Segment, _State] = {}

    def alarmed(self) -> set[Segment]:
        """Segments currently alarmed."""
        return {s for s, st in self._states.items() if st.alarmed}

    def _state(self, segment: Segment) -> _State:
        st = self._states.get(segment)
        if st is None:
            cfg = self.config
            st = _State(history=deque(maxlen=cfg.baseline_windows + cfg.baseline_gap))
            self._states[segment] = st
        return st

    def step(self, window_start: datetime, sums: Mapping[Segment, Sums]) -> list[SegmentTest]:
        """Evaluate one window; return a test per segment that was tested or is alarmed."""
        cfg = self.config
        candidates: list[_Candidate] = []
        for segment in sorted(set(sums) | set(self._states)):
            st = self._state(segment)
            cur = sums.get(segment, Sums())
            base = st.frozen if st.frozen is not None else st.baseline
            if (
                cur.estimate().n_eff < cfg.min_sample
                or base.estimate().n_eff < cfg.min_baseline_sample
                or (st.frozen is None and len(self._window(st)) < cfg.min_baseline_windows)
            ):
                candidates.append(_Candidate(segment, st, cur, base))
                continue
            z_of = self._z_against(st, base)
            z = z_of(cur)
            # The scan: the current window and the (k - 1) before it, which are in the history
            # but not yet in the baseline (k <= baseline_gap + 1). An alarmed segment's history
            # is paused, so it is judged on the current window alone.
            spans = [(1, z, cur)]
            if st.frozen is None:
                recent = list(st.history)[::-1]
                span_sums = cur
                for k in range(2, min(cfg.scan_windows, len(recent) + 1) + 1):
                    span_sums = span_sums + recent[k - 2]
                    spans.append((k, z_of(span_sums), span_sums))
            span, span_z, span_sums = max(spans, key=lambda s: s[1])
            p = min(1.0, len(spans) * _norm_sf(span_z))
            candidates.append(_Candidate(segment, st, cur, base, z, p, span, span_sums))
        tested = [c for c in candidates if not math.isnan(c.z)]
        rejected = dict(
            zip(
                [c.segment for c in tested],
                benjamini_hochberg([c.p for c in tested], cfg.fdr),
                strict=True,
            )
        )
        ewma_limit = cfg.ewma_limit * math.sqrt(cfg.ewma_lambda / (2 - cfg.ewma_lambda))
        out: list[SegmentTest] = []
        for c in candidates:
            segment, st, cur, base, z, p = c.segment, c.state, c.current, c.base, c.z, c.p
            is_tested = not math.isnan(z)
            detectors: list[str] = []
            started = resolved = False
            if is_tested and not st.alarmed:
                st.ewma = cfg.ewma_lambda * z + (1 - cfg.ewma_lambda) * st.ewma
                st.cusum = max(0.0, st.cusum + z - cfg.cusum_k)
                if self._lifted(c.span_sums, base) and rejected.get(segment, False):
                    detectors.append("z-test" if c.span == 1 else f"z-test-{c.span}w")
                if self._lifted(cur, base):
                    if st.ewma > ewma_limit:
                        detectors.append("ewma")
                    if st.cusum > cfg.cusum_h:
                        detectors.append("cusum")
                if detectors:
                    st.alarmed, started = True, True
                    st.frozen = base
                    st.ewma = st.cusum = 0.0
                    st.calm = 0
            elif st.alarmed:
                if is_tested and p < cfg.resolve_p:
                    st.calm = 0
                else:
                    st.calm += 1
                if st.calm >= cfg.resolve_windows:
                    st.alarmed, resolved = False, True
                    st.frozen = None
                    st.ewma = st.cusum = 0.0
            if not st.alarmed and not started and not resolved:
                self._roll(st, cur)
            if is_tested or st.alarmed or started or resolved:
                out.append(
                    SegmentTest(
                        segment,
                        window_start,
                        cur.estimate(),
                        base.estimate(),
                        z,
                        p,
                        c.span,
                        st.ewma,
                        st.cusum,
                        tuple(detectors),
                        st.alarmed,
                        started,
                        resolved,
                    )
                )
        return out

    def _lifted(self, sums: Sums, base: Sums) -> bool:
        """The minimum-bad and minimum-lift guards."""
        cfg = self.config
        return (
            sums.bad >= cfg.min_bad and sums.estimate().rate >= cfg.min_lift * base.estimate().rate
        )

    def _z_against(self, st: _State, base: Sums) -> Callable[[Sums], float]:
        """The overdispersion-scaled z of some sums against the segment's baseline."""
        base_est = base.estimate()
        p0 = min(max(base_est.rate, 0.005), 0.995)
        phi = self._dispersion(st, p0, base_est.n_eff)

        def z_of(sums: Sums) -> float:
            est = sums.estimate()
            se = math.sqrt(p0 * (1 - p0) * (1 / est.n_eff + 1 / base_est.n_eff))
            return (est.rate - base_est.rate) / se / math.sqrt(phi)

        return z_of

    def _window(self, st: _State) -> list[Sums]:
        """The baseline windows: the history without its newest ``baseline_gap`` windows."""
        gap = self.config.baseline_gap
        return list(st.history)[: max(len(st.history) - gap, 0)]

    def _roll(self, st: _State, cur: Sums) -> None:
        st.history.append(cur)
        total = Sums()
        for h in self._window(st):
            total = total + h
        st.baseline = total

    def _dispersion(self, st: _State, p0: float, n0: float) -> float:
        """Overdispersion of the segment's own baseline windows: mean z^2, shrunk towards 1.

        A segment's true rate moves from window to window with its mix (which queries, which
        tiers); a binomial z would call that movement significant. ``phi`` measures it on the
        baseline windows themselves, with ``dispersion_prior`` pseudo-windows at 1.
        """
        cfg = self.config
        total, count = float(cfg.dispersion_prior), float(cfg.dispersion_prior)
        for h in self._window(st):
            est = h.estimate()
            if est.n_eff < cfg.min_sample:
                continue
            var = p0 * (1 - p0) * (1 / est.n_eff + 1 / n0)
            total += (est.rate - p0) ** 2 / var
            count += 1
        return min(max(total / count, 1.0), 25.0)
