"""Tests of the network and merchant retry rules (serving.policies.rules, .grid, .caps)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from retryopt.features.decisions import Constraints
from retryopt.features.localtime import local_hours
from retryopt.serving.policies import (
    CardRef,
    ChargeState,
    Reason,
    RuleResult,
    charge_states,
    evaluate_rules,
    evaluate_rules_batch,
)
from retryopt.serving.schemas import DecisionRequest, to_batch

T0 = datetime(2026, 1, 5, 8, 12, tzinfo=UTC)
CARD: dict[str, Any] = {
    "brand": "visa",
    "funding": "debit",
    "country": "US",
    "added_at": "2025-03-02T10:00:00Z",
    "exp_month": 4,
    "exp_year": 2028,
    "card_id": "card_1",
}


def request(
    attempts: Sequence[tuple[timedelta, str, str | None, str | None]],
    *,
    card: dict[str, Any] | None = None,
    attempt_cards: list[dict[str, Any] | None] | None = None,
    now: timedelta | None = None,
    history: list[dict[str, Any]] | None = None,
    zone: str | None = "America/New_York",
) -> DecisionRequest:
    """A decision request from (offset from T0, outcome, decline code, advice code) tuples."""
    rows = []
    for i, (dt, outcome, code, advice) in enumerate(attempts):
        row: dict[str, Any] = {
            "attempted_at": (T0 + dt).isoformat(),
            "outcome": outcome,
            "decline_code": code,
            "network_advice_code": advice,
        }
        if attempt_cards and attempt_cards[i] is not None:
            row["card"] = attempt_cards[i]
        rows.append(row)
    last = T0 + attempts[-1][0]
    body: dict[str, Any] = {
        "charge": {
            "charge_id": "ch_1",
            "customer_id": "cus_1",
            "amount": 2500,
            "currency": "usd",
            "card": card or CARD,
            "customer_timezone": zone,
        },
        "attempts": rows,
        "customer_history": history,
        "now": (last + (now or timedelta(minutes=1))).isoformat(),
    }
    return DecisionRequest.model_validate(body)


def verdict(req: DecisionRequest, constraints: Constraints | None = None) -> RuleResult:
    """Run the rules on one request."""
    cons = constraints or Constraints()
    assert req.now is not None
    prep = to_batch([req], nows=[req.now], constraints=cons)
    states = charge_states(prep.batch, current_cards=prep.current_cards)
    return evaluate_rules(states[0], cons)


FAIL = "failed"
Z = timedelta(0)


@pytest.mark.parametrize(
    ("code", "advice", "reason", "action"),
    [
        ("lost_card", None, Reason.HARD_DECLINE, "update_payment_method"),
        ("stolen_card", None, Reason.HARD_DECLINE, "update_payment_method"),
        ("pickup_card", None, Reason.HARD_DECLINE, "update_payment_method"),
        ("fraudulent", None, Reason.HARD_DECLINE, "update_payment_method"),
        ("04", None, Reason.HARD_DECLINE, "update_payment_method"),  # Visa category 1
        ("do_not_honor", "03", Reason.NETWORK_DO_NOT_RETRY, None),
        ("do_not_honor", "21", Reason.NETWORK_DO_NOT_RETRY, None),
        ("incorrect_number", None, Reason.NEVER_RETRY_CODE, "update_payment_method"),
        ("revocation_of_authorization", None, Reason.HARD_DECLINE, "contact_customer"),
        ("expired_card", None, Reason.UPDATE_PAYMENT_METHOD, "update_payment_method"),
        (
            "authentication_required",
            None,
            Reason.CUSTOMER_AUTHENTICATION,
            "customer_authentication",
        ),
    ],
)
def test_declines_that_stop(
    code: str, advice: str | None, reason: Reason, action: str | None
) -> None:
    card = {**CARD, "brand": "mastercard"} if advice else CARD
    v = verdict(request([(Z, FAIL, code, advice)], card=card))
    assert v.stop
    assert v.reason == reason
    assert v.source
    if action is not None:
        assert v.action_required == action
    else:
        assert v.action_required  # every stop after a hard decline tells the billing service why


def test_account_closed_family_is_hard() -> None:
    v = verdict(request([(Z, FAIL, "14", None)]))  # Visa category 1: invalid account number
    assert v.stop and v.reason == Reason.HARD_DECLINE


@pytest.mark.parametrize("code", ["lost_card", "incorrect_number", "expired_card"])
def test_card_change_lifts_card_bound_stops(code: str) -> None:
    old = {**CARD, "card_id": "card_old"}
    v = verdict(request([(Z, FAIL, code, None)], attempt_cards=[old]))
    assert not v.stop
    assert v.allowed.any()


def test_expiry_change_without_card_id_counts_as_new_card() -> None:
    old = {k: v for k, v in CARD.items() if k != "card_id"}
    new = {**old, "exp_year": 2030}
    v = verdict(request([(Z, FAIL, "expired_card", None)], card=new, attempt_cards=[old]))
    assert not v.stop
    same = verdict(request([(Z, FAIL, "expired_card", None)], card=old, attempt_cards=[old]))
    assert same.stop and same.reason == Reason.UPDATE_PAYMENT_METHOD


def test_unknown_code_retries_with_family_unknown() -> None:
    v = verdict(request([(Z, FAIL, "zz_brand_new_code", None)]))
    assert not v.stop
    assert v.decline_family == "unknown"


def test_soft_decline_grid_respects_gap_and_window() -> None:
    cons = Constraints(min_gap_hours=5, window_hours=48)
    v = verdict(request([(Z, FAIL, "insufficient_funds", None)]), cons)
    assert not v.stop
    first = T0 + timedelta(hours=5)
    grid = v.grid.astype("datetime64[ns]")
    assert grid[0] >= np.datetime64(first.replace(tzinfo=None), "ns")
    assert grid[-1] <= np.datetime64((T0 + timedelta(hours=48)).replace(tzinfo=None), "ns")
    assert v.retries_left == 4


@pytest.mark.parametrize(("advice", "hours"), [("24", 1), ("25", 24), ("27", 96), ("30", 240)])
def test_mastercard_advice_sets_earliest_time(advice: str, hours: int) -> None:
    card = {**CARD, "brand": "mastercard"}
    v = verdict(request([(Z, FAIL, "do_not_honor", advice)], card=card))
    assert not v.stop
    earliest = np.datetime64((T0 + timedelta(hours=hours)).replace(tzinfo=None), "ns")
    assert v.grid[0] >= earliest
    assert v.grid[0] - earliest < np.timedelta64(1, "h")


def test_budget_exhausted() -> None:
    attempts = [(timedelta(days=d), FAIL, "insufficient_funds", None) for d in range(5)]
    v = verdict(request(attempts), Constraints(max_retries=4))
    assert v.stop and v.reason == Reason.BUDGET_EXHAUSTED


def test_window_exhausted() -> None:
    attempts = [(Z, FAIL, "insufficient_funds", None)]
    v = verdict(request(attempts, now=timedelta(hours=30)), Constraints(window_hours=24))
    assert v.stop and v.reason == Reason.WINDOW_EXHAUSTED


def test_succeeded_charge_stops() -> None:
    v = verdict(
        request(
            [(Z, FAIL, "insufficient_funds", None), (timedelta(days=1), "succeeded", None, None)]
        )
    )
    assert v.stop and v.reason == Reason.CHARGE_SUCCEEDED


def test_quiet_hours_are_local_time() -> None:
    cons = Constraints(quiet_hours=(22, 7))
    v = verdict(request([(Z, FAIL, "insufficient_funds", None)]), cons)
    hours = local_hours(v.grid[v.allowed], "America/New_York")
    assert ((hours >= 7) & (hours < 22)).all()
    assert v.excluded[Reason.QUIET_HOURS] > 0
    all_quiet = verdict(
        request([(Z, FAIL, "insufficient_funds", None)]),
        Constraints(quiet_hours=(0, 0), window_hours=5),
    )
    # (0, 0) is an empty quiet window, not a full day
    assert not all_quiet.stop


def test_quiet_hours_can_block_everything() -> None:
    # Window of 3 h starting 08:12 UTC = 03:12 New York; quiet 00-07 local -> nothing allowed.
    v = verdict(
        request([(Z, FAIL, "insufficient_funds", None)]),
        Constraints(quiet_hours=(0, 7), window_hours=3),
    )
    assert v.stop and v.reason == Reason.QUIET_HOURS


def _history(
    n: int, *, start: datetime, step: timedelta, card_id: str = "card_1"
) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        rows.append(
            {
                "charge_id": f"ch_old_{i // 2}",
                "attempted_at": (start + i * step).isoformat(),
                "outcome": "failed",
                "decline_code": "insufficient_funds",
                "card_id": card_id,
            }
        )
    return rows


def test_visa_reattempt_cap_counts_history_of_the_same_card() -> None:
    # 40 history attempts on 20 charges: 20 of them are reattempts, all in the last 10 days.
    hist = _history(40, start=T0 - timedelta(days=10), step=timedelta(hours=5))
    v = verdict(request([(Z, FAIL, "insufficient_funds", None)], history=hist))
    assert not v.stop
    assert v.excluded[Reason.NETWORK_LIMIT] > 0
    # Early candidates (20 reattempts within 30 days) are blocked, later ones reopen.
    assert not v.allowed[0]
    assert v.allowed[-1]
    other = verdict(
        request(
            [(Z, FAIL, "insufficient_funds", None)],
            history=_history(
                40, start=T0 - timedelta(days=10), step=timedelta(hours=5), card_id="x"
            ),
        )
    )
    assert other.excluded[Reason.NETWORK_LIMIT] == 0


def test_mastercard_daily_decline_cap() -> None:
    card = {**CARD, "brand": "mastercard"}
    attempts = [(timedelta(minutes=10 * i), FAIL, "do_not_honor", None) for i in range(10)]
    v = verdict(request(attempts, card=card), Constraints(max_retries=20))
    assert not v.stop
    # 10 declines in the last 24 h: blocked until the first of them leaves the window.
    first_ok = v.grid[np.flatnonzero(v.allowed)[0]]
    assert first_ok >= np.datetime64((T0 + timedelta(hours=24)).replace(tzinfo=None), "ns")


def test_mastercard_monthly_decline_cap_can_stop() -> None:
    card = {**CARD, "brand": "mastercard"}
    hist = _history(35, start=T0 - timedelta(days=2), step=timedelta(hours=1))
    v = verdict(
        request([(Z, FAIL, "do_not_honor", None)], card=card, history=hist),
        Constraints(window_hours=48),
    )
    assert v.stop and v.reason == Reason.NETWORK_LIMIT


def test_history_after_now_is_ignored() -> None:
    hist = _history(40, start=T0 + timedelta(hours=2), step=timedelta(minutes=1))
    v = verdict(request([(Z, FAIL, "insufficient_funds", None)], history=hist))
    assert v.excluded[Reason.NETWORK_LIMIT] == 0


def test_card_ref_identity() -> None:
    a = CardRef(brand="visa", card_id="c1", exp_month=1, exp_year=2030)
    assert a.same_as(CardRef(brand="visa", card_id="c1", exp_month=2, exp_year=2031))
    assert not a.same_as(CardRef(brand="visa", card_id="c2", exp_month=1, exp_year=2030))
    assert CardRef(brand="visa", exp_month=1, exp_year=2030).same_as(
        CardRef(brand="visa", card_id="c9", exp_month=1, exp_year=2030)
    )


def test_local_hours_across_dst() -> None:
    times = np.array(["2026-03-08T06:00", "2026-03-08T08:00"], dtype="datetime64[ns]")
    assert local_hours(times, "America/New_York").tolist() == [1, 4]


# --- the batch path (evaluate_rules_batch) equals the per-charge path -------------------------

_CODES = (
    "insufficient_funds",
    "do_not_honor",
    "generic_decline",
    "expired_card",
    "stolen_card",
    "authentication_required",
    "card_velocity_exceeded",
    "try_again_later",
    "unknown_code_xyz",
    None,
)
_ADVICE = (None, None, None, "01", "03", "21", "24", "25", "26", "27", "28", "29", "30")
_ZONES = ("UTC", "America/New_York", "Europe/Berlin", "Australia/Sydney", "Asia/Kolkata")
_BRANDS = ("visa", "mastercard", "amex", "Visa", "discover")


def _random_state(rng: np.random.Generator, i: int) -> ChargeState:
    """A random failed (or succeeded) charge with random card events, around DST changes."""
    base = np.datetime64("2026-03-01T00:00", "ns") + np.timedelta64(
        int(rng.integers(0, 300 * 24 * 60)), "m"
    )
    n = int(rng.integers(1, 5))
    gaps = np.cumsum(rng.integers(0, 72 * 60, n)).astype("timedelta64[m]")
    times = (base + gaps).astype("datetime64[ns]")
    outcomes = ["failed"] * n
    if rng.random() < 0.05:
        outcomes[-1] = "succeeded"
    brand = str(rng.choice(_BRANDS))
    card = CardRef(brand=brand.lower(), card_id=f"card_{i}", exp_month=4, exp_year=2028)
    other = CardRef(brand=brand.lower(), card_id=f"card_{i}_new", exp_month=5, exp_year=2030)
    cards = tuple(card if rng.random() < 0.9 else other for _ in range(n))
    current = card if rng.random() < 0.85 else other
    now = times[-1] + np.timedelta64(int(rng.integers(1, 30 * 60)), "m")
    n_ev = int(rng.integers(0, 60)) if rng.random() < 0.7 else 0
    # Spread over 40 days, or dense in the last 30 hours (reaching the networks' caps).
    spread = (40 * 24 * 60) if rng.random() < 0.6 else (30 * 60)
    ev = now - rng.integers(-120, spread, n_ev).astype("timedelta64[m]")  # some after now
    ev_times = np.concatenate([ev.astype("datetime64[ns]"), times])
    return ChargeState(
        charge_id=f"ch_{i}",
        now=now,
        attempt_times=times,
        outcomes=tuple(outcomes),
        decline_codes=tuple(_CODES[int(j)] for j in rng.integers(0, len(_CODES), n)),
        advice_codes=tuple(_ADVICE[int(j)] for j in rng.integers(0, len(_ADVICE), n)),
        cards=cards,
        current_card=current,
        timezone=str(rng.choice(_ZONES)),
        card_event_times=ev_times,
        card_event_failed=rng.random(ev_times.size) < 0.8,
        card_event_is_retry=rng.random(ev_times.size) < 0.6,
    )


def _assert_same(a: RuleResult, b: RuleResult) -> None:
    for name in RuleResult.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=f"{a.charge_id}: {name}")
        else:
            assert x == y, f"{a.charge_id}: {name}: {x!r} != {y!r}"


@pytest.mark.parametrize(
    "constraints",
    [
        Constraints(),
        Constraints(max_retries=8, window_hours=900.0, quiet_hours=(22, 7)),
        Constraints(max_retries=2, window_hours=72.0, min_gap_hours=6.0, quiet_hours=(9, 17)),
        Constraints(window_hours=2000.0, quiet_hours=(0, 23)),
    ],
)
@pytest.mark.parametrize("grid_hours", [1, 3])
def test_batch_rules_equal_per_charge_rules(constraints: Constraints, grid_hours: int) -> None:
    rng = np.random.default_rng(20261124 + grid_hours)
    states = [_random_state(rng, i) for i in range(400)]
    batch = evaluate_rules_batch(states, constraints, grid_hours=grid_hours)
    single = [evaluate_rules(s, constraints, grid_hours=grid_hours) for s in states]
    assert len(batch) == len(single)
    for a, b in zip(batch, single, strict=True):
        _assert_same(a, b)
    # The random charges reach every branch of the grid stage.
    reasons = {r.reason for r in single}
    assert "" in reasons
    assert any(not r.stop and r.excluded.get("network_limit", 0) for r in single)
    if constraints.window_hours <= 504:  # caps outlast the window: whole grids excluded
        assert "network_limit" in reasons


def test_batch_rules_of_no_charge_and_of_stops_only() -> None:
    assert evaluate_rules_batch([], Constraints()) == []
    rng = np.random.default_rng(7)
    states = [_random_state(rng, i) for i in range(50)]
    cons = Constraints(max_retries=0)
    for a, b in zip(
        evaluate_rules_batch(states, cons), [evaluate_rules(s, cons) for s in states], strict=True
    ):
        assert a.stop and b.stop
        _assert_same(a, b)


def test_batch_rules_count_caps_per_charge_when_keys_do_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import retryopt.serving.policies.caps as rules_module

    monkeypatch.setattr(rules_module, "_KEY_LIMIT", 0)
    rng = np.random.default_rng(11)
    states = [_random_state(rng, i) for i in range(200)]
    cons = Constraints()
    for a, b in zip(
        evaluate_rules_batch(states, cons), [evaluate_rules(s, cons) for s in states], strict=True
    ):
        _assert_same(a, b)
