"""Adjustments of the calibrated success probability, learned at training time (issue 14).

Both are stored in the bundle's ``metrics.json`` under ``planning`` (verified with the rest of the
bundle by its manifest) and read once at load (:func:`model.bundle.load_bundle`):

- **Rare-code bounds** (``planning.rare_code_bounds``): LightGBM lumps a small decline code with
  its family, so a code whose retries never succeed still gets its family's odds. A code with no
  success in its ``n`` logged retries gets the exact one-sided upper confidence bound of a
  binomial proportion with zero successes, ``1 - (1 - confidence) ** (1 / n)`` (Clopper-Pearson;
  about ``3 / n`` at 95 %, the "rule of three": Hanley and Lippman-Hand, "If nothing goes wrong,
  is everything all right?", JAMA 249(13), 1983), and every prediction after that code is capped
  at it (:meth:`Adjustment.bound_levels`). Fitted only for codes that are levels of the feature
  spec (seen often enough in the training months), so the pandas path and the numpy fast path
  see the same codes.
- **Timing shrinkage** (``planning.timing_shrinkage``, ``beta`` in ``[0, 1]``): the planner picks
  the time with the highest prediction, so noise in the model's timing component biases the
  prediction at the chosen time upward (the optimiser's curse; Smith and Winkler, "The
  Optimizer's Curse", Management Science 52(3), 2006). Their remedy is to replace each estimate
  by its regression on the truth, which selection on the estimate cannot bias. Per decision, the
  logit of each candidate time ``l(t)`` is shrunk toward the decision's mean logit ``l_bar``:
  ``p'(t) = sigmoid(l_bar + beta * (l(t) - l_bar))`` (:func:`shrink_timing`), with ``beta`` the
  maximum-likelihood slope of the validation outcomes on the timing component
  (``training.planning_fit``).
- **Gap support** (``planning.gap_support``): retry logs are thin along the hours since the
  previous attempt, because billing systems retry on fixed ladders (days apart) and explore
  little; where the log is thin the model extrapolates its level from the well-logged gaps, and a
  planner that maximises over times picks exactly those unsupported gaps (an hour after an
  insufficient-funds decline, say). Per bucket of that gap (:data:`GAP_EDGES_HOURS`) the
  training and validation months' logged retries give the observed successes ``O`` and the
  model's expected ``E`` (the calibrated predictions; fitted by
  :func:`training.planning_fit.fit_gap_support`); the planner multiplies its predictions at that
  gap by
  ``min(1, L / E)``, ``L`` the exact one-sided lower confidence bound of a Poisson mean with ``O``
  events (Garwood, "Fiducial limits for the Poisson distribution", Biometrika 28, 1936). A
  well-logged gap keeps about its level; a gap the log never or rarely tried gets little or no
  credit: the planner stays where the history vouches for the model (pessimism in offline
  decision making: Jin, Yang and Wang, "Is pessimism provably efficient for offline RL?", ICML
  2021). The confidence is the rare-code bounds' (``planning.rare_code_confidence``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd

__all__ = [
    "GAP_EDGES_HOURS",
    "GAP_FEATURE",
    "Adjustment",
    "code_bounds_from_counts",
    "count_code_retries",
    "fit_code_bounds",
    "gap_bucket",
    "logit",
    "shrink_timing",
    "zero_success_upper_bound",
]

CODE_FEATURE: Final = "last_decline_code"
"""The feature whose levels the rare-code bounds are keyed by."""
GAP_FEATURE: Final = "hours_since_prev_attempt"
"""The feature whose buckets the gap support is fitted on."""
_EPS: Final = 1e-6
GAP_EDGES_HOURS: Final = (1.0, 3.0, 6.0, 12.0, 24.0, 48.0, 96.0, 168.0, 336.0)
"""Bucket edges of the hours since the previous attempt (gap support): roughly doubling, so the
first hours, where retry ladders never go, are told apart from the days where they always go."""
_GAP_TABLE_HOURS: Final = 24 * 60  # integer-hour lookup table of the factors (beyond: last)
_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.\- ]{1,64}$")


def zero_success_upper_bound(n: int, confidence: float) -> float:
    """Exact one-sided upper confidence bound of a proportion with 0 successes in ``n`` trials."""
    if n < 1 or not 0 < confidence < 1:
        raise ValueError(f"need n >= 1 and confidence in (0, 1), got {n}, {confidence}")
    return float(1.0 - (1.0 - confidence) ** (1.0 / n))


def count_code_retries(codes: Sequence[object] | np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Logged retries and their successes per decline code before the retry.

    Counts of disjoint rows add up (``a.add(b, fill_value=0)``), so a history partitioned by
    customer is counted part by part; :func:`code_bounds_from_counts` reads the sum.

    Returns
    -------
    pandas.DataFrame
        Columns ``retries`` and ``successes`` indexed by code (missing codes are skipped).
    """
    y = np.asarray(labels, dtype=np.int64)
    values = np.asarray(codes, dtype=object)
    present = np.array([isinstance(v, str) for v in values.tolist()], dtype=bool)
    frame = pd.DataFrame({"code": values[present].astype(str), "y": y[present]})
    grouped = frame.groupby("code", sort=True)["y"]
    return pd.DataFrame(
        {"retries": grouped.size(), "successes": grouped.sum()}, dtype=np.int64
    ).rename_axis("code")


