"""The model-free baselines (fixed schedule, uniform random) obey the planner's network rules.

Both decide on the verdicts of the same rules code as the planner (serving.policies): a hard
decline never gets a retry, Mastercard advice-code waits, quiet hours, the networks' caps, the
window, the budget and the minimum gap all hold; uniform random reports its exact propensity.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from test_golden import varied_requests
from test_rules import CARD, FAIL, T0, Z, _history, request, verdict

from retryopt.features.decisions import Constraints, RetryPolicy
from retryopt.features.localtime import local_hours
from retryopt.serving.policies import (
    FixedSchedule,
    Reason,
    StochasticPolicy,
    UniformRandom,
    charge_states,
    evaluate_rules,
)
from retryopt.serving.schemas import DecisionRequest, to_batch

T0_NS = np.datetime64(T0.replace(tzinfo=None), "ns")
HOUR = np.timedelta64(1, "h")
MASTERCARD = {**CARD, "brand": "mastercard"}
NAT = np.datetime64("NaT", "ns")


def _decide(
    policy: FixedSchedule | UniformRandom, req: DecisionRequest, cons: Constraints | None = None
) -> tuple[np.datetime64, float, str]:
    """``(retry_at, propensity, reason)`` of one request."""
    assert req.now is not None
    prep = to_batch([req], nows=[req.now], constraints=cons or Constraints())
    d = policy.decide(prep.batch, current_cards=prep.current_cards)
    return d.retry_at[0], float(d.propensity[0]), str(d.reason[0])


def _draws(req: DecisionRequest, cons: Constraints | None = None, n: int = 60) -> np.ndarray:
    """Retry times of ``n`` differently seeded uniform random policies."""
    return np.array([_decide(UniformRandom(seed), req, cons)[0] for seed in range(n)])


def _baselines() -> list[Any]:
    return [FixedSchedule((1.0, 2.0, 3.0, 4.0)), UniformRandom(0)]


def test_baselines_implement_the_protocols() -> None:
    fixed, rnd = FixedSchedule(), UniformRandom(1)
    assert isinstance(fixed, RetryPolicy) and isinstance(rnd, RetryPolicy)
    assert isinstance(rnd, StochasticPolicy) and not isinstance(fixed, StochasticPolicy)
    assert (fixed.name, rnd.name) == ("fixed:72,120,168,216", "random")
    with pytest.raises(ValueError, match="increasing"):
        FixedSchedule((72.0, 24.0))


@pytest.mark.parametrize("policy", _baselines(), ids=["fixed", "random"])
@pytest.mark.parametrize(
    ("code", "advice", "reason"),
    [
        ("lost_card", None, Reason.HARD_DECLINE),
        ("stolen_card", None, Reason.HARD_DECLINE),
        ("04", None, Reason.HARD_DECLINE),  # Visa category 1
        ("do_not_honor", "03", Reason.NETWORK_DO_NOT_RETRY),
        ("do_not_honor", "21", Reason.NETWORK_DO_NOT_RETRY),
        ("incorrect_number", None, Reason.NEVER_RETRY_CODE),
        ("expired_card", None, Reason.UPDATE_PAYMENT_METHOD),
        ("authentication_required", None, Reason.CUSTOMER_AUTHENTICATION),
    ],
)
def test_a_hard_decline_never_gets_a_retry(
    policy: FixedSchedule | UniformRandom, code: str, advice: str | None, reason: Reason
) -> None:
    card = MASTERCARD if advice else CARD
    at, propensity, why = _decide(policy, request([(Z, FAIL, code, advice)], card=card))
    assert np.isnat(at) and why == reason and propensity == 1.0
    # a later soft decline on the same card does not lift it (a stolen card stays stolen)
    later = [(Z, FAIL, code, advice), (timedelta(hours=30), FAIL, "insufficient_funds", None)]
    at, _, why = _decide(policy, request(later, card=card))
    assert np.isnat(at) and why == reason


@pytest.mark.parametrize(
    ("advice", "hours"),
    [("24", 1), ("25", 24), ("26", 48), ("27", 96), ("28", 144), ("29", 192), ("30", 240)],
)
def test_mastercard_advice_code_wait_is_respected(advice: str, hours: int) -> None:
    req = request([(Z, FAIL, "do_not_honor", advice)], card=MASTERCARD)
    earliest = T0_NS + np.timedelta64(hours, "h")
    # scheduled an hour after the first failure: moved to the first whole hour after the wait
    at, _, reason = _decide(FixedSchedule((1.0,)), req)
    assert reason == Reason.FIXED_SCHEDULE
    assert earliest <= at < earliest + HOUR
    assert (_draws(req) >= earliest).all()


def test_quiet_hours_are_respected() -> None:
    # 08:12 UTC = 03:12 in New York: an hour later is quiet (22-07 local), 07:00 local is not
    cons = Constraints(quiet_hours=(22, 7))
    req = request([(Z, FAIL, "insufficient_funds", None)])
    at, _, _ = _decide(FixedSchedule((1.0,)), req, cons)
    assert at == np.datetime64("2026-01-05T12:00", "ns")
    assert local_hours(np.array([at]), "America/New_York")[0] == 7
    hours = local_hours(_draws(req, cons, n=200), "America/New_York")
    assert ((hours >= 7) & (hours < 22)).all()
    assert len(set(hours.tolist())) > 10  # the draws spread over the allowed hours


def test_network_caps_are_respected() -> None:
    # 20 Visa reattempts on this card in the last 10 days: the first days are over the cap
    hist = _history(40, start=T0 - timedelta(days=10), step=timedelta(hours=5))
    req = request([(Z, FAIL, "insufficient_funds", None)], history=hist)
    v = verdict(req)
    first_ok = v.grid[np.flatnonzero(v.allowed)[0]]
    assert first_ok > v.grid[0] + 24 * HOUR
    at, _, _ = _decide(FixedSchedule((1.0,)), req)
    assert at == first_ok
    draws = _draws(req)
    assert np.isin(draws, v.grid[v.allowed]).all() and (draws >= first_ok).all()
    # 35 Mastercard declines in 30 days and a 48 h window: no allowed time, both stop
    over = request(
        [(Z, FAIL, "do_not_honor", None)],
        card=MASTERCARD,
        history=_history(35, start=T0 - timedelta(days=2), step=timedelta(hours=1)),
    )
    for policy in _baselines():
        at, _, why = _decide(policy, over, Constraints(window_hours=48))
        assert np.isnat(at) and why == Reason.NETWORK_LIMIT
    # 10 Mastercard declines in the last 24 h: nothing until the first leaves the 24 h window
    daily = [(timedelta(minutes=10 * i), FAIL, "do_not_honor", None) for i in range(10)]
    cons = Constraints(max_retries=20)
    hourly = FixedSchedule(tuple(float(h) for h in range(1, 21)))
    at, _, _ = _decide(hourly, request(daily, card=MASTERCARD), cons)
    assert at >= T0_NS + 24 * HOUR
    assert (_draws(request(daily, card=MASTERCARD), cons) >= T0_NS + 24 * HOUR).all()


@pytest.mark.parametrize("policy", _baselines(), ids=["fixed", "random"])
def test_window_budget_and_minimum_gap_are_respected(policy: FixedSchedule | UniformRandom) -> None:
    tries = [(timedelta(days=d), FAIL, "insufficient_funds", None) for d in range(3)]
    at, _, why = _decide(policy, request(tries), Constraints(max_retries=2))
    assert np.isnat(at) and why == Reason.BUDGET_EXHAUSTED
    late = [
        (Z, FAIL, "insufficient_funds", None),
        (timedelta(hours=40), FAIL, "do_not_honor", None),
    ]
    at, _, why = _decide(policy, request(late), Constraints(window_hours=36))
    assert np.isnat(at) and why == Reason.WINDOW_EXHAUSTED
    cons = Constraints(min_gap_hours=30, window_hours=60)
    at, _, _ = _decide(policy, request(late[:1]), cons)
    assert T0_NS + 30 * HOUR <= at <= T0_NS + 60 * HOUR


def test_fixed_schedule_takes_the_first_allowed_time_at_or_after_its_time() -> None:
    two = request(
        [(Z, FAIL, "insufficient_funds", None), (timedelta(hours=30), FAIL, "do_not_honor", None)]
    )
    # retry 2 of (24, 72): 72 h after the first failure, on the next whole hour
    at, propensity, reason = _decide(FixedSchedule((24.0, 72.0)), two)
    assert at == np.datetime64("2026-01-08T09:00", "ns") and propensity == 1.0
    assert reason == Reason.FIXED_SCHEDULE
    # a time already past: the earliest allowed time (the minimum gap after the last attempt)
    at, _, _ = _decide(FixedSchedule((1.0, 2.0)), two)
    assert at == np.datetime64("2026-01-06T16:00", "ns")  # 14:12 + 1 h, next whole hour
    # the schedule used up, or no allowed time left at or after the scheduled one: stop
    at, _, reason = _decide(FixedSchedule((24.0,)), two)
    assert np.isnat(at) and reason == Reason.SCHEDULE_DONE
    at, _, reason = _decide(FixedSchedule((1.0, 600.0)), two)
    assert np.isnat(at) and reason == Reason.WINDOW_EXHAUSTED


def test_uniform_random_reports_its_exact_propensity() -> None:
    cons = Constraints(quiet_hours=(22, 7), window_hours=72)
    req = request([(Z, FAIL, "insufficient_funds", None)])
    v = verdict(req, cons)
    n_allowed = int(v.allowed.sum())
    assert 0 < n_allowed < v.allowed.size
    assert req.now is not None
    prep = to_batch([req], nows=[req.now], constraints=cons)
    for seed in range(30):
        policy = UniformRandom(seed)
        d = policy.decide(prep.batch)
        at = d.retry_at[0]
        assert at in v.grid[v.allowed]
        assert d.propensity[0] == pytest.approx(1.0 / n_allowed)
        got = policy.action_probability(prep.batch, d.retry_at)
        assert got[0] == d.propensity[0]
        # the slot [t, t + 1 h) holding the grid time has the same probability
        inside = policy.action_probability(prep.batch, np.array([at - np.timedelta64(30, "m")]))
        assert inside[0] == d.propensity[0]
    policy = UniformRandom(0)
    quiet = v.grid[~v.allowed][0]
    for t in (quiet, NAT, v.grid[-1] + 5 * HOUR):
        assert policy.action_probability(prep.batch, np.array([t]))[0] == 0.0
    # probabilities of all grid slots sum to one
    total = sum(policy.action_probability(prep.batch, np.array([t]))[0] for t in v.grid)
    assert total == pytest.approx(1.0)


def test_uniform_random_draws_uniformly() -> None:
    req = request([(Z, FAIL, "insufficient_funds", None)])
    cons = Constraints(window_hours=10)
    v = verdict(req, cons)
    allowed = v.grid[v.allowed]
    draws = _draws(req, cons, n=1500)
    counts = np.array([(draws == t).sum() for t in allowed])
    assert counts.sum() == draws.size
    expected = draws.size / allowed.size
    assert (np.abs(counts - expected) < 5 * np.sqrt(expected)).all(), counts


def test_baselines_decide_on_the_rules_verdicts() -> None:
    """On varied charges, stops and allowed times are exactly those of the planner's rules."""
    reqs = [DecisionRequest.model_validate(r) for r in varied_requests(150, seed=5)]
    cons = Constraints(quiet_hours=(22, 7), max_retries=3)
    prep = to_batch(reqs, nows=[r.now for r in reqs if r.now is not None], constraints=cons)
    states = charge_states(prep.batch, current_cards=prep.current_cards)
    verdicts = [evaluate_rules(s, cons) for s in states]
    fixed, rnd = FixedSchedule(), UniformRandom(3)
    fd = fixed.decide(prep.batch, current_cards=prep.current_cards)
    rd = rnd.decide(prep.batch, current_cards=prep.current_cards)
    assert {v.stop for v in verdicts} == {True, False}
    for i, v in enumerate(verdicts):
        if v.stop:
            assert np.isnat(fd.retry_at[i]) and np.isnat(rd.retry_at[i])
            assert fd.reason[i] == rd.reason[i] == v.reason
            continue
        assert rd.retry_at[i] in v.grid[v.allowed]
        assert rd.propensity[i] == pytest.approx(1.0 / v.allowed.sum())
        if v.retries_used >= len(fixed.hours):
            assert np.isnat(fd.retry_at[i]) and fd.reason[i] == Reason.SCHEDULE_DONE
            continue
        assert v.first_failure is not None
        target = v.first_failure + np.timedelta64(int(fixed.hours[v.retries_used]), "h")
        ok = v.grid[v.allowed & (v.grid >= target)]
        if ok.size:
            assert fd.retry_at[i] == ok[0]
        else:
            assert np.isnat(fd.retry_at[i]) and fd.reason[i] == Reason.WINDOW_EXHAUSTED
    # the draws do not depend on the batch: each charge alone gets the same time
    for i, req in enumerate(reqs[:20]):
        assert req.now is not None
        one = to_batch([req], nows=[req.now], constraints=cons)
        alone = rnd.decide(one.batch, current_cards=one.current_cards).retry_at[0]
        assert (np.isnat(alone) and np.isnat(rd.retry_at[i])) or alone == rd.retry_at[i]


