"""Decision-centred metrics of a success model against a simulated world's truth.

At the first retry decision of each charge (right after its failed first attempt):

- ``median_spearman``: the median over charges of the Spearman rank correlation between the
  model's and the true success probabilities over the charge's hourly candidate times (how well
  the model ranks the times it chooses among);
- ``chosen_true_p`` / ``best_true_p``: the mean true success probability at the policy's chosen
  time and at the truly best candidate time (the value of the chosen time);
- ``chosen_bias`` and ``chosen_ece``: mean predicted minus mean true probability at the chosen
  times, and the expected calibration error there (equal-mass bins of the prediction,
  ``sum_b n_b / n * |mean(true_b) - mean(pred_b)|``): calibration at the times the planner picks,
  where the optimiser's curse bites, not at the logged ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as ct
from retryopt.features.decisions import Constraints, DecisionBatch
from retryopt.features.localtime import NS_PER_HOUR
from retryopt.serving.policies import BundleSuccessModel, PlannerPolicy
from retryopt.training.evaluation import expected_calibration_error
from retryopt.training.simulate import SimulatedWorld

__all__ = ["first_decision_metrics", "rank_correlation_rows"]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank)."""
    out = np.empty_like(x, dtype=np.float64)
    for i, row in enumerate(x):
        out[i] = pd.Series(row).rank(method="average").to_numpy()
    return out


def rank_correlation_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of ``a[i]`` and ``b[i]`` per row (NaN for a constant row)."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=1) / den, np.nan)


def first_decision_metrics(
    policy: PlannerPolicy,
    world: SimulatedWorld,
    charges: Any,
    constraints: Constraints,
    *,
    n_bins: int = 10,
) -> dict[str, float]:
    """Ranking skill, value and calibration at the first retry decision of ``charges``.

    Parameters
    ----------
    policy
        A planner over a :class:`serving.policies.BundleSuccessModel`.
    world
        The simulated world of the charges (its truth).
    charges
        Charge ids whose first attempt failed.
    constraints
        The decision constraints (window, budget).
    n_bins
        Equal-mass bins of the calibration error.
    """
    model = policy.model
    if not isinstance(model, BundleSuccessModel):
        raise TypeError("first_decision_metrics needs a planner over a BundleSuccessModel")
    ids = np.asarray(pd.Index(np.atleast_1d(np.asarray(charges, dtype=object))).unique())
    if ids.size == 0:
        raise ValueError("first_decision_metrics needs at least one charge")
    first = world.attempts[world.attempts[ct.CHARGE_ID].isin(pd.Index(ids))]
    first = first.sort_values(ct.ATTEMPTED_AT, kind="stable").drop_duplicates(ct.CHARGE_ID)
    first = first.set_index(ct.CHARGE_ID).loc[ids].reset_index()
    now = first[ct.ATTEMPTED_AT].dt.tz_convert(None).to_numpy().astype("datetime64[ns]")
    history = world.attempts[~world.attempts[ct.CHARGE_ID].isin(pd.Index(ids))]
    batch = DecisionBatch(
        charge_ids=ids,
        now=now,
        attempts=first.reset_index(drop=True),
        history=history.reset_index(drop=True),
        constraints=constraints,
    )
    steps = np.arange(1, int(constraints.window_hours) + 1, dtype=np.int64) * NS_PER_HOUR
    grid = now.astype(np.int64)[:, None] + steps[None, :]
    grid_t = grid.astype("datetime64[ns]")
    predicted = model.predict_candidates(batch, grid_t).proba
    true = world.success_probability_batch(ids, now[:, None], grid_t)
    rho = rank_correlation_rows(predicted, true)
    decisions = policy.decide_detailed(batch)
    retry = np.array([d.action == "retry" for d in decisions])
    chosen = np.array(
        [np.int64(0) if d.retry_at is None else np.int64(d.retry_at.value) for d in decisions],
        dtype=np.int64,
    ).astype("datetime64[ns]")
    pred_at = np.array(
        [np.nan if d.success_probability is None else d.success_probability for d in decisions]
    )
    rows = np.flatnonzero(retry)
    true_at = world.success_probability_batch(
        ids[rows], now[rows, None], chosen[rows, None].astype("datetime64[ns]")
    )[:, 0]
    return {
        "charges": float(ids.size),
        "median_spearman": float(np.nanmedian(rho)),
        "chosen_true_p": float(true_at.mean()) if rows.size else float("nan"),
        "best_true_p": float(true.max(axis=1).mean()),
        "chosen_pred_p": float(pred_at[rows].mean()) if rows.size else float("nan"),
        "chosen_bias": float(pred_at[rows].mean() - true_at.mean()) if rows.size else float("nan"),
        # The equal-mass ECE of training/evaluation.py with the true probabilities as outcomes.
        "chosen_ece": expected_calibration_error(true_at, pred_at[rows], n_bins=n_bins),
    }
