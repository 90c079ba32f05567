"""Fit the planner's probability adjustments at training time (:mod:`retryopt.model.adjust`).

- :func:`fit_code_bounds` (re-exported): rare decline codes whose logged retries never
  succeeded get the zero-success upper bound, fitted on the training and validation months.
- :class:`PlanningCounts`: what the count-based fits (the rare-code bounds and the planner's
  next-decline-code map, :func:`features.advance.next_decline_codes_from_counts`) read from the
  training rows. Counts of disjoint customers add up, so a cluster counts its customer
  partitions on the workers (:mod:`training.cluster_train`) and fits what one process fits.
- :func:`fit_gap_support`: the gap support's factor per bucket of hours since the previous
  attempt (``model.adjust``), from logged retries and the model's served predictions.
- :func:`fit_timing_shrinkage`: the optimiser's-curse correction, fitted on the validation
  months. For a seeded sample of validation decisions the model scores the decision at every
  ``step_hours`` from the decision to the end of the retry window (the planner's default window
  from the first failure, :class:`features.decisions.Constraints`, and its coarse sub-grid,
  :class:`serving.policies.PlannerConfig`): the mean logit is the decision's centre ``l_bar``,
  the logged retry's logit minus the centre its timing component. ``beta`` maximises the
  (inverse-propensity weighted, :func:`training.timing.timing_weights`, toward uniform timing)
  log likelihood of the logged outcomes under ``sigmoid(l_bar + beta * (l - l_bar))`` over
  ``[0, 1]``. The same objective is cross-fitted over customer folds; the slope is applied
  only when its out-of-fold log loss beats no shrinkage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.stats import chi2

from retryopt.features import contract as ct
from retryopt.features.advance import count_decline_transitions
from retryopt.features.decisions import Constraints, DecisionBatch
from retryopt.features.encoder import CandidateEncoder
from retryopt.features.localtime import NS_PER_HOUR
from retryopt.features.spec import FeatureSpec
from retryopt.model.adjust import (
    CODE_FEATURE,
    GAP_EDGES_HOURS,
    Adjustment,
    count_code_retries,
    fit_code_bounds,
    gap_bucket,
    logit,
)
from retryopt.model.calibration import Calibrator
from retryopt.serving.policies import PlannerConfig
from retryopt.training.timing import timing_weights

__all__ = [
    "PlanningCounts",
    "decision_centers",
    "fit_code_bounds",
    "fit_gap_support",
    "fit_shrinkage_beta",
    "fit_timing_shrinkage",
    "poisson_lower_bound",
]


@dataclass(frozen=True)
class PlanningCounts:
    """Retries and successes per decline code, and decline-code transitions, of some examples.

    ``code_retries`` is :func:`model.adjust.count_code_retries` and ``transitions``
    :func:`features.advance.count_decline_transitions`; ``a + b`` counts both sets of rows
    (which must not share a charge).
    """

    code_retries: pd.DataFrame
    transitions: pd.Series

    @classmethod
    def count(cls, features: pd.DataFrame, meta: pd.DataFrame, label: np.ndarray) -> PlanningCounts:
        """The counts of retry examples (features, meta columns and labels, row by row)."""
        codes = features[CODE_FEATURE].to_numpy(dtype=object)
        return cls(
            code_retries=count_code_retries(codes, label),
            transitions=count_decline_transitions(
                meta["charge_id"].to_numpy(dtype=object),
                meta["retry_number"].to_numpy(dtype=np.float64),
                codes,
            ),
        )

    def __add__(self, other: PlanningCounts) -> PlanningCounts:
        return PlanningCounts(
            code_retries=self.code_retries.add(other.code_retries, fill_value=0).astype(np.int64),
            transitions=self.transitions.add(other.transitions, fill_value=0).astype(np.int64),
        )


_BLOCK = 65_536
_DEFAULT_WINDOW_NS = int(Constraints().window_hours * NS_PER_HOUR)
_PLANNER = PlannerConfig()
CENTER_STEP_HOURS = _PLANNER.coarse_step * _PLANNER.grid_hours
"""Spacing of the candidate times whose mean logit is a decision's centre (the planner's coarse
sub-grid, where the planner takes its centre too)."""


def _weighted_log_loss(y: np.ndarray, z: np.ndarray, w: np.ndarray) -> float:
    p = np.clip(1.0 / (1.0 + np.exp(-z)), 1e-15, 1 - 1e-15)
    return float(-np.sum(w * (y * np.log(p) + (1 - y) * np.log1p(-p))) / np.sum(w))


def fit_shrinkage_beta(
    y: np.ndarray, logit_t: np.ndarray, center: np.ndarray, weights: np.ndarray
) -> float:
    """The ``beta`` in ``[0, 1]`` maximising the weighted likelihood of ``y`` (bounded search)."""
    dev = logit_t - center

    def loss(beta: float) -> float:
        return _weighted_log_loss(y, center + beta * dev, weights)

    result = minimize_scalar(loss, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-4})
    best = float(result.x)
    # The bounded search never evaluates the end points: keep 1 (no shrinkage) when it is best.
    return 1.0 if loss(1.0) <= loss(best) else best


def decision_centers(
    attempts: pd.DataFrame,
    meta: pd.DataFrame,
    hours_since_first_failure: np.ndarray,
    *,
    spec: FeatureSpec,
    predict: Any,
    step_hours: float = CENTER_STEP_HOURS,
) -> np.ndarray:
    """Mean logit of each retry decision over its candidate times (``meta`` rows, one each).

    Parameters
    ----------
    attempts
        The canonical history the examples were built from.
    meta
        ``TrainingExamples.meta`` rows of the decisions.
    hours_since_first_failure
        The examples' ``hours_since_first_failure`` (gives each charge's first failure).
    spec
        The model's feature spec.
    predict
        ``(model matrix) -> probabilities`` (calibrated and bounded, as served).
    step_hours
        Spacing of the candidate times.
    """
    out = np.full(len(meta), np.nan)
    if len(meta) == 0:
        return out
    decision_ns = _ns(meta["decision_time"])
    retry_ns = _ns(meta["retry_time"])
    first_ns = retry_ns - (np.asarray(hours_since_first_failure) * NS_PER_HOUR).astype(np.int64)
    end_ns = first_ns + _DEFAULT_WINDOW_NS
    step = int(step_hours * NS_PER_HOUR)
    width = int(max(1, ((end_ns - decision_ns).max() // step)))
    offsets = np.arange(1, width + 1, dtype=np.int64) * step
    customers = set(meta["customer_id"].astype(str).tolist())
    history = attempts[attempts[ct.CUSTOMER_ID].astype(str).isin(customers)]
    charge_ids = meta["charge_id"].astype(str).to_numpy(dtype=object)
    own = history[ct.CHARGE_ID].astype(str).to_numpy(dtype=object)
    own_ns = _ns(history[ct.ATTEMPTED_AT])
    for r in np.unique(meta["retry_number"].to_numpy()):
        idx = np.flatnonzero(meta["retry_number"].to_numpy() == r)
        wanted = pd.Index(charge_ids[idx])
        lookup = pd.Series(decision_ns[idx], index=wanted)
        keep = pd.Index(own).isin(wanted)
        rows = history[keep]
        limit = lookup.reindex(own[keep]).to_numpy()
        rows = rows[own_ns[keep] <= limit]
        batch = DecisionBatch(
            charge_ids=charge_ids[idx],
            now=decision_ns[idx].view("datetime64[ns]"),
            attempts=rows.reset_index(drop=True),
            history=history.reset_index(drop=True),
        )
        times = decision_ns[idx, None] + offsets[None, :]
        valid = times <= end_ns[idx, None]
        valid[:, 0] = True  # at least one candidate per decision
        dec, col = np.nonzero(valid)
        encoder = CandidateEncoder(batch, spec)
        # Encoded and scored in blocks (bounded memory: 20k decisions x 126 times otherwise).
        proba = np.concatenate(
            [
                np.asarray(predict(encoder.matrix(dec[k : k + _BLOCK], t[k : k + _BLOCK])))
                for t in (times[dec, col],)
                for k in range(0, dec.size, _BLOCK)
            ]
        )
        sums = np.bincount(dec, weights=logit(proba), minlength=idx.size)
        counts = np.bincount(dec, minlength=idx.size)
        out[idx] = sums / np.maximum(counts, 1)
    return out


def poisson_lower_bound(events: np.ndarray, confidence: float) -> np.ndarray:
    """Exact one-sided lower confidence bound of a Poisson mean with ``events`` counted (Garwood).

    ``chi2.ppf(1 - confidence, 2 k) / 2``, 0 for ``k = 0``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    k = np.asarray(events, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        low = chi2.ppf(1.0 - confidence, 2.0 * np.maximum(k, 1e-300)) / 2.0
    return np.asarray(np.where(k > 0, low, 0.0))


def fit_gap_support(
    gap_hours: np.ndarray, labels: np.ndarray, proba: np.ndarray, *, confidence: float
) -> list[dict[str, float]]:
    """Per gap bucket: logged retries, successes, the model's expected successes and the factor.

    Parameters
    ----------
    gap_hours
        Hours since the previous attempt of each logged retry (NaN rows are skipped).
    labels
        1 = the retry succeeded.
    proba
        The model's calibrated prediction of each retry.
    confidence
        One-sided confidence of the lower bound of the successes.

    Returns
    -------
    list of dict
        One entry per bucket, in order: ``from_hours``, ``to_hours`` (inf for the last),
        ``retries``, ``successes``, ``expected`` and ``factor = min(1, L / expected)`` (0 when
        the bucket has no retry).
    """
    gap = np.asarray(gap_hours, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(proba, dtype=np.float64)
    keep = ~np.isnan(gap) & ~np.isnan(p)
    bucket = gap_bucket(gap[keep])
    size = len(GAP_EDGES_HOURS) + 1
    retries = np.bincount(bucket, minlength=size)
    successes = np.bincount(bucket, weights=y[keep], minlength=size)
    expected = np.bincount(bucket, weights=p[keep], minlength=size)
    low = poisson_lower_bound(successes, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(expected > 0, np.minimum(1.0, low / expected), 0.0)
    edges = (0.0, *GAP_EDGES_HOURS, math.inf)
    return [
        {
            "from_hours": edges[b],
            "to_hours": edges[b + 1],
            "retries": float(retries[b]),
            "successes": float(successes[b]),
            "expected": round(float(expected[b]), 3),
            "factor": round(float(factor[b]), 4),
        }
        for b in range(size)
    ]


def fit_timing_shrinkage(
    y: np.ndarray,
    p_logged: np.ndarray,
    center: np.ndarray,
    *,
    propensity: np.ndarray,
    groups: np.ndarray,
    n_folds: int,
    seed: int,
) -> dict[str, float]:
    """``beta`` on all rows and its cross-fitted log loss against no shrinkage (``beta = 1``).

    Folds by ``groups`` (customers). Returns ``beta`` (the slope fitted on all rows,
    ``beta_fitted``, when its cross-fitted log loss beats no shrinkage, else 1: a slope that
    does not predict held-out customers better is noise of a small validation set),
    ``decisions``, ``oof_log_loss_unshrunk``, ``oof_log_loss_shrunk`` and the fold slopes' range.
    """
    yv = np.asarray(y, dtype=np.float64)
    lt = logit(np.asarray(p_logged, dtype=np.float64))
    c = np.asarray(center, dtype=np.float64)
    w = timing_weights(np.asarray(propensity, dtype=np.float64))
    beta = fit_shrinkage_beta(yv, lt, c, w)
    uniq, inverse = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    fold_of_group = np.random.default_rng(seed).permutation(uniq.size) % max(2, n_folds)
    fold = fold_of_group[inverse]
    shrunk = np.empty_like(yv)
    betas = []
    for f in np.unique(fold):
        test = fold == f
        if test.all():
            shrunk[test] = lt[test]
            continue
        b = fit_shrinkage_beta(yv[~test], lt[~test], c[~test], w[~test])
        betas.append(b)
        shrunk[test] = c[test] + b * (lt[test] - c[test])
    unshrunk_loss = _weighted_log_loss(yv, lt, w)
    shrunk_loss = _weighted_log_loss(yv, shrunk, w)
    return {
        # Applied only when it predicts held-out customers better than no shrinkage.
        "beta": beta if shrunk_loss < unshrunk_loss else 1.0,
        "beta_fitted": beta,
        "decisions": float(yv.size),
        "oof_log_loss_unshrunk": unshrunk_loss,
        "oof_log_loss_shrunk": shrunk_loss,
        "fold_beta_min": float(min(betas, default=beta)),
        "fold_beta_max": float(max(betas, default=beta)),
    }


def _ns(values: Any) -> np.ndarray:
    index = pd.DatetimeIndex(pd.to_datetime(values))
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return np.asarray(index.as_unit("ns").asi8, dtype=np.int64)


def served_predictor(
    booster: Any, calibrator: Calibrator, spec: FeatureSpec, adjustment: Adjustment, threads: int
) -> Any:
    """``(model matrix) -> probability`` as served: booster, calibration, rare-code bounds."""
    levels = spec.levels.get(CODE_FEATURE)
    table = None if levels is None else adjustment.level_bounds(levels)
    column = list(spec.names).index(CODE_FEATURE) if CODE_FEATURE in spec.names else -1

    def predict(X: np.ndarray) -> np.ndarray:
        if X.shape[0] == 0:
            return np.empty(0)
        raw = np.asarray(booster.predict(X, num_threads=threads), dtype=np.float64)
        p = calibrator.apply(raw)
        if table is None or column < 0:
            return p
        return Adjustment.bound_levels(p, X[:, column], table)

    return predict
