"""The online encoder: model-matrix rows of a decision batch (the serving hot path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from retryopt.features._fe_time import NAT_INT, NS_PER_DAY, NS_PER_HOUR, to_local_ns
from retryopt.features.calendar import (
    _CALENDAR_ALIGN,
    _CALENDAR_FEATURES,
    _CALENDAR_SPAN_MAX,
    _calendar_block,
    _circular_distance,
)
from retryopt.features.candidates import WINDOW_24H_NS, WINDOW_30D_NS, _candidate_features
from retryopt.features.columns import AttemptColumns
from retryopt.features.decision_state import _State
from retryopt.features.decisions import DecisionBatch
from retryopt.features.online import _model_matrix, _online_state, _spec_is_native
from retryopt.features.pit import _CardCounter, _pit_counts
from retryopt.features.spec import FeatureSpec, _spec_code_one, _spec_codes

# Rows per chunk when CandidateEncoder's per-row path writes candidate-dependent columns into
# a row-major matrix (53 float64 features: ~400 KB per chunk, within L2).
_ROW_CHUNK: Final = 1024

# Candidate-dependent features that depend on the candidate's local day only (given the
# decision): CandidateEncoder computes them once per (decision, day) and gathers whole rows.
_DAY_FEATURES: Final[frozenset[str]] = frozenset(
    (*_CALENDAR_FEATURES, "success_dom_distance", "success_weekday_distance")
)
# The other candidate-dependent features: written per row, straight into the matrix.
_HOUR_FEATURES: Final[frozenset[str]] = frozenset(
    {
        "hours_since_first_failure",
        "hours_since_prev_attempt",
        "hours_from_now",
        "card_attempts_24h",
        "card_attempts_30d",
        "local_hour",
        "card_age_days",
        "days_to_expiry",
        "card_expired",
        "tenure_days",
    }
)


@dataclass(frozen=True)
class _Layout:
    """Where :class:`CandidateEncoder` puts each feature of a native spec (cached per spec)."""

    numeric_names: tuple[str, ...]  # candidate-independent numeric features ...
    numeric_cols: np.ndarray  # ... and their matrix columns
    categorical: tuple[tuple[int, str], ...]  # (matrix column, name), all candidate-independent
    varying: tuple[tuple[int, str], ...]  # (matrix column, name) of candidate-dependent ones
    slots: dict[str, int] | None  # varying name -> column (None: not all day/hour features)
    calendar: tuple[tuple[int, int, int], ...]  # (matrix column, block column, width) runs
    varying_cols: np.ndarray


_LAYOUTS: dict[int, tuple[FeatureSpec, _Layout]] = {}


def _layout(spec: FeatureSpec, st: _State) -> _Layout:
    """The :class:`_Layout` of ``spec`` (``st``'s constant features: the same for every state)."""
    hit = _LAYOUTS.get(id(spec))
    if hit is not None and hit[0] is spec:  # the spec is frozen: cache per instance
        return hit[1]
    k = len(spec.numeric)
    numeric = [(j, name) for j, name in enumerate(spec.numeric) if name in st.numeric]
    categorical = [
        (j, name) for j, name in enumerate(spec.categorical, start=k) if name in st.categorical
    ]
    varying = [
        (j, name)
        for j, name in enumerate(spec.names)
        if name not in st.numeric and name not in st.categorical
    ]
    names = {name: j for j, name in varying}
    slots: dict[str, int] | None = names
    runs: list[list[int]] = []
    if not set(names) <= _DAY_FEATURES | _HOUR_FEATURES or set(names) & set(spec.categorical):
        slots = None
    else:
        for c, name in enumerate(_CALENDAR_FEATURES):
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
        slots=slots,
        calendar=tuple((j, c, w) for j, c, w in runs),
        varying_cols=np.asarray([j for j, _ in varying], dtype=np.intp),
    )
    if len(_LAYOUTS) >= 64:
        _LAYOUTS.clear()
    _LAYOUTS[id(spec)] = (spec, layout)
    return layout


