"""Features of a :class:`~features.decisions.DecisionBatch` at candidate retry times."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as ct
from retryopt.features.columns import _INT64_MAX, _SMALL_ROWS, AttemptColumns, _Table, _table_list
from retryopt.features.decision_state import _State
from retryopt.features.decisions import DecisionBatch
from retryopt.features.evaluate import _candidate_features, _decision_state, _frame
from retryopt.features.history import _Log
from retryopt.features.pit import _pit_counts
from retryopt.features.registry import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from retryopt.features.spec import (
    FeatureSpec,
    _join_blocks,
    _level_lookup,
    _spec_codes,
    encode_features,
)


def _candidate_ns(candidate_times: np.ndarray, n_charges: int) -> np.ndarray:
    arr = np.asarray(candidate_times)
    if arr.ndim == 1 and n_charges == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[0] != n_charges:
        raise ValueError(
            f"candidate_times must have shape (n_charges={n_charges}, n_candidates), "
            f"got {arr.shape}"
        )
    if arr.dtype.kind != "M":
        raise ValueError(f"candidate_times must be datetime64 (UTC, naive), got {arr.dtype}")
    return np.ascontiguousarray(arr.astype("datetime64[ns]")).view(np.int64)


def build_candidate_features(batch: DecisionBatch, candidate_times: np.ndarray) -> pd.DataFrame:
    """Features of each charge of ``batch`` at each of its candidate retry times.

    Parameters
    ----------
    batch
        The failed charges awaiting a decision; ``batch.attempts`` holds each charge's attempts
        so far (all at or before its ``now``), ``batch.history`` the customers' other rows
        (any time: only rows with ``attempted_at < now`` are used; rows repeating an attempt
        of ``batch.attempts`` are dropped; the charge's own rows after ``now`` are ignored).
    candidate_times
        ``datetime64[ns]`` (UTC, naive), shape ``(n_charges, n_candidates)``; ``NaT`` pads.

    Returns
    -------
    pandas.DataFrame
        Raw features, one row per (charge, candidate) in row-major order, same columns as
        :attr:`TrainingExamples.features`. Padding rows keep the charge's candidate-independent
        features; candidate-dependent ones are NaN.

    Raises
    ------
    ValueError
        On shape/dtype errors, a charge without attempts, or attempts after ``now``.
    """
    columns, n = _online_columns(batch, candidate_times)
    return _frame(columns, n)


def encode_candidate_features(
    batch: DecisionBatch, candidate_times: np.ndarray, spec: FeatureSpec
) -> pd.DataFrame:
    """Model matrix for a decision batch: ``encode_features(build_candidate_features(...))``.

    Same values as the two-step call, but categoricals are mapped to the spec's levels from
    their per-decision codes, without materialising string columns.

    Parameters
    ----------
    batch, candidate_times
        As for :func:`build_candidate_features`.
    spec
        The spec fixed at training time.

    Returns
    -------
    pandas.DataFrame
        As :func:`encode_features`.
    """
    columns, n = _online_columns(batch, candidate_times)
    if not _spec_is_native(spec):
        return encode_features(_frame(columns, n), spec)
    numeric = _numeric_block(columns, spec, n)
    cats: dict[str, Any] = {}
    for name in spec.categorical:
        dtype, _, _ = _level_lookup(spec.levels[name])
        codes = _spec_codes(columns[name], spec.levels[name])
        cats[name] = pd.Categorical.from_codes(codes, dtype=dtype, validate=False)
    return _join_blocks(numeric, spec.numeric, cats, pd.RangeIndex(n))


def encode_candidate_matrix(
    batch: DecisionBatch,
    candidate_times: np.ndarray,
    spec: FeatureSpec,
    *,
    attempts: AttemptColumns | None = None,
    history: AttemptColumns | None = None,
) -> np.ndarray:
    """The model matrix of a decision batch as one float64 array (the serving hot path).

    Same numbers as :func:`encode_candidate_features`, with each categorical as its integer
    code in ``spec.levels`` order (as float64): exactly what LightGBM sees when it is given the
    pandas frame, since it converts pandas categoricals to their codes.

    Parameters
    ----------
    batch, candidate_times
        As for :func:`build_candidate_features`.
    spec
        The spec fixed at training time.
    attempts, history
        Optional :class:`AttemptColumns` holding the same rows as ``batch.attempts`` /
        ``batch.history``; when given they are read instead of the frames (no pandas access).

    Returns
    -------
    numpy.ndarray
        ``(n_charges * n_candidates, len(spec.names))`` float64, C-contiguous, columns in
        ``spec.names`` order, rows in row-major (charge, candidate) order.
    """
    columns, n = _online_columns(batch, candidate_times, attempts=attempts, history=history)
    return _model_matrix(columns, spec, n)


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


def _numeric_block(columns: dict[str, Any], spec: FeatureSpec, n: int) -> np.ndarray:
    numeric = np.empty((n, len(spec.numeric)), dtype=np.float64)
    for j, name in enumerate(spec.numeric):
        numeric[:, j] = columns[name]
    return numeric


def _attempt_ids(table: _Table) -> list[Any]:
    return _table_list(table, ct.ATTEMPT_ID)


def _online_state(
    batch: DecisionBatch,
    *,
    attempts: AttemptColumns | None = None,
    history: AttemptColumns | None = None,
) -> tuple[_Log, _State]:
    """The attempt log and the per-decision state of a decision batch (candidate-independent)."""
    charge_ids = np.asarray(batch.charge_ids, dtype=object)
    n_charges = charge_ids.size
    now = np.asarray(batch.now).astype("datetime64[ns]").view(np.int64).reshape(-1)
    if now.size != n_charges:
        raise ValueError(f"batch.now has {now.size} values for {n_charges} charges")
    own: _Table = batch.attempts if attempts is None else attempts
    frames: list[_Table] = [own]
    hist: _Table | None = batch.history if history is None else history
    if hist is not None and len(hist):
        # History rows repeating an attempt of batch.attempts are dropped (same attempt_id).
        if len(hist) <= _SMALL_ROWS and len(own) <= _SMALL_ROWS:
            seen = set(_attempt_ids(own))
            keep = np.asarray([a not in seen for a in _attempt_ids(hist)], dtype=bool)
        else:
            own_df = own.to_frame() if isinstance(own, AttemptColumns) else own
            hist = hist.to_frame() if isinstance(hist, AttemptColumns) else hist
            keep = ~hist[ct.ATTEMPT_ID].isin(own_df[ct.ATTEMPT_ID]).to_numpy()
        if not bool(keep.all()):
            hist = hist.take(keep) if isinstance(hist, AttemptColumns) else hist[keep]
        if len(hist):
            frames.append(hist)
    log = _Log.from_frames(frames, history_frames=len(frames) - 1)

    # Locate each decision's charge and its last attempt at or before now.
    lookup = {u: i for i, u in enumerate(log.charge_uniques.tolist())}
    codes = np.asarray([lookup.get(c, -1) for c in charge_ids.tolist()], dtype=np.int64)
    if (codes < 0).any():
        bad = charge_ids[codes < 0][:5].tolist()
        raise ValueError(f"batch.attempts has no rows for charge_ids {bad}")
    # batch.attempts rows must not be after their charge's now (DecisionBatch contract).
    own_rows = np.flatnonzero(log.order < len(own))
    now_of_code = np.full(int(log.charge.max(initial=0)) + 1, _INT64_MAX)
    now_of_code[codes] = now
    late = own_rows[log.t[own_rows] > now_of_code[log.charge[own_rows]]]
    if late.size:
        bad_rows = np.sort(log.order[late])[:5] + 1
        raise ValueError(
            f"batch.attempts has rows after their charge's now (rows {bad_rows.tolist()})"
        )
    counts = _pit_counts(log.charge, log.t, codes, now + 1)
    if (counts == 0).any():
        bad = charge_ids[counts == 0][:5].tolist()
        raise ValueError(f"no attempt at or before now for charge_ids {bad}")
    first_row = np.zeros(int(log.charge.max(initial=0)) + 1, dtype=np.int64)
    first_row[log.charge] = log.start
    li = first_row[codes] + counts - 1
    return log, _decision_state(log, li, now)


def _online_columns(
    batch: DecisionBatch,
    candidate_times: np.ndarray,
    *,
    attempts: AttemptColumns | None = None,
    history: AttemptColumns | None = None,
) -> tuple[dict[str, Any], int]:
    """Feature columns (numeric arrays, categorical codes) for a decision batch."""
    n_charges = np.asarray(batch.charge_ids, dtype=object).size
    cand = _candidate_ns(candidate_times, n_charges)
    log, st = _online_state(batch, attempts=attempts, history=history)
    n_cand = cand.shape[1]
    dec = np.repeat(np.arange(n_charges, dtype=np.int64), n_cand)
    return _candidate_features(log, st, dec, cand.reshape(-1)), dec.size


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
