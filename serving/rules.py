"""Network and merchant retry rules, applied before any model score.

Every rule yields a machine-readable reason and cites its source. The rules decide, per failed
charge, either to stop (with a reason and an optional action for the billing service) or which
candidate retry times are allowed: an hourly grid from the earliest allowed time to the end of the
retry window, masked by quiet hours and the card networks' reattempt caps.

Pure library code (numpy/pandas only); :mod:`serving.policy` builds the decision on top.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features import taxonomy
from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import Constraints, DecisionBatch
from retryopt.features.localtime import NS_PER_HOUR, local_hours, resolve_zone, utc_offset

HOUR_NS = np.int64(NS_PER_HOUR)
DAY_NS = 24 * HOUR_NS

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
    notes: tuple[str, ...] = ()
    excluded: dict[str, int] = field(default_factory=dict)
    decline_code: str | None = None
    decline_family: str = "unknown"


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


def _trailing_counts(events: np.ndarray, grid_ns: np.ndarray, span_ns: np.int64) -> np.ndarray:
    """Number of ``events`` (sorted int64 ns) in ``(t - span, t)`` for every grid time ``t``."""
    if events.size == 0:
        return np.zeros(grid_ns.shape, dtype=np.int64)
    upper = np.searchsorted(events, grid_ns, side="left")
    lower = np.searchsorted(events, grid_ns - span_ns, side="right")
    return (upper - lower).astype(np.int64)


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
    notes: list[str]
    last_code: str | None
    family: str
    brand: str


def evaluate_rules(
    state: ChargeState, constraints: Constraints, *, grid_hours: int = 1
) -> RuleResult:
    """Apply the network and merchant rules to one failed charge.

    Parameters
    ----------
    state
        The charge, its attempts and the card's recent attempts.
    constraints
        Budget, window, minimum gap, quiet hours.
    grid_hours
        Spacing of the candidate grid in hours (whole clock hours, UTC).

    Returns
    -------
    RuleResult
        A stop with reason and source, or the candidate grid with its allowed mask.
    """
    screened = _screen(state, constraints, grid_hours=grid_hours)
    if isinstance(screened, RuleResult):
        return screened
    return _grid_verdict(screened, constraints)


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
        notes=notes,
        last_code=last_code,
        family=family,
        brand=current.brand.lower(),
    )


def _charge_caps(o: _Open, grid_ns: np.ndarray) -> np.ndarray:
    """The networks' reattempt caps of one screened charge at its grid times ``grid_ns``."""
    state, now, brand = o.state, o.now, o.brand
    if not _may_cap(brand, state.card_event_times.size):
        return np.ones(grid_ns.shape, dtype=bool)
    ev = state.card_event_times.astype("datetime64[ns]").astype(np.int64)
    keep = ev < now
    ev, ev_failed, ev_retry = (
        ev[keep],
        state.card_event_failed[keep],
        state.card_event_is_retry[keep],
    )
    order = np.argsort(ev, kind="stable")
    ev, ev_failed, ev_retry = ev[order], ev_failed[order], ev_retry[order]
    cap = np.ones(grid_ns.shape, dtype=bool)
    if brand == "visa":
        # Visa: at most 20 reattempts per card in 30 days (categories 2-4).
        n_re = _trailing_counts(ev[ev_retry], grid_ns, 30 * DAY_NS)
        cap &= n_re < taxonomy.VISA_MAX_REATTEMPTS_30D
    elif brand == "mastercard":
        # Mastercard: at most 10 declines per card in 24 hours and 35 in 30 days.
        fails = ev[ev_failed]
        cap &= _trailing_counts(fails, grid_ns, DAY_NS) < taxonomy.MASTERCARD_MAX_DECLINES_24H
        cap &= _trailing_counts(fails, grid_ns, 30 * DAY_NS) < (
            taxonomy.MASTERCARD_MAX_DECLINES_30D
        )
    return cap


