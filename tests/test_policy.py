"""Tests of the retry planner, the greedy baseline and the fallback policy (serving.policies).

The planner is tested with a small deterministic success curve implementing the
:class:`serving.policies.SuccessModel` protocol (a stand-in for the model's probabilities, so the
expected choices can be computed by hand); the API tests use a real trained bundle.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rules import FAIL, T0, Z, request

from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints, DecisionBatch, RetryPolicy
from retryopt.features.objective import FREE_OBJECTIVE, Objective
from retryopt.serving.policies import (
    CandidateScores,
    Decision,
    FallbackPolicy,
    GreedyPolicy,
    PlannerConfig,
    PlannerPolicy,
    Reason,
    plan_values,
)
from retryopt.serving.policies.guardrail import NO_DEADLINE, apply_guardrail, guardrail_deadlines
from retryopt.serving.policies.rules import RuleResult
from retryopt.serving.schemas import DecisionRequest, to_batch

T0_NS = np.datetime64(T0.replace(tzinfo=None), "ns")


class CurveModel:
    """Success probability as a function of hours since T0 (same for every charge)."""

    def __init__(self, curve: Callable[[np.ndarray], np.ndarray], version: str = "curve-1") -> None:
        self.curve = curve
        self.version = version
        self.calls = 0

    def predict_candidates(
        self, batch: DecisionBatch, candidate_times: np.ndarray
    ) -> CandidateScores:
        self.calls += 1
        hours = (candidate_times - T0_NS) / np.timedelta64(1, "h")
        proba = np.where(np.isnat(candidate_times), np.nan, self.curve(np.nan_to_num(hours)))
        return CandidateScores(proba=proba)


def early_vs_peak(hours: np.ndarray) -> np.ndarray:
    """0.5 during the first two days, a single 0.6 hour on day 15, 0.1 elsewhere."""
    p = np.full(hours.shape, 0.1)
    p[(hours >= 1) & (hours < 48)] = 0.5
    p[np.isclose(hours, 15 * 24 - 0.2, atol=0.5)] = 0.6
    return p


def _decide(
    policy: PlannerPolicy | GreedyPolicy | FallbackPolicy, req: DecisionRequest, cons: Constraints
) -> Decision:
    assert req.now is not None
    prep = to_batch([req], nows=[req.now], constraints=cons)
    return policy.decide_detailed(prep.batch, current_cards=prep.current_cards)[0]


def test_policies_implement_the_protocol() -> None:
    model = CurveModel(early_vs_peak)
    for policy in (PlannerPolicy(model), GreedyPolicy(model), FallbackPolicy()):
        assert isinstance(policy, RetryPolicy)
    assert {PlannerPolicy(model).name, GreedyPolicy(model).name, FallbackPolicy().name} == {
        "model",
        "greedy",
        "fallback",
    }


def test_planner_weighs_the_retries_left() -> None:
    """Many retries left: take the good early chance; one retry left: wait for the peak."""
    model = CurveModel(early_vs_peak)
    req = request([(Z, FAIL, "insufficient_funds", None)])
    many = _decide(PlannerPolicy(model), req, Constraints(max_retries=4))
    one = _decide(PlannerPolicy(model), req, Constraints(max_retries=1))
    greedy = _decide(GreedyPolicy(model), req, Constraints(max_retries=4))
    assert many.action == "retry" and many.success_probability == pytest.approx(0.5)
    assert one.action == "retry" and one.success_probability == pytest.approx(0.6)
    assert greedy.success_probability == pytest.approx(0.6)
    assert greedy.reason == Reason.GREEDY_ARGMAX and many.reason == Reason.MODEL_OPTIMUM
    assert many.retry_at is not None and one.retry_at is not None
    assert many.retry_at < one.retry_at


def test_planner_output_fields() -> None:
    model = CurveModel(early_vs_peak)
    d = _decide(
        PlannerPolicy(model), request([(Z, FAIL, "insufficient_funds", None)]), Constraints()
    )
    assert d.model_version == "curve-1" and d.policy == "model"
    assert len(d.alternatives) == 3
    assert d.retry_at is not None
    times = [d.retry_at] + [a.retry_at for a in d.alternatives]
    gaps = [abs((a - b).total_seconds()) for a, b in itertools.combinations(times, 2)]
    assert min(gaps) >= 6 * 3600
    assert "planned over 4 retries left" in d.explanation
    assert "America/New_York" in d.explanation


def test_cost_per_attempt_can_stop() -> None:
    model = CurveModel(lambda h: np.full(h.shape, 0.01))
    d = _decide(
        PlannerPolicy(model),
        request([(Z, FAIL, "insufficient_funds", None)]),
        Constraints(objective=Objective(cost_per_attempt=1.0)),
    )
    assert d.action == "stop" and d.reason == Reason.NOT_WORTH_AN_ATTEMPT
    cheap = _decide(
        PlannerPolicy(model),
        request([(Z, FAIL, "insufficient_funds", None)]),
        Constraints(objective=Objective(cost_per_attempt=0.01)),
    )
    assert cheap.action == "retry"


def test_cancel_hazard_pulls_the_retry_earlier() -> None:
    def late_better(h: np.ndarray) -> np.ndarray:
        return np.clip(0.3 + h / 504 * 0.3, 0, 1)

    req = request([(Z, FAIL, "insufficient_funds", None)])
    plain = _decide(PlannerPolicy(CurveModel(late_better)), req, Constraints(max_retries=1))
    disc = _decide(
        PlannerPolicy(CurveModel(late_better)),
        req,
        Constraints(max_retries=1, objective=Objective(daily_cancel_hazard=0.2)),
    )
    assert disc.retry_at is not None and plain.retry_at is not None
    assert disc.retry_at < plain.retry_at


def test_rules_stop_before_the_model_is_called() -> None:
    model = CurveModel(early_vs_peak)
    d = _decide(PlannerPolicy(model), request([(Z, FAIL, "stolen_card", None)]), Constraints())
    assert d.action == "stop" and d.reason == Reason.HARD_DECLINE
    assert d.action_required == "update_payment_method"
    assert model.calls == 0


def test_decide_batch_matches_single_decisions() -> None:
    model = CurveModel(early_vs_peak)
    policy = PlannerPolicy(model)
    cons = Constraints(max_retries=3)
    reqs = []
    for k, (code, n_att) in enumerate(
        [("insufficient_funds", 1), ("lost_card", 1), ("do_not_honor", 3)]
    ):
        r = request([(timedelta(hours=6 * i), FAIL, code, None) for i in range(n_att)])
        body = r.model_dump(mode="json")
        body["charge"]["charge_id"] = f"ch_{k}"
        body["charge"]["customer_id"] = f"cus_{k}"
        reqs.append(DecisionRequest.model_validate(body))
    prep = to_batch(reqs, nows=[r.now for r in reqs], constraints=cons)  # type: ignore[misc]
    batch_out = policy.decide(prep.batch, current_cards=prep.current_cards)
    assert batch_out.reason.tolist()[1] == Reason.HARD_DECLINE
    assert np.isnat(batch_out.retry_at[1])
    for k, r in enumerate(reqs):
        single = _decide(policy, r, cons)
        expected = (
            np.datetime64("NaT")
            if single.retry_at is None
            else np.datetime64(single.retry_at.tz_localize(None), "ns")
        )
        assert batch_out.retry_at[k] == expected or (
            np.isnat(expected) and np.isnat(batch_out.retry_at[k])
        )
    assert (batch_out.propensity == 1.0).all()


def _brute_force(
    p: np.ndarray, allowed: np.ndarray, r: int, amount: float, cost: float, gap: int, decay: float
) -> np.ndarray:
    m = len(p)
    best = np.full(m, -np.inf)
    for first in range(m):
        if not allowed[first]:
            continue
        for length in range(1, r + 1):
            for rest in itertools.combinations(range(first + 1, m), length - 1):
                seq = (first, *rest)
                if any(b - a < gap for a, b in itertools.pairwise(seq)) or not all(
                    allowed[j] for j in seq
                ):
                    continue
                value, alive = 0.0, 1.0
                for n_prior, j in enumerate(seq):
                    q = p[j] * decay**n_prior
                    value += alive * (q * amount - cost)
                    alive *= 1 - q
                best[first] = max(best[first], value)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dynamic_programme_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, r, gap = 8, 3, 2
    p = rng.uniform(0, 0.8, m)
    allowed = rng.uniform(size=m) > 0.2
    cost = float(rng.uniform(0, 20))
    got = plan_values(
        p[None, :],
        allowed[None, :],
        retries_left=np.array([r]),
        amount=np.array([100.0]),
        discount=np.ones((1, m)),
        cost=cost,
        gap_steps=gap,
        decay=0.7,
    )[0]
    want = _brute_force(p, allowed, r, 100.0, cost, gap, 0.7)
    np.testing.assert_allclose(got, want)


def test_fallback_follows_the_ladder() -> None:
    policy = FallbackPolicy(config=PlannerConfig(fallback_ladder_hours=(24.0, 72.0)))
    d1 = _decide(policy, request([(Z, FAIL, "insufficient_funds", None)]), Constraints())
    assert d1.action == "retry" and d1.policy == "fallback" and d1.success_probability is None
    assert d1.retry_at == (T0 + timedelta(hours=24)).replace(minute=0) + timedelta(hours=1)
    d2 = _decide(
        policy,
        request(
            [
                (Z, FAIL, "insufficient_funds", None),
                (timedelta(hours=30), FAIL, "insufficient_funds", None),
            ]
        ),
        Constraints(),
    )
    assert d2.retry_at == (T0 + timedelta(hours=72)).replace(minute=0) + timedelta(hours=1)
    stop = _decide(policy, request([(Z, FAIL, "expired_card", None)]), Constraints())
    assert stop.action == "stop" and stop.action_required == "update_payment_method"


def plateau_late(hours: np.ndarray) -> np.ndarray:
    """0.3 from day 2 to day 8, a 0.5 plateau from day 10 to day 11, 0.05 elsewhere."""
    p = np.full(hours.shape, 0.05)
    p[(hours >= 48) & (hours < 8 * 24)] = 0.3
    p[(hours >= 10 * 24) & (hours < 11 * 24)] = 0.5
    return p


def test_planning_gap_keeps_the_plan_from_counting_on_the_next_hour() -> None:
    """With 4 retries and a one-day plateau, a 1 h planning gap plans all four retries on the
    plateau and so waits for it; a 24 h gap (a failure means the funds are still short today)
    can place only one retry there and takes the early days first."""
    model = CurveModel(plateau_late)
    req = request([(Z, FAIL, "insufficient_funds", None)])
    cons = Constraints(max_retries=4)
    hourly = _decide(PlannerPolicy(model, config=PlannerConfig(planning_gap_hours=0)), req, cons)
    daily = _decide(PlannerPolicy(model), req, cons)
    assert PlannerConfig().planning_gap_hours == 24.0
    assert hourly.success_probability == pytest.approx(0.5)
    assert daily.success_probability == pytest.approx(0.3)
    assert daily.retry_at is not None and hourly.retry_at is not None
    assert daily.retry_at < hourly.retry_at
    # with one retry left there is nothing to plan after it: the plateau
    one_left = _decide(PlannerPolicy(model), req, Constraints(max_retries=1))
    assert one_left.success_probability == pytest.approx(0.5)
    with pytest.raises(ValueError, match="planning_gap_hours"):
        PlannerConfig(planning_gap_hours=-1)


def _with_charge(req: DecisionRequest, **changes: object) -> DecisionRequest:
    return req.model_copy(update={"charge": req.charge.model_copy(update=changes)})


def test_not_worth_an_attempt_with_the_default_costs() -> None:
    """A tiny amount or a hopeless retry is not worth the default 0.12 USD; a normal one is."""
    req = request([(Z, FAIL, "insufficient_funds", None)])
    fair = CurveModel(lambda h: np.full(h.shape, 0.3))
    normal = _decide(PlannerPolicy(fair), req, Constraints())
    assert normal.action == "retry" and normal.reason == Reason.MODEL_OPTIMUM
    assert normal.attempt_cost == pytest.approx(0.12) and normal.value_currency == "usd"
    assert normal.expected_value is not None and normal.expected_value > 0.12

    tiny = _decide(PlannerPolicy(fair), _with_charge(req, amount=20), Constraints())  # $0.20
    assert tiny.action == "stop" and tiny.reason == Reason.NOT_WORTH_AN_ATTEMPT
    assert tiny.attempt_cost == pytest.approx(0.12) and tiny.value_currency == "usd"
    # the best retry's expected value: at most p x amount = 0.06 USD, below the cost
    assert tiny.expected_value is not None and 0 < tiny.expected_value <= 0.3 * 0.20 + 1e-9
    assert "0.1200 USD" in tiny.explanation

    hopeless = CurveModel(lambda h: np.full(h.shape, 0.002))  # 25 USD x 0.002 = 0.05 USD
    d = _decide(PlannerPolicy(hopeless), req, Constraints())
    assert d.action == "stop" and d.reason == Reason.NOT_WORTH_AN_ATTEMPT
    # without costs (the objective before issue 14) the same hopeless retry is spent
    free = _decide(PlannerPolicy(hopeless), req, Constraints(objective=FREE_OBJECTIVE))
    assert free.action == "retry"


def test_amounts_are_valued_in_the_reporting_currency() -> None:
    """2,500 yen is about 17 USD at the reference rates, 0.25 USD at a merchant's odd rate."""
    req = _with_charge(request([(Z, FAIL, "insufficient_funds", None)]), currency="jpy")
    model = CurveModel(lambda h: np.full(h.shape, 0.3))
    assert _decide(PlannerPolicy(model), req, Constraints()).action == "retry"
    own = Objective(fx=FxRates(units_per_usd={"usd": 1.0, "jpy": 10_000.0}))
    d = _decide(PlannerPolicy(model), req, Constraints(objective=own))
    assert d.action == "stop" and d.reason == Reason.NOT_WORTH_AN_ATTEMPT


