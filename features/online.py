"""Decisions of a :class:`~features.decisions.DecisionBatch`: their state and raw features.

:func:`_online_state` builds the attempt log of a batch (its attempts plus the customers'
history) and the per-decision state (the candidate-independent work, done once per batch by
:class:`~features.encoder.CandidateEncoder`). :func:`build_candidate_features` returns the raw
features of a candidate grid as a frame: the one frame-returning function, for inspection,
tests and models that read raw features (serving encodes with ``CandidateEncoder.matrix``).
"""

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

__all__ = ["build_candidate_features"]


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
        :attr:`features.examples.TrainingExamples.features`. Padding rows keep the charge's
        candidate-independent features; candidate-dependent ones are NaN.

    Raises
    ------
    ValueError
        On shape/dtype errors, a charge without attempts, or attempts after ``now``.
    """
    columns, n = _online_columns(batch, candidate_times)
    return _frame(columns, n)


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