@dataclass
class _DayPlan:
    """Per-decision inputs of :meth:`CandidateEncoder._matrix_by_day` (built once)."""

    zone: np.ndarray  # zone code of each decision
    day0: np.ndarray  # local day (since 1970-01-01) of each decision's `now`
    added: np.ndarray  # card_added_at of each decision's card (NAT_INT = missing)
    added_missing: bool
    exp_end: np.ndarray


class CandidateEncoder:
    """Model-matrix rows of a decision batch at any candidate times (the serving hot path).

    The candidate-independent work (attempt log, per-decision state) is done once at
    construction; :meth:`matrix` then encodes only the (decision, time) rows asked for, e.g. the
    rows a coarse-to-fine search actually scores. Rows equal those of
    :func:`encode_candidate_matrix` for the same (decision, time) pairs.

    Parameters
    ----------
    batch
        The decision batch (as :func:`build_candidate_features`).
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
        self._plan: _DayPlan | None = None
        # One decision: _pit_counts' single-group search is as fast without the counter's setup.
        self._counter = (
            _CardCounter(self._log, self._state.card_key) if self.n_charges > 1 else None
        )

    def _decision_rows(self) -> tuple[np.ndarray, tuple[tuple[int, str], ...]]:
        """Per-decision model-matrix rows and the (column, name) slots that vary by candidate.

        The candidate-independent features (``_State.numeric`` / ``_State.categorical``, as
        spec codes) are written once per decision; the other slots hold 0 until
        :meth:`matrix` fills them. Built on first use, native specs only.
        """
        if self._rows is None:
            spec = self.spec
            st = self._state
            lay = _layout(spec, st)
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

    def _day_plan(self) -> tuple[_DayPlan, _Layout] | None:
        """The :class:`_DayPlan` and layout (None when a varying feature is not a day/hour
        feature of :func:`_candidate_features`)."""
        lay = _layout(self.spec, self._state)
        if lay.slots is None:
            return None
        if self._plan is None:
            log, st = self._log, self._state
            zone = log.zone.codes[st.li]
            added = log.card_added[st.li]
            self._plan = _DayPlan(
                zone=zone,
                day0=np.floor_divide(to_local_ns(st.now, zone, log.zone.uniques), NS_PER_DAY),
                added=added,
                added_missing=bool((added == NAT_INT).any()),
                exp_end=log.exp_end[st.li],
            )
        return self._plan, lay

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
            ``"C"`` (row-major, as :func:`encode_candidate_matrix`; the fast one: each row is
            its decision's constant row, then only the candidate-dependent features are
            written in place) or ``"F"`` (column-major, filled one feature at a time).

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
        day) in the call's range and gathered whole; the hour-dependent features are then
        written straight into their columns. Same expressions on the same values as
        :func:`_candidate_features`, so the same bits; None when the (decision, day) table
        would have more rows than the call (the per-row path is cheaper then).
        """
        planned = self._day_plan()
        if planned is None:
            return None
        plan, lay = planned
        slots = lay.slots
        assert slots is not None
        rows, _ = self._decision_rows()
        log, st = self._log, self._state
        n = dec.size
        valid = t != NAT_INT
        all_valid = bool(valid.all())
        now = st.now[dec]
        tt = t if all_valid else np.where(valid, t, now)
        local = to_local_ns(tt, plan.zone[dec], log.zone.uniques)
        days = np.floor_divide(local, NS_PER_DAY)
        rel = days - plan.day0[dec]
        d_lo = int(dec.min())
        d_hi = int(dec.max())
        r_lo = int(rel.min())
        r_hi = int(rel.max())
        width = r_hi - r_lo + 1
        n_keys = (d_hi - d_lo + 1) * width
        if n_keys > max(n, 64):
            return None
        key_dec = np.repeat(np.arange(d_lo, d_hi + 1, dtype=np.int64), width)
        key_day = (plan.day0[d_lo : d_hi + 1, None] + np.arange(r_lo, r_hi + 1)).reshape(-1)
        lo = int(key_day.min()) // _CALENDAR_ALIGN * _CALENDAR_ALIGN
        span = -(-(int(key_day.max()) + 1 - lo) // _CALENDAR_ALIGN) * _CALENDAR_ALIGN
        if span > _CALENDAR_SPAN_MAX:
            return None
        cal = _calendar_block(lo, span).take(key_day - lo, axis=0)
        table = rows.take(key_dec, axis=0)
        for jc, c, w in lay.calendar:
            table[:, jc : jc + w] = cal[:, c : c + w]
        j = slots.get("success_dom_distance")
        if j is not None:
            table[:, j] = _circular_distance(cal[:, 12], st.dom_mean[key_dec], cal[:, 14])
        j = slots.get("success_weekday_distance")
        if j is not None:
            table[:, j] = _circular_distance(cal[:, 13], st.wd_mean[key_dec], np.full(n_keys, 7.0))
        rel -= r_lo
        rel += (dec - d_lo) * width
        out = table.take(rel, axis=0)

        # Hour-dependent features: the expressions of _candidate_features, the last operation
        # of each writing its matrix column (no per-feature temporary, no copy pass).
        h = float(NS_PER_HOUR)
        day = float(NS_PER_DAY)
        tmp = np.empty(n, dtype=np.int64)
        for name, base in (
            ("hours_since_first_failure", st.first_t),
            ("hours_since_prev_attempt", st.last_t),
            ("hours_from_now", None),
        ):
            j = slots.get(name)
            if j is not None:
                np.subtract(tt, now if base is None else base[dec], out=tmp)
                np.divide(tmp, h, out=out[:, j])
        j = slots.get("local_hour")
        if j is not None:
            np.multiply(days, NS_PER_DAY, out=tmp)
            np.subtract(local, tmp, out=tmp)
            np.divide(tmp, h, out=out[:, j])
        j24 = slots.get("card_attempts_24h")
        j30 = slots.get("card_attempts_30d")
        if j24 is not None or j30 is not None:
            lo24 = np.minimum(tt - WINDOW_24H_NS, now)
            lo30 = np.minimum(tt - WINDOW_30D_NS, now)
            if self._counter is not None:
                c24, c30 = self._counter.counts_many(dec, (lo24, lo30))
            else:
                key = st.card_key[dec]
                counts = _pit_counts(
                    log.card_key, log.t, np.concatenate([key, key]), np.concatenate([lo24, lo30])
                )
                c24, c30 = counts[:n], counts[n:]
            known_now = st.card_known_now[dec]
            at_now = st.card_at_now[dec]
            # Integer counts: exact in any order, converted to float64 on assignment.
            for jw, window, part in (
                (j24, WINDOW_24H_NS, c24),
                (j30, WINDOW_30D_NS, c30),
            ):
                if jw is not None:
                    out[:, jw] = known_now - part + np.where(tt - window <= now, at_now, 0)
        j = slots.get("card_age_days")
        if j is not None:
            added = plan.added[dec]
            col = out[:, j]
            np.subtract(tt, added, out=tmp)
            np.divide(tmp, day, out=col)
            if plan.added_missing:
                col[added == NAT_INT] = np.nan
        je = slots.get("days_to_expiry")
        jx = slots.get("card_expired")
        if je is not None or jx is not None:
            exp_end = plan.exp_end[dec]
            if je is not None:
                np.subtract(exp_end, tt, out=tmp)
                np.divide(tmp, day, out=out[:, je])
            if jx is not None:
                out[:, jx] = tt >= exp_end
        j = slots.get("tenure_days")
        if j is not None:
            np.subtract(tt, st.tenure_start[dec], out=tmp)
            np.divide(tmp, day, out=out[:, j])
        if not all_valid:
            out[np.ix_(np.flatnonzero(~valid), lay.varying_cols)] = np.nan
        return out