def _ladder_deadline(req: DecisionRequest, ladder: tuple[float, ...], policy: PlannerPolicy) -> Any:
    """The guardrail's deadline (or the earliest allowed time when none is allowed by it)."""
    assert req.now is not None
    prep = to_batch([req], nows=[req.now], constraints=Constraints())
    rule = policy.rules(prep.batch, current_cards=prep.current_cards)[0][0]
    if rule.stop:
        return None, None
    assert rule.first_failure is not None and rule.last_attempt is not None
    last_h = (rule.last_attempt - rule.first_failure) / np.timedelta64(1, "h")
    steps = [h for h in ladder if h > last_h]
    earliest = rule.grid[rule.allowed][0]
    deadline = None if not steps else rule.first_failure + np.timedelta64(int(steps[0] * 3600), "s")
    return deadline, earliest


@settings(max_examples=60, deadline=None)
@given(
    peak_day=st.floats(min_value=0.5, max_value=20.0),
    failures=st.lists(st.integers(min_value=1, max_value=200), min_size=0, max_size=3),
    ladder=st.lists(st.integers(min_value=1, max_value=480), min_size=1, max_size=5, unique=True),
    code=st.sampled_from(["insufficient_funds", "do_not_honor", "generic_decline", "51"]),
    advice=st.sampled_from([None, "24", "25", "26"]),
)
def test_guardrail_never_retries_later_than_the_ladder(
    peak_day: float, failures: list[int], ladder: list[int], code: str, advice: str | None
) -> None:
    """Over random charges and ladders: the retry is no later than the ladder's next step.

    (or the earliest time the rules allow, when they allow none by then); a pulled-forward retry
    leaves the step in place. The model prefers a late peak, so without the floor it waits.
    """
    steps = tuple(float(h) for h in sorted(ladder))
    attempts = [(Z, FAIL, code, advice)]
    t = timedelta(0)
    for gap in failures:
        t += timedelta(hours=gap)
        attempts.append((t, FAIL, code, advice))

    def late_peak(h: np.ndarray) -> np.ndarray:
        return 0.05 + 0.5 * np.exp(-(((h / 24.0) - peak_day) ** 2))

    req = request(attempts, now=t + timedelta(minutes=5))
    policy = PlannerPolicy(CurveModel(late_peak), guardrail_hours=steps)
    d = _decide(policy, req, Constraints())
    deadline, earliest = _ladder_deadline(req, steps, policy)
    if d.action != "retry" or deadline is None:
        return
    assert d.retry_at is not None
    chosen = np.datetime64(d.retry_at.tz_convert("UTC").tz_localize(None).as_unit("ns"))
    assert chosen <= max(deadline, earliest)
    # the same ladder given as a request constraint acts the same
    same = _decide(PlannerPolicy(CurveModel(late_peak)), req, Constraints(guardrail_hours=steps))
    assert same.retry_at == d.retry_at


