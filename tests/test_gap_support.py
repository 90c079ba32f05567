"""Gap support: the planner's pessimism where the history never tried a gap.

``model.adjust`` (the bundle's factors) and ``training.planning_fit`` (their fit).

- units: the exact Poisson lower bound (Garwood), the fit per bucket of hours since the previous
  attempt, the bundle's ``planning.gap_support`` parsed and refused when malformed, the hourly
  lookup table;
- the planner: a model whose best hours are right after the last attempt, a gap that the
  history never tried, retries later once the gap support is known and reports the adjusted
  probability; the later planned retries get the planned gap's factor;
- a real trained bundle carries the fit (ten buckets, reported in the summary and in MLflow's
  flat metrics).
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chi2
from test_policy import CurveModel, _decide
from test_rules import FAIL, T0, Z, request

from retryopt.features.decisions import Constraints
from retryopt.features.objective import FREE_OBJECTIVE
from retryopt.model.adjust import GAP_EDGES_HOURS, Adjustment, gap_bucket
from retryopt.serving.policies import PlannerPolicy
from retryopt.serving.schemas import to_batch
from retryopt.training.planning_fit import fit_gap_support, poisson_lower_bound

N_BUCKETS = len(GAP_EDGES_HOURS) + 1


def test_poisson_lower_bound_is_garwoods() -> None:
    low = poisson_lower_bound(np.array([0, 1, 10]), 0.95)
    assert low[0] == 0.0
    assert low[1] == pytest.approx(-math.log(0.95))  # P(N >= 1 | mu) = 0.05 at mu = -ln 0.95
    assert low[2] == pytest.approx(chi2.ppf(0.05, 20) / 2)
    assert low[2] == pytest.approx(5.425, abs=1e-3)
    with pytest.raises(ValueError, match="confidence"):
        poisson_lower_bound(np.array([1]), 1.0)


def test_gap_buckets_follow_the_edges() -> None:
    hours = np.array([0.5, 1.0, 2.9, 3.0, 23.9, 24.0, 72.0, 400.0])
    assert gap_bucket(hours).tolist() == [0, 1, 1, 2, 4, 5, 6, 9]


def test_fit_counts_each_bucket_and_bounds_its_ratio() -> None:
    # 100 retries at 72 h with 40 successes and 0.4 predicted; 10 at 2 h, 0 successes, 0.4
    # predicted; nothing under 1 h; a NaN gap is skipped.
    gaps = np.r_[np.full(100, 72.0), np.full(10, 2.0), np.nan]
    y = np.r_[np.ones(40), np.zeros(60), np.zeros(10), 1.0]
    p = np.full(gaps.size, 0.4)
    fit = fit_gap_support(gaps, y, p, confidence=0.95)
    assert len(fit) == N_BUCKETS
    by_from = {e["from_hours"]: e for e in fit}
    assert by_from[0.0]["retries"] == 0 and by_from[0.0]["factor"] == 0.0  # never tried
    assert by_from[1.0]["retries"] == 10 and by_from[1.0]["factor"] == 0.0  # tried, never paid
    well = by_from[48.0]
    assert (well["retries"], well["successes"], well["expected"]) == (100, 40, 40.0)
    assert well["factor"] == pytest.approx(chi2.ppf(0.05, 80) / 2 / 40, abs=1e-4)
    assert 0.7 < well["factor"] < 1.0
    assert fit[-1]["to_hours"] == math.inf


@given(
    successes=st.integers(0, 200),
    extra=st.integers(1, 50),
    expected=st.floats(0.5, 300.0),
)
def test_factor_is_a_probability_and_grows_with_the_successes(
    successes: int, extra: int, expected: float
) -> None:
    def factor(k: int) -> float:
        n = max(k, 1) + 300
        y = np.r_[np.ones(k), np.zeros(n - k)]
        return fit_gap_support(np.full(n, 72.0), y, np.full(n, expected / n), confidence=0.95)[6][
            "factor"
        ]

    low, high = factor(successes), factor(successes + extra)
    assert 0.0 <= low <= high <= 1.0


def test_adjustment_parses_the_fit_and_refuses_a_malformed_one() -> None:
    fit = fit_gap_support(
        np.array([72.0, 72.0]), np.array([1, 0]), np.array([0.5, 0.5]), confidence=0.95
    )
    adjustment = Adjustment.from_planning({"gap_support": fit})
    assert len(adjustment.gap_factors) == N_BUCKETS
    table = adjustment.gap_table()
    assert table is not None
    assert table[72] == pytest.approx(fit[6]["factor"])
    assert Adjustment.gap_factor(np.array([2.5, 5000.0, np.nan]), table).tolist() == [
        fit[1]["factor"],
        fit[-1]["factor"],
        fit[-1]["factor"],
    ]
    assert Adjustment.from_planning({}).gap_table() is None  # bundles written before it
    with pytest.raises(ValueError, match="gap_support"):
        Adjustment.from_planning({"gap_support": fit[:3]})
    hostile: list[object] = [
        [dict(e, factor=1.5) for e in fit],
        [dict(e, factor="0.5") for e in fit],
        [dict(e, factor=True) for e in fit],
        [dict(e, factor=float("nan")) for e in fit],
        ["0.5"] * len(fit),
        {"factor": 0.5},
        [[e] for e in fit],
        fit * 1000,
    ]
    for bad in hostile:
        with pytest.raises(ValueError, match="gap_support"):
            Adjustment.from_planning({"gap_support": bad})


def _early_peak(hours: np.ndarray) -> np.ndarray:
    """0.5 in the first 12 hours after T0 (the failed attempt), 0.3 afterwards."""
    return np.where(hours < 12, 0.5, 0.3)


class SupportedCurve(CurveModel):
    """The early-peak curve with a gap support that never tried gaps under 24 hours."""

    def __init__(self) -> None:
        super().__init__(_early_peak)
        factors = [0.0 if edge < 24 else 0.9 for edge in (0.0, *GAP_EDGES_HOURS)]
        self.gap_table = Adjustment(gap_factors=tuple(factors)).gap_table()


def test_the_planner_does_not_bet_on_a_gap_the_history_never_tried() -> None:
    cons = Constraints(objective=FREE_OBJECTIVE, max_retries=1)
    req = request([(Z, FAIL, "insufficient_funds", None)])
    plain = _decide(PlannerPolicy(CurveModel(_early_peak)), req, cons)
    supported = _decide(PlannerPolicy(SupportedCurve()), req, cons)
    assert plain.retry_at is not None and supported.retry_at is not None
    assert plain.retry_at - T0 < timedelta(hours=12)  # the unsupported early peak
    assert supported.retry_at - T0 >= timedelta(hours=24)
    assert supported.success_probability == pytest.approx(0.3 * 0.9)  # the adjusted value


def test_later_planned_retries_get_the_planned_gaps_factor() -> None:
    policy = PlannerPolicy(SupportedCurve())
    cons = Constraints(objective=FREE_OBJECTIVE, max_retries=3)
    req = request([(Z, FAIL, "insufficient_funds", None)])
    assert req.now is not None
    prep = to_batch([req], nows=[req.now], constraints=cons)
    rules = [r for r, _zone in policy.rules(prep.batch, current_cards=prep.current_cards)]
    grid = rules[0].grid[None, :]
    proba = np.full(grid.shape, 0.5)
    later = np.full((2, *grid.shape), 0.4)
    next_p, later_p = policy._adjust(
        proba, later, rules[0].allowed[None, :], grid, prep.batch, rules
    )
    gap = (grid[0] - rules[0].last_attempt) / np.timedelta64(1, "h")
    assert (next_p[0][gap < 24] == 0.0).all() and (next_p[0][gap >= 24] == 0.45).all()
    assert later_p is not None
    # The later steps are planned 24 h apart (the planning gap): that bucket's factor, 0.9.
    np.testing.assert_allclose(later_p, 0.36)
