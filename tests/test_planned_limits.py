"""Issue 14: planned (hypothetically failed) retries respect the networks' caps and advice waits.

- ``plan_values`` with per-level allowed masks and per-charge gaps equals a brute force over
  every retry sequence;
- ``features.advance`` with one gap per row equals one call per row;
- the rules expose the cap room and the Mastercard advice wait the plan needs;
- behaviour: a Visa card one reattempt below its 30-day cap, or a Mastercard decline with a
  10-day advice wait, is planned with exactly the later retries the rules will allow.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import numpy as np
import pytest
from test_planning_model import SPEC, _row
from test_policy import CurveModel, _decide
from test_rules import CARD, FAIL, T0, Z, _history, request, verdict

from retryopt.features.advance import advance_after_failures, planned_within
from retryopt.features.decisions import Constraints
from retryopt.features.objective import Objective
from retryopt.serving.policies import PlannerConfig, PlannerPolicy, plan_values
from retryopt.serving.policies.planner import _later_allowed

NO_DISCOUNT = Objective(cost_per_attempt=0.12, daily_cancel_hazard=0.0, annual_interest_rate=0.0)
FLAT = PlannerConfig(later_steps="decay", later_attempt_decay=1.0)


def _brute_force(
    p: np.ndarray, masks: np.ndarray, r: int, amount: float, cost: float, gap: int
) -> np.ndarray:
    """Best value of a first retry at each candidate; ``masks[s]`` = allowed after s failures."""
    m = len(p)
    best = np.full(m, -np.inf)
    for first in range(m):
        for length in range(1, r + 1):
            for rest in itertools.combinations(range(first + 1, m), length - 1):
                seq = (first, *rest)
                if any(b - a < gap for a, b in itertools.pairwise(seq)):
                    continue
                if not all(masks[s][j] for s, j in enumerate(seq)):
                    continue
                value, alive = 0.0, 1.0
                for j in seq:
                    value += alive * (p[j] * amount - cost)
                    alive *= 1 - p[j]
                best[first] = max(best[first], value)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_plan_values_with_level_masks_and_row_gaps_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m, r = 3, 8, 3
    p = rng.uniform(0, 0.8, (n, m))
    masks = rng.uniform(size=(r, n, m)) > 0.3
    masks[1:] &= masks[0]  # a later retry is only allowed where the rules allow one at all
    gaps = np.array([1, 2, 3])
    cost = float(rng.uniform(0, 20))
    got = plan_values(
        p,
        masks[0],
        retries_left=np.full(n, r),
        amount=np.full(n, 100.0),
        discount=np.ones((n, m)),
        cost=cost,
        gap_steps=gaps,
        decay=1.0,
        later_proba=np.broadcast_to(p, (r - 1, n, m)),
        later_allowed=masks[1:],
    )
    for i in range(n):
        want = _brute_force(p[i], masks[:, i], r, 100.0, cost, int(gaps[i]))
        np.testing.assert_allclose(got[i], want)


def test_advance_with_one_gap_per_row_equals_one_call_per_row() -> None:
    X = np.vstack([_row(), _row(), _row()])
    gaps = np.array([6.0, 24.0, 240.0])
    both = advance_after_failures(X, SPEC, failures=3, gap_hours=gaps, next_code={})
    for i, gap in enumerate(gaps):
        one = advance_after_failures(X[i : i + 1], SPEC, failures=3, gap_hours=gap, next_code={})
        np.testing.assert_array_equal(both[i : i + 1], one)
    np.testing.assert_array_equal(planned_within(3, gaps, 24.0), [3.0, 0.0, 0.0])
    np.testing.assert_array_equal(planned_within(3, gaps, 720.0), [3.0, 3.0, 2.0])


def test_rules_give_the_plan_its_cap_room_and_advice_wait() -> None:
    # 38 history attempts on 19 charges in the last 10 days: 19 Visa reattempts (cap 20).
    near_cap = verdict(
        request(
            [(Z, FAIL, "insufficient_funds", None)],
            history=_history(38, start=T0 - timedelta(days=10), step=timedelta(hours=5)),
        )
    )
    assert not near_cap.stop and near_cap.allowed.all()
    assert near_cap.cap_room_30d is not None and near_cap.cap_room_24h is not None
    assert near_cap.cap_room_30d[0] == 1
    later = _later_allowed(near_cap.allowed[None], [near_cap], np.array([24.0]))
    assert later is not None and later.shape == (3, 1, near_cap.grid.size)
    # After one planned failure the card is at 20 reattempts until the history ages out.
    assert not later[0, 0, 0] and later[0, 0, -1]
    fresh = verdict(request([(Z, FAIL, "insufficient_funds", None)]))
    assert fresh.cap_room_30d is None and fresh.advice_wait_hours == 0.0
    assert _later_allowed(fresh.allowed[None], [fresh], np.array([24.0])) is None
    mc = {**CARD, "brand": "mastercard"}
    advised = verdict(request([(Z, FAIL, "do_not_honor", "30")], card=mc))
    assert advised.advice_wait_hours == 240.0


def test_the_plan_counts_on_no_retry_the_visa_cap_forbids() -> None:
    p = 0.3
    model = CurveModel(lambda h: np.full(h.shape, p))
    cons = Constraints(objective=NO_DISCOUNT, max_retries=4, window_hours=24 * 15)
    hist = _history(38, start=T0 - timedelta(days=10), step=timedelta(hours=5))
    capped = _decide(
        PlannerPolicy(model, config=FLAT),
        request([(Z, FAIL, "insufficient_funds", None)], history=hist),
        cons,
    )
    # One reattempt left under the cap for the whole window: the plan is that one retry.
    assert capped.action == "retry"
    assert capped.expected_value == pytest.approx(p * 25.0 - 0.12, abs=1e-4)
    other_card = _history(38, start=T0 - timedelta(days=10), step=timedelta(hours=5), card_id="x")
    free = _decide(
        PlannerPolicy(model, config=FLAT),
        request([(Z, FAIL, "insufficient_funds", None)], history=other_card),
        cons,
    )
    value = 0.0
    for k in range(4):
        value += (1 - p) ** k * (p * 25.0 - 0.12)
    assert free.expected_value == pytest.approx(value, abs=1e-4)


def test_the_plan_spaces_later_retries_by_the_advice_wait() -> None:
    """Mastercard advice 30 (retry after 10 days): in 21 days the plan holds two retries."""
    p = 0.3
    model = CurveModel(lambda h: np.full(h.shape, p))
    mc = {**CARD, "brand": "mastercard"}
    cons = Constraints(objective=NO_DISCOUNT, max_retries=4)
    d = _decide(
        PlannerPolicy(model, config=FLAT),
        request([(Z, FAIL, "do_not_honor", "30")], card=mc),
        cons,
    )
    assert d.action == "retry" and d.retry_at is not None
    assert d.retry_at >= T0 + timedelta(days=10)
    assert d.expected_value == pytest.approx(
        p * 25.0 - 0.12 + (1 - p) * (p * 25.0 - 0.12), abs=1e-4
    )
    # Without the advice code the same charge plans all four retries.
    plain = _decide(
        PlannerPolicy(model, config=FLAT), request([(Z, FAIL, "do_not_honor", None)], card=mc), cons
    )
    assert plain.expected_value is not None and d.expected_value is not None
    assert plain.expected_value > d.expected_value + 1.0
