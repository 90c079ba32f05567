"""The per-decision state: everything known at ``now``, independent of the candidate time.

:func:`_decision_inputs` computes, for each decision (last known row of its charge, time ``now``),
the customer aggregates strictly before ``now``, the card counters at ``now`` and the
per-decision values the candidate-dependent features read (:class:`_State`), plus the inputs of
the candidate-independent features (:class:`StateInputs`). Those features' computations are
the functions below, declared in :mod:`features.registry`;
:func:`features.evaluate._decision_state` evaluates them into ``_State.numeric`` /
``_State.categorical`` (one value per decision, shared by every candidate time).

Known: the charge's rows up to the decision's last row (all at or before ``now``) and every
other row with ``attempted_at < now``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np

from retryopt.features.columns import _INT64_MAX, _SMALL_PRODUCT, _Codes, _unique_inverse
from retryopt.features.history import _CUSTOMER_EVENTS, _Q, _Log
from retryopt.features.localtime import NAT_INT
from retryopt.features.pit import _pit_counts, _PitIndex
from retryopt.features.spec import MISSING_LEVEL

__all__ = ["StateInputs"]

_NO_PREVIOUS_CODE: Final = "none"


@dataclass
class _State:
    """Per-decision state (one value per decision), shared by all its candidate times."""

    li: np.ndarray  # last known attempt of the charge (log row)
    now: np.ndarray
    first_t: np.ndarray
    last_t: np.ndarray
    card_key: np.ndarray
    card_known_now: np.ndarray  # known attempts of the card before now (F(key, now))
    card_at_now: np.ndarray  # own attempts of the card at exactly `now`
    tenure_start: np.ndarray
    zone: np.ndarray  # zone code (in log.zone.uniques) of the latest attempt
    card_added: np.ndarray  # card_added_at of the latest attempt (NAT_INT = missing)
    card_added_missing: bool  # any card_added_at missing
    exp_end: np.ndarray  # end of the card's expiry month (UTC ns)
    dom_mean: np.ndarray  # circular mean angle of past success day-of-month (NaN if none)
    wd_mean: np.ndarray
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # candidate-independent
    categorical: dict[str, _Codes] = field(default_factory=dict)


class StateInputs:
    """Inputs of the candidate-independent features of decisions.

    Parameters
    ----------
    log
        The attempt log.
    li
        Last known row of each decision's charge.
    agg
        Customer aggregates per decision (:data:`_CUSTOMER_EVENTS` sums over the customer's
        other charges' events strictly before ``now``).

    Attributes
    ----------
    s
        First row of each decision's charge.
    pos
        Attempts of the charge before the last known one.
    last_pair
        (decline code, advice code) pair of the latest attempt.
    card_key
        Card of the latest attempt.
    amount
        Amount of the charge (float64 minor units).
    charges, first_failures, recoveries, successes
        The customer's prior charges, those whose first attempt failed, those recovered after
        it, and prior successful payments (float64).
    """

    def __init__(self, log: _Log, li: np.ndarray, agg: dict[str, np.ndarray]) -> None:
        self.log = log
        self.li = li
        self.agg = agg
        self.s = log.start[li]
        self.pos = li - self.s
        self.last_pair = log.family.codes[li]
        self.card_key = log.card_key[li]
        self.amount = log.amount[li].astype(np.float64)
        self.charges = agg["charges"].astype(np.float64)
        self.first_failures = agg["first_failures"].astype(np.float64)
        self.recoveries = agg["recoveries"].astype(np.float64)
        self.successes = agg["successes"].astype(np.float64)


def _sequence_codes(log: _Log, li: np.ndarray, has_prev: np.ndarray) -> _Codes:
    prev_codes = np.where(has_prev, log.code.codes[np.maximum(li - 1, 0)], -2).astype(np.int64)
    last_codes = log.code.codes[li].astype(np.int64)
    n_u = len(log.code.uniques) + 2
    pair = (prev_codes + 2) * n_u + last_codes
    pair_u, inv = _unique_inverse(pair)
    names = []
    for p in pair_u.tolist():
        a = p // n_u - 2
        b = p % n_u
        left = _NO_PREVIOUS_CODE if a == -2 else (log.code.uniques[a] or MISSING_LEVEL)
        right = log.code.uniques[b] or MISSING_LEVEL
        names.append(f"{left}>{right}")
    return _Codes(inv.reshape(-1).astype(np.int64), np.asarray(names, dtype=object))


def _decision_inputs(log: _Log, li: np.ndarray, now: np.ndarray) -> tuple[_State, StateInputs]:
    """Point-in-time state of each decision (last known row ``li`` of the charge, time ``now``).

    Returns
    -------
    tuple
        The :class:`_State` (features not yet evaluated) and the :class:`StateInputs` of the
        candidate-independent features.
    """
    s = log.start[li]
    last_t = log.t[li]
    cust = log.customer[li]

    # Own rows with attempted_at < now end at `end` (exclusive); customer aggregates are the
    # customer's events before now minus the charge's own.
    end = np.where(last_t < now, li + 1, log.run_start[li])
    agg: dict[str, np.ndarray] = {}
    if log.n * li.size <= _SMALL_PRODUCT:
        # Small logs (online scoring): one integer matrix product over explicit masks (the
        # same integer sums as the cumulative path below, without its per-event overhead).
        idx = np.arange(log.n, dtype=np.int64)
        weight = ((log.customer == cust[:, None]) & (log.t < now[:, None])).astype(np.int64)
        weight -= (idx >= s[:, None]) & (idx < end[:, None])
        sums = log.customer_event_matrix() @ weight.T
        agg = dict(zip(_CUSTOMER_EVENTS, sums, strict=True))
    else:
        pit = _PitIndex(log.customer, log.t, cust, now)
        for name in _CUSTOMER_EVENTS:
            ev = log.customer_event(name)
            total = pit.sums(ev)
            cs = np.concatenate([[0], np.cumsum(ev)])
            del ev
            agg[name] = total - (cs[end] - cs[s])
            del cs
        del pit
    vars(log).pop("_success_calendar", None)  # drop the cached success calendar
    inputs = StateInputs(log, li, agg)

    key = inputs.card_key
    card_known_now = _pit_counts(log.card_key, log.t, key, now)
    card_at_now = np.where(last_t == now, log.tie_rank[li] + 1, 0)

    cust_min = np.full(int(log.customer.max(initial=0)) + 1, _INT64_MAX)
    np.minimum.at(cust_min, log.customer, log.t)
    tenure_start = cust_min[cust]

    succ_n = inputs.successes
    dom_mean = np.where(
        succ_n > 0, np.arctan2(agg["dom_sin"].astype(float), agg["dom_cos"].astype(float)), np.nan
    )
    wd_mean = np.where(
        succ_n > 0, np.arctan2(agg["wd_sin"].astype(float), agg["wd_cos"].astype(float)), np.nan
    )
    card_added = log.card_added[li]
    state = _State(
        li=li,
        now=now,
        first_t=log.t[s],
        last_t=last_t,
        card_key=key,
        card_known_now=card_known_now,
        card_at_now=card_at_now,
        tenure_start=tenure_start,
        zone=log.zone.codes[li],
        card_added=card_added,
        card_added_missing=bool((card_added == NAT_INT).any()),
        exp_end=log.exp_end[li],
        dom_mean=dom_mean,
        wd_mean=wd_mean,
    )
    return state, inputs


def _distinct_codes(log: _Log, s: np.ndarray, li: np.ndarray) -> np.ndarray:
    """Distinct non-missing decline codes among rows s..li of each decision's charge."""
    codes = log.code.codes
    if s.size * log.n <= _SMALL_PRODUCT:
        # Few decisions on a small log (online): count distinct strings with sets.
        uniq = log.code.uniques.tolist()
        code_list = codes.tolist()
        return np.asarray(
            [
                len({uniq[c] for c in code_list[a : b + 1] if c >= 0 and uniq[c] is not None})
                for a, b in zip(s.tolist(), li.tolist(), strict=True)
            ],
            dtype=np.int64,
        )
    # Mark, per log row, whether its code value first appears at this row within its charge.
    first_seen: dict[str, int] = {}
    dense = np.asarray(  # equal strings share a code
        [first_seen.setdefault(u or "", len(first_seen)) for u in log.code.uniques.tolist()],
        dtype=np.int64,
    )
    value = dense[codes]
    missing = np.asarray([u is None for u in log.code.uniques], dtype=bool)[codes]
    order = np.lexsort((np.arange(log.n), value, log.charge))
    first = np.ones(log.n, dtype=bool)
    if log.n > 1:
        same = (log.charge[order][1:] == log.charge[order][:-1]) & (
            value[order][1:] == value[order][:-1]
        )
        first[order[1:]] = ~same
    first &= ~missing
    cs = np.concatenate([[0], np.cumsum(first)])
    return cs[li + 1] - cs[s]


# ---- candidate-independent features (computed under np.errstate(divide/invalid="ignore")) ----


def retry_number(x: StateInputs) -> np.ndarray:
    """1 for the first retry, 2 for the second, ..."""
    return (x.pos + 1).astype(np.float64)


def last_decline_hard(x: StateInputs) -> np.ndarray:
    """1.0 when the latest decline is hard."""
    return x.log.pair_hard[x.last_pair].astype(np.float64)


def first_decline_hard(x: StateInputs) -> np.ndarray:
    """1.0 when the charge's first decline is hard."""
    return x.log.pair_hard[x.log.family.codes[x.s]].astype(np.float64)


def last_visa_category(x: StateInputs) -> np.ndarray:
    """Visa decline category of the latest code (NaN if none)."""
    return x.log.pair_visa[x.last_pair]


def advice_never_retry(x: StateInputs) -> np.ndarray:
    """1.0 when the latest advice code forbids retries."""
    return x.log.pair_never[x.last_pair].astype(np.float64)


def advice_min_wait_hours(x: StateInputs) -> np.ndarray:
    """Minimum wait of the latest advice code (NaN if none)."""
    return x.log.pair_wait[x.last_pair]


def distinct_codes(x: StateInputs) -> np.ndarray:
    """Distinct decline codes of the charge so far."""
    return _distinct_codes(x.log, x.s, x.li).astype(np.float64)


def prior_successes(x: StateInputs) -> np.ndarray:
    """Successful payments of the customer's other charges."""
    return x.successes


def _concentration(cos_sum: np.ndarray, sin_sum: np.ndarray, n: np.ndarray) -> np.ndarray:
    # Mean resultant length (0 = no preferred day, 1 = always the same day); the quantisation
    # can push it a hair above 1.
    return np.where(n > 0, np.minimum(np.hypot(cos_sum, sin_sum) / (n * _Q), 1.0), np.nan)


def success_dom_concentration(x: StateInputs) -> np.ndarray:
    """Mean resultant length of the successes' local days of month."""
    return _concentration(x.agg["dom_cos"], x.agg["dom_sin"], x.successes)


def success_weekday_concentration(x: StateInputs) -> np.ndarray:
    """Mean resultant length of the successes' local weekdays."""
    return _concentration(x.agg["wd_cos"], x.agg["wd_sin"], x.successes)


def prior_recoveries(x: StateInputs) -> np.ndarray:
    """Other charges recovered after a failed first attempt."""
    return x.recoveries


def mean_recovery_hours(x: StateInputs) -> np.ndarray:
    """Mean hours from first failure to recovery of those charges (NaN if none)."""
    recov = x.recoveries
    return np.where(recov > 0, x.agg["recovery_seconds"] / recov / 3600.0, np.nan)


def card_changed(x: StateInputs) -> np.ndarray:
    """1.0 when the latest attempt used another card than the first."""
    return (x.log.card_key[x.s] != x.card_key).astype(np.float64)


def log_amount(x: StateInputs) -> np.ndarray:
    """log(1 + amount in minor units)."""
    return np.log1p(np.maximum(x.amount, 0.0))


def amount_vs_customer_mean(x: StateInputs) -> np.ndarray:
    """Amount / mean first-attempt amount of the customer's other charges (NaN if none)."""
    charges = x.charges
    mean_amount = np.where(charges > 0, x.agg["amount_sum"] / charges, np.nan)
    return np.where(mean_amount > 0, x.amount / mean_amount, np.nan)


def prior_charges(x: StateInputs) -> np.ndarray:
    """Other charges of the customer started before now."""
    return x.charges


def prior_first_failures(x: StateInputs) -> np.ndarray:
    """Those whose first attempt failed."""
    return x.first_failures


def prior_recovery_rate(x: StateInputs) -> np.ndarray:
    """prior_recoveries / prior_first_failures (NaN if no failure)."""
    first_fail = x.first_failures
    return np.where(first_fail > 0, x.recoveries / first_fail, np.nan)


def last_decline_code(x: StateInputs) -> _Codes:
    """Latest decline code, normalised."""
    return x.log.code.take(x.li)


def first_decline_code(x: StateInputs) -> _Codes:
    """The charge's first decline code."""
    return x.log.code.take(x.s)


def last_decline_family(x: StateInputs) -> _Codes:
    """Taxonomy family of the latest decline."""
    return x.log.family.take(x.li)


def first_decline_family(x: StateInputs) -> _Codes:
    """Taxonomy family of the first decline."""
    return x.log.family.take(x.s)


def decline_sequence(x: StateInputs) -> _Codes:
    """``"<previous code>><latest code>"``."""
    return _sequence_codes(x.log, x.li, x.pos >= 1)


def network_advice_code(x: StateInputs) -> _Codes:
    """Latest network advice code, normalised."""
    return x.log.advice.take(x.li)


def card_brand(x: StateInputs) -> _Codes:
    """Card brand of the latest attempt."""
    return x.log.brand.take(x.li)


def card_funding(x: StateInputs) -> _Codes:
    """Card funding of the latest attempt."""
    return x.log.funding.take(x.li)


def card_country(x: StateInputs) -> _Codes:
    """Card country of the latest attempt."""
    return x.log.country.take(x.li)


def issuer(x: StateInputs) -> _Codes:
    """Issuer of the latest attempt."""
    return x.log.issuer.take(x.li)


def currency(x: StateInputs) -> _Codes:
    """Currency of the charge."""
    return x.log.currency.take(x.li)