def code_bounds_from_counts(
    counts: pd.DataFrame, *, levels: Sequence[str], confidence: float
) -> dict[str, dict[str, float]]:
    """Upper bounds of the codes (levels of the spec) whose counted retries never succeeded.

    ``counts`` is :func:`count_code_retries` (or a sum of them); ``levels`` are the spec's levels
    of ``last_decline_code`` (``"other"`` and ``"missing"`` are skipped); ``confidence`` is the
    bound's one-sided confidence (0.95: the rule of three). Returns
    ``code -> {"retries": n, "upper_bound": u}``, sorted by code.
    """
    wanted = {str(lv) for lv in levels} - {"other", "missing"}
    out: dict[str, dict[str, float]] = {}
    for code, n, k in zip(
        map(str, counts.index),
        counts["retries"].tolist(),
        counts["successes"].tolist(),
        strict=True,
    ):
        if code in wanted and k == 0 and n >= 1 and _SAFE_CODE.match(code):
            out[code] = {
                "retries": float(n),
                "upper_bound": zero_success_upper_bound(int(n), confidence),
            }
    return dict(sorted(out.items()))


def fit_code_bounds(
    codes: Sequence[object] | np.ndarray,
    labels: np.ndarray,
    *,
    levels: Sequence[str],
    confidence: float,
) -> dict[str, dict[str, float]]:
    """Upper bounds of the codes (levels of the spec) whose logged retries never succeeded.

    Parameters
    ----------
    codes
        The decline code before each logged retry (``last_decline_code``; missing allowed).
    labels
        1 = the retry succeeded.
    levels
        The spec's levels of ``last_decline_code`` (``"other"`` and ``"missing"`` are skipped).
    confidence
        One-sided confidence of the bound (0.95: the rule of three).

    Returns
    -------
    dict
        ``code -> {"retries": n, "upper_bound": u}``, sorted by code.
    """
    return code_bounds_from_counts(
        count_code_retries(codes, labels), levels=levels, confidence=confidence
    )


def gap_bucket(gap_hours: np.ndarray) -> np.ndarray:
    """Bucket index (0 .. ``len(GAP_EDGES_HOURS)``) of hours since the previous attempt."""
    return np.searchsorted(np.asarray(GAP_EDGES_HOURS), np.asarray(gap_hours), side="right")


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[1e-6, 1 - 1e-6]`` (NaN stays NaN)."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


def shrink_timing(proba: np.ndarray, center_mask: np.ndarray, beta: float) -> np.ndarray:
    """Shrink each row's logits toward the row's mean logit over ``center_mask`` by ``beta``.

    Parameters
    ----------
    proba
        ``(..., n, m)`` probabilities (NaN = not scored, kept NaN).
    center_mask
        ``(n, m)`` bool: the points whose mean logit is the row's centre (rows without any
        point use all their scored points; rows with none are returned unchanged).
    beta
        Share of the timing component kept (1 = no change, 0 = the centre everywhere).
    """
    p = np.asarray(proba, dtype=np.float64)
    if beta >= 1.0 or p.size == 0:
        return p
    # In place on one temporary (a 200-charge batch has ~400k points per call); NaN propagates,
    # so padding stays NaN and a row without any scored point stays all NaN.
    lg = np.clip(p, _EPS, 1.0 - _EPS)
    np.divide(lg, 1.0 - lg, out=lg)
    np.log(lg, out=lg)
    scored = ~np.isnan(p)
    use = scored & center_mask
    empty = ~use.any(axis=-1, keepdims=True)
    if empty.any():
        use = np.where(empty, scored, use)
    count = use.sum(axis=-1, keepdims=True)
    total = np.where(use, lg, 0.0).sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        center = total / count
    # sigmoid(center + beta * (lg - center)) = 1 / (1 + exp(-(beta * lg + (1 - beta) * center)))
    np.multiply(lg, -beta, out=lg)
    np.subtract(lg, (1.0 - beta) * center, out=lg)
    np.exp(lg, out=lg)
    lg += 1.0
    return np.asarray(np.reciprocal(lg, out=lg))


