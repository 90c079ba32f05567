"""Features at candidate retry times: everything that depends on the candidate time ``t``."""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa

from retryopt.features._fe_time import NAT_INT, NS_PER_DAY, NS_PER_HOUR, to_local_ns
from retryopt.features.calendar import (
    _CALENDAR_SPAN_MAX,
    _calendar_columns,
    _calendar_table,
    _circular_distance,
)
from retryopt.features.columns import _Codes
from retryopt.features.decision_state import _State
from retryopt.features.history import _Log
from retryopt.features.pit import _CardCounter, _pit_counts
from retryopt.features.registry import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from retryopt.features.spec import _join_blocks

# Windows of the per-card attempt counters, after the network limits they mirror:
# Mastercard allows at most 10 declines per card per merchant in 24 h and 35 in 30 days; Visa at
# most 20 reattempts in 30 days (Visa Core Rules, April 2026; see shared/domain-facts.md).
WINDOW_24H_NS: Final = 24 * NS_PER_HOUR
WINDOW_30D_NS: Final = 30 * NS_PER_DAY


def _candidate_features(
    log: _Log,
    st: _State,
    dec: np.ndarray,
    t_cand: np.ndarray,
    *,
    constants: bool = True,
    card_counter: _CardCounter | None = None,
) -> dict[str, Any]:
    """All features for candidate times ``t_cand`` of decisions ``dec`` (indices into ``st``).

    Returns numeric columns as float64 arrays and categoricals as :class:`_Codes`, in
    :data:`NUMERIC_FEATURES` / :data:`CATEGORICAL_FEATURES` order. ``constants=False`` leaves
    out the candidate-independent features (``st.numeric`` / ``st.categorical``), which
    :class:`CandidateEncoder` places per decision instead of per row; ``card_counter`` (built
    once per batch by the encoder) counts the card's attempts instead of :func:`_pit_counts`.
    """
    valid = t_cand != NAT_INT
    all_valid = bool(valid.all())
    now = st.now[dec]
    tt = t_cand if all_valid else np.where(valid, t_cand, now)
    out: dict[str, Any] = {}
    h = float(NS_PER_HOUR)
    day = float(NS_PER_DAY)
    out["hours_since_first_failure"] = (tt - st.first_t[dec]) / h
    out["hours_since_prev_attempt"] = (tt - st.last_t[dec]) / h
    out["hours_from_now"] = (tt - now) / h

    # Known attempts of the card in [t - W, t): other rows strictly before now, plus the
    # charge's own attempts at exactly now (the previous attempt).
    key = st.card_key[dec]
    lo24 = np.minimum(tt - WINDOW_24H_NS, now)
    lo30 = np.minimum(tt - WINDOW_30D_NS, now)
    if card_counter is not None:
        counts = card_counter.counts(np.concatenate([dec, dec]), np.concatenate([lo24, lo30]))
    else:
        counts = _pit_counts(
            log.card_key, log.t, np.concatenate([key, key]), np.concatenate([lo24, lo30])
        )
    n = tt.size
    known_now = st.card_known_now[dec]
    at_now = st.card_at_now[dec]
    out["card_attempts_24h"] = (
        known_now - counts[:n] + np.where(tt - WINDOW_24H_NS <= now, at_now, 0)
    ).astype(np.float64)
    out["card_attempts_30d"] = (
        known_now - counts[n:] + np.where(tt - WINDOW_30D_NS <= now, at_now, 0)
    ).astype(np.float64)

    # Local civil time in the customer's zone (DST-correct offset tables).
    local = to_local_ns(tt, log.zone.codes[st.li[dec]], log.zone.uniques)
    days = np.floor_divide(local, NS_PER_DAY)
    out["local_hour"] = (local - days * NS_PER_DAY) / h
    # Everything else of the local date depends on the day only: computed once per calendar
    # day of the span (a few days online; cached) and gathered per row.
    lo = int(days.min()) if n else 0
    span = int(days.max()) - lo + 1 if n else 0
    if n and span <= n and span <= _CALENDAR_SPAN_MAX:
        table = _calendar_table(lo, span)
        at = days - lo
        for name, values in table.items():
            out[name] = values[at]
    else:
        out.update(_calendar_columns(days))
    a_dom = out.pop("_a_dom")
    a_wd = out.pop("_a_wd")
    dim = out.pop("_dim")
    out["success_dom_distance"] = _circular_distance(a_dom, st.dom_mean[dec], dim)
    out["success_weekday_distance"] = _circular_distance(a_wd, st.wd_mean[dec], np.full(n, 7.0))

    li = st.li[dec]
    added = log.card_added[li]
    out["card_age_days"] = np.where(added == NAT_INT, np.nan, (tt - added) / day)
    exp_end = log.exp_end[li]
    out["days_to_expiry"] = (exp_end - tt) / day
    out["card_expired"] = (tt >= exp_end).astype(np.float64)
    out["tenure_days"] = (tt - st.tenure_start[dec]) / day

    if not all_valid:
        for name in list(out):
            out[name] = np.where(valid, out[name], np.nan)
    if not constants:
        return out
    for name, values in st.numeric.items():
        out[name] = values[dec]
    for name, cat in st.categorical.items():
        out[name] = cat.take(dec)
    return out


_STR_DTYPE: Final = pd.StringDtype("pyarrow", na_value=np.nan)  # pandas' default ``str``


def _str_array(cat: _Codes) -> pd.api.extensions.ExtensionArray:
    """A pandas ``str`` array from codes (-1, None or "" uniques -> missing)."""
    uniq = [None if u is None or u == "" else str(u) for u in cat.uniques.tolist()]
    table = pa.array([*uniq, None], type=pa.large_string())
    codes = np.where(cat.codes < 0, len(uniq), cat.codes)
    return pd.arrays.ArrowStringArray(table.take(codes), dtype=_STR_DTYPE)  # type: ignore[call-arg]


def _frame(columns: dict[str, Any], n: int) -> pd.DataFrame:
    numeric = np.empty((n, len(NUMERIC_FEATURES)), dtype=np.float64)
    for j, name in enumerate(NUMERIC_FEATURES):
        numeric[:, j] = columns.pop(name)  # pop: free each column once copied (memory)
    cats = {name: _str_array(columns[name]) for name in CATEGORICAL_FEATURES}
    return _join_blocks(numeric, NUMERIC_FEATURES, cats, pd.RangeIndex(n))
