"""Retry policies: network rules first, then a planner over the model's success probabilities.

Three policies implement :class:`features.decisions.RetryPolicy` so that backtests and the
synthetic world's ``play`` can run them exactly as the API does:

- ``model`` (:class:`PlannerPolicy`): scores every allowed hourly candidate time with the model
  and chooses the next retry by dynamic programming over the remaining retry budget;
- ``greedy`` (:class:`GreedyPolicy`): the baseline, argmax of the success probability;
- ``fallback`` (:class:`FallbackPolicy`): rules plus a fixed ladder, used when no model is loaded.

The planner (documented in ``docs/serving.md``). For a charge with ``R`` retries left, candidate
times ``t_1 < ... < t_m`` (allowed by the rules), amount ``A``, cost per attempt ``c``, discount
``d(t) = (1 - daily_discount) ** days(t - now)`` and planning gap ``g`` grid steps (the larger
of the constraints' minimum gap and ``PlannerConfig.planning_gap_hours``, 24 h by default: a
failed retry means the funds are still short, so the plan does not count on the next hour)::

    W_0(j) = 0
    val_k(j) = p_k(j) * A * d(j) - c + (1 - p_k(j)) * W_{k-1}(j)
    W_k(j)  = max(0, max_{j' >= j + g} val_k(j'))        (0 = stop after a failure at t_j)

and the next retry is ``argmax_j val_R(j)`` (stop when that value is <= 0). ``p_R`` is the
model's probability for the next retry; the success probability of a *later* retry after a
failure is approximated by the same curve times a decay factor per earlier failed retry,
``p_k(j) = p_R(j) * decay ** (R - k)`` (``decay`` defaults to 0.8, configurable): scoring a
second feature matrix per hypothetical failure time would multiply the model cost. The plan is
recomputed at every call, so only its first step is ever executed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import Constraints, DecisionBatch, PolicyDecisions
from retryopt.features.encoder import CandidateEncoder
from retryopt.serving.columnar import ColumnarBatch
from retryopt.serving.rules import (
    HOUR_NS,
    CardRef,
    Reason,
    RuleResult,
    charge_states,
    evaluate_rules_batch,
)

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


@dataclass(frozen=True, kw_only=True)
class CandidateScores:
    """Model output over a candidate grid.

    ``proba`` has shape ``(n_charges, n_candidates)`` with NaN at padding; ``features`` holds the
    raw features, one row per (charge, candidate) in row-major order, or None.
    """

    proba: np.ndarray
    features: pd.DataFrame | None = None


@runtime_checkable
class SuccessModel(Protocol):
    """A retry-success model over candidate times."""

    version: str

    def predict_candidates(
        self, batch: DecisionBatch, candidate_times: np.ndarray
    ) -> CandidateScores:
        """Score ``candidate_times`` (``datetime64[ns]``, ``(n_charges, n)``, NaT = padding)."""
        ...


CHUNK_ROWS = 4096
ENGINES = ("lightgbm", "lleaves")


class BundleSuccessModel:
    """:class:`SuccessModel` backed by a trained model bundle (``training.bundle.ModelBundle``).

    Fast path (default, verified at load by :func:`serving.model_store.verify_policy`): the
    candidate features go straight into a float64 matrix
    (:func:`features.build.encode_candidate_matrix`, categoricals as their codes in the spec's
    level order, exactly what LightGBM derives from the pandas frame) and are scored by the
    booster (``num_threads`` per call) or by a compiled engine (``engine``, e.g. lleaves), then
    calibrated. Slow path: :func:`features.build.build_candidate_features` and
    ``bundle.predict_proba`` on the pandas frame.

    Parameters
    ----------
    bundle
        The model bundle.
    fast_path
        Use the numpy fast path when the bundle exposes ``booster``, ``calibrator`` and
        ``feature_spec``.
    engine
        Optional compiled model with ``predict(X: ndarray) -> ndarray`` returning the same
        uncalibrated probabilities as ``bundle.booster.predict`` (checked at load).
    """

    def __init__(self, bundle: object, *, fast_path: bool = True, engine: Any = None) -> None:
        self.bundle = bundle
        self.version = str(getattr(bundle, "version", "unknown"))
        self.fast_path = fast_path and all(
            hasattr(bundle, a) for a in ("booster", "calibrator", "feature_spec")
        )
        self.engine = engine
        spec = getattr(bundle, "feature_spec", None)
        names = getattr(spec, "names", ()) if spec is not None else ()
        # The explanation reads payday-like raw features when the model has any.
        self._needs_raw = any("payday" in n.lower() or "pay_day" in n.lower() for n in names)

    @property
    def engine_name(self) -> str:
        """Scoring engine in use: ``lleaves``, ``lightgbm`` or ``bundle`` (slow path)."""
        if not self.fast_path:
            return "bundle"
        return "lightgbm" if self.engine is None else "lleaves"

    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        """Calibrated P(success) of model-matrix rows (:func:`encode_candidate_matrix`)."""
        bundle: Any = self.bundle
        if X.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        if self.engine is not None:
            raw = self.engine.predict(X)
        else:
            raw = bundle.booster.predict(X, num_threads=getattr(bundle, "num_threads", 1))
        return np.asarray(bundle.calibrator.apply(np.asarray(raw, dtype=np.float64)))

    def encoder(
        self,
        batch: DecisionBatch,
        *,
        attempts: AttemptColumns | None = None,
        history: AttemptColumns | None = None,
    ) -> CandidateEncoder | None:
        """A :class:`features.build.CandidateEncoder` of ``batch`` (None off the fast path).

        Build it once per batch, then score any (charge, time) rows with :meth:`score_rows`.
        """
        if not self.fast_path or self._needs_raw:
            return None
        bundle: Any = self.bundle
        return CandidateEncoder(batch, bundle.feature_spec, attempts=attempts, history=history)

    def score_rows(
        self, encoder: CandidateEncoder, dec: np.ndarray, times: np.ndarray
    ) -> np.ndarray:
        """Calibrated P(success) of charge ``dec[r]`` retried at ``times[r]`` (no NaT).

        Encoded and scored in blocks of at most ``4 * CHUNK_ROWS`` rows (bounded memory), as
        row-major blocks for both engines: lleaves needs them, the LightGBM booster reads them
        without a copy, and the encoder writes them in place (per-decision constant rows, then
        the candidate-dependent columns), which is cheaper than its column-major fill.
        """
        n = int(dec.size)
        if n == 0:
            return np.empty(0, dtype=np.float64)
        step = CHUNK_ROWS * 4
        parts = [
            self.predict_matrix(encoder.matrix(dec[k : k + step], times[k : k + step], order="C"))
            for k in range(0, n, step)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def predict_rows(self, rows: pd.DataFrame) -> np.ndarray:
        """Calibrated P(success) of raw feature rows (``bundle.predict_proba``)."""
        bundle: Any = self.bundle
        if len(rows) == 0:
            return np.empty(0, dtype=np.float64)
        return np.asarray(bundle.predict_proba(rows), dtype=np.float64)

    def predict_candidates(
        self,
        batch: DecisionBatch,
        candidate_times: np.ndarray,
        *,
        attempts: AttemptColumns | None = None,
        history: AttemptColumns | None = None,
    ) -> CandidateScores:
        """Score the candidate grid of every charge of ``batch``.

        ``attempts`` / ``history`` optionally hold the same rows as the batch's frames as
        :class:`features.build.AttemptColumns` (read instead of the frames on the fast path).
        """
        flat_valid = ~np.isnat(candidate_times.ravel())
        proba = np.full(candidate_times.size, np.nan)
        n_charges = len(batch.charge_ids)
        if self.fast_path and not self._needs_raw:
            # Only the valid (non-padding) rows are encoded and scored.
            dec, times = CandidateEncoder.grid_rows(candidate_times, n_charges)
            enc = self.encoder(batch, attempts=attempts, history=history)
            assert enc is not None
            valid_idx = np.flatnonzero(flat_valid)
            proba[valid_idx] = self.score_rows(enc, dec[valid_idx], times[valid_idx])
            return CandidateScores(proba=proba.reshape(candidate_times.shape), features=None)
        from retryopt.features.online import build_candidate_features

        raw = build_candidate_features(batch, candidate_times)
        if flat_valid.any():
            sel = raw if flat_valid.all() else raw.iloc[np.flatnonzero(flat_valid)]
            # Scored in blocks of at most CHUNK_ROWS rows (bounds memory on big batches).
            parts = [
                self.predict_rows(sel.iloc[k : k + CHUNK_ROWS])
                for k in range(0, len(sel), CHUNK_ROWS)
            ]
            proba[flat_valid] = np.concatenate(parts)
        return CandidateScores(proba=proba.reshape(candidate_times.shape), features=raw)


@dataclass(frozen=True, kw_only=True)
class PlannerConfig:
    """Planner settings.

    Parameters
    ----------
    later_attempt_decay
        Success of each later retry relative to the next one, per failed retry in between.
    planning_gap_hours
        Least spacing the plan assumes between a retry and the next one it plans (default 24 h).
        A failed retry is evidence the customer's funds are still short, so the next real chance
        is a later day, not the next hour; without it the plan values "retry at a peak, then an
        hour later at nearly the same odds" and pulls the first retry late. Only the plan uses
        it: the next retry may still come ``min_gap_hours`` after the last attempt.
    grid_hours
        Spacing of the candidate grid.
    n_alternatives
        Alternative times reported besides the chosen one.
    alternative_spacing_hours
        Minimum spacing between reported alternatives (and from the chosen time).
    fallback_ladder_hours
        Fallback schedule: hours after the first failure of retry 1, 2, ...
    search
        ``"hourly"`` scores every allowed grid point (exact); ``"coarse"`` scores every
        ``coarse_step``-th point plus the first ``dense_steps`` points, then every point within
        ``coarse_step - 1`` of the ``refine_top`` best coarse points (by planned value and by
        probability), and plans over the scored points only (see ``docs/serving.md``).
    coarse_step, dense_steps, refine_top
        Parameters of the coarse-to-fine search (grid steps).
    """

    later_attempt_decay: float = 0.8
    planning_gap_hours: float = 24.0
    grid_hours: int = 1
    n_alternatives: int = 3
    alternative_spacing_hours: float = 6.0
    fallback_ladder_hours: tuple[float, ...] = (24.0, 72.0, 120.0, 168.0, 240.0, 336.0, 432.0)
    search: str = "hourly"
    coarse_step: int = 4
    dense_steps: int = 48
    refine_top: int = 4

    def __post_init__(self) -> None:
        if self.search not in ("hourly", "coarse"):
            raise ValueError(f"search must be 'hourly' or 'coarse', got {self.search!r}")
        if self.coarse_step < 1 or self.dense_steps < 0 or self.refine_top < 1:
            raise ValueError(
                "coarse_step and refine_top must be >= 1 and dense_steps >= 0, got "
                f"{self.coarse_step}, {self.refine_top}, {self.dense_steps}"
            )
        if not 0 < self.later_attempt_decay <= 1:
            raise ValueError(
                f"later_attempt_decay must be in (0, 1], got {self.later_attempt_decay}"
            )
        if self.grid_hours < 1:
            raise ValueError(f"grid_hours must be >= 1, got {self.grid_hours}")
        if not 0 <= self.planning_gap_hours <= 24 * 21:
            raise ValueError(
                f"planning_gap_hours must be in [0, 504], got {self.planning_gap_hours}"
            )


@dataclass(frozen=True, kw_only=True)
class Alternative:
    """Another candidate retry time and its predicted success probability."""

    retry_at: pd.Timestamp
    success_probability: float | None


@dataclass(frozen=True, kw_only=True)
class Decision:
    """A full retry decision for one charge (what the API returns)."""

    charge_id: str
    action: str  # "retry" | "stop"
    retry_at: pd.Timestamp | None
    success_probability: float | None
    reason: str
    source: str
    action_required: str | None
    alternatives: tuple[Alternative, ...]
    explanation: str
    model_version: str | None
    policy: str
    expected_value: float | None = None
    factors: tuple[str, ...] = field(default_factory=tuple)


def plan_values(
    proba: np.ndarray,
    allowed: np.ndarray,
    *,
    retries_left: np.ndarray,
    amount: np.ndarray,
    discount: np.ndarray,
    cost: float,
    gap_steps: int,
    decay: float,
) -> np.ndarray:
    """Expected value of retrying first at each candidate, planning the remaining budget.

    Parameters
    ----------
    proba
        ``(n, m)`` success probability of the next retry at each candidate (NaN = padding).
    allowed
        ``(n, m)`` bool, candidates the rules allow.
    retries_left
        ``(n,)`` int, retries left per charge (>= 1).
    amount
        ``(n,)`` amounts (minor units).
    discount
        ``(n, m)`` discount factor of money collected at each candidate.
    cost
        Cost of one attempt (minor units).
    gap_steps
        Minimum number of grid steps between two attempts (>= 1).
    decay
        Success of each later retry relative to the next one.

    Returns
    -------
    numpy.ndarray
        ``(n, m)`` value of a first retry at each candidate, ``-inf`` where not allowed.
    """
    n = proba.shape[0]
    if n > _PLAN_BLOCK_ROWS:
        # Rows are independent: blocks of rows keep the temporaries in cache (about 2x faster
        # on a 200-charge batch than one pass over the whole (n, m) arrays).
        return np.concatenate(
            [
                plan_values(
                    proba[k : k + _PLAN_BLOCK_ROWS],
                    allowed[k : k + _PLAN_BLOCK_ROWS],
                    retries_left=retries_left[k : k + _PLAN_BLOCK_ROWS],
                    amount=amount[k : k + _PLAN_BLOCK_ROWS],
                    discount=discount[k : k + _PLAN_BLOCK_ROWS],
                    cost=cost,
                    gap_steps=gap_steps,
                    decay=decay,
                )
                for k in range(0, n, _PLAN_BLOCK_ROWS)
            ]
        )
    m = proba.shape[1]
    # Same arithmetic, in the same order, as the textbook form (tests pin it bit for bit against
    # :func:`plan_values_reference`), with the temporaries written in place: on one charge the
    # numpy call overhead dominates, on a batch the memory traffic.
    p = np.where(allowed, proba, 0.0)
    np.copyto(p, 0.0, where=np.isnan(p))  # nan_to_num for probabilities (never infinite)
    gain = amount[:, None] * discount
    out = np.full((n, m), -np.inf)
    w = np.zeros((n, m))  # W_{k-1}: value after a failure at j, with k-1 retries left
    blocked = ~allowed
    pk = np.empty((n, m))
    val = np.empty((n, m))
    tmp = np.empty((n, m))
    r_max = int(retries_left.max()) if n else 0
    for k in range(1, r_max + 1):
        exponent = np.maximum(retries_left - k, 0)[:, None]
        np.multiply(p, decay**exponent, out=pk)
        np.multiply(pk, gain, out=val)
        np.subtract(val, cost, out=val)
        np.subtract(1.0, pk, out=tmp)
        np.multiply(tmp, w, out=tmp)
        np.add(val, tmp, out=val)
        val[blocked] = -np.inf
        at_level = retries_left == k
        if at_level.any():
            out[at_level] = val[at_level]
        if k == r_max:
            break
        # W_k(j) = max(0, max_{j' >= j + gap} val_k(j')): a suffix maximum, shifted by the gap.
        suffix = np.maximum.accumulate(val[:, ::-1], axis=1)[:, ::-1]
        w.fill(0.0)
        if gap_steps < m:
            np.maximum(suffix[:, gap_steps:], 0.0, out=w[:, : m - gap_steps])
    return out


_PLAN_BLOCK_ROWS = 64


def plan_values_reference(
    proba: np.ndarray,
    allowed: np.ndarray,
    *,
    retries_left: np.ndarray,
    amount: np.ndarray,
    discount: np.ndarray,
    cost: float,
    gap_steps: int,
    decay: float,
) -> np.ndarray:
    """:func:`plan_values` written plainly (the reference its tests compare with)."""
    n, m = proba.shape
    p = np.where(allowed, np.nan_to_num(proba, nan=0.0), 0.0)
    gain = amount[:, None] * discount
    out = np.full((n, m), -np.inf)
    w = np.zeros((n, m))
    r_max = int(retries_left.max()) if n else 0
    for k in range(1, r_max + 1):
        exponent = np.clip(retries_left - k, 0, None)[:, None]
        pk = p * decay**exponent
        val = pk * gain - cost + (1.0 - pk) * w
        val = np.where(allowed, val, -np.inf)
        at_level = retries_left == k
        if at_level.any():
            out[at_level] = val[at_level]
        if k == r_max:
            break
        suffix = np.maximum.accumulate(val[:, ::-1], axis=1)[:, ::-1]
        w = np.zeros((n, m))
        if gap_steps < m:
            w[:, : m - gap_steps] = np.maximum(suffix[:, gap_steps:], 0.0)
    return out


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


def _stop_decision(rule: RuleResult, *, policy: str, model_version: str | None) -> Decision:
    note = "; ".join(rule.notes)
    explanation = f"stop: {rule.reason}" + (f" ({note})" if note else "")
    explanation += f". Source: {rule.source}" if rule.source else ""
    return Decision(
        charge_id=rule.charge_id,
        action="stop",
        retry_at=None,
        success_probability=None,
        reason=rule.reason,
        source=rule.source,
        action_required=rule.action_required,
        alternatives=(),
        explanation=explanation,
        model_version=model_version,
        policy=policy,
    )


def _sub_batch(batch: DecisionBatch, keep: np.ndarray) -> DecisionBatch:
    """The charges of ``batch`` selected by the boolean mask ``keep``."""
    if keep.all():
        return batch
    ids = batch.charge_ids[keep]
    attempts = batch.attempts
    if len(attempts):
        wanted = set(ids.tolist())
        mask = np.asarray([x in wanted for x in attempts[c.CHARGE_ID].tolist()], dtype=bool)
        attempts = attempts[mask]
    return DecisionBatch(
        charge_ids=ids,
        now=batch.now[keep],
        attempts=attempts,
        history=batch.history,
        constraints=batch.constraints,
    )


def _amounts(batch: DecisionBatch, charge_ids: Sequence[str]) -> np.ndarray:
    """The amount of each charge's last attempt (0 when the charge has no rows)."""
    if isinstance(batch, ColumnarBatch):
        cols = batch.attempt_columns
        ids = list(cols.columns[c.CHARGE_ID])
        amounts = np.asarray(cols.columns[c.AMOUNT], dtype=np.float64)
    elif not len(batch.attempts):
        return np.zeros(len(charge_ids))
    else:
        ids = batch.attempts[c.CHARGE_ID].tolist()
        amounts = batch.attempts[c.AMOUNT].to_numpy(dtype=np.float64, na_value=np.nan)
    last: dict[Any, float] = {}
    for cid, amount in zip(ids, amounts.tolist(), strict=True):
        if amount == amount:  # groupby().last() skips missing values
            last[cid] = amount
    return np.asarray([last.get(cid, 0.0) for cid in charge_ids], dtype=np.float64)


