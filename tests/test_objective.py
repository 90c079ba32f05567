"""Tests of the decision objective (features.objective) and its use in the backtest metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints
from retryopt.features.objective import (
    DEFAULT_COST_PER_ATTEMPT,
    FREE_OBJECTIVE,
    Objective,
)
from retryopt.training.backtest.estimators import MetricSet, objective_for, summary_statistics


def test_defaults_and_discount() -> None:
    obj = Objective()
    assert obj.cost_per_attempt == DEFAULT_COST_PER_ATTEMPT == pytest.approx(0.12)
    assert obj.reporting_currency == "usd"
    # about 0.52 % of value lost per day of waiting: cancellations plus the time value of cash
    assert 1 - obj.daily_factor == pytest.approx(1 - 0.995 * 1.045 ** (-1 / 365))
    d = obj.discount(np.array([-1.0, 0.0, 1.0, 30.0]))
    assert d[0] == d[1] == 1.0  # before the first failure nothing is discounted
    assert d[2] == pytest.approx(obj.daily_factor)
    assert d[3] == pytest.approx(obj.daily_factor**30)
    assert np.all(FREE_OBJECTIVE.discount(np.array([0.0, 400.0])) == 1.0)


def test_amounts_convert_to_the_reporting_currency() -> None:
    obj = Objective()
    got = obj.amounts([2500, 3000], ["usd", "JPY"])
    assert got[0] == pytest.approx(25.0)
    assert got[1] == pytest.approx(3000 / 150.0)  # zero-decimal yen
    own = Objective(fx=FxRates(units_per_usd={"usd": 1.0, "kwd": 0.31}))
    assert own.amounts([1000], ["kwd"])[0] == pytest.approx(1.0 / 0.31)  # three-decimal dinar
    eur = Objective(fx=FxRates(reporting="eur"))
    assert eur.amounts([2500], ["usd"])[0] == pytest.approx(25 * 0.92)
    with pytest.raises(ValueError, match="no exchange rate for currency 'xyz'"):
        obj.amounts([1], ["xyz"])


@pytest.mark.parametrize(
    "bad",
    [
        {"cost_per_attempt": -0.01},
        {"cost_per_attempt": math.inf},
        {"daily_cancel_hazard": 1.0},
        {"annual_interest_rate": 1.5},
    ],
)
def test_invalid_objectives_are_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Objective(**bad)  # type: ignore[arg-type]


def test_constraints_with_objective_and_guardrail_are_hashable_and_checked() -> None:
    a = Constraints(guardrail_hours=(72.0, 120.0))
    b = Constraints(guardrail_hours=(72.0, 120.0))
    assert hash(a) == hash(b) and a == b  # requests are grouped by constraints
    for bad in ((), (72.0, 24.0), (-1.0,), (math.nan,)):
        with pytest.raises(ValueError, match="guardrail_hours"):
            Constraints(guardrail_hours=bad)


def test_discounted_value_metric_is_the_objective() -> None:
    """A success after 10 days pays amount x d(10) and every retry costs c."""
    obj = Objective(cost_per_attempt=0.5, daily_cancel_hazard=0.01, annual_interest_rate=0.0)
    cons, metrics = objective_for(Constraints(objective=obj), FxRates(reporting="eur"))
    assert cons.objective.reporting_currency == "eur" and metrics.objective == cons.objective
    col = metrics.names.index("discounted_value")
    reward = metrics.success_reward(np.array([2]), np.array([240.0]), np.array([20.0]))
    cost = metrics.retry_cost(np.array([2]))
    assert reward[0, col] == pytest.approx(20.0 * 0.99**10)
    assert cost[0, col] == pytest.approx(-0.5)
    # one charge: first retry failed, second succeeded on day 10
    means = (cost + cost + reward)[0]
    stats = summary_statistics(means, metrics)
    assert stats["discounted_value"] == pytest.approx(20.0 * 0.99**10 - 1.0)
    assert stats["recovered_amount"] == pytest.approx(20.0)
    assert MetricSet().names[-1] == "discounted_value"
