"""The one estimate module: window sums, their SQL, and the judged cut (issue 13 item 2)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import pandas as pd
import pytest

from relmon import estimate
from relmon.estimate import SUM_COLUMNS, Sums, judged, segment_filter, window_sums_sql
from relmon.settings import get_settings
from relmon.stats import RateEstimate

PLACEHOLDER = re.compile(r"\{(\w+):([^{}]+)\}")


def rows_sums(weights_bad: list[tuple[float, int]], p_bad: float = 0.5) -> Sums:
    """The sums of rows given as (weight, is_bad), one row at a time, each with ``p_bad``."""
    total = Sums()
    for w, bad in weights_bad:
        total += Sums(1, bad, w, w * bad, w * w, w * p_bad)
    return total


def test_sums_add_up_like_the_pooled_rows() -> None:
    a_rows = [(1.0, 1), (4.0, 0), (4.0, 1)]
    b_rows = [(20.0, 0), (1.0, 0)]
    a, b = rows_sums(a_rows), rows_sums(b_rows)
    assert a + b == rows_sums(a_rows + b_rows) == Sums(5, 2, 30.0, 5.0, 434.0, 15.0)
    assert a + Sums() == a and (a + b) - b == a
    est = (a + b).estimate()
    assert est == RateEstimate.from_sums(5, 2, 30.0, 5.0, 434.0)
    assert est.rate == pytest.approx(5 / 30) and est.n_eff == pytest.approx(900 / 434)
    assert Sums().estimate().n_eff == 0.0  # an empty window has no rate and is never judged


def test_sums_from_a_row_by_name() -> None:
    row = {"tier": "head", "sum_w2": 8.0, "sampled": 2, "bad": 1, "sum_w": 4.0, "sum_w_bad": 2.0}
    row["sum_w_pbad"] = 1.5
    assert Sums.from_row(row) == Sums(2, 1, 4.0, 2.0, 8.0, 1.5)
    frame = pd.DataFrame([row, row])
    assert Sums.from_row(frame[list(SUM_COLUMNS)].sum()) == Sums(4, 2, 8.0, 4.0, 16.0, 3.0)
    with pytest.raises(KeyError):
        Sums.from_row({"sampled": 1})


def test_the_expected_share_is_the_weighted_mean_p_bad_with_a_conservative_interval() -> None:
    # rows (weight, P(bad)): the flagged rate counts flags, the expected share averages P(bad)
    rows = [(1.0, 0.9), (4.0, 0.1), (4.0, 0.3), (20.0, 0.05), (1.0, 0.6)]
    total = Sums()
    for w, p in rows:
        total += Sums(1, int(p >= 0.5), w, w * (p >= 0.5), w * w, w * p)
    exp = total.expected()
    want = sum(w * p for w, p in rows) / sum(w for w, _ in rows)
    assert exp.rate == pytest.approx(want) and exp.rate != total.estimate().rate
    assert exp.n_eff == total.estimate().n_eff
    # the linearised variance of a weighted mean of values in [0, 1] is at most that of a share
    # of 0/1 values with the same mean on the same effective sample, and the interval is wider
    # than the linearised one
    var = sum(w * w * (p - want) ** 2 for w, p in rows) / sum(w for w, _ in rows) ** 2
    assert var <= want * (1 - want) / exp.n_eff
    assert exp.ci_low < want < exp.ci_high
    assert exp.ci_high - exp.ci_low > 2 * 1.96 * var**0.5
    unknown = total + Sums(3, 0, 3.0, 0.0, 3.0, float("nan"))  # an hour rolled up before
    assert math.isnan(unknown.expected().rate) and (
        unknown.expected().ci_low,
        unknown.expected().ci_high,
    ) == (0.0, 1.0)
    assert not math.isnan(unknown.estimate().rate)


def placeholders(sql: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, kind in PLACEHOLDER.findall(sql):
        assert found.setdefault(name, kind) == kind, f"{name} bound with two types"
    return found


def test_raw_window_sums_sql_binds_every_value() -> None:
    sql = window_sums_sql(
        "scored_impressions",
        ("tier", "category"),
        bucket=True,
        until=True,
        filters={"tier": "tiers", "locale": "locales"},
    )
    assert placeholders(sql) == {
        "w": "UInt32",
        "since": "DateTime64(3, 'UTC')",
        "until": "DateTime64(3, 'UTC')",
        "tiers": "Array(String)",
        "locales": "Array(String)",
    }
    assert sql.startswith(
        "SELECT toStartOfInterval(event_time, toIntervalSecond({w:UInt32})) AS window_start, "
        "tier, category, count() AS sampled, sum(is_bad) AS bad, sum(sample_weight) AS sum_w, "
        "sum(sample_weight * is_bad) AS sum_w_bad, sum(sample_weight * sample_weight) AS sum_w2, "
        "sum(sample_weight * least(greatest(1 - toFloat64(score), 0), 1)) AS sum_w_pbad "
        "FROM scored_impressions FINAL WHERE event_time >= {since:DateTime64(3, 'UTC')} "
        "AND event_time < {until:DateTime64(3, 'UTC')} AND "
    )
    assert sql.endswith(
        "GROUP BY window_start, tier, category ORDER BY window_start, tier, category"
    )
    assert "'" not in PLACEHOLDER.sub("", sql)  # no literal value outside the placeholders


@pytest.mark.parametrize("table", ["bad_case_rollup_1h", "bad_case_rollup_1d"])
def test_rollup_window_sums_sql_sums_the_stored_sums(table: str) -> None:
    sql = window_sums_sql(table, ("category",), bucket=True)
    assert sql == (
        "SELECT window_start, category, sum(sampled) AS sampled, sum(bad) AS bad, "
        "sum(sum_w) AS sum_w, sum(sum_w_bad) AS sum_w_bad, sum(sum_w2) AS sum_w2, "
        "sum(sum_w_pbad) AS sum_w_pbad "
        f"FROM {table} WHERE window_start >= {{since:DateTime64(3, 'UTC')}} "
        "GROUP BY window_start, category ORDER BY window_start, category"
    )


def test_ungrouped_window_sums_sql_has_no_group_by() -> None:
    sql = window_sums_sql()
    assert "GROUP BY" not in sql and placeholders(sql) == {"since": "DateTime64(3, 'UTC')"}


@pytest.mark.parametrize(
    ("source", "keys", "filters"),
    [
        ("scored_impressions; DROP TABLE verdicts", (), None),
        ("verdicts", (), None),
        ("scored_impressions", ("tier; DROP TABLE verdicts",), None),
        ("scored_impressions", ("impression_id",), None),
        ("scored_impressions", ("tier", "tier"), None),
        ("bad_case_rollup_1h", ("query",), None),  # the roll-ups have no query column
        ("scored_impressions", (), {"title": "titles"}),
        ("bad_case_rollup_1d", (), {"query": "queries"}),
        ("scored_impressions", (), {"tier": "t}) OR 1 = 1 OR has({t"}),
    ],
)
def test_window_sums_sql_refuses_names_off_the_allow_list(
    source: str, keys: tuple[str, ...], filters: dict[str, str] | None
) -> None:
    with pytest.raises(ValueError):
        window_sums_sql(source, keys, filters=filters)


def test_segment_filter() -> None:
    assert segment_filter({"model_version": "models"}) == (
        "(empty({models:Array(String)}) OR has({models:Array(String)}, toString(model_version)))"
    )
    assert segment_filter({}) == "1 = 1"
    with pytest.raises(ValueError):
        segment_filter({"toString(1)": "x"})


@pytest.fixture
def min_window_sample(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set ``RELMON_MIN_WINDOW_SAMPLE`` with ``monkeypatch.setenv``; settings re-read each time."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_judged_cut_follows_the_setting(min_window_sample: pytest.MonkeyPatch) -> None:
    window = Sums(40, 8, 40.0, 8.0, 40.0).estimate()  # equal weights: n_eff = 40
    assert window.n_eff == pytest.approx(40.0)
    for setting, expected in (("30", True), ("40", True), ("41", False), ("200", False)):
        min_window_sample.setenv("RELMON_MIN_WINDOW_SAMPLE", setting)
        get_settings.cache_clear()
        assert get_settings().min_window_sample == int(setting)
        assert judged(window) is expected, setting
    assert judged(window, 10) is True  # an explicit cut wins over the setting


def test_dashboard_rates_use_the_setting(min_window_sample: pytest.MonkeyPatch) -> None:
    from dashboards import data

    frame = pd.DataFrame(
        [
            {"tier": t, "sampled": n, "bad": 1, "sum_w": float(n), "sum_w_bad": 1.0, "sum_w2": n}
            | {"sum_w_pbad": 1.0}
            for t, n in (("head", 20), ("head", 30), ("tail", 45))
        ]
    )
    min_window_sample.setenv("RELMON_MIN_WINDOW_SAMPLE", "48")
    get_settings.cache_clear()
    got = data.rates(frame, ["tier"]).set_index("tier")
    assert got.loc["head", "sampled"] == 50 and got.loc["head", "n_eff"] == pytest.approx(50)
    assert bool(got.loc["head", "judged"]) and not bool(got.loc["tail", "judged"])
    assert segment_filter(data.FILTERS) == data.WHERE


def test_dashboard_expected_share_is_unknown_when_an_hour_lacks_its_p_bad_sum() -> None:
    from dashboards import data

    row = {"sampled": 10, "bad": 2, "sum_w": 10.0, "sum_w_bad": 2.0, "sum_w2": 10.0}
    frame = pd.DataFrame(
        [
            {"tier": "head"} | row | {"sum_w_pbad": 3.0},
            {"tier": "head"} | row | {"sum_w_pbad": float("nan")},  # rolled up before 0008
            {"tier": "tail"} | row | {"sum_w_pbad": 3.0},
        ]
    )
    got = data.rates(frame, ["tier"]).set_index("tier")
    assert math.isnan(got.loc["head", "expected"])  # not 3/20, as skipping the NaN would say
    assert got.loc["head", "rate"] == pytest.approx(0.2)
    assert got.loc["tail", "expected"] == pytest.approx(0.3)


def test_no_judged_cut_is_written_as_a_number() -> None:
    """The cut is the setting: no module compares an effective sample with a literal."""
    from pathlib import Path

    root = Path(estimate.__file__).resolve().parents[1]
    pattern = re.compile(r"n_eff\s*>=\s*[1-9]|min_(window_)?sample:\s*int\s*=\s*[1-9]")
    offenders = [
        f"{path.relative_to(root)}:{i}"
        for package in ("relmon", "dashboards", "streams")
        for path in (root / package).rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
