"""Advance encoded decisions by hypothetical failed attempts (the planner's later steps).

The planner values a later planned retry with the model's own prediction for the state in which
the earlier planned retries failed. :func:`advance_after_failures` turns model-matrix rows of a
decision at candidate time ``t`` (as :class:`features.encoder.CandidateEncoder` encodes them)
into the rows of the decision that would follow ``failures`` failed planned attempts spaced
``gap_hours`` apart, the last one ``gap_hours`` before ``t``:

- ``retry_number`` + ``failures``;
- ``hours_since_prev_attempt`` = ``hours_from_now`` = ``gap_hours`` (the next decision is taken
  at the failed attempt);
- ``card_attempts_24h`` / ``card_attempts_30d`` + the planned attempts inside the window
  (``t - i * gap_hours`` for ``i = 1 .. failures``);
- ``last_decline_code`` follows the ``next_code`` map (the most frequent decline code of the next
  failed attempt after each code, estimated at training time,
  :func:`fit_next_decline_codes`; a code without an entry keeps its code), and with it
  ``decline_sequence`` (``"<code>><next>"``), ``distinct_codes`` (+1 per new code),
  ``last_decline_family``, ``last_decline_hard`` and ``last_visa_category``
  (:func:`features.taxonomy.classify_decline`).

Everything else (calendar and local time of ``t``, card, customer, amount, first decline, advice
code) is unchanged: the hypothetical attempts are the charge's own and change nothing else that
is known. Features the spec does not hold are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from retryopt.features.localtime import NS_PER_DAY, NS_PER_HOUR
from retryopt.features.spec import MISSING_LEVEL, OTHER_LEVEL, FeatureSpec
from retryopt.features.taxonomy import classify_decline

__all__ = [
    "advance_after_failures",
    "count_decline_transitions",
    "fit_next_decline_codes",
    "next_decline_codes_from_counts",
    "planned_within",
]

_WINDOW_24H: Final = NS_PER_DAY / NS_PER_HOUR
_WINDOW_30D: Final = 30 * NS_PER_DAY / NS_PER_HOUR
_SEQUENCE_SEPARATOR: Final = ">"


def count_decline_transitions(
    charge_id: pd.Series | np.ndarray,
    retry_number: pd.Series | np.ndarray,
    last_decline_code: pd.Series | np.ndarray,
) -> pd.Series:
    """Counts of (decline code before retry ``r``, decline code before retry ``r + 1``).

    One value per retry example (``TrainingExamples.meta`` / ``.features``). Counts of rows that
    hold whole charges add up (``a.add(b, fill_value=0)``), so a history partitioned by customer
    is counted part by part; :func:`next_decline_codes_from_counts` reads the sum.

    Returns
    -------
    pandas.Series
        ``n`` indexed by ``(from, to)`` (missing codes as the spec's missing level).
    """
    frame = pd.DataFrame(
        {
            "charge": np.asarray(charge_id, dtype=object),
            "r": np.asarray(retry_number, dtype=np.float64),
            "code": pd.Series(np.asarray(last_decline_code, dtype=object)).fillna(MISSING_LEVEL),
        }
    ).sort_values(["charge", "r"], kind="stable")
    same = frame["charge"].to_numpy()[1:] == frame["charge"].to_numpy()[:-1]
    codes = frame["code"].to_numpy(dtype=object)
    pairs = pd.DataFrame({"from": codes[:-1][same], "to": codes[1:][same]}, dtype=object)
    return pairs.groupby(["from", "to"], sort=True).size().rename("n")


def next_decline_codes_from_counts(transitions: pd.Series, *, min_count: int) -> dict[str, str]:
    """The most frequent next code per code (ties: the first code in sort order).

    ``transitions`` is :func:`count_decline_transitions` (or a sum of them); a code with fewer
    than ``min_count`` transitions gets no entry.
    """
    if transitions.empty:
        return {}
    counts = transitions.rename("n").rename_axis(["from", "to"]).reset_index()
    totals = counts.groupby("from")["n"].transform("sum")
    counts = counts[totals >= min_count]
    best = counts.sort_values(["from", "n", "to"], ascending=[True, False, True]).drop_duplicates(
        "from"
    )
    return {str(a): str(b) for a, b in zip(best["from"], best["to"], strict=True)}


def fit_next_decline_codes(
    charge_id: pd.Series | np.ndarray,
    retry_number: pd.Series | np.ndarray,
    last_decline_code: pd.Series | np.ndarray,
    *,
    min_count: int,
) -> dict[str, str]:
    """The most frequent decline code of the next failed attempt after each decline code.

    Parameters
    ----------
    charge_id, retry_number, last_decline_code
        One value per retry example (``TrainingExamples.meta`` / ``.features``): the decline
        code that preceded each retry. Consecutive examples of a charge give the transitions
        (the code before retry ``r`` -> the code before retry ``r + 1``, i.e. of retry ``r``'s
        failure).
    min_count
        Transitions a code needs for an entry (fewer: no entry, the code is kept).

    Returns
    -------
    dict
        ``code -> next code`` (only codes seen at least ``min_count`` times as a "from" code).
    """
    return next_decline_codes_from_counts(
        count_decline_transitions(charge_id, retry_number, last_decline_code),
        min_count=min_count,
    )


@dataclass(frozen=True)
class _Tables:
    """Per (spec, next-code map): the code step and the per-level facts (cached)."""

    step: np.ndarray  # level index -> level index of the next code
    known: np.ndarray  # level is a real code (not "other" / "missing")
    hard: np.ndarray
    visa: np.ndarray
    family: np.ndarray | None  # level index -> last_decline_family level index
    sequence: dict[tuple[int, int], int]  # (previous, next) level -> decline_sequence level


_TABLES: dict[tuple[int, int], tuple[FeatureSpec, Mapping[str, str], _Tables]] = {}


def _tables(spec: FeatureSpec, next_code: Mapping[str, str]) -> _Tables:
    """The :class:`_Tables` of ``spec`` and ``next_code`` (cached per instance pair)."""
    hit = _TABLES.get((id(spec), id(next_code)))
    if hit is not None and hit[0] is spec and hit[1] is next_code and isinstance(next_code, dict):
        return hit[2]
    levels = spec.levels["last_decline_code"]
    index = {lv: i for i, lv in enumerate(levels)}
    other = index.get(OTHER_LEVEL, -1)
    step = np.arange(len(levels), dtype=np.int64)
    for i, lv in enumerate(levels):
        if lv not in (OTHER_LEVEL, MISSING_LEVEL):
            step[i] = index.get(next_code.get(lv, lv), other)
    info = [classify_decline(lv) for lv in levels]
    family = None
    if "last_decline_family" in spec.levels:
        fam = {lv: i for i, lv in enumerate(spec.levels["last_decline_family"])}
        family = np.array([fam.get(str(i.family), fam.get(OTHER_LEVEL, -1)) for i in info])
    sequence: dict[tuple[int, int], int] = {}
    if "decline_sequence" in spec.levels:
        seq = {lv: i for i, lv in enumerate(spec.levels["decline_sequence"])}
        seq_other = seq.get(OTHER_LEVEL, -1)
        for a in range(len(levels)):
            for b in {int(step[a]), a}:
                name = f"{levels[a]}{_SEQUENCE_SEPARATOR}{levels[b]}"
                sequence[(a, b)] = seq.get(name, seq_other)
    tables = _Tables(
        step=step,
        known=np.array([lv not in (OTHER_LEVEL, MISSING_LEVEL) for lv in levels]),
        hard=np.array([float(i.hard) for i in info]),
        visa=np.array([np.nan if i.visa_category is None else i.visa_category for i in info]),
        family=family,
        sequence=sequence,
    )
    if len(_TABLES) >= 64:
        _TABLES.clear()
    _TABLES[(id(spec), id(next_code))] = (spec, next_code, tables)
    return tables


def planned_within(failures: int, gap_hours: float | np.ndarray, window_hours: float) -> np.ndarray:
    """Planned attempts inside the trailing ``window_hours`` of a later planned retry.

    The ``failures`` earlier planned attempts are ``gap_hours`` apart, the last one
    ``gap_hours`` before the retry (at ``t - i * gap_hours``, ``i = 1 .. failures``): the count
    with ``i * gap_hours < window_hours`` (float64, one per gap).
    """
    gaps = np.asarray(gap_hours, dtype=np.float64)
    ago = gaps[..., None] * np.arange(1, failures + 1)
    return np.asarray(np.count_nonzero(ago < window_hours, axis=-1), dtype=np.float64)


def advance_after_failures(
    X: np.ndarray,
    spec: FeatureSpec,
    *,
    failures: int,
    gap_hours: float | np.ndarray,
    next_code: Mapping[str, str],
) -> np.ndarray:
    """Model-matrix rows after ``failures`` hypothetical failed attempts (a new array).

    Parameters
    ----------
    X
        ``(n, len(spec.names))`` float64 model matrix (categoricals as codes in the spec's
        levels, as :meth:`features.encoder.CandidateEncoder.matrix` writes them).
    spec
        The spec of ``X``.
    failures
        Failed planned attempts between the decision and the candidate time (>= 0).
    gap_hours
        Hours between consecutive planned attempts (> 0): one for all rows, or ``(n,)`` per
        row (e.g. a Mastercard advice wait longer than the planning gap).
    next_code
        ``code -> next code`` (:func:`fit_next_decline_codes`); absent codes are kept.

    Returns
    -------
    numpy.ndarray
        The advanced rows (``X`` itself is not modified).
    """
    gaps = np.asarray(gap_hours, dtype=np.float64)
    if failures < 0 or not bool(np.all(gaps > 0)):
        raise ValueError(f"need failures >= 0 and gap_hours > 0, got {failures}, {gap_hours}")
    out = np.array(X, dtype=np.float64, copy=True)
    if failures == 0 or out.shape[0] == 0:
        return out
    col = {name: j for j, name in enumerate(spec.names)}
    if "retry_number" in col:
        out[:, col["retry_number"]] += failures
    for name in ("hours_since_prev_attempt", "hours_from_now"):
        if name in col:
            out[:, col[name]] = gaps
    for name, window in (("card_attempts_24h", _WINDOW_24H), ("card_attempts_30d", _WINDOW_30D)):
        if name in col:
            out[:, col[name]] += planned_within(failures, gaps, window)
    if "last_decline_code" not in col:
        return out
    tables = _tables(spec, next_code)
    n_levels = tables.step.size
    j_code = col["last_decline_code"]
    start = out[:, j_code].astype(np.int64)
    code = start
    previous = start
    new_codes = np.zeros(out.shape[0])
    for _ in range(failures):
        previous = code
        code = tables.step[code]
        new_codes += code != previous
    out[:, j_code] = code
    if "distinct_codes" in col:
        out[:, col["distinct_codes"]] += new_codes
    if "decline_sequence" in col:
        pairs, inverse = np.unique(previous * n_levels + code, return_inverse=True)
        seq = np.array(
            [tables.sequence.get((p // n_levels, p % n_levels), -1) for p in pairs.tolist()],
            dtype=np.float64,
        )
        out[:, col["decline_sequence"]] = seq[inverse.reshape(-1)]
    changed = (code != start) & tables.known[code]
    if changed.any():
        moved = code[changed]
        if "last_decline_hard" in col:
            out[changed, col["last_decline_hard"]] = tables.hard[moved]
        if "last_visa_category" in col:
            out[changed, col["last_visa_category"]] = tables.visa[moved]
        if "last_decline_family" in col and tables.family is not None:
            out[changed, col["last_decline_family"]] = tables.family[moved]
    return out
