"""Evaluating the registry: the decision state and the features of (decision, time) rows.

One code path for training and serving::

    frame(s) -> _Log (rows sorted by charge, time) -> _decision_state(log, last_row, now)
                                                   -> _candidate_features(log, state, dec, t)

:func:`_decision_state` evaluates the ``state`` features of :mod:`features.registry` once per
decision; :func:`_candidate_features` evaluates every feature at the rows ``(dec[r], t[r])``
as columns (the frame path: training examples, raw frames, the encoder's reference path);
:func:`_frame` assembles the raw-feature frame. The serving encoder calls the same
computations on its own row layout (:mod:`features.encoder`).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa

from retryopt.features.calendar import (
    A_DOM,
    A_WD,
    CALENDAR_SPAN_MAX,
    DIM,
    calendar_columns,
    calendar_table,
)
from retryopt.features.candidates import CandidateRows, DayRows
from retryopt.features.columns import _Codes
from retryopt.features.decision_state import _decision_inputs, _State
from retryopt.features.history import _Log
from retryopt.features.localtime import NAT_INT
from retryopt.features.pit import _CardCounter
from retryopt.features.registry import (
    CALENDAR_FEATURES,
    CATEGORICAL_FEATURES,
    DAY_FEATURES,
    NUMERIC_FEATURES,
    STATE_CATEGORICAL,
    STATE_NUMERIC,
    TIME_FEATURES,
)
from retryopt.features.spec import _join_blocks


def _decision_state(log: _Log, li: np.ndarray, now: np.ndarray) -> _State:
    """Point-in-time state of each decision (last known row ``li`` of the charge, time ``now``),
    with its candidate-independent features evaluated (``numeric`` / ``categorical``)."""
    st, inputs = _decision_inputs(log, li, now)
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, compute in STATE_NUMERIC:
            st.numeric[name] = compute(inputs)
    for name, compute_codes in STATE_CATEGORICAL:
        st.categorical[name] = compute_codes(inputs)
    return st


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

    Returns numeric columns as float64 arrays and categoricals as :class:`_Codes`.
    ``constants=False`` leaves out the candidate-independent features (``st.numeric`` /
    ``st.categorical``), which :class:`~features.encoder.CandidateEncoder` places per decision
    instead of per row; ``card_counter`` (built once per batch by the encoder) counts the card's
    attempts instead of :func:`~features.pit._pit_counts`. ``NaT`` candidate times give NaN
    candidate-dependent features.
    """
    valid = t_cand != NAT_INT
    all_valid = bool(valid.all())
    now = st.now[dec]
    tt = t_cand if all_valid else np.where(valid, t_cand, now)
    n = tt.size
    rows = CandidateRows(log, st, dec, tt, now, counter=card_counter)
    out: dict[str, Any] = {}
    for name, compute in TIME_FEATURES:
        out[name] = col = np.empty(n, dtype=np.float64)
        compute(rows, col)

    # Calendar features depend on the local day only: computed once per calendar day of the
    # span (a few days online; cached) and gathered per row.
    days = rows.days
    lo = int(days.min()) if n else 0
    span = int(days.max()) - lo + 1 if n else 0
    if n and span <= n and span <= CALENDAR_SPAN_MAX:
        table = calendar_table(lo, span, CALENDAR_FEATURES)
        at = days - lo
        cal = {name: values[at] for name, values in table.items()}
    else:
        cal = calendar_columns(days, CALENDAR_FEATURES)
    day_rows = DayRows(st, dec, cal.pop(A_DOM), cal.pop(A_WD), cal.pop(DIM))
    out.update(cal)
    for name, compute_day in DAY_FEATURES:
        out[name] = col = np.empty(n, dtype=np.float64)
        compute_day(day_rows, col)

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
    """The raw-feature frame of :func:`_candidate_features` columns (consumed: popped).

    Numeric features as one float64 block in :data:`~features.registry.NUMERIC_FEATURES`
    order, then the categoricals as pandas ``str``.
    """
    numeric = np.empty((n, len(NUMERIC_FEATURES)), dtype=np.float64)
    for j, name in enumerate(NUMERIC_FEATURES):
        numeric[:, j] = columns.pop(name)  # pop: free each column once copied (memory)
    cats = {name: _str_array(columns[name]) for name in CATEGORICAL_FEATURES}
    return _join_blocks(numeric, NUMERIC_FEATURES, cats, pd.RangeIndex(n))