def _grid_hours(grid_ns: np.ndarray, step: int, zone: str) -> np.ndarray:
    """:func:`local_hours` of one charge's grid ``grid_ns`` (int64 ns, ascending by ``step``)."""
    first_ns = int(grid_ns[0])
    if first_ns % NS_PER_HOUR == 0 and step % NS_PER_HOUR == 0:
        # Whole-hour grid: with one UTC offset over the grid (as local_hours checks), the local
        # hour of point r is (h0 + r * step hours) % 24, h0 that of the first point (floor
        # division distributes over whole hours exactly).
        if zone in ("UTC", "Etc/UTC"):
            off = 0
        else:
            first = utc_offset(zone, first_ns)
            if first is None or first != utc_offset(zone, int(grid_ns[-1])):
                return local_hours(grid_ns.view("datetime64[ns]"), zone)
            off = int(first.total_seconds()) * 1_000_000_000
        h0 = ((first_ns + off) // NS_PER_HOUR) % 24
        return (
            np.arange(h0, h0 + grid_ns.size * (step // NS_PER_HOUR), step // NS_PER_HOUR) % 24
        ).astype(np.int64, copy=False)
    return local_hours(grid_ns.view("datetime64[ns]"), zone)


def _grid_verdict(o: _Open, constraints: Constraints) -> RuleResult:
    """The candidate grid of one screened charge: quiet hours and the networks' caps."""
    state, notes = o.state, list(o.notes)
    retries_left, retries_used, first_failure = o.retries_left, o.retries_used, o.first_failure
    last_code, family = o.last_code, o.family
    grid_ns = np.arange(o.start, o.window_end + 1, o.step, dtype=np.int64)
    grid = grid_ns.view("datetime64[ns]")
    allowed = np.ones(grid.shape, dtype=bool)
    excluded: dict[str, int] = {}
    hours = _grid_hours(grid_ns, o.step, state.timezone)
    # Every candidate stays allowed unless quiet hours or a cap exclude some (then check).
    check = False

    if constraints.quiet_hours is not None:
        q0, q1 = constraints.quiet_hours
        quiet = (hours >= q0) & (hours < q1) if q0 <= q1 else (hours >= q0) | (hours < q1)
        excluded[Reason.QUIET_HOURS] = int((allowed & quiet).sum())
        allowed &= ~quiet
        check = True

    brand = o.brand
    if _may_cap(brand, state.card_event_times.size):
        cap = _charge_caps(o, grid_ns)
        excluded[Reason.NETWORK_LIMIT] = int((allowed & ~cap).sum())
        allowed &= cap
        check = True
    else:  # too few card events to reach a cap
        excluded[Reason.NETWORK_LIMIT] = 0
    if excluded[Reason.NETWORK_LIMIT]:
        notes.append(f"{excluded[Reason.NETWORK_LIMIT]} candidate hours over {brand} caps")

    if check and not allowed.any():
        reason = (
            Reason.NETWORK_LIMIT
            if excluded.get(Reason.NETWORK_LIMIT, 0) > 0
            else Reason.QUIET_HOURS
        )
        source = VISA_SOURCE if brand == "visa" else MASTERCARD_SOURCE
        return _stop(
            state,
            reason,
            source if reason == Reason.NETWORK_LIMIT else MERCHANT_SOURCE,
            note="no allowed retry time remains in the window",
            decline_code=last_code,
            family=family,
            retries_used=retries_used,
        )
    return RuleResult(
        charge_id=state.charge_id,
        stop=False,
        grid=grid,
        allowed=allowed,
        local_hours=hours,
        retries_left=retries_left,
        retries_used=retries_used,
        first_failure=np.datetime64(first_failure, "ns"),
        notes=tuple(notes),
        excluded=excluded,
        decline_code=last_code,
        decline_family=family,
    )


def _opt_str(value: object) -> str | None:
    return None if value is None or pd.isna(value) else str(value)  # type: ignore[call-overload]


def _opt_int(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)  # type: ignore[call-overload]


def card_refs(frame: pd.DataFrame) -> list[CardRef]:
    """One :class:`CardRef` per row of a canonical contract frame."""
    brands = frame[c.CARD_BRAND].tolist()
    ids = frame[c.CARD_ID].tolist() if c.CARD_ID in frame else [None] * len(frame)
    months = frame[c.CARD_EXP_MONTH].tolist()
    years = frame[c.CARD_EXP_YEAR].tolist()
    return [
        CardRef(
            brand=str(b).lower() if _opt_str(b) else "unknown",
            card_id=_opt_str(i),
            exp_month=_opt_int(m),
            exp_year=_opt_int(y),
        )
        for b, i, m, y in zip(brands, ids, months, years, strict=True)
    ]


@dataclass(frozen=True, kw_only=True)
class RuleRows:
    """The contract columns the rules read, as plain lists / int64 arrays (no pandas).

    Built once per batch from a canonical frame (:meth:`from_frame`) or from
    :class:`features.build.AttemptColumns` (:meth:`from_columns`); strings are ``None`` when
    missing, brands lower-case (``"unknown"`` when missing), expiry ``None`` when missing.
    """

    charge_id: list[Any]
    customer_id: list[Any]
    attempted_at: np.ndarray
    outcome: list[str]
    decline_code: list[str | None]
    advice_code: list[str | None]
    brand: list[str]
    card_id: list[str | None]
    exp_month: list[int | None]
    exp_year: list[int | None]
    timezone: list[Any]
    country: list[Any]

    def __len__(self) -> int:
        return len(self.charge_id)

    def card(self, i: int) -> CardRef:
        """The card of row ``i``."""
        return CardRef(
            brand=self.brand[i],
            card_id=self.card_id[i],
            exp_month=self.exp_month[i],
            exp_year=self.exp_year[i],
        )

    def same_card(self, card: CardRef, rows: np.ndarray) -> np.ndarray:
        """Whether each row of ``rows`` used ``card`` (:meth:`CardRef.same_as`)."""
        key = (card.brand, card.exp_month, card.exp_year)
        out = np.empty(rows.size, dtype=bool)
        for k, i in enumerate(rows.tolist()):
            other_id = self.card_id[i]
            if card.card_id is not None and other_id is not None:
                out[k] = card.card_id == other_id
            else:
                out[k] = key == (self.brand[i], self.exp_month[i], self.exp_year[i])
        return out

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> RuleRows:
        """The rules' columns of a canonical contract frame."""
        n = len(frame)

        def strs(col: str) -> list[str | None]:
            return [_opt_str(v) for v in frame[col].tolist()] if col in frame else [None] * n

        def ints(col: str) -> list[int | None]:
            return [_opt_int(v) for v in frame[col].tolist()] if col in frame else [None] * n

        times = frame[c.ATTEMPTED_AT].to_numpy(dtype="datetime64[ns]").astype(np.int64)
        return cls(
            charge_id=frame[c.CHARGE_ID].tolist(),
            customer_id=frame[c.CUSTOMER_ID].tolist() if c.CUSTOMER_ID in frame else [None] * n,
            attempted_at=times,
            outcome=[str(o) for o in frame[c.OUTCOME].tolist()],
            decline_code=strs(c.DECLINE_CODE),
            advice_code=strs(c.NETWORK_ADVICE_CODE),
            brand=[b.lower() if b else "unknown" for b in strs(c.CARD_BRAND)],
            card_id=strs(c.CARD_ID),
            exp_month=ints(c.CARD_EXP_MONTH),
            exp_year=ints(c.CARD_EXP_YEAR),
            timezone=frame[c.CUSTOMER_TIMEZONE].tolist()
            if c.CUSTOMER_TIMEZONE in frame
            else [None] * n,
            country=frame[c.CARD_COUNTRY].tolist() if c.CARD_COUNTRY in frame else [None] * n,
        )

    @classmethod
    def from_columns(cls, cols: AttemptColumns) -> RuleRows:
        """The rules' columns of :class:`features.build.AttemptColumns` (serving's fast path)."""
        n = cols.n_rows
        data = cols.columns

        def raw(col: str) -> list[Any]:
            values = data.get(col)
            if values is None:
                return [None] * n
            return values.tolist() if isinstance(values, np.ndarray) else list(values)

        def strs(col: str) -> list[str | None]:
            return [None if v is None or v != v else str(v) for v in raw(col)]

        def ints(col: str) -> list[int | None]:
            return [None if v is None or v != v else int(v) for v in raw(col)]

        return cls(
            charge_id=raw(c.CHARGE_ID),
            customer_id=raw(c.CUSTOMER_ID),
            attempted_at=np.asarray(data[c.ATTEMPTED_AT], dtype=np.int64),
            outcome=[str(o) for o in raw(c.OUTCOME)],
            decline_code=strs(c.DECLINE_CODE),
            advice_code=strs(c.NETWORK_ADVICE_CODE),
            brand=[b.lower() if b else "unknown" for b in strs(c.CARD_BRAND)],
            card_id=strs(c.CARD_ID),
            exp_month=ints(c.CARD_EXP_MONTH),
            exp_year=ints(c.CARD_EXP_YEAR),
            timezone=raw(c.CUSTOMER_TIMEZONE),
            country=raw(c.CARD_COUNTRY),
        )


def _group_sorted(keys: list[Any], times: np.ndarray) -> tuple[dict[Any, np.ndarray], np.ndarray]:
    """Rows grouped by key, each group in time order (stable): key -> row positions."""
    if not keys:
        return {}, np.array([], dtype=np.int64)
    if len(set(keys)) == 1:  # the dict's notion of equal keys, as ``lookup`` below
        # One key (a single-charge request): the stable time order is the whole grouping.
        return {keys[0]: np.argsort(times, kind="stable")}, np.zeros(len(keys), dtype=np.int64)
    lookup: dict[Any, int] = {}
    codes = np.fromiter(
        (lookup.setdefault(k, len(lookup)) for k in keys), dtype=np.int64, count=len(keys)
    )
    order = np.lexsort((times, codes))  # stable: ties keep the input order
    sorted_codes = codes[order]
    bounds = np.searchsorted(sorted_codes, np.arange(len(lookup) + 1))
    groups = {k: order[bounds[v] : bounds[v + 1]] for k, v in lookup.items()}
    return groups, codes


def _view_ns(values: np.ndarray) -> np.ndarray:
    return values.view("datetime64[ns]")


def _astype_ns(values: np.ndarray) -> np.ndarray:
    return values.astype("datetime64[ns]")


_ZONES: dict[tuple[Any, Any], str] = {}


def _resolve_zone_cached(customer_timezone: Any, card_country: Any) -> str:
    """:func:`resolve_zone`, memoised (it validates the zone through ZoneInfo on every call)."""
    try:
        return _ZONES[(customer_timezone, card_country)]
    except KeyError:
        pass
    except TypeError:  # unhashable values: not cached
        return resolve_zone(customer_timezone, card_country)
    zone = resolve_zone(customer_timezone, card_country)
    if len(_ZONES) >= 4096:
        _ZONES.clear()
    _ZONES[(customer_timezone, card_country)] = zone
    return zone


def charge_states_from_rows(
    *,
    charge_ids: Sequence[Any],
    now: np.ndarray,
    attempts: RuleRows,
    history: RuleRows | None = None,
    current_cards: Sequence[CardRef | None] | None = None,
) -> list[ChargeState]:
    """Build the rules' view of every charge from plain columns (no pandas).

    Parameters
    ----------
    charge_ids
        The charges to decide.
    now
        Decision time per charge (``datetime64[ns]``, UTC naive).
    attempts
        The charges' attempts (any order; sorted by time per charge here, stable).
    history
        The customers' other attempts (rows of the decided charge itself are ignored).
    current_cards
        Optional card per charge that the next retry would use; ``None`` = the card of the
        charge's last attempt.
    """
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
    # int64 ns columns as datetime64[ns]: a view of the (fresh, fancy-indexed) rows; other
    # dtypes are converted as before.
    as_ns: Callable[[np.ndarray], np.ndarray] = (
        _view_ns if attempts.attempted_at.dtype == np.int64 else _astype_ns
    )
    failed_all: np.ndarray | None = None  # per attempt row: failed (built when first needed)
    retry_all: np.ndarray | None = None  # per attempt row: not the first of its charge
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
        times = as_ns(attempts.attempted_at[idx])
        cards = tuple([attempts.card(i) for i in rows])
        current = None if current_cards is None else current_cards[k]
        current = current or cards[-1]
        outcomes = tuple([attempts.outcome[i] for i in rows])
        last = rows[-1]
        zone = _resolve_zone_cached(attempts.timezone[last], attempts.country[last])
        decline_codes = tuple([attempts.decline_code[i] for i in rows])
        advice_codes = tuple([attempts.advice_code[i] for i in rows])
        hidx = None
        if history is not None and hist_groups:
            hidx = hist_groups.get(attempts.customer_id[last])
            if hidx is not None and hidx.size:
                hidx = hidx[np.array([history.charge_id[i] != charge_id for i in hidx.tolist()])]
        if history is None or hidx is None or not hidx.size:
            # No other charge of the customer: the card events are this charge's attempts on
            # the current card (read from batch-wide columns rather than rebuilt per charge).
            if failed_all is None:
                failed_all = np.fromiter(
                    (o == c.FAILED for o in attempts.outcome), dtype=bool, count=len(attempts)
                )
                retry_all = np.ones(len(attempts), dtype=bool)
                retry_all[[g[0] for g in groups.values()]] = False
            assert retry_all is not None
            same = attempts.same_card(current, idx)
            sel = idx if same.all() else idx[same]
            events = (as_ns(attempts.attempted_at[sel]), failed_all[sel], retry_all[sel])
        else:
            # Card events: this charge's attempts plus the customer's other charges on this card.
            ev_t = [attempts.attempted_at[idx], history.attempted_at[hidx]]
            ev_f = [
                np.array([o == c.FAILED for o in outcomes], dtype=bool),
                np.array([history.outcome[i] == c.FAILED for i in hidx.tolist()]),
            ]
            ev_r = [np.arange(len(outcomes)) > 0, hist_retry[hidx]]
            same = np.concatenate(
                [attempts.same_card(current, idx), history.same_card(current, hidx)]
            )
            events = (
                np.concatenate(ev_t)[same].astype("datetime64[ns]"),
                np.concatenate(ev_f).astype(bool)[same],
                np.concatenate(ev_r).astype(bool)[same],
            )
        states.append(
            ChargeState(
                charge_id=str(charge_id),
                now=t_now,
                attempt_times=times,
                outcomes=outcomes,
                decline_codes=decline_codes,
                advice_codes=advice_codes,
                cards=cards,
                current_card=current,
                timezone=zone,
                card_event_times=events[0],
                card_event_failed=events[1],
                card_event_is_retry=events[2],
            )
        )
    return states


def charge_states(
    batch: DecisionBatch,
    *,
    current_cards: Sequence[CardRef | None] | None = None,
    columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
) -> list[ChargeState]:
    """Build the rules' view of every charge of ``batch``.

    Parameters
    ----------
    batch
        Failed charges, their attempts and the customers' history.
    current_cards
        Optional card per charge that the next retry would use (after a card update); ``None``
        (or a ``None`` entry) means the card of the charge's last attempt.
    columns
        Optional ``(attempts, history)`` holding the same rows as ``batch.attempts`` /
        ``batch.history`` as :class:`features.build.AttemptColumns`; read instead of the frames.
    """
    if columns is not None:
        attempts = RuleRows.from_columns(columns[0])
        history = None if columns[1] is None else RuleRows.from_columns(columns[1])
    else:
        attempts = RuleRows.from_frame(batch.attempts)
        hist_frame = batch.history
        history = (
            None if hist_frame is None or not len(hist_frame) else RuleRows.from_frame(hist_frame)
        )
    return charge_states_from_rows(
        charge_ids=batch.charge_ids.tolist(),
        now=np.asarray(batch.now),
        attempts=attempts,
        history=history,
        current_cards=current_cards,
    )


def evaluate_rules_batch(
    states: Sequence[ChargeState], constraints: Constraints, *, grid_hours: int = 1
) -> list[RuleResult]:
    """:func:`evaluate_rules` of every charge, with the grid stage vectorised over the batch.

    The stop rules run per charge (the same code as :func:`evaluate_rules`); the candidate
    grids, local hours, quiet hours and the networks' reattempt caps of all the remaining charges
    are then computed in one pass of flat arrays. Results equal ``[evaluate_rules(s, ...) for s
    in states]`` (tested on random charges); a charge whose zone changes its UTC offset inside
    its grid gets its local hours per charge, and a batch whose grids are too far apart to share
    one int64 search key has its caps counted per charge.
    """
    if len(states) < 2:  # one charge: the flat arrays only add overhead
        return [evaluate_rules(s, constraints, grid_hours=grid_hours) for s in states]
    out: list[RuleResult | None] = []
    opened: list[tuple[int, _Open]] = []
    for i, state in enumerate(states):
        screened = _screen(state, constraints, grid_hours=grid_hours)
        if isinstance(screened, RuleResult):
            out.append(screened)
        else:
            out.append(None)
            opened.append((i, screened))
    if opened:
        for i, result in zip(
            (i for i, _ in opened), _grid_verdicts([o for _, o in opened], constraints), strict=True
        ):
            out[i] = result
    return [r for r in out if r is not None]


def _grid_verdicts(opened: list[_Open], constraints: Constraints) -> list[RuleResult]:
    """:func:`_grid_verdict` of many screened charges in flat numpy arrays."""
    k = len(opened)
    start = np.fromiter((o.start for o in opened), dtype=np.int64, count=k)
    end = np.fromiter((o.window_end for o in opened), dtype=np.int64, count=k)
    step = np.fromiter((o.step for o in opened), dtype=np.int64, count=k)
    sizes = (end - start) // step + 1  # len(np.arange(start, end + 1, step)), start <= end
    bounds = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    total = int(bounds[-1])
    # Grid point r of charge j: start[j] + (r - bounds[j]) * step[j].
    if bool((step == step[0]).all()):
        flat_ns = np.repeat(start - bounds[:-1] * step[0], sizes) + (
            np.arange(total, dtype=np.int64) * step[0]
        )
    else:
        seg = np.repeat(np.arange(k, dtype=np.int64), sizes)
        flat_ns = start[seg] + (np.arange(total, dtype=np.int64) - bounds[seg]) * step[seg]
    # A view, not a copy: the results' grids are slices of it, as they were of the copy.
    flat = flat_ns.view("datetime64[ns]")
    last = start + (sizes - 1) * step
    lo, hi = bounds[:-1].tolist(), bounds[1:].tolist()

    # Local hours: one UTC offset per charge when its zone keeps the same offset at both ends
    # of its grid (exactly as local_hours), else converted per charge.
    offset = np.zeros(k, dtype=np.int64)
    slow: list[int] = []
    for j, (o, a, b) in enumerate(zip(opened, start.tolist(), last.tolist(), strict=True)):
        zone = o.state.timezone
        if zone in ("UTC", "Etc/UTC"):
            continue
        first, final = utc_offset(zone, a), utc_offset(zone, b)
        if first is not None and first == final:
            offset[j] = int(first.total_seconds()) * 1_000_000_000
        else:
            slow.append(j)
    step0 = int(step[0])
    if step0 % HOUR_NS == 0 and bool((step == step0).all()) and not (start % HOUR_NS).any():
        # Whole-hour grids: the local hour of point r is (h0 + r * grid hours) % 24 with h0 the
        # local hour of the start (floor division distributes over whole hours exactly), so
        # each charge's hours are a prefix of one of at most 24 precomputed cycles; cheaper
        # than dividing every grid time.
        h0 = (((start + offset) // HOUR_NS) % 24).tolist()
        cycle = np.arange(int(sizes.max()), dtype=np.int64) * (step0 // int(HOUR_NS))
        cycles = {h: (cycle + h) % 24 for h in set(h0)}
        hours = np.concatenate([cycles[h][:m] for h, m in zip(h0, sizes.tolist(), strict=True)])
    else:
        hours = ((flat_ns + np.repeat(offset, sizes)) // HOUR_NS) % 24
    for j in slow:
        hours[lo[j] : hi[j]] = local_hours(flat[lo[j] : hi[j]], opened[j].state.timezone)

    allowed = np.ones(total, dtype=bool)
    quiet_excluded: list[int] | None = None
    if constraints.quiet_hours is not None:
        q0, q1 = constraints.quiet_hours
        quiet = (hours >= q0) & (hours < q1) if q0 <= q1 else (hours >= q0) | (hours < q1)
        quiet_excluded = np.add.reduceat(quiet, bounds[:-1]).tolist()
        allowed &= ~quiet

    capped = _capped(opened)
    if capped.any():
        cap = np.ones(total, dtype=bool)
        rows = np.repeat(capped, sizes)
        sel = np.flatnonzero(capped).tolist()
        sub_sizes = sizes[capped]
        sub_bounds = np.zeros(len(sel) + 1, dtype=np.int64)
        np.cumsum(sub_sizes, out=sub_bounds[1:])
        cap[rows] = _network_caps(
            [opened[j] for j in sel],
            flat_ns[rows],
            sub_sizes,
            sub_bounds,
            start[capped],
            last[capped],
        )
        network = allowed & ~cap
        network_excluded = np.add.reduceat(network, bounds[:-1]).tolist()
        allowed &= cap
    else:  # no charge has enough card events to reach a cap
        network_excluded = [0] * k
    any_allowed = np.logical_or.reduceat(allowed, bounds[:-1]).tolist()

    results: list[RuleResult] = []
    for j, o in enumerate(opened):
        state = o.state
        excluded: dict[str, int] = {}
        if quiet_excluded is not None:
            excluded[Reason.QUIET_HOURS] = int(quiet_excluded[j])
        excluded[Reason.NETWORK_LIMIT] = int(network_excluded[j])
        notes = list(o.notes)
        if excluded[Reason.NETWORK_LIMIT]:
            notes.append(f"{excluded[Reason.NETWORK_LIMIT]} candidate hours over {o.brand} caps")
        if not any_allowed[j]:
            reason = (
                Reason.NETWORK_LIMIT
                if excluded.get(Reason.NETWORK_LIMIT, 0) > 0
                else Reason.QUIET_HOURS
            )
            source = VISA_SOURCE if o.brand == "visa" else MASTERCARD_SOURCE
            results.append(
                _stop(
                    state,
                    reason,
                    source if reason == Reason.NETWORK_LIMIT else MERCHANT_SOURCE,
                    note="no allowed retry time remains in the window",
                    decline_code=o.last_code,
                    family=o.family,
                    retries_used=o.retries_used,
                )
            )
            continue
        a, b = lo[j], hi[j]
        results.append(
            RuleResult(
                charge_id=state.charge_id,
                stop=False,
                grid=flat[a:b],
                allowed=allowed[a:b],
                local_hours=hours[a:b],
                retries_left=o.retries_left,
                retries_used=o.retries_used,
                first_failure=np.datetime64(o.first_failure, "ns"),
                notes=tuple(notes),
                excluded=excluded,
                decline_code=o.last_code,
                decline_family=o.family,
            )
        )
    return results


# Fewest card events that can reach a network's cap (a trailing count never exceeds the
# number of events): charges with fewer are never capped and skip the counting.
_VISA_MIN_EVENTS = taxonomy.VISA_MAX_REATTEMPTS_30D
_MASTERCARD_MIN_EVENTS = min(
    taxonomy.MASTERCARD_MAX_DECLINES_24H, taxonomy.MASTERCARD_MAX_DECLINES_30D
)


def _may_cap(brand: str, n_events: int) -> bool:
    """Whether a charge of ``brand`` with ``n_events`` card events can reach a network cap."""
    if brand == "visa":
        return n_events >= _VISA_MIN_EVENTS
    if brand == "mastercard":
        return n_events >= _MASTERCARD_MIN_EVENTS
    return False


def _capped(opened: list[_Open]) -> np.ndarray:
    """Which screened charges can reach a network cap (:func:`_may_cap`)."""
    return np.fromiter(
        (_may_cap(o.brand, o.state.card_event_times.size) for o in opened),
        dtype=bool,
        count=len(opened),
    )


# Largest search key of the batched caps (int64 with headroom).
_KEY_LIMIT = 2**62


def _network_caps(
    opened: list[_Open],
    flat_ns: np.ndarray,
    sizes: np.ndarray,
    bounds: np.ndarray,
    start: np.ndarray,
    last: np.ndarray,
) -> np.ndarray:
    """The networks' reattempt caps (as in :func:`_charge_caps`) at every flat grid time.

    Visa: at most 20 reattempts per card in 30 days (categories 2-4); Mastercard: at most 10
    declines per card in 24 hours and 35 in 30 days (VISA_SOURCE / MASTERCARD_SOURCE). The
    card events of all charges are counted with one sorted int64 key ``charge * R + (t - base)``
    (``base``: the charge's lowest window bound minus 1, earlier events clipped to it).
    """
    k = len(opened)
    cap = np.ones(flat_ns.size, dtype=bool)
    brands = [o.brand for o in opened]
    is_visa = np.fromiter((b == "visa" for b in brands), dtype=bool, count=k)
    is_mc = np.fromiter((b == "mastercard" for b in brands), dtype=bool, count=k)
    if not (is_visa.any() or is_mc.any()):
        return cap
    span30 = 30 * DAY_NS
    base = start - span30 - 1
    width = int((last - base).max()) + 2
    if k * width >= _KEY_LIMIT:  # grids too far apart for one int64 key: per charge
        for j, o in enumerate(opened):
            a, b = int(bounds[j]), int(bounds[j + 1])
            cap[a:b] = _charge_caps(o, flat_ns[a:b])
        return cap
    ev_sizes = [o.state.card_event_times.size for o in opened]
    if sum(ev_sizes) == 0:
        return cap
    ev = np.concatenate(
        [o.state.card_event_times.astype("datetime64[ns]").astype(np.int64) for o in opened]
    )
    ev_failed = np.concatenate([o.state.card_event_failed for o in opened]).astype(bool)
    ev_retry = np.concatenate([o.state.card_event_is_retry for o in opened]).astype(bool)
    ev_seg = np.repeat(np.arange(k, dtype=np.int64), ev_sizes)
    now = np.fromiter((o.now for o in opened), dtype=np.int64, count=k)
    keep = ev < now[ev_seg]
    w = np.int64(width)
    # Events at or before the charge's base count in every window bound alike: clip them there.
    key = ev_seg * w + (np.maximum(ev, base[ev_seg]) - base[ev_seg])
    # Search key of every grid time, in the same per-charge ranges as the events' keys.
    q_all = np.repeat(np.arange(k, dtype=np.int64) * w - base, sizes) + flat_ns

    def counts(events: np.ndarray, span: np.int64, q: np.ndarray) -> np.ndarray:
        upper = np.searchsorted(events, q, side="left")
        lower = np.searchsorted(events, q - span, side="right")
        return upper - lower

    visa_rows = np.flatnonzero(np.repeat(is_visa, sizes))
    if visa_rows.size:
        # Visa: at most 20 reattempts per card in 30 days (categories 2-4).
        events = np.sort(key[keep & ev_retry & is_visa[ev_seg]])
        q = q_all[visa_rows]
        cap[visa_rows] = counts(events, span30, q) < taxonomy.VISA_MAX_REATTEMPTS_30D
    mc_rows = np.flatnonzero(np.repeat(is_mc, sizes))
    if mc_rows.size:
        # Mastercard: at most 10 declines per card in 24 hours and 35 in 30 days.
        events = np.sort(key[keep & ev_failed & is_mc[ev_seg]])
        q = q_all[mc_rows]
        cap[mc_rows] = (counts(events, DAY_NS, q) < taxonomy.MASTERCARD_MAX_DECLINES_24H) & (
            counts(events, span30, q) < taxonomy.MASTERCARD_MAX_DECLINES_30D
        )
    return cap
