"""Network and merchant retry rules: the stop rules, applied before any model score.

Every rule yields a machine-readable reason and cites its source. The rules decide, per failed
charge, either to stop (with a reason and an optional action for the billing service) or which
candidate retry times are allowed: an hourly grid from the earliest allowed time to the end of the
retry window (:mod:`.grid`), masked by quiet hours and the card networks' reattempt caps
(:mod:`.caps`). Every policy of :mod:`serving.policies` decides on top of these verdicts.

Sources (see ``docs/serving.md`` and the shared domain facts):

- Visa Core Rules (April 2026): category 1 declines are never retried; at most 20 reattempts per
  card in 30 days for categories 2-4 (15 before; many sources still say 15).
- Mastercard merchant advice codes: 03 do not try again, 21 payment cancelled (never retry);
  24-30 retry after 1 h / 24 h / 2 d / 4 d / 6 d / 8 d / 10 d; at most 10 declines per card in
  24 h and 35 in 30 days.
- Stripe Smart Retries (docs.stripe.com/billing/revenue-recovery/smart-retries): codes never
  retried until a new payment method is attached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from retryopt.features import contract as c
from retryopt.features import taxonomy
from retryopt.features.decisions import Constraints
from retryopt.features.localtime import NS_PER_HOUR

VISA_SOURCE = "Visa Core Rules (April 2026): decline categories and reattempt limits"
MASTERCARD_SOURCE = "Mastercard merchant advice codes and excessive-decline limits"
STRIPE_SOURCE = "docs.stripe.com/billing/revenue-recovery/smart-retries (never-retry codes)"
MERCHANT_SOURCE = "merchant constraints (request or server defaults)"


class Reason(StrEnum):
    """Machine-readable reasons of a decision."""

    HARD_DECLINE = "hard_decline"
    NETWORK_DO_NOT_RETRY = "network_do_not_retry"
    NEVER_RETRY_CODE = "never_retry_code"
    UPDATE_PAYMENT_METHOD = "update_payment_method"
    CUSTOMER_AUTHENTICATION = "customer_authentication"
    CHARGE_SUCCEEDED = "charge_succeeded"
    NO_FAILED_ATTEMPT = "no_failed_attempt"
    BUDGET_EXHAUSTED = "budget_exhausted"
    WINDOW_EXHAUSTED = "window_exhausted"
    NETWORK_LIMIT = "network_limit"
    QUIET_HOURS = "quiet_hours"
    NOT_WORTH_AN_ATTEMPT = "not_worth_an_attempt"
    MODEL_OPTIMUM = "model_optimum"
    GREEDY_ARGMAX = "greedy_argmax"
    FALLBACK_SCHEDULE = "fallback_schedule"
    FIXED_SCHEDULE = "fixed_schedule"
    SCHEDULE_DONE = "schedule_done"
    UNIFORM_RANDOM = "uniform_random"


# Actions the billing service should take when we stop.
ACTION_UPDATE_PAYMENT_METHOD = "update_payment_method"
ACTION_CUSTOMER_AUTHENTICATION = "customer_authentication"

_HARD_FAMILIES = frozenset({"lost_stolen_fraud", "account_closed"})


@dataclass(frozen=True, kw_only=True)
class CardRef:
    """The identity of a card as far as the rules care (did the card change?).

    Two cards are the same when both carry a ``card_id`` and the ids are equal; without ids they
    are the same when brand, expiry month and expiry year all agree.
    """

    brand: str
    card_id: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None

    def same_as(self, other: CardRef) -> bool:
        """Whether ``other`` is the same card."""
        if self.card_id is not None and other.card_id is not None:
            return self.card_id == other.card_id
        return (self.brand, self.exp_month, self.exp_year) == (
            other.brand,
            other.exp_month,
            other.exp_year,
        )


@dataclass(frozen=True, kw_only=True)
class ChargeState:
    """Everything the rules need to know about one failed charge.

    Parameters
    ----------
    charge_id
        The charge.
    now
        Decision time (``datetime64[ns]``, UTC, naive).
    attempt_times, outcomes, decline_codes, advice_codes, cards
        The charge's attempts so far, oldest first.
    current_card
        The card the next retry would use (differs from the declined one after a card update).
    timezone
        IANA zone of the customer (quiet hours are local time).
    card_event_times, card_event_failed, card_event_is_retry
        Earlier attempts on the current card across the customer's charges (history and this
        charge), for the networks' reattempt caps.
    """

    charge_id: str
    now: np.datetime64
    attempt_times: np.ndarray
    outcomes: tuple[str, ...]
    decline_codes: tuple[str | None, ...]
    advice_codes: tuple[str | None, ...]
    cards: tuple[CardRef, ...]
    current_card: CardRef
    timezone: str = "UTC"
    card_event_times: np.ndarray = field(
        default_factory=lambda: np.array([], dtype="datetime64[ns]")
    )
    card_event_failed: np.ndarray = field(default_factory=lambda: np.array([], dtype=bool))
    card_event_is_retry: np.ndarray = field(default_factory=lambda: np.array([], dtype=bool))


@dataclass(frozen=True, kw_only=True)
class RuleResult:
    """The rules' verdict on one charge.

    ``stop`` decisions carry ``reason``, ``source`` and maybe ``action_required``. Otherwise
    ``grid`` holds the candidate retry times (``datetime64[ns]``, UTC naive, hourly) and ``allowed``
    which of them the rules allow; ``retries_left`` is the remaining budget, ``notes`` lists the
    rules that shaped the grid (for explanations) and ``excluded`` counts candidates per rule.
    """

    charge_id: str
    stop: bool
    reason: str = ""
    source: str = ""
    action_required: str | None = None
    grid: np.ndarray = field(default_factory=lambda: np.array([], dtype="datetime64[ns]"))
    allowed: np.ndarray = field(default_factory=lambda: np.array([], dtype=bool))
    local_hours: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    retries_left: int = 0
    retries_used: int = 0
    first_failure: np.datetime64 | None = None
    last_attempt: np.datetime64 | None = None
    notes: tuple[str, ...] = ()
    excluded: dict[str, int] = field(default_factory=dict)
    decline_code: str | None = None
    decline_family: str = "unknown"
    # What later *planned* retries must respect (:mod:`.planner`): the Mastercard advice wait
    # (24-30) of the last decline on an unchanged card, which the likely next decline keeps
    # (the shifted state the model scores keeps the advice code, features.advance), and the
    # networks' cap room at each grid time (None: the card cannot reach a cap in this plan).
    advice_wait_hours: float = 0.0
    cap_room_24h: np.ndarray | None = None
    cap_room_30d: np.ndarray | None = None


def _stop(
    state: ChargeState,
    reason: Reason,
    source: str,
    *,
    action: str | None = None,
    note: str = "",
    decline_code: str | None = None,
    family: str = "unknown",
    retries_used: int = 0,
) -> RuleResult:
    return RuleResult(
        charge_id=state.charge_id,
        stop=True,
        reason=str(reason),
        source=source,
        action_required=action,
        notes=(note,) if note else (),
        decline_code=decline_code,
        decline_family=family,
        retries_used=retries_used,
    )


def _ceil_hour(ns: int) -> int:
    return -(-ns // NS_PER_HOUR) * NS_PER_HOUR


@dataclass(frozen=True, kw_only=True, slots=True)
class _Open:
    """A charge that passed the stop rules, before its candidate grid is built."""

    state: ChargeState
    now: int
    start: int  # first grid time (ns)
    window_end: int  # last possible grid time (ns)
    step: int
    retries_left: int
    retries_used: int
    first_failure: int
    last_attempt: int
    notes: list[str]
    last_code: str | None
    family: str
    brand: str


@dataclass(frozen=True, slots=True)
class _Decline:
    """What the stop rules read of one (decline code, advice code) pair (pure, cached)."""

    family: str
    # (reason, source, action, note) when a failed attempt with this pair on the current card
    # stops the charge, else None.
    stop: tuple[Reason, str, str | None, str] | None
    # Mastercard advice 24-30: (wait in ns, note) before a retry of an unchanged card.
    wait: tuple[int, str] | None


_DECLINES: dict[tuple[str | None, str | None], _Decline] = {}
_DECLINES_MAX = 4096  # distinct (code, advice) pairs are few; the bound only guards memory


def _decline(code: str | None, advice: str | None) -> _Decline:
    """The stop-rule facts of one decline (cached: the taxonomy lookups are pure)."""
    key = (code, advice)
    hit = _DECLINES.get(key)
    if hit is not None:
        return hit
    d = taxonomy.classify_decline(code, network_advice_code=advice)
    family = str(d.family)
    mac = taxonomy.mastercard_advice(advice)
    stop: tuple[Reason, str, str | None, str] | None = None
    # Visa category 1 and lost/stolen/pickup/fraud/closed account: never retry
    # (Visa Core Rules, April 2026; Stripe decline codes).
    if d.visa_category == 1 or family in _HARD_FAMILIES:
        stop = (
            Reason.HARD_DECLINE,
            f"{VISA_SOURCE}; {d.source}",
            d.action_required or ACTION_UPDATE_PAYMENT_METHOD,
            f"hard decline {code} ({family})",
        )
    # Mastercard merchant advice 03 (do not try again) and 21 (payment cancelled).
    elif mac is not None and mac.never_retry:
        stop = (
            Reason.NETWORK_DO_NOT_RETRY,
            f"{MASTERCARD_SOURCE}: advice {mac.code} ({mac.meaning})",
            d.action_required or ACTION_UPDATE_PAYMENT_METHOD,
            f"Mastercard advice {mac.code}: {mac.meaning}",
        )
    elif d.rule == taxonomy.RetryRule.CUSTOMER_AUTHENTICATION:
        # authentication_required: the customer must authenticate (Stripe never-retry list).
        stop = (
            Reason.CUSTOMER_AUTHENTICATION,
            STRIPE_SOURCE,
            ACTION_CUSTOMER_AUTHENTICATION,
            f"{code}: the customer must authenticate the payment",
        )
    elif d.rule == taxonomy.RetryRule.UPDATE_PAYMENT_METHOD:
        # expired_card on an unchanged card: ask for a new payment method.
        stop = (
            Reason.UPDATE_PAYMENT_METHOD,
            f"{STRIPE_SOURCE}; {d.source}",
            ACTION_UPDATE_PAYMENT_METHOD,
            f"{code} on an unchanged card",
        )
    elif d.rule in (taxonomy.RetryRule.NEVER, taxonomy.RetryRule.NEVER_UNLESS_CARD_CHANGED) or (
        code is not None and code in taxonomy.STRIPE_NEVER_RETRY_CODES
    ):
        # Stripe never-retry codes (and other hard declines): only after a card change.
        stop = (
            Reason.NEVER_RETRY_CODE,
            f"{STRIPE_SOURCE}; {d.source}",
            d.action_required or ACTION_UPDATE_PAYMENT_METHOD,
            f"{code} is not retried until the card changes",
        )
    wait = None
    if mac is not None and mac.min_wait_hours is not None:
        # Mastercard merchant advice codes 24-30: earliest retry time after the decline.
        wait = (
            int(mac.min_wait_hours * NS_PER_HOUR),
            f"Mastercard advice {mac.code}: not before {mac.min_wait_hours:g} h after the decline",
        )
    out = _Decline(family=family, stop=stop, wait=wait)
    if len(_DECLINES) >= _DECLINES_MAX:
        _DECLINES.clear()
    _DECLINES[key] = out
    return out


def _advice_wait_hours(o: _Open) -> float:
    """Mastercard advice 24-30 wait (hours) of the last decline when the card is unchanged.

    Mastercard merchant advice codes 24-30: retry after 1 h / 24 h / 2 / 4 / 6 / 8 / 10 days
    (MASTERCARD_SOURCE); 0 without such a code or after a card change.
    """
    state = o.state
    if not state.current_card.same_as(state.cards[-1]):
        return 0.0
    wait = _decline(state.decline_codes[-1], state.advice_codes[-1]).wait
    return 0.0 if wait is None else wait[0] / NS_PER_HOUR


_NS = np.dtype("datetime64[ns]")


def _ns_scalar(value: Any) -> int:
    """``int(np.asarray(value).astype("datetime64[ns]").astype(np.int64))``, without the
    array round trip for the usual ``datetime64[ns]`` scalar."""
    if isinstance(value, np.datetime64) and value.dtype == _NS:
        ns = value.item()
        if ns is not None:  # NaT gives None: the generic path below
            return int(ns)
    return int(np.asarray(value).astype("datetime64[ns]").astype(np.int64))


def _ns_array(times: np.ndarray) -> np.ndarray:
    """``times.astype("datetime64[ns]").astype(np.int64)``; a view when already in ns (read
    only by the callers)."""
    if times.dtype == _NS:
        return times.view(np.int64)
    return times.astype("datetime64[ns]").astype(np.int64)


@dataclass(frozen=True, slots=True)
class _Limits:
    """The constraints' durations in ns (once per batch rather than per charge)."""

    window: int
    gap: int
    step: int

    @classmethod
    def of(cls, constraints: Constraints, grid_hours: int) -> _Limits:
        return cls(
            window=int(constraints.window_hours * NS_PER_HOUR),
            gap=int(constraints.min_gap_hours * NS_PER_HOUR),
            step=int(grid_hours * NS_PER_HOUR),
        )


