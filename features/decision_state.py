"""The per-decision state: everything known at ``now``, independent of the candidate time.

:func:`_decision_state` computes, for each decision (last known row of its charge, time ``now``),
the customer aggregates strictly before ``now``, the card counters at ``now`` and the
candidate-independent features (:class:`_State`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from retryopt.features.columns import _INT64_MAX, _SMALL_PRODUCT, _Codes, _unique_inverse
from retryopt.features.history import _CUSTOMER_EVENTS, _Q, _Log
from retryopt.features.pit import _pit_counts, _PitIndex
from retryopt.features.spec import MISSING_LEVEL

_NO_PREVIOUS_CODE: Final = "none"


@dataclass
class _State:
    li: np.ndarray  # last known attempt of the charge (log row)
    now: np.ndarray
    first_t: np.ndarray
    last_t: np.ndarray
    card_key: np.ndarray
    card_known_now: np.ndarray  # known attempts of the card before now (F(key, now))
    card_at_now: np.ndarray  # own attempts of the card at exactly `now`
    tenure_start: np.ndarray
    numeric: dict[str, np.ndarray]  # candidate-independent numeric features
    categorical: dict[str, _Codes]
    dom_mean: np.ndarray  # circular mean angle of past success day-of-month (NaN if none)
    wd_mean: np.ndarray


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


def _decision_state(log: _Log, li: np.ndarray, now: np.ndarray) -> _State:
    """Point-in-time state of each decision (last known row ``li`` of the charge, time ``now``).

    Known: the charge's rows up to ``li`` (all at or before ``now``) and every other row with
    ``attempted_at < now``.
    """
    s = log.start[li]
    pos = li - s
    last_t = log.t[li]
    first_t = log.t[s]
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

    key = log.card_key[li]
    card_known_now = _pit_counts(log.card_key, log.t, key, now)
    card_at_now = np.where(last_t == now, log.tie_rank[li] + 1, 0)

    cust_min = np.full(int(log.customer.max(initial=0)) + 1, _INT64_MAX)
    np.minimum.at(cust_min, log.customer, log.t)
    tenure_start = cust_min[cust]

    charges = agg["charges"].astype(np.float64)
    first_fail = agg["first_failures"].astype(np.float64)
    recov = agg["recoveries"].astype(np.float64)
    succ_n = agg["successes"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recovery_rate = np.where(first_fail > 0, recov / first_fail, np.nan)
        mean_rec_h = np.where(recov > 0, agg["recovery_seconds"] / recov / 3600.0, np.nan)
        mean_amount = np.where(charges > 0, agg["amount_sum"] / charges, np.nan)
        amount = log.amount[li].astype(np.float64)
        amount_rel = np.where(mean_amount > 0, amount / mean_amount, np.nan)
        # Mean resultant length (0 = no preferred day, 1 = always the same day); the
        # quantisation can push it a hair above 1.
        dom_conc = np.where(
            succ_n > 0,
            np.minimum(np.hypot(agg["dom_cos"], agg["dom_sin"]) / (succ_n * _Q), 1.0),
            np.nan,
        )
        wd_conc = np.where(
            succ_n > 0,
            np.minimum(np.hypot(agg["wd_cos"], agg["wd_sin"]) / (succ_n * _Q), 1.0),
            np.nan,
        )
    dom_mean = np.where(
        succ_n > 0, np.arctan2(agg["dom_sin"].astype(float), agg["dom_cos"].astype(float)), np.nan
    )
    wd_mean = np.where(
        succ_n > 0, np.arctan2(agg["wd_sin"].astype(float), agg["wd_cos"].astype(float)), np.nan
    )

    # Distinct decline codes of the charge so far (rows s..li): small per charge, so count
    # first occurrences with a sort on (charge, code).
    distinct = _distinct_codes(log, s, li)

    has_prev = pos >= 1
    last_pair = log.family.codes[li]
    numeric = {
        "retry_number": (pos + 1).astype(np.float64),
        "last_decline_hard": log.pair_hard[last_pair].astype(np.float64),
        "first_decline_hard": log.pair_hard[log.family.codes[s]].astype(np.float64),
        "last_visa_category": log.pair_visa[last_pair],
        "advice_never_retry": log.pair_never[last_pair].astype(np.float64),
        "advice_min_wait_hours": log.pair_wait[last_pair],
        "distinct_codes": distinct.astype(np.float64),
        "prior_successes": succ_n,
        "success_dom_concentration": dom_conc,
        "success_weekday_concentration": wd_conc,
        "prior_recoveries": recov,
        "mean_recovery_hours": mean_rec_h,
        "card_changed": (log.card_key[s] != key).astype(np.float64),
        "log_amount": np.log1p(np.maximum(amount, 0.0)),
        "amount_vs_customer_mean": amount_rel,
        "prior_charges": charges,
        "prior_first_failures": first_fail,
        "prior_recovery_rate": recovery_rate,
    }
    categorical = {
        "last_decline_code": log.code.take(li),
        "first_decline_code": log.code.take(s),
        "last_decline_family": log.family.take(li),
        "first_decline_family": log.family.take(s),
        "decline_sequence": _sequence_codes(log, li, has_prev),
        "network_advice_code": log.advice.take(li),
        "card_brand": log.brand.take(li),
        "card_funding": log.funding.take(li),
        "card_country": log.country.take(li),
        "issuer": log.issuer.take(li),
        "currency": log.currency.take(li),
    }
    return _State(
        li=li,
        now=now,
        first_t=first_t,
        last_t=last_t,
        card_key=key,
        card_known_now=card_known_now,
        card_at_now=card_at_now,
        tenure_start=tenure_start,
        numeric=numeric,
        categorical=categorical,
        dom_mean=dom_mean,
        wd_mean=wd_mean,
    )


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