def test_guardrail_pulls_a_late_choice_forward_and_keeps_the_step() -> None:
    """Free, the planner waits for a day-15 peak; with 72,120,... it retries by hour 72; after a
    retry pulled forward to hour 30, the 72 h step is still the next deadline."""
    model = CurveModel(early_vs_peak)
    req = request([(Z, FAIL, "insufficient_funds", None)])
    one = Constraints(max_retries=1)
    free = _decide(PlannerPolicy(model), req, one)
    ladder = (72.0, 120.0, 168.0, 216.0)
    floored = _decide(PlannerPolicy(model, guardrail_hours=ladder), req, one)
    assert free.retry_at is not None and floored.retry_at is not None
    assert free.retry_at - T0 > timedelta(hours=300)
    assert floored.retry_at - T0 <= timedelta(hours=72)
    later = request(
        [(Z, FAIL, "insufficient_funds", None), (timedelta(hours=30), FAIL, "51", None)],
        now=timedelta(hours=30, minutes=1),
    )
    again = _decide(PlannerPolicy(model, guardrail_hours=ladder), later, Constraints())
    assert again.retry_at is not None and again.retry_at - T0 <= timedelta(hours=72)


def test_guardrail_deadline_and_mask() -> None:
    """The deadline is the first step after the last attempt; no allowed time by then keeps the
    earliest allowed time only."""
    t0 = np.datetime64("2026-01-05T08:00", "ns")
    hour = np.timedelta64(1, "h")
    rule = RuleResult(charge_id="c", stop=False, first_failure=t0, last_attempt=t0 + 80 * hour)
    early = RuleResult(charge_id="e", stop=False, first_failure=t0, last_attempt=t0 + 30 * hour)
    done = RuleResult(charge_id="d", stop=False, first_failure=t0, last_attempt=t0 + 300 * hour)
    deadlines = guardrail_deadlines([rule, early, done], (72.0, 120.0, 168.0))
    assert deadlines[0] == (t0 + 120 * hour).astype(np.int64)
    assert deadlines[1] == (t0 + 72 * hour).astype(np.int64)  # the unused step stays
    assert deadlines[2] == NO_DEADLINE
    grid = (t0 + np.arange(100, 140)[None, :] * hour).repeat(2, axis=0)
    allowed = np.ones(grid.shape, dtype=bool)
    allowed[1, :] = False
    allowed[1, 30:] = True  # only hours 130+ allowed for the second row
    deadline = np.array([(t0 + 110 * hour).astype(np.int64)] * 2)
    out = apply_guardrail(grid, allowed, deadline)
    assert out[0].sum() == 11 and out[0, :11].all()  # hours 100..110
    assert out[1].sum() == 1 and out[1, 30]  # the earliest allowed time