class _RulesPolicy:
    """Shared machinery: rules per charge, then :meth:`_choose` on the survivors."""

    name = "base"

    def __init__(self, *, config: PlannerConfig | None = None) -> None:
        self.config = config or PlannerConfig()

    @property
    def model_version(self) -> str | None:
        return None

    def rules(
        self,
        batch: DecisionBatch,
        *,
        current_cards: Sequence[CardRef | None] | None = None,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[tuple[RuleResult, str]]:
        """The rules' verdict and the customer's zone for every charge of ``batch``.

        ``columns`` (or a :class:`serving.columnar.ColumnarBatch`) is read instead of the frames.
        """
        if columns is None and isinstance(batch, ColumnarBatch):
            columns = batch.columns
        states = charge_states(batch, current_cards=current_cards, columns=columns)
        results = evaluate_rules_batch(states, batch.constraints, grid_hours=self.config.grid_hours)
        return [(r, s.timezone) for r, s in zip(results, states, strict=True)]

    def decide_detailed(
        self,
        batch: DecisionBatch,
        *,
        current_cards: Sequence[CardRef | None] | None = None,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[Decision]:
        """Full decisions (with alternatives and explanation) for every charge of ``batch``.

        ``columns`` optionally holds ``batch.attempts`` and ``batch.history`` as
        :class:`features.build.AttemptColumns` (same rows; the model's fast path reads them).
        """
        if columns is None and isinstance(batch, ColumnarBatch):
            columns = batch.columns
        verdicts = self.rules(batch, current_cards=current_cards, columns=columns)
        out: list[Decision | None] = [None] * len(verdicts)
        live = np.array([not r.stop for r, _ in verdicts], dtype=bool)
        for i, (r, _) in enumerate(verdicts):
            if r.stop:
                out[i] = _stop_decision(r, policy=self.name, model_version=self.model_version)
        if live.any():
            idx = np.flatnonzero(live)
            sub: DecisionBatch = batch
            if live.all():
                pass
            elif (
                isinstance(batch, ColumnarBatch)
                and columns is not None
                and columns[0] is batch.attempt_columns
            ):
                sub = batch.select(live)
                columns = (sub.attempt_columns, sub.history_columns)
            else:
                sub = _sub_batch(batch, live)
                if columns is not None:
                    wanted = set(batch.charge_ids[live].tolist())
                    own_ids = columns[0].columns[c.CHARGE_ID]
                    keep = np.asarray([x in wanted for x in own_ids], dtype=bool)
                    columns = (columns[0].take(keep), columns[1])
            chosen = self._choose(
                sub,
                [verdicts[i][0] for i in idx],
                [verdicts[i][1] for i in idx],
                columns=columns,
            )
            for i, d in zip(idx.tolist(), chosen, strict=True):
                out[i] = d
        return [d for d in out if d is not None]

    def decide(
        self, batch: DecisionBatch, *, current_cards: Sequence[CardRef | None] | None = None
    ) -> PolicyDecisions:
        """Decide every charge of ``batch`` (the :class:`RetryPolicy` protocol)."""
        decisions = self.decide_detailed(batch, current_cards=current_cards)
        retry_at = np.array(
            [
                np.datetime64("NaT", "ns")
                if d.retry_at is None
                else np.datetime64(d.retry_at.tz_convert("UTC").tz_localize(None).as_unit("ns"))
                for d in decisions
            ],
            dtype="datetime64[ns]",
        )
        return PolicyDecisions(
            retry_at=retry_at,
            propensity=np.ones(len(decisions)),
            reason=np.array([d.reason for d in decisions], dtype=object),
        )

    def _choose(
        self,
        batch: DecisionBatch,
        rules: list[RuleResult],
        zones: list[str],
        *,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[Decision]:
        raise NotImplementedError


def _padded(rules: list[RuleResult]) -> tuple[np.ndarray, np.ndarray]:
    m = max(len(r.grid) for r in rules)
    grid = np.full((len(rules), m), np.datetime64("NaT", "ns"), dtype="datetime64[ns]")
    allowed = np.zeros((len(rules), m), dtype=bool)
    for i, r in enumerate(rules):
        grid[i, : len(r.grid)] = r.grid
        allowed[i, : len(r.grid)] = r.allowed
    return grid, allowed


def _padded_hours(rules: list[RuleResult], m: int) -> np.ndarray:
    """``(n, m)`` local hour of every grid slot (0 in the padding)."""
    hours = np.zeros((len(rules), m), dtype=np.int64)
    for i, r in enumerate(rules):
        hours[i, : len(r.local_hours)] = r.local_hours
    return hours


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


class PlannerPolicy(_RulesPolicy):
    """The ``model`` policy: rules, then dynamic programming over the remaining retries.

    Parameters
    ----------
    model
        Success model over candidate times (e.g. :class:`BundleSuccessModel`).
    config
        Planner settings.
    """

    name = "model"

    def __init__(self, model: SuccessModel, *, config: PlannerConfig | None = None) -> None:
        super().__init__(config=config)
        self.model = model

    @property
    def model_version(self) -> str | None:
        return self.model.version

    def _values(
        self,
        proba: np.ndarray,
        allowed: np.ndarray,
        grid: np.ndarray,
        batch: DecisionBatch,
        rules: list[RuleResult],
    ) -> np.ndarray:
        cons: Constraints = batch.constraints
        if cons.daily_discount == 0.0:
            discount = np.ones(grid.shape)  # 1.0 ** days, without the power
        else:
            now_ns = batch.now.astype("datetime64[ns]").astype(np.int64)
            grid_ns = grid.astype(np.int64)
            days = np.clip((grid_ns - now_ns[:, None]) / (24 * HOUR_NS), 0, None)
            discount = (1.0 - cons.daily_discount) ** days
        gap_hours = max(cons.min_gap_hours, self.config.planning_gap_hours)
        gap_steps = max(1, int(np.ceil(gap_hours / self.config.grid_hours)))
        return plan_values(
            proba,
            allowed,
            retries_left=np.array([r.retries_left for r in rules]),
            amount=_amounts(batch, [r.charge_id for r in rules]),
            discount=discount,
            cost=cons.cost_per_attempt,
            gap_steps=gap_steps,
            decay=self.config.later_attempt_decay,
        )

    def _score(
        self,
        batch: DecisionBatch,
        grid: np.ndarray,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None,
    ) -> CandidateScores:
        if columns is not None and isinstance(self.model, BundleSuccessModel):
            return self.model.predict_candidates(
                batch, grid, attempts=columns[0], history=columns[1]
            )
        return self.model.predict_candidates(batch, grid)

    def _score_subset(
        self,
        batch: DecisionBatch,
        grid: np.ndarray,
        select: np.ndarray,
        proba: np.ndarray,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None,
        encoder: CandidateEncoder | None = None,
    ) -> None:
        """Score the grid points ``select`` (``(n, m)`` bool) into ``proba`` (in place).

        With ``encoder`` (built once per batch) only the selected rows are encoded and scored.
        """
        if encoder is not None and isinstance(self.model, BundleSuccessModel):
            rows, cols = np.nonzero(select)
            if rows.size:
                proba[rows, cols] = self.model.score_rows(encoder, rows, grid[rows, cols])
            return
        counts = select.sum(axis=1)
        width = int(counts.max(initial=0))
        if width == 0:
            return
        compact = np.full((grid.shape[0], width), np.datetime64("NaT", "ns"), grid.dtype)
        rows, cols = np.nonzero(select)
        slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        compact[rows, slot] = grid[rows, cols]
        scored = self._score(batch, compact, columns).proba
        proba[rows, cols] = scored[rows, slot]

    def _coarse_to_fine(
        self,
        batch: DecisionBatch,
        grid: np.ndarray,
        allowed: np.ndarray,
        rules: list[RuleResult],
        columns: tuple[AttemptColumns, AttemptColumns | None] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities on a coarse grid refined around its best points; the scored mask.

        The candidate-independent feature state is built once (one
        :class:`features.build.CandidateEncoder`); each pass encodes and scores only its rows.
        """
        cfg = self.config
        m = grid.shape[1]
        j = np.arange(m)
        coarse = allowed & ((j % cfg.coarse_step == 0) | (j < cfg.dense_steps))[None, :]
        proba = np.full(grid.shape, np.nan)
        encoder: CandidateEncoder | None = None
        if isinstance(self.model, BundleSuccessModel):
            encoder = self.model.encoder(
                batch,
                attempts=None if columns is None else columns[0],
                history=None if columns is None else columns[1],
            )
        self._score_subset(batch, grid, coarse, proba, columns, encoder)
        values = self._values(proba, coarse, grid, batch, rules)
        p_rank = np.where(coarse, np.nan_to_num(proba, nan=-1.0), -np.inf)
        k = min(cfg.refine_top, m)
        best = np.concatenate(
            [np.argsort(-values, axis=1)[:, :k], np.argsort(-p_rank, axis=1)[:, :k]], axis=1
        )
        near = np.zeros(grid.shape, dtype=bool)
        reach = cfg.coarse_step - 1
        for off in range(-reach, reach + 1):
            cols = np.clip(best + off, 0, m - 1)
            near[np.arange(grid.shape[0])[:, None], cols] = True
        fine = near & allowed & ~coarse
        self._score_subset(batch, grid, fine, proba, columns, encoder)
        return proba, coarse | fine

    def _choose(
        self,
        batch: DecisionBatch,
        rules: list[RuleResult],
        zones: list[str],
        *,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[Decision]:
        grid, allowed = _padded(rules)
        rule_allowed = allowed
        if self.config.search == "coarse" and grid.shape[1] > self.config.dense_steps:
            proba, scored = self._coarse_to_fine(batch, grid, allowed, rules, columns)
            scores = CandidateScores(proba=proba)
            allowed = allowed & scored
        else:
            scores = self._score(batch, grid, columns)
            proba = scores.proba
        values = self._values(proba, allowed, grid, batch, rules)
        spacing = max(1, round(self.config.alternative_spacing_hours / self.config.grid_hours))
        out: list[Decision] = []
        m = grid.shape[1]
        # Whole-batch work (one numpy call per step instead of one per charge): the chosen
        # index, the alternatives' indices and the explanation's best probabilities.
        chosen = np.argmax(values, axis=1)
        alt_picks = _alternative_picks(
            values, chosen, k=self.config.n_alternatives, spacing_steps=spacing
        )
        p_rules = np.where(rule_allowed, proba, np.nan)
        best_next_day = np.fmax.reduce(p_rules[:, :24], axis=1)
        best_window = np.fmax.reduce(p_rules, axis=1)
        hours = _padded_hours(rules, m)
        night_mean = _night_means(p_rules, _NIGHT_TABLE[hours] & rule_allowed)
        grid_ns = grid.view(np.int64)
        # The per-charge loop reads Python scalars gathered for the whole batch at once (a
        # numpy scalar access costs about a microsecond here, several per charge otherwise).
        at = (np.arange(len(rules)), chosen)
        val_at = values[at].tolist()
        p_at = proba[at].tolist()
        t_at = grid_ns[at].tolist()
        hour_at = hours[at].tolist()
        next_day_l = best_next_day.tolist()
        window_l = best_window.tolist()
        night_l = night_mean.tolist()
        alt_rows = [i for i, picks in enumerate(alt_picks) for _ in picks or ()]
        alt_cols = [j for picks in alt_picks for j in picks or ()]
        alt_t = iter(grid_ns[alt_rows, alt_cols].tolist())
        alt_p = iter(proba[alt_rows, alt_cols].tolist())
        for i, r in enumerate(rules):
            j = int(chosen[i])
            value = val_at[i]
            picks = alt_picks[i]
            alternatives = (
                ()
                if picks is None
                else tuple(
                    Alternative(
                        retry_at=_timestamp(t),
                        success_probability=None if pj != pj else round(pj, 4),
                    )
                    for t, pj in zip(
                        itertools.islice(alt_t, len(picks)),
                        itertools.islice(alt_p, len(picks)),
                        strict=True,
                    )
                )
            )
            if not math.isfinite(value) or value <= 0:
                out.append(
                    Decision(
                        charge_id=r.charge_id,
                        action="stop",
                        retry_at=None,
                        success_probability=None,
                        reason=str(Reason.NOT_WORTH_AN_ATTEMPT),
                        source="expected value of every allowed time <= cost per attempt",
                        action_required=None,
                        alternatives=(),
                        explanation="stop: no allowed retry time is worth the cost of an attempt",
                        model_version=self.model_version,
                        policy=self.name,
                    )
                )
                continue
            p_row = proba[i]
            factors = self._factors(
                r,
                zones[i],
                p_row,
                j,
                scores.features,
                i * m + j,
                best_next_day=next_day_l[i],
                best_window=window_l[i],
                night_mean=night_l[i],
                p_at=p_at[i],
                t_ns=t_at[i],
                hour=hour_at[i],
            )
            out.append(
                Decision(
                    charge_id=r.charge_id,
                    action="retry",
                    retry_at=_timestamp(t_at[i]),
                    success_probability=round(p_at[i], 4),
                    reason=str(self._reason),
                    source="model",
                    action_required=None,
                    alternatives=(
                        alternatives
                        if picks is not None
                        else _pick_alternatives(
                            grid[i],
                            values[i],
                            p_row,
                            j,
                            k=self.config.n_alternatives,
                            spacing_steps=spacing,
                        )
                    ),
                    explanation="; ".join(factors),
                    model_version=self.model_version,
                    policy=self.name,
                    expected_value=round(value, 2),
                    factors=tuple(factors),
                )
            )
        return out

    _reason = Reason.MODEL_OPTIMUM

    def _factors(
        self,
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


class GreedyPolicy(PlannerPolicy):
    """The ``greedy`` baseline: the allowed time with the highest success probability."""

    name = "greedy"
    _reason = Reason.GREEDY_ARGMAX

    def _values(
        self,
        proba: np.ndarray,
        allowed: np.ndarray,
        grid: np.ndarray,
        batch: DecisionBatch,
        rules: list[RuleResult],
    ) -> np.ndarray:
        amount = _amounts(batch, [r.charge_id for r in rules])
        p = np.nan_to_num(proba, nan=0.0)
        # Expected value of one attempt; argmax over time = argmax of p (earliest on ties).
        val = p * amount[:, None] - batch.constraints.cost_per_attempt
        return np.where(allowed, val, -np.inf)


class FallbackPolicy(_RulesPolicy):
    """The ``fallback`` policy used when no model is available.

    Rules first (exactly as the model policies), then a fixed ladder: retry ``k`` (1-based) at
    the first allowed hour at or after ``first failure + fallback_ladder_hours[k - 1]`` (the last
    ladder step repeats), or the last allowed hour of the window if none is later.
    """

    name = "fallback"

    def _choose(
        self,
        batch: DecisionBatch,
        rules: list[RuleResult],
        zones: list[str],
        *,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[Decision]:
        ladder = self.config.fallback_ladder_hours
        out: list[Decision] = []
        for r, zone in zip(rules, zones, strict=True):
            k = min(r.retries_used, len(ladder) - 1)
            assert r.first_failure is not None
            target = np.asarray(r.first_failure).astype("datetime64[ns]") + np.timedelta64(
                int(ladder[k] * 3600), "s"
            )
            ok = np.flatnonzero(r.allowed & (r.grid >= target))
            j = int(ok[0]) if ok.size else int(np.flatnonzero(r.allowed)[-1])
            out.append(
                Decision(
                    charge_id=r.charge_id,
                    action="retry",
                    retry_at=pd.Timestamp(r.grid[j]).tz_localize("UTC"),
                    success_probability=None,
                    reason=str(Reason.FALLBACK_SCHEDULE),
                    source="rule-based fallback schedule (no model loaded)",
                    action_required=None,
                    alternatives=(),
                    explanation=(
                        f"no model loaded: fixed schedule, retry {r.retries_used + 1} at "
                        f"{ladder[k]:g} h after the first failure; "
                        f"{_local_label(r.grid[j], zone, int(r.local_hours[j]))}"
                        + ("; " + "; ".join(r.notes) if r.notes else "")
                    ),
                    model_version=None,
                    policy=self.name,
                )
            )
        return out
