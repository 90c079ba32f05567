"""Explanations of the planner's decisions: local-time labels, factors, alternative times."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from retryopt.serving.policies.base import Alternative
from retryopt.serving.policies.rules import RuleResult

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# Hours (local) when issuers' batch/maintenance windows make authorisations least likely.
NIGHT_HOURS = (0, 1, 2, 3, 4, 5)
_NIGHT_TABLE = np.isin(np.arange(24), NIGHT_HOURS)
_UTC = "UTC"

# Decisions repeat the same few hundred grid hours (a window is 504 hourly slots and every
# charge of a batch shares most of them), so the UTC timestamps and the local-time labels of the
# explanations are memoised: building a pd.Timestamp or a zone conversion costs microseconds,
# a dict hit tens of nanoseconds. Values are immutable; the caches are cleared when full.
_CACHE_MAX = 1 << 16
_TIMESTAMPS: dict[int, pd.Timestamp] = {}
_LABELS: dict[tuple[int, str, int], str] = {}


def _timestamp(ns: int) -> pd.Timestamp:
    """``pd.Timestamp(ns, tz="UTC")``, memoised."""
    ts = _TIMESTAMPS.get(ns)
    if ts is None:
        if len(_TIMESTAMPS) >= _CACHE_MAX:
            _TIMESTAMPS.clear()
        ts = _TIMESTAMPS[ns] = pd.Timestamp(ns, tz=_UTC)
    return ts


def _pick_alternatives(
    grid: np.ndarray,
    score: np.ndarray,
    proba: np.ndarray,
    chosen: int,
    *,
    k: int,
    spacing_steps: int,
) -> tuple[Alternative, ...]:
    out: list[Alternative] = []
    if np.isnan(score).any():  # NaN ordering: keep the reference (sort-based) selection
        order = np.argsort(-score, kind="stable")
        taken = [chosen]
        picks: list[int] = []
        for j in order.tolist():
            if len(picks) >= k or not np.isfinite(score[j]):
                break
            if any(abs(j - t) < spacing_steps for t in taken):
                continue
            taken.append(j)
            picks.append(j)
    else:
        # Same picks as walking the stable descending sort: the best remaining score (first
        # index on ties) outside ``spacing_steps`` of every time already taken, k times.
        left = score.copy()
        m = left.size
        picks = []
        t = chosen
        while True:
            left[max(0, t - spacing_steps + 1) : min(m, t + spacing_steps)] = -np.inf
            if len(picks) >= k:
                break
            t = int(np.argmax(left))
            if not np.isfinite(left[t]):
                break
            picks.append(t)
    for j in picks:
        pj = float(proba[j])
        out.append(
            Alternative(
                retry_at=_timestamp(int(grid[j].astype(np.int64))),
                success_probability=None if pj != pj else round(pj, 4),
            )
        )
    return tuple(out)


def _alternative_picks(
    score: np.ndarray, chosen: np.ndarray, *, k: int, spacing_steps: int
) -> list[list[int] | None]:
    """:func:`_pick_alternatives`' indices for every row of ``score`` at once.

    Row ``i``: the best remaining score (first index on ties) outside ``spacing_steps`` of every
    time already taken (``chosen[i]`` first), ``k`` times, stopping at the first non-finite
    best. ``None`` where the per-row :func:`_pick_alternatives` must be used: rows with NaN
    scores (their order is its sort's) and batches of fewer than ``_BATCHED_PICKS_MIN_ROWS``
    rows (where the per-row walk is cheaper).
    """
    n, m = score.shape
    if n < _BATCHED_PICKS_MIN_ROWS:
        return [None] * n
    out: list[list[int] | None] = [[] for _ in range(n)]
    if m == 0:
        return out
    left = score.copy()
    rows = np.arange(n)
    # Window of grid steps within ``spacing_steps`` of a taken time; clipping at the ends only
    # repeats index 0 / m - 1, which are then inside the window too.
    offsets = np.arange(-spacing_steps + 1, spacing_steps)
    taken = np.asarray(chosen, dtype=np.int64)
    going = np.ones(n, dtype=bool)
    picks = np.empty((n, k), dtype=np.int64)
    ok = np.zeros((n, k), dtype=bool)
    for step in range(k):
        left[rows[:, None], np.clip(taken[:, None] + offsets[None, :], 0, m - 1)] = -np.inf
        taken = np.argmax(left, axis=1)
        going &= np.isfinite(left[rows, taken])
        picks[:, step] = taken
        ok[:, step] = going
        if not going.any():
            break
    has_nan = np.isnan(score).any(axis=1)
    for i in range(n):
        out[i] = None if has_nan[i] else picks[i, ok[i]].tolist()
    return out


_BATCHED_PICKS_MIN_ROWS = 4


def _local_label(t: np.datetime64 | int, zone: str, hour: int) -> str:
    """``"Friday 09:00 America/New_York (day 6 of the month)"`` (``t``: UTC, ns or datetime64)."""
    ns = t if isinstance(t, int) else int(np.asarray(t).astype("datetime64[ns]").astype(np.int64))
    key = (ns, zone, hour)
    label = _LABELS.get(key)
    if label is None:
        ts = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).astimezone(ZoneInfo(zone))
        label = f"{_WEEKDAYS[ts.weekday()]} {hour:02d}:00 {zone} (day {ts.day} of the month)"
        if len(_LABELS) >= _CACHE_MAX:
            _LABELS.clear()
        _LABELS[key] = label
    return label


def _feature_factors(features: pd.DataFrame | None, row: int) -> list[str]:
    """Human-readable payday / timing factors from the raw features at the chosen time."""
    if features is None or row >= len(features):
        return []
    out: list[str] = []
    rec = features.iloc[row]
    for name, value in rec.items():
        key = str(name).lower()
        if "payday" in key or "pay_day" in key:
            if isinstance(value, int | float | np.floating | np.integer) and not pd.isna(value):
                out.append(f"{name} = {float(value):g}")
            elif isinstance(value, str | bool | np.bool_):
                out.append(f"{name} = {value}")
    return out[:3]


def _night_means(p: np.ndarray, night: np.ndarray) -> np.ndarray:
    """Per row, the mean of ``p`` over the ``night`` slots, NaN values skipped (NaN if none).

    Summed left to right (a cumulative sum, so padding zeros never change the result and one
    row gives the same number in any batch).
    """
    if p.shape[1] == 0:
        return np.full(p.shape[0], np.nan)
    take = night & ~np.isnan(p)
    count = take.sum(axis=1)
    total = np.cumsum(np.where(take, p, 0.0), axis=1)[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def explanation_factors(
    rule: RuleResult,
    zone: str,
    proba: np.ndarray,
    j: int,
    features: pd.DataFrame | None,
    feature_row: int,
    *,
    best_next_day: float | None = None,
    best_window: float | None = None,
    night_mean: float | None = None,
    p_at: float | None = None,
    t_ns: int | None = None,
    hour: int | None = None,
) -> list[str]:
    """Explanation factors; ``best_next_day`` / ``best_window`` (the allowed times' best
    probability in the first 24 grid steps / the window, NaN if none), ``night_mean``
    (:func:`_night_means` of the charge), ``p_at`` / ``t_ns`` / ``hour`` (the probability,
    UTC nanoseconds and local hour at ``j``) when precomputed for the whole batch."""
    n = len(rule.grid)
    if best_next_day is None or best_window is None or night_mean is None:
        p = np.where(rule.allowed, proba[:n], np.nan)
        # fmax.reduce = nanmax without its warnings (NaN only when every value is NaN).
        if best_next_day is None:
            best_next_day = float(np.fmax.reduce(p[: min(n, 24)]))
        if best_window is None:
            best_window = float(np.fmax.reduce(p))
        if night_mean is None:
            night = (_NIGHT_TABLE[rule.local_hours] & rule.allowed)[None, :]
            night_mean = float(_night_means(p[None, :], night)[0])
    if p_at is None:
        p_at = float(proba[j])
    if t_ns is None:
        t_ns = int(rule.grid.view(np.int64)[j])
    if hour is None:
        hour = int(rule.local_hours[j])
    # No allowed time in the next 24 h (e.g. Mastercard advice 26: retry after 2 days).
    next_day = f"{best_next_day:.2f}" if math.isfinite(best_next_day) else "no allowed time"
    factors = [
        f"retry {_local_label(t_ns, zone, hour)}",
        f"P(success) {p_at:.2f} there vs {next_day} best in the next "
        f"24 h and {best_window:.2f} best in the window",
        f"planned over {rule.retries_left} retr{'y' if rule.retries_left == 1 else 'ies'} left",
    ]
    if hour not in NIGHT_HOURS:
        p_night = night_mean
        if p_night < p_at:
            factors.append(f"issuer night window avoided (mean P {p_night:.2f} at 00-06 local)")
    factors.extend(_feature_factors(features, feature_row))
    factors.extend(rule.notes)
    return factors
