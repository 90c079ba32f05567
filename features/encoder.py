"""The serving encoder: model-matrix rows of a decision batch at candidate times (hot path).

:class:`CandidateEncoder` is the one way to encode candidates for a model: build it once per
decision batch (the candidate-independent work), then :meth:`CandidateEncoder.matrix` encodes
any (decision, time) rows; :meth:`CandidateEncoder.grid_rows` lists the rows of a candidate
grid. Matrix values are the registry's computations (:mod:`features.registry`), as on the
frame path, so rows equal ``encode_features(build_candidate_features(...))`` with each
categorical as its code in the spec's levels (what LightGBM sees).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from retryopt.features.calendar import (
    A_DOM,
    A_WD,
    CALENDAR_ALIGN,
    CALENDAR_SPAN_MAX,
    DIM,
    HELPER_COLUMNS,
    calendar_block,
)
from retryopt.features.candidates import CandidateRows, DayRows
from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import DecisionBatch
from retryopt.features.evaluate import _candidate_features, _frame
from retryopt.features.localtime import NAT_INT, NS_PER_DAY, to_local_ns
from retryopt.features.online import _candidate_ns, _online_state
from retryopt.features.pit import _CardCounter
from retryopt.features.registry import (
    CALENDAR_FEATURES,
    CATEGORICAL_FEATURES,
    DAY_FEATURES,
    NUMERIC_FEATURES,
    STATE_CATEGORICAL,
    STATE_NUMERIC,
    TIME_FEATURES,
    DayCompute,
    TimeCompute,
)
from retryopt.features.spec import FeatureSpec, _spec_code_one, _spec_codes, encode_features

__all__ = ["CandidateEncoder"]

# Rows per chunk when CandidateEncoder's per-row path writes candidate-dependent columns into
# a row-major matrix (53 float64 features: ~400 KB per chunk, within L2).
_ROW_CHUNK: Final = 1024

_STATE_NUMERIC: Final[frozenset[str]] = frozenset(name for name, _ in STATE_NUMERIC)
_STATE_CATEGORICAL: Final[frozenset[str]] = frozenset(name for name, _ in STATE_CATEGORICAL)
_CALENDAR_NAMES: Final[tuple[str, ...]] = tuple(name for name, _ in CALENDAR_FEATURES)
_DAY: Final[dict[str, DayCompute]] = dict(DAY_FEATURES)
_TIME: Final[dict[str, TimeCompute]] = dict(TIME_FEATURES)
# Columns of the calendar block: the calendar features, then the day features' inputs.
_BLOCK_A_DOM: Final = len(_CALENDAR_NAMES) + HELPER_COLUMNS.index(A_DOM)
_BLOCK_A_WD: Final = len(_CALENDAR_NAMES) + HELPER_COLUMNS.index(A_WD)
_BLOCK_DIM: Final = len(_CALENDAR_NAMES) + HELPER_COLUMNS.index(DIM)


@dataclass(frozen=True)
class _Layout:
    """Where :class:`CandidateEncoder` puts each feature of a native spec (cached per spec)."""

    numeric_names: tuple[str, ...]  # candidate-independent numeric features ...
    numeric_cols: np.ndarray  # ... and their matrix columns
    categorical: tuple[tuple[int, str], ...]  # (matrix column, name), all candidate-independent
    varying: tuple[tuple[int, str], ...]  # (matrix column, name) of candidate-dependent ones
    by_day: bool  # every varying feature is a registry calendar/day/time feature
    calendar: tuple[tuple[int, int, int], ...]  # (matrix column, block column, width) runs
    day: tuple[tuple[int, DayCompute], ...]  # (matrix column, computation) of day features
    time: tuple[tuple[int, TimeCompute], ...]  # (matrix column, computation) of time features
    varying_cols: np.ndarray


_LAYOUTS: dict[int, tuple[FeatureSpec, _Layout]] = {}


def _layout(spec: FeatureSpec) -> _Layout:
    """The :class:`_Layout` of ``spec``."""
    hit = _LAYOUTS.get(id(spec))
    if hit is not None and hit[0] is spec:  # the spec is frozen: cache per instance
        return hit[1]
    k = len(spec.numeric)
    numeric = [(j, name) for j, name in enumerate(spec.numeric) if name in _STATE_NUMERIC]
    categorical = [
        (j, name) for j, name in enumerate(spec.categorical, start=k) if name in _STATE_CATEGORICAL
    ]
    varying = [
        (j, name)
        for j, name in enumerate(spec.names)
        if name not in _STATE_NUMERIC and name not in _STATE_CATEGORICAL
    ]
    names = {name: j for j, name in varying}
    by_day = set(names) <= {*_CALENDAR_NAMES, *_DAY, *_TIME} and not set(names) & set(
        spec.categorical
    )
    runs: list[list[int]] = []
    for c, name in enumerate(_CALENDAR_NAMES):
        if name not in names:
            continue
        j = names[name]
        if runs and runs[-1][0] + runs[-1][2] == j and runs[-1][1] + runs[-1][2] == c:
            runs[-1][2] += 1  # contiguous in both: one slice copy
        else:
            runs.append([j, c, 1])
    layout = _Layout(
        numeric_names=tuple(name for _, name in numeric),
        numeric_cols=np.asarray([j for j, _ in numeric], dtype=np.intp),
        categorical=tuple(categorical),
        varying=tuple(varying),
        by_day=by_day,
        calendar=tuple((j, c, w) for j, c, w in runs),
        day=tuple((names[name], f) for name, f in _DAY.items() if name in names),
        time=tuple((names[name], f) for name, f in _TIME.items() if name in names),
        varying_cols=np.asarray([j for j, _ in varying], dtype=np.intp),
    )
    if len(_LAYOUTS) >= 64:
        _LAYOUTS.clear()
    _LAYOUTS[id(spec)] = (spec, layout)
    return layout


class CandidateEncoder:
    """Model-matrix rows of a decision batch at any candidate times (the serving hot path).

    The candidate-independent work (attempt log, per-decision state) is done once at
    construction; :meth:`matrix` then encodes only the (decision, time) rows asked for, e.g. the
    rows a coarse-to-fine search actually scores, or every row of a grid
    (``enc.matrix(*CandidateEncoder.grid_rows(candidate_times, enc.n_charges))``).

    Parameters
    ----------
    batch
        The decision batch (as :func:`features.online.build_candidate_features`).
    spec
        The spec fixed at training time.
    attempts, history
        Optional :class:`AttemptColumns` holding the same rows as ``batch.attempts`` /
        ``batch.history`` (read instead of the frames).
    """

    def __init__(
        self,
        batch: DecisionBatch,
        spec: FeatureSpec,
        *,
        attempts: AttemptColumns | None = None,
        history: AttemptColumns | None = None,
    ) -> None:
        self.batch = batch
        self.spec = spec
        self.n_charges = int(np.asarray(batch.charge_ids, dtype=object).size)
        self._log, self._state = _online_state(batch, attempts=attempts, history=history)
        self._rows: tuple[np.ndarray, tuple[tuple[int, str], ...]] | None = None
        self._day0: np.ndarray | None = None  # local day of each decision's `now`
        # One decision: _pit_counts' single-group search is as fast without the counter's setup.
        self._counter = (
            _CardCounter(self._log, self._state.card_key) if self.n_charges > 1 else None
        )

    @staticmethod
    def grid_rows(candidate_times: np.ndarray, n_charges: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of a candidate grid, every (charge, candidate) in row-major order.

        Parameters
        ----------
        candidate_times
            ``datetime64`` (UTC, naive), shape ``(n_charges, n_candidates)`` (or 1-d for one
            charge); ``NaT`` pads.
        n_charges
            Charges of the batch.

        Returns
        -------
        dec, times
            Decision index (int64) and candidate time (int64 UTC ns, NaT as int64 minimum) of
            each row, for :meth:`matrix`.

        Raises
        ------
        ValueError
            On a shape or dtype error.
        """
        cand = _candidate_ns(candidate_times, n_charges)
        dec = np.repeat(np.arange(n_charges, dtype=np.int64), cand.shape[1])
        return dec, cand.reshape(-1)

    def _decision_rows(self) -> tuple[np.ndarray, tuple[tuple[int, str], ...]]:
        """Per-decision model-matrix rows and the (column, name) slots that vary by candidate.

        The candidate-independent features (``_State.numeric`` / ``_State.categorical``, as
        spec codes) are written once per decision; the other slots hold 0 until
        :meth:`matrix` fills them. Built on first use, native specs only.
        """
        if self._rows is None:
            spec = self.spec
            st = self._state
            lay = _layout(spec)
            width = len(spec.numeric) + len(spec.categorical)
            if self.n_charges == 1:
                # One decision: the row as Python floats (exact float64 values and codes), one
                # array construction instead of one numpy call per feature.
                row = [0.0] * width
                for j, name in zip(lay.numeric_cols.tolist(), lay.numeric_names, strict=True):
                    row[j] = float(st.numeric[name][0])
                for j, name in lay.categorical:
                    row[j] = float(_spec_code_one(st.categorical[name], spec.levels[name]))
                rows = np.asarray([row], dtype=np.float64)
            else:
                rows = np.zeros((self.n_charges, width), dtype=np.float64)
                if lay.numeric_names:
                    rows[:, lay.numeric_cols] = np.stack(
                        [st.numeric[name] for name in lay.numeric_names], axis=1
                    )
                for j, name in lay.categorical:
                    rows[:, j] = _spec_codes(st.categorical[name], spec.levels[name])
            self._rows = (rows, lay.varying)
        return self._rows

    def _local_day0(self) -> np.ndarray:
        """Local day (since 1970-01-01) of each decision's ``now`` (computed once)."""
        if self._day0 is None:
            st = self._state
            local = to_local_ns(st.now, st.zone, self._log.zone.uniques)
            self._day0 = np.floor_divide(local, NS_PER_DAY)
        return self._day0

    def matrix(self, dec: np.ndarray, times: np.ndarray, *, order: str = "C") -> np.ndarray:
        """Model matrix of the rows ``(dec[r], times[r])``.

        Parameters
        ----------
        dec
            ``(n,)`` int, decision (charge) index of each row, ``0 <= dec < n_charges``.
        times
            ``(n,)`` candidate times, ``datetime64[ns]`` (UTC, naive) or int64 ns; NaT rows get
            NaN candidate-dependent features.
        order
            ``"C"`` (row-major; the fast one: rows built per (decision, local day), then the
            time features written in place) or ``"F"`` (column-major, filled one feature at a
            time from the frame path's columns).

        Returns
        -------
        numpy.ndarray
            ``(n, len(spec.names))`` float64, columns in ``spec.names`` order.
        """
        dec = np.asarray(dec, dtype=np.int64).reshape(-1)
        t = np.asarray(times)
        if t.dtype.kind == "M":
            t = t.astype("datetime64[ns]").view(np.int64)
        t = np.ascontiguousarray(t, dtype=np.int64).reshape(-1)
        if dec.shape != t.shape:
            raise ValueError(f"dec and times differ in length: {dec.size} and {t.size}")
        if dec.size and (int(dec.min()) < 0 or int(dec.max()) >= self.n_charges):
            raise ValueError(f"dec must be in [0, {self.n_charges}), got {dec.min()}..{dec.max()}")
        if order != "C" or not _spec_is_native(self.spec):
            columns = _candidate_features(
                self._log, self._state, dec, t, card_counter=self._counter
            )
            return _model_matrix(columns, self.spec, dec.size, order=order)
        fast = self._matrix_by_day(dec, t) if dec.size else None
        return fast if fast is not None else self._matrix_by_row(dec, t)

    def _matrix_by_row(self, dec: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Row-major matrix from :func:`_candidate_features` (the reference in-place fill)."""
        # Each row starts as a copy of its decision's constant row (one contiguous row
        # gather), then only the candidate-dependent features are written (strided, in row
        # chunks that stay in cache). No transposed copy.
        rows, varying = self._decision_rows()
        columns = _candidate_features(
            self._log, self._state, dec, t, constants=False, card_counter=self._counter
        )
        out = rows.take(dec, axis=0)
        categorical = set(self.spec.categorical)
        filled = [
            (j, _spec_codes(columns[name], self.spec.levels[name]))
            if name in categorical
            else (j, columns[name])
            for j, name in varying
        ]
        n = dec.size
        step = _ROW_CHUNK
        if n <= step:
            for j, values in filled:
                out[:, j] = values
        else:
            for k in range(0, n, step):
                part = out[k : k + step]
                for j, values in filled:
                    part[:, j] = values[k : k + step]
        return out

    def _matrix_by_day(self, dec: np.ndarray, t: np.ndarray) -> np.ndarray | None:
        """Row-major matrix built from per-(decision, local day) rows (None: not applicable).

        Most candidate-dependent features (the calendar, the success-day distances) depend on
        the candidate's local day only, and a decision's candidates span a few days: rows
        holding the decision's constants plus those features are built once per (decision,
        day) in the call's range and gathered whole; the ``time`` features are then written
        straight into their columns. The registry's computations, as on the frame path
        (:func:`~features.evaluate._candidate_features`), so the same bits; None when the
        (decision, day) table would have more rows than the call (the per-row path is cheaper
        then).
        """
        lay = _layout(self.spec)
        if not lay.by_day:
            return None
        rows, _ = self._decision_rows()
        day0 = self._local_day0()
        st = self._state
        n = dec.size
        valid = t != NAT_INT
        all_valid = bool(valid.all())
        now = st.now[dec]
        tt = t if all_valid else np.where(valid, t, now)
        cand = CandidateRows(self._log, st, dec, tt, now, counter=self._counter)
        rel = cand.days - day0[dec]
        d_lo = int(dec.min())
        d_hi = int(dec.max())
        r_lo = int(rel.min())
        r_hi = int(rel.max())
        width = r_hi - r_lo + 1
        n_keys = (d_hi - d_lo + 1) * width
        if n_keys > max(n, 64):
            return None
        key_dec = np.repeat(np.arange(d_lo, d_hi + 1, dtype=np.int64), width)
        key_day = (day0[d_lo : d_hi + 1, None] + np.arange(r_lo, r_hi + 1)).reshape(-1)
        lo = int(key_day.min()) // CALENDAR_ALIGN * CALENDAR_ALIGN
        span = -(-(int(key_day.max()) + 1 - lo) // CALENDAR_ALIGN) * CALENDAR_ALIGN
        if span > CALENDAR_SPAN_MAX:
            return None
        cal = calendar_block(lo, span, CALENDAR_FEATURES).take(key_day - lo, axis=0)
        table = rows.take(key_dec, axis=0)
        for jc, c, w in lay.calendar:
            table[:, jc : jc + w] = cal[:, c : c + w]
        if lay.day:
            day_rows = DayRows(
                st, key_dec, cal[:, _BLOCK_A_DOM], cal[:, _BLOCK_A_WD], cal[:, _BLOCK_DIM]
            )
            for j, compute_day in lay.day:
                compute_day(day_rows, table[:, j])
        rel -= r_lo
        rel += (dec - d_lo) * width
        out = table.take(rel, axis=0)
        # Time features: each computation writes its matrix column (no temporary, no copy).
        for j, compute in lay.time:
            compute(cand, out[:, j])
        if not all_valid:
            out[np.ix_(np.flatnonzero(~valid), lay.varying_cols)] = np.nan
        return out


_NATIVE_SPECS: dict[int, tuple[FeatureSpec, bool]] = {}


def _spec_is_native(spec: FeatureSpec) -> bool:
    """Whether every feature of ``spec`` is one of ours with its own kind (numeric/categorical)."""
    hit = _NATIVE_SPECS.get(id(spec))
    if hit is not None and hit[0] is spec:  # the spec is frozen: cache per instance
        return hit[1]
    native = set(spec.numeric) <= set(NUMERIC_FEATURES) and set(spec.categorical) <= set(
        CATEGORICAL_FEATURES
    )
    if len(_NATIVE_SPECS) >= 64:
        _NATIVE_SPECS.clear()
    _NATIVE_SPECS[id(spec)] = (spec, native)
    return native


def _model_matrix(
    columns: dict[str, Any], spec: FeatureSpec, n: int, *, order: str = "C"
) -> np.ndarray:
    """Float64 model matrix from feature columns (categoricals as codes in the spec's levels)."""
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', got {order!r}")
    if not _spec_is_native(spec):
        enc = encode_features(_frame(columns, n), spec)
        out = np.empty((n, len(spec.names)), dtype=np.float64, order="F" if order == "F" else "C")
        for j, name in enumerate(spec.names):
            col = enc[name]
            if isinstance(col.dtype, pd.CategoricalDtype):
                out[:, j] = col.cat.codes.to_numpy()
            else:
                out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
        return out
    k = len(spec.numeric)
    width = k + len(spec.categorical)
    # Filled one feature at a time: contiguous writes into a (features, rows) block, then
    # transposed (a blocked copy for C order; a free view for F order).
    block = np.empty((width, n), dtype=np.float64)
    for j, name in enumerate(spec.numeric):
        block[j] = columns[name]
    for j, name in enumerate(spec.categorical, start=k):
        block[j] = _spec_codes(columns[name], spec.levels[name])
    return block.T if order == "F" else np.ascontiguousarray(block.T)
