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

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from features import contract as c
from features import taxonomy
from features.decisions import Constraints, DecisionBatch

HOUR_NS = np.int64(3_600_000_000_000)
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


def local_hours(times: np.ndarray, zone: str) -> np.ndarray:
    """Local hour (0-23) of UTC-naive ``datetime64[ns]`` times in IANA ``zone``.

    Uses one UTC offset when the zone's offset is the same at both ends of the span (no DST
    transition inside), else converts every time.
    """
    if times.size == 0:
        return np.array([], dtype=np.int64)
    ns = times.astype("datetime64[ns]").astype(np.int64)
    if zone in ("UTC", "Etc/UTC"):
        return (ns // HOUR_NS) % 24
    tz = ZoneInfo(zone)
    first = datetime.fromtimestamp(int(ns.min()) / 1e9, tz=UTC).astimezone(tz).utcoffset()
    last = datetime.fromtimestamp(int(ns.max()) / 1e9, tz=UTC).astimezone(tz).utcoffset()
    if first is not None and first == last:
        offset = np.int64(int(first.total_seconds()) * 1_000_000_000)
        return ((ns + offset) // HOUR_NS) % 24
    idx = pd.DatetimeIndex(times.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(zone)
    return np.asarray(idx.hour, dtype=np.int64)


def resolve_zone(customer_timezone: object, card_country: object) -> str:
    """The customer's IANA zone: their own if valid, else the card country's default, else UTC."""
    if isinstance(customer_timezone, str) and customer_timezone:
        try:
            ZoneInfo(customer_timezone)
            return customer_timezone
        except (ZoneInfoNotFoundError, ValueError):
            pass
    if isinstance(card_country, str) and card_country:
        try:
            from features.timezones import COUNTRY_DEFAULT_TIMEZONE
        except ImportError:  # pragma: no cover - the module is part of the project
            return "UTC"
        return str(COUNTRY_DEFAULT_TIMEZONE.get(card_country.upper(), "UTC"))
    return "UTC"


def _trailing_counts(events: np.ndarray, grid_ns: np.ndarray, span_ns: np.int64) -> np.ndarray:
    """Number of ``events`` (sorted int64 ns) in ``(t - span, t)`` for every grid time ``t``."""
    if events.size == 0:
        return np.zeros(grid_ns.shape, dtype=np.int64)
    upper = np.searchsorted(events, grid_ns, side="left")
    lower = np.searchsorted(events, grid_ns - span_ns, side="right")
    return (upper - lower).astype(np.int64)


def _ceil_hour(ns: int) -> int:
    h = int(HOUR_NS)
    return -(-ns // h) * h


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
    grid_ns = np.arange(start, window_end + 1, step, dtype=np.int64)
    grid = grid_ns.astype("datetime64[ns]")
    allowed = np.ones(grid.shape, dtype=bool)
    excluded: dict[str, int] = {}
    hours = local_hours(grid, state.timezone)

    if constraints.quiet_hours is not None:
        q0, q1 = constraints.quiet_hours
        quiet = (hours >= q0) & (hours < q1) if q0 <= q1 else (hours >= q0) | (hours < q1)
        excluded[Reason.QUIET_HOURS] = int((allowed & quiet).sum())
        allowed &= ~quiet

    brand = state.current_card.brand.lower()
    ev = state.card_event_times.astype("datetime64[ns]").astype(np.int64)
    keep = ev < now
    ev, ev_failed, ev_retry = (
        ev[keep],
        state.card_event_failed[keep],
        state.card_event_is_retry[keep],
    )
    order = np.argsort(ev, kind="stable")
    ev, ev_failed, ev_retry = ev[order], ev_failed[order], ev_retry[order]
    cap = np.ones(grid.shape, dtype=bool)
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
    excluded[Reason.NETWORK_LIMIT] = int((allowed & ~cap).sum())
    allowed &= cap
    if excluded[Reason.NETWORK_LIMIT]:
        notes.append(f"{excluded[Reason.NETWORK_LIMIT]} candidate hours over {brand} caps")

    if not allowed.any():
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


def _column_list(frame: pd.DataFrame, column: str) -> list[object]:
    return frame[column].tolist() if column in frame else [None] * len(frame)


def charge_states(
    batch: DecisionBatch, *, current_cards: Sequence[CardRef | None] | None = None
) -> list[ChargeState]:
    """Build the rules' view of every charge of ``batch``.

    Parameters
    ----------
    batch
        Failed charges, their attempts and the customers' history.
    current_cards
        Optional card per charge that the next retry would use (after a card update); ``None``
        (or a ``None`` entry) means the card of the charge's last attempt.
    """
    attempts = batch.attempts
    groups: dict[Any, Any] = (
        attempts.groupby(c.CHARGE_ID, sort=False).indices if len(attempts) else {}
    )
    history = batch.history
    hist_groups: dict[Any, Any] = {}
    if history is not None and len(history):
        hist_groups = history.groupby(c.CUSTOMER_ID, sort=False).indices
    empty_t = np.array([], dtype="datetime64[ns]")
    states: list[ChargeState] = []
    for k, charge_id in enumerate(batch.charge_ids.tolist()):
        now = np.datetime64(batch.now[k], "ns")
        idx = groups.get(charge_id)
        if idx is None or len(idx) == 0:
            states.append(
                ChargeState(
                    charge_id=str(charge_id),
                    now=now,
                    attempt_times=empty_t,
                    outcomes=(),
                    decline_codes=(),
                    advice_codes=(),
                    cards=(),
                    current_card=CardRef(brand="unknown"),
                )
            )
            continue
        rows = attempts.iloc[idx]
        times = rows[c.ATTEMPTED_AT].to_numpy(dtype="datetime64[ns]")
        order = np.argsort(times, kind="stable")
        rows = rows.iloc[order]
        times = times[order]
        cards = card_refs(rows)
        current = None if current_cards is None else current_cards[k]
        current = current or cards[-1]
        outcomes = tuple(str(o) for o in rows[c.OUTCOME].tolist())
        codes = tuple(_opt_str(v) for v in rows[c.DECLINE_CODE].tolist())
        advice = tuple(_opt_str(v) for v in _column_list(rows, c.NETWORK_ADVICE_CODE))
        last = rows.iloc[-1]
        zone = resolve_zone(
            last[c.CUSTOMER_TIMEZONE] if c.CUSTOMER_TIMEZONE in rows else None,
            last[c.CARD_COUNTRY],
        )
        # Card events: this charge's attempts plus the customer's other charges on this card.
        ev_t = [times]
        ev_f = [np.array([o == c.FAILED for o in outcomes], dtype=bool)]
        ev_r = [np.arange(len(outcomes)) > 0]
        ev_same = [np.array([current.same_as(cd) for cd in cards], dtype=bool)]
        if hist_groups:
            hidx = hist_groups.get(last[c.CUSTOMER_ID])
            if hidx is not None and len(hidx):
                hrows = history.iloc[hidx]  # type: ignore[union-attr]
                hrows = hrows[hrows[c.CHARGE_ID].to_numpy() != charge_id]
                if len(hrows):
                    hrows = hrows.sort_values(c.ATTEMPTED_AT, kind="stable")
                    ht = hrows[c.ATTEMPTED_AT].to_numpy(dtype="datetime64[ns]")
                    ev_t.append(ht)
                    ev_f.append(hrows[c.OUTCOME].to_numpy(dtype=object) == c.FAILED)
                    ev_r.append(hrows[c.CHARGE_ID].duplicated().to_numpy())
                    ev_same.append(
                        np.array([current.same_as(cd) for cd in card_refs(hrows)], dtype=bool)
                    )
        same = np.concatenate(ev_same)
        states.append(
            ChargeState(
                charge_id=str(charge_id),
                now=now,
                attempt_times=times,
                outcomes=outcomes,
                decline_codes=codes,
                advice_codes=advice,
                cards=tuple(cards),
                current_card=current,
                timezone=zone,
                card_event_times=np.concatenate(ev_t)[same],
                card_event_failed=np.concatenate(ev_f)[same],
                card_event_is_retry=np.concatenate(ev_r)[same],
            )
        )
    return states