def _screen(
    state: ChargeState,
    constraints: Constraints,
    *,
    grid_hours: int,
    limits: _Limits | None = None,
) -> RuleResult | _Open:
    """The stop rules of one charge (hard declines, advice codes, budget, window)."""
    outcomes = state.outcomes
    n = len(outcomes)
    if n == 0:
        return _stop(state, Reason.NO_FAILED_ATTEMPT, MERCHANT_SOURCE, note="no attempts given")
    retries_used = n - 1
    if outcomes[-1] == c.SUCCEEDED:
        return _stop(
            state,
            Reason.CHARGE_SUCCEEDED,
            MERCHANT_SOURCE,
            note="the last attempt succeeded",
            retries_used=retries_used,
        )
    codes, advices, cards, current = (
        state.decline_codes,
        state.advice_codes,
        state.cards,
        state.current_card,
    )
    last_code = codes[-1]
    last = _decline(last_code, advices[-1])
    family = last.family
    card_changed = not current.same_as(cards[-1])

    # Declines on the current card, oldest first (a stolen card stays stolen, whichever
    # attempt saw it); the first one that stops decides.
    failed = c.FAILED
    for i in range(n):
        if outcomes[i] != failed:
            continue
        if i == n - 1:
            if card_changed:
                continue
            d = last
        elif current.same_as(cards[i]):
            d = _decline(codes[i], advices[i])
        else:
            continue
        if d.stop is not None:
            reason, source, action, note = d.stop
            return _stop(
                state,
                reason,
                source,
                action=action,
                note=note,
                decline_code=codes[i],
                family=d.family,
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

    lim = limits or _Limits.of(constraints, grid_hours)
    times_ns = _ns_array(state.attempt_times)
    failed_idx = [i for i in range(n) if outcomes[i] == failed]
    first_failure = int(times_ns[failed_idx[0]])
    last_attempt = int(times_ns[-1])
    now = _ns_scalar(state.now)
    window_end = first_failure + lim.window
    notes: list[str] = []
    earliest = max(now, last_attempt + lim.gap)

    # Mastercard merchant advice codes 24-30: earliest retry time after the decline.
    if not card_changed and last.wait is not None:
        wait, note = last.wait
        advised = last_attempt + wait
        if advised > earliest:
            earliest = advised
        notes.append(note)

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
        step=lim.step,
        retries_left=retries_left,
        retries_used=retries_used,
        first_failure=first_failure,
        last_attempt=last_attempt,
        notes=notes,
        last_code=last_code,
        family=family,
        brand=current.brand.lower(),
    )