@dataclass(frozen=True)
class Adjustment:
    """What a bundle's ``planning`` section adjusts (see the module docstring).

    Parameters
    ----------
    code_bounds
        ``code -> upper bound`` of the success probability after that code.
    timing_shrinkage
        ``beta`` of :func:`shrink_timing` (1 = none: bundles written before it).
    gap_factors
        Gap-support factor per bucket of :data:`GAP_EDGES_HOURS` (empty = none: bundles
        written before it).
    """

    code_bounds: Mapping[str, float] = field(default_factory=dict)
    timing_shrinkage: float = 1.0
    gap_factors: tuple[float, ...] = ()

    def gap_table(self) -> np.ndarray | None:
        """Factor per whole hour since the previous attempt (index = hours, clipped), or None."""
        if not self.gap_factors:
            return None
        hours = np.arange(_GAP_TABLE_HOURS + 1, dtype=np.float64)
        return np.asarray(self.gap_factors, dtype=np.float64)[gap_bucket(hours)]

    @classmethod
    def from_planning(cls, planning: object) -> Adjustment:
        """Parse a bundle's ``metrics["planning"]`` (absent parts: no adjustment).

        Raises
        ------
        ValueError
            A bound or the shrinkage that is not a probability / not in ``[0, 1]``.
        """
        if not isinstance(planning, Mapping):
            return cls()
        bounds: dict[str, float] = {}
        raw = planning.get("rare_code_bounds", {})
        if not isinstance(raw, Mapping):
            raise ValueError("planning.rare_code_bounds must be an object")
        for code, entry in raw.items():
            value = entry.get("upper_bound") if isinstance(entry, Mapping) else None
            if not _probability(value):
                raise ValueError(
                    f"planning.rare_code_bounds[{code!r}] needs an upper_bound in [0, 1]"
                )
            bounds[str(code)] = float(value or 0.0)
        beta: Any = planning.get("timing_shrinkage", 1.0)
        if isinstance(beta, Mapping):
            beta = beta.get("beta", 1.0)
        if not _probability(beta):
            raise ValueError(f"planning.timing_shrinkage must be in [0, 1], got {beta!r}")
        support = planning.get("gap_support", [])
        factors = tuple(
            entry.get("factor") if isinstance(entry, Mapping) else None
            for entry in (support if isinstance(support, list) else [None])
        )
        if factors and (
            len(factors) != len(GAP_EDGES_HOURS) + 1 or not all(_probability(f) for f in factors)
        ):
            raise ValueError(
                f"planning.gap_support must list {len(GAP_EDGES_HOURS) + 1} buckets, each with "
                "a factor in [0, 1]"
            )
        return cls(
            code_bounds=bounds,
            timing_shrinkage=float(beta),
            gap_factors=tuple(float(f or 0.0) for f in factors),
        )

    def level_bounds(self, levels: Sequence[str]) -> np.ndarray | None:
        """Bound per level index of ``levels`` plus a final 1.0 (NaN / unknown), or None."""
        if not self.code_bounds:
            return None
        out = np.ones(len(levels) + 1, dtype=np.float64)
        for i, level in enumerate(levels):
            out[i] = self.code_bounds.get(str(level), 1.0)
        return None if bool((out == 1.0).all()) else out

    @staticmethod
    def gap_factor(gap_hours: np.ndarray, table: np.ndarray) -> np.ndarray:
        """The factor of :meth:`gap_table` at each gap (hours; NaN -> the last bucket's)."""
        hours = np.nan_to_num(np.asarray(gap_hours, dtype=np.float64), nan=float(table.size - 1))
        index = np.clip(hours, 0, table.size - 1).astype(np.int64)
        return np.asarray(table[index])

    @staticmethod
    def bound_levels(p: np.ndarray, codes: np.ndarray, table: np.ndarray | None) -> np.ndarray:
        """``min(p, bound of each row's code)``; ``codes`` are level indices (NaN / -1 = none)."""
        if table is None or p.size == 0:
            return p
        index = np.nan_to_num(np.asarray(codes, dtype=np.float64), nan=-1.0).astype(np.int64)
        index = np.where((index < 0) | (index >= table.size - 1), table.size - 1, index)
        return np.asarray(np.minimum(p, table[index]))


def _probability(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and 0.0 <= float(value) <= 1.0
    )
