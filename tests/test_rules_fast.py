"""The rules' fast paths equal the reference code they replaced (seeded random inputs).

- ``_screen`` (cached per decline code and advice) equals the per-attempt taxonomy lookups;
- skipping the networks' caps for charges with too few card events changes no verdict;
- whole-hour grids' local hours equal :func:`features.localtime.local_hours`;
- ``charge_states_from_rows`` (batch-wide columns for charges without history) equals the
  per-charge construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from test_rules import _assert_same, _random_state

from retryopt.features import contract as c
from retryopt.features import taxonomy
from retryopt.features.decisions import Constraints
from retryopt.features.localtime import NS_PER_HOUR as HOUR_NS
from retryopt.features.localtime import local_hours, resolve_zone
from retryopt.serving.policies import caps as rules
from retryopt.serving.policies.charges import RuleRows, _group_sorted, charge_states_from_rows
from retryopt.serving.policies.grid import _grid_hours, evaluate_rules, evaluate_rules_batch
from retryopt.serving.policies.rules import (
    _HARD_FAMILIES,
    ACTION_CUSTOMER_AUTHENTICATION,
    ACTION_UPDATE_PAYMENT_METHOD,
    MASTERCARD_SOURCE,
    MERCHANT_SOURCE,
    STRIPE_SOURCE,
    VISA_SOURCE,
    CardRef,
    ChargeState,
    Reason,
    RuleResult,
    _ceil_hour,
    _Open,
    _screen,
    _stop,
)


def _reference_screen(
    state: ChargeState, constraints: Constraints, *, grid_hours: int
) -> RuleResult | _Open:
    """The stop rules of one charge as written before the cached fast path (the oracle)."""
    n = len(state.outcomes)
    if n == 0:
        return _stop(state, Reason.NO_FAILED_ATTEMPT, MERCHANT_SOURCE, note="no attempts given")
    retries_used = n - 1
    if state.outcomes[-1] == c.SUCCEEDED:
        return _stop(
            state,
            Reason.CHARGE_SUCCEEDED,
            MERCHANT_SOURCE,
            note="the last attempt succeeded",
            retries_used=retries_used,
        )
    last_code = state.decline_codes[-1]
    last_advice = state.advice_codes[-1]
    info = taxonomy.classify_decline(last_code, network_advice_code=last_advice)
    family = str(info.family)
    declined_card = state.cards[-1]
    card_changed = not state.current_card.same_as(declined_card)

    # Declines on the current card (a stolen card stays stolen, whichever attempt saw it).
    same_card = [
        i
        for i in range(n)
        if state.outcomes[i] == c.FAILED and state.current_card.same_as(state.cards[i])
    ]
    for i in same_card:
        code, advice = state.decline_codes[i], state.advice_codes[i]
        d = info if i == n - 1 else taxonomy.classify_decline(code, network_advice_code=advice)
        d_family = str(d.family)
        # Visa category 1 and lost/stolen/pickup/fraud/closed account: never retry
        # (Visa Core Rules, April 2026; Stripe decline codes).
        if d.visa_category == 1 or d_family in _HARD_FAMILIES:
            return _stop(
                state,
                Reason.HARD_DECLINE,
                f"{VISA_SOURCE}; {d.source}",
                action=d.action_required or ACTION_UPDATE_PAYMENT_METHOD,
                note=f"hard decline {code} ({d_family})",
                decline_code=code,
                family=d_family,
                retries_used=retries_used,
            )
        # Mastercard merchant advice 03 (do not try again) and 21 (payment cancelled).
        mac = taxonomy.mastercard_advice(advice)
        if mac is not None and mac.never_retry:
            return _stop(
                state,
                Reason.NETWORK_DO_NOT_RETRY,
                f"{MASTERCARD_SOURCE}: advice {mac.code} ({mac.meaning})",
                action=d.action_required or ACTION_UPDATE_PAYMENT_METHOD,
                note=f"Mastercard advice {mac.code}: {mac.meaning}",
                decline_code=code,
                family=d_family,
                retries_used=retries_used,
            )
        if d.rule == taxonomy.RetryRule.CUSTOMER_AUTHENTICATION:
            # authentication_required: the customer must authenticate (Stripe never-retry list).
            return _stop(
                state,
                Reason.CUSTOMER_AUTHENTICATION,
                STRIPE_SOURCE,
                action=ACTION_CUSTOMER_AUTHENTICATION,
                note=f"{code}: the customer must authenticate the payment",
                decline_code=code,
                family=d_family,
                retries_used=retries_used,
            )
        if d.rule == taxonomy.RetryRule.UPDATE_PAYMENT_METHOD:
            # expired_card on an unchanged card: ask for a new payment method.
            return _stop(
                state,
                Reason.UPDATE_PAYMENT_METHOD,
                f"{STRIPE_SOURCE}; {d.source}",
                action=ACTION_UPDATE_PAYMENT_METHOD,
                note=f"{code} on an unchanged card",
                decline_code=code,
                family=d_family,
                retries_used=retries_used,
            )
        if d.rule in (taxonomy.RetryRule.NEVER, taxonomy.RetryRule.NEVER_UNLESS_CARD_CHANGED) or (
            code is not None and code in taxonomy.STRIPE_NEVER_RETRY_CODES
        ):
            # Stripe never-retry codes (and other hard declines): only after a card change.
            return _stop(
                state,
                Reason.NEVER_RETRY_CODE,
                f"{STRIPE_SOURCE}; {d.source}",
                action=d.action_required or ACTION_UPDATE_PAYMENT_METHOD,
                note=f"{code} is not retried until the card changes",
                decline_code=code,
                family=d_family,
                retries_used=retries_used,
            )

    # Budget.
    retries_left = constraints.max_retries - retries_used
    if retries_left <= 0:
        return _stop(
            state,
            Reason.BUDGET_EXHAUSTED,
            MERCHANT_SOURCE,
            note=f"{retries_used} of {constraints.max_retries} retries used",
            decline_code=last_code,
            family=family,
            retries_used=retries_used,
        )

    times_ns = state.attempt_times.astype("datetime64[ns]").astype(np.int64)
    failed_idx = [i for i in range(n) if state.outcomes[i] == c.FAILED]
    first_failure = int(times_ns[failed_idx[0]])
    last_attempt = int(times_ns[-1])
    now = int(np.asarray(state.now).astype("datetime64[ns]").astype(np.int64))
    window_end = first_failure + int(constraints.window_hours * HOUR_NS)
    notes: list[str] = []
    earliest = max(now, last_attempt + int(constraints.min_gap_hours * HOUR_NS))

    # Mastercard merchant advice codes 24-30: earliest retry time after the decline.
    mac_last = None if card_changed else taxonomy.mastercard_advice(last_advice)
    if mac_last is not None and mac_last.min_wait_hours is not None:
        advised = last_attempt + int(mac_last.min_wait_hours * HOUR_NS)
        if advised > earliest:
            earliest = advised
        notes.append(
            f"Mastercard advice {mac_last.code}: not before {mac_last.min_wait_hours:g} h "
            "after the decline"
        )

    step = int(grid_hours * HOUR_NS)
    start = _ceil_hour(earliest)
    if start > window_end:
        return _stop(
            state,
            Reason.WINDOW_EXHAUSTED,
            MERCHANT_SOURCE,
            note=f"no time left in the {constraints.window_hours:g} h window",
            decline_code=last_code,
            family=family,
            retries_used=retries_used,
        )
    return _Open(
        state=state,
        now=now,
        start=start,
        window_end=window_end,
        step=step,
        retries_left=retries_left,
        retries_used=retries_used,
        first_failure=first_failure,
        last_attempt=last_attempt,
        notes=notes,
        last_code=last_code,
        family=family,
        brand=state.current_card.brand.lower(),
    )


def _reference_states(
    *,
    charge_ids: Sequence[Any],
    now: np.ndarray,
    attempts: RuleRows,
    history: RuleRows | None = None,
    current_cards: Sequence[CardRef | None] | None = None,
) -> list[ChargeState]:
    """charge_states_from_rows as written before its no-history fast path (the oracle)."""
    groups, _ = _group_sorted(attempts.charge_id, attempts.attempted_at)
    hist_groups: dict[Any, np.ndarray] = {}
    hist_retry = np.array([], dtype=bool)
    if history is not None and len(history):
        hist_groups, _ = _group_sorted(history.customer_id, history.attempted_at)
        # A history row is a reattempt when an earlier row of the same customer has the same
        # charge (time order, stable; the decided charge's own rows are dropped below and never
        # precede another charge's rows, so this is exact after the drop).
        hist_retry = np.zeros(len(history), dtype=bool)
        for rows in hist_groups.values():
            seen: set[Any] = set()
            for i in rows.tolist():
                cid = history.charge_id[i]
                hist_retry[i] = cid in seen
                seen.add(cid)
    now_ns = np.asarray(now).astype("datetime64[ns]")
    empty_t = np.array([], dtype="datetime64[ns]")
    states: list[ChargeState] = []
    for k, charge_id in enumerate(list(charge_ids)):
        t_now = now_ns[k]
        idx = groups.get(charge_id)
        if idx is None or idx.size == 0:
            states.append(
                ChargeState(
                    charge_id=str(charge_id),
                    now=t_now,
                    attempt_times=empty_t,
                    outcomes=(),
                    decline_codes=(),
                    advice_codes=(),
                    cards=(),
                    current_card=CardRef(brand="unknown"),
                )
            )
            continue
        rows = idx.tolist()
        times = attempts.attempted_at[idx].astype("datetime64[ns]")
        cards = tuple(attempts.card(i) for i in rows)
        current = None if current_cards is None else current_cards[k]
        current = current or cards[-1]
        outcomes = tuple(attempts.outcome[i] for i in rows)
        last = rows[-1]
        zone = resolve_zone(attempts.timezone[last], attempts.country[last])
        # Card events: this charge's attempts plus the customer's other charges on this card.
        ev_t = [attempts.attempted_at[idx]]
        ev_f = [np.array([o == c.FAILED for o in outcomes], dtype=bool)]
        ev_r = [np.arange(len(outcomes)) > 0]
        ev_same = [attempts.same_card(current, idx)]
        if history is not None and hist_groups:
            hidx = hist_groups.get(attempts.customer_id[last])
            if hidx is not None and hidx.size:
                hidx = hidx[np.array([history.charge_id[i] != charge_id for i in hidx.tolist()])]
                if hidx.size:
                    ev_t.append(history.attempted_at[hidx])
                    ev_f.append(np.array([history.outcome[i] == c.FAILED for i in hidx.tolist()]))
                    ev_r.append(hist_retry[hidx])
                    ev_same.append(history.same_card(current, hidx))
        same = np.concatenate(ev_same)
        states.append(
            ChargeState(
                charge_id=str(charge_id),
                now=t_now,
                attempt_times=times,
                outcomes=outcomes,
                decline_codes=tuple(attempts.decline_code[i] for i in rows),
                advice_codes=tuple(attempts.advice_code[i] for i in rows),
                cards=cards,
                current_card=current,
                timezone=zone,
                card_event_times=np.concatenate(ev_t)[same].astype("datetime64[ns]"),
                card_event_failed=np.concatenate(ev_f).astype(bool)[same],
                card_event_is_retry=np.concatenate(ev_r).astype(bool)[same],
            )
        )
    return states


_CONSTRAINTS = [
    Constraints(),
    Constraints(max_retries=8, window_hours=900.0, quiet_hours=(22, 7)),
    Constraints(max_retries=2, window_hours=72.0, min_gap_hours=6.0, quiet_hours=(9, 17)),
    Constraints(max_retries=1, window_hours=10.5, min_gap_hours=0.5),
]


def _fields(x: RuleResult | _Open) -> dict[str, Any]:
    return {name: getattr(x, name) for name in type(x).__dataclass_fields__}


@pytest.mark.parametrize("constraints", _CONSTRAINTS)
@pytest.mark.parametrize("grid_hours", [1, 3])
def test_screen_equals_reference(constraints: Constraints, grid_hours: int) -> None:
    rng = np.random.default_rng(5150 + grid_hours)
    states = [_random_state(rng, i) for i in range(600)]
    # Variants with more decline codes (every stop rule; codes normalised by the taxonomy).
    extra = ("incorrect_number", "expired_card", "04", " 5", "r0", "Do_Not_Honor", "", None)
    states += [
        replace(
            s,
            decline_codes=tuple(
                extra[int(j)] for j in rng.integers(0, len(extra), len(s.outcomes))
            ),
            advice_codes=tuple(
                (None, "3", "24 ", "do_not_try_again", "01")[int(j)]
                for j in rng.integers(0, 5, len(s.outcomes))
            ),
        )
        for s in states[:300]
    ]
    seen = set()
    for s in states:
        fast = _screen(s, constraints, grid_hours=grid_hours)
        ref = _reference_screen(s, constraints, grid_hours=grid_hours)
        assert type(fast) is type(ref)
        if isinstance(fast, RuleResult):
            assert isinstance(ref, RuleResult)
            _assert_same(fast, ref)
            seen.add(fast.reason)
        else:
            assert _fields(fast) == _fields(ref)
            seen.add("open")
    assert {
        "open",
        "hard_decline",
        "network_do_not_retry",
        "never_retry_code",
        "update_payment_method",
        "customer_authentication",
        "charge_succeeded",
    } <= seen


@pytest.mark.parametrize("constraints", _CONSTRAINTS)
def test_skipping_unreachable_caps_changes_nothing(
    constraints: Constraints, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(99)
    states = [_random_state(rng, i) for i in range(300)]
    fast_batch = evaluate_rules_batch(states, constraints)
    fast_single = [evaluate_rules(s, constraints) for s in states]
    monkeypatch.setattr(rules, "_may_cap", lambda brand, n_events: True)
    full_batch = evaluate_rules_batch(states, constraints)
    full_single = [evaluate_rules(s, constraints) for s in states]
    for a, b, x, y in zip(fast_batch, full_batch, fast_single, full_single, strict=True):
        _assert_same(a, b)
        _assert_same(x, y)
        _assert_same(a, x)


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata", "Australia/Sydney"])
@pytest.mark.parametrize("step_hours", [1, 3, 5])
def test_whole_hour_grid_hours_equal_local_hours(zone: str, step_hours: int) -> None:
    rng = np.random.default_rng(step_hours)
    for _ in range(200):
        # Around DST changes of 2026 in both hemispheres, and before 1970 (negative ns).
        start = int(rng.integers(-2000, 500 * 24)) * int(HOUR_NS) + 1_767_225_600 * 10**9
        size = int(rng.integers(1, 700))
        grid = start + np.arange(size, dtype=np.int64) * step_hours * int(HOUR_NS)
        got = _grid_hours(grid, step_hours * int(HOUR_NS), zone)
        want = local_hours(grid.view("datetime64[ns]"), zone)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def _random_rows(rng: np.random.Generator, n_charges: int, *, history: bool) -> RuleRows:
    charge: list[Any] = []
    customer: list[Any] = []
    times: list[int] = []
    outcome: list[str] = []
    code: list[str | None] = []
    advice: list[str | None] = []
    brand: list[str] = []
    card_id: list[str | None] = []
    month: list[int | None] = []
    year: list[int | None] = []
    zone: list[Any] = []
    country: list[Any] = []
    t0 = 1_767_225_600 * 10**9
    for j in range(n_charges):
        cid = f"old_{j}" if history else f"ch_{j}"
        for _ in range(int(rng.integers(1, 5))):
            charge.append(cid)
            customer.append(f"cus_{j % 7}" if history else f"cus_{j % 13}")
            times.append(t0 + int(rng.integers(0, 20 * 24)) * int(HOUR_NS) // 3)
            outcome.append("failed" if rng.random() < 0.85 else "succeeded")
            code.append(str(rng.choice(["insufficient_funds", "do_not_honor", "51"])))
            advice.append(None if rng.random() < 0.7 else "24")
            brand.append(str(rng.choice(["visa", "mastercard", "unknown"])))
            card_id.append(None if rng.random() < 0.4 else f"card_{j % 3}")
            month.append(None if rng.random() < 0.1 else int(rng.integers(1, 3)))
            year.append(2028)
            zone.append(str(rng.choice(["Europe/Berlin", "Not/AZone", ""])) or None)
            country.append(str(rng.choice(["US", "DE", "IN"])))
    return RuleRows(
        charge_id=charge,
        customer_id=customer,
        attempted_at=np.asarray(times, dtype=np.int64),
        outcome=outcome,
        decline_code=code,
        advice_code=advice,
        brand=brand,
        card_id=card_id,
        exp_month=month,
        exp_year=year,
        timezone=zone,
        country=country,
    )


@pytest.mark.parametrize("with_history", [False, True])
@pytest.mark.parametrize("with_cards", [False, True])
def test_charge_states_from_rows_equal_reference(with_history: bool, with_cards: bool) -> None:
    rng = np.random.default_rng(2026 + 2 * with_history + with_cards)
    attempts = _random_rows(rng, 150, history=False)
    history = _random_rows(rng, 40, history=True) if with_history else None
    ids = [f"ch_{j}" for j in range(150)] + ["ch_missing"]
    now = np.full(len(ids), np.datetime64("2026-02-01T00:00", "ns"))
    cards: list[CardRef | None] | None = None
    if with_cards:
        cards = [
            None if rng.random() < 0.5 else CardRef(brand="visa", card_id=f"card_{j % 3}")
            for j in range(len(ids))
        ]
    fast = charge_states_from_rows(
        charge_ids=ids, now=now, attempts=attempts, history=history, current_cards=cards
    )
    ref = _reference_states(
        charge_ids=ids, now=now, attempts=attempts, history=history, current_cards=cards
    )
    assert len(fast) == len(ref)
    for a, b in zip(fast, ref, strict=True):
        for name in ChargeState.__dataclass_fields__:
            x, y = getattr(a, name), getattr(b, name)
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype, name
                np.testing.assert_array_equal(x, y, err_msg=f"{a.charge_id}: {name}")
            else:
                assert x == y and type(x) is type(y), f"{a.charge_id}: {name}"


def _reference_group_sorted(
    keys: list[Any], times: np.ndarray
) -> tuple[dict[Any, np.ndarray], np.ndarray]:
    lookup: dict[Any, int] = {}
    codes = np.fromiter(
        (lookup.setdefault(k, len(lookup)) for k in keys), dtype=np.int64, count=len(keys)
    )
    order = np.lexsort((times, codes))
    bounds = np.searchsorted(codes[order], np.arange(len(lookup) + 1))
    return {k: order[bounds[v] : bounds[v + 1]] for k, v in lookup.items()}, codes


@pytest.mark.parametrize("n_keys", [1, 2, 5])
def test_group_sorted_equals_lexsort(n_keys: int) -> None:
    rng = np.random.default_rng(n_keys)
    for size in (1, 2, 7, 40):
        keys: list[Any] = [f"ch_{int(j)}" for j in rng.integers(0, n_keys, size)]
        times = rng.integers(0, 5, size).astype(np.int64)  # ties: stable order
        got, got_codes = _group_sorted(keys, times)
        want, want_codes = _reference_group_sorted(keys, times)
        np.testing.assert_array_equal(got_codes, want_codes)
        assert list(got) == list(want)
        for k in want:
            assert got[k].dtype == want[k].dtype
            np.testing.assert_array_equal(got[k], want[k])
    nan = float("nan")  # NaN keys never equal themselves: the general path
    got, _ = _group_sorted([nan, nan], np.array([1, 0], dtype=np.int64))
    want, _ = _reference_group_sorted([nan, nan], np.array([1, 0], dtype=np.int64))
    assert [v.tolist() for v in got.values()] == [v.tolist() for v in want.values()]