def test_baselines_give_full_decisions() -> None:
    req = request([(Z, FAIL, "insufficient_funds", None)])
    assert req.now is not None
    prep = to_batch([req], nows=[req.now], constraints=Constraints())
    (d,) = FixedSchedule((24.0,)).decide_detailed(prep.batch)
    assert d.action == "retry" and d.reason == Reason.FIXED_SCHEDULE and d.policy == "fixed:24"
    assert d.retry_at is not None and d.retry_at.tz_localize(None) == T0.replace(
        tzinfo=None
    ) + timedelta(hours=24, minutes=48)
    assert "24 h after the first failure" in d.explanation and "America/New_York" in d.explanation
    rnd = UniformRandom(2)
    (r,) = rnd.decide_detailed(prep.batch)
    assert r.retry_at is not None
    assert np.datetime64(r.retry_at.tz_localize(None), "ns") == rnd.decide(prep.batch).retry_at[0]
    done = request([(Z, FAIL, "insufficient_funds", None), (timedelta(days=1), FAIL, None, None)])
    assert done.now is not None
    prep = to_batch([done], nows=[done.now], constraints=Constraints())
    (s,) = FixedSchedule((24.0,)).decide_detailed(prep.batch)
    assert s.action == "stop" and s.reason == Reason.SCHEDULE_DONE and s.retry_at is None
