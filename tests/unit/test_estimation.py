"""Estimates against known truth (simulation through the real processor, oracle scorer)."""

import pytest

from relmon.settings import SamplingRates
from relmon.sim.scenario import Scenario, Shift
from relmon.sim.validation import simulate

# a 75-minute simulation through the real processor: about a minute, more on a loaded machine
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stratified():
    return simulate(minutes=75, pages_per_minute=120, seed=3)


def test_intervals_cover_the_true_rate(stratified):
    judged = [w for w in stratified.windows if w.judged]
    assert len(judged) >= 100
    assert stratified.coverage() >= 0.93


def test_stratified_tail_intervals_are_narrower_at_equal_budget(stratified):
    budget = stratified.sampled / stratified.impressions
    uniform = simulate(
        minutes=75, pages_per_minute=120, seed=3, rates=SamplingRates.uniform_at(budget)
    )
    assert abs(uniform.sampled - stratified.sampled) / stratified.sampled < 0.05
    assert stratified.mean_width("tail") / uniform.mean_width("tail") <= 0.7
    assert stratified.mean_width("head") > uniform.mean_width("head")  # the price paid


def test_estimates_follow_a_shift():
    scenario = Scenario(base_bad_share=0.1, shifts=(Shift(at_s=1200, bad_share=0.6),))
    res = simulate(minutes=40, pages_per_minute=60, seed=5, scenario=scenario)
    before = [w for w in res.windows if w.judged and w.window.minute < 19]
    after = [w for w in res.windows if w.judged and w.window.minute > 21]
    assert before and after
    assert max(w.estimate.rate for w in before) < 0.3 < min(w.estimate.rate for w in after)


def test_scenario_precedence():
    s = Scenario(
        base_bad_share=0.2,
        tier_bad_share={"tail": 0.3},
        category_bad_share={"Desks": 0.4},
        shifts=(Shift(at_s=10, category="Desks", bad_share=0.9),),
    )
    assert s.bad_share("tail", "Rugs", 0) == 0.3
    assert s.bad_share("head", "Rugs", 0) == 0.2
    assert s.bad_share("tail", "Desks", 5) == 0.4
    assert s.bad_share("tail", "Desks", 10) == 0.9
