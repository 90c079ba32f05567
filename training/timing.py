"""Learning timing from explored retries: importance weights from ``retry_propensity``.

A logged retry time was chosen by the logging policy with probability ``retry_propensity``
(``TrainingExamples.propensity``; NaN when the history does not carry it). Fitting the model on
the logged times alone learns mostly the schedule's times; the planner, though, compares every
allowed time. Weighting each example by ``1 / propensity`` re-weights the logged times toward a
uniform choice over the allowed times (the uniform target's ``1 / |allowed times|`` is the same
for every time of one decision, so it cancels within a decision).

Raw inverse propensities have a heavy tail (an explored hour drawn with ``eps / |G|`` weighs
thousands of schedule rows), so they are truncated at ``mean(w) * sqrt(n)`` (truncated
importance sampling, Ionides 2008, "Truncated importance sampling", J. Comput. Graph. Stat.
17(2): the truncation level that keeps the estimator's variance bounded with no tuning
constant), then self-normalised to mean 1 over the weighted rows. Rows without a propensity
keep weight 1; when no row has one, every weight is 1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["timing_weights"]


def timing_weights(propensity: np.ndarray) -> np.ndarray:
    """Truncated, self-normalised inverse-propensity weights toward uniform retry timing.

    Parameters
    ----------
    propensity
        ``retry_propensity`` per example (NaN = absent; values outside ``(0, 1]`` are treated
        as absent).

    Returns
    -------
    numpy.ndarray
        float64 weights, mean 1 over the rows with a propensity, 1 elsewhere.
    """
    p = np.asarray(propensity, dtype=np.float64)
    weights = np.ones(p.shape, dtype=np.float64)
    known = np.isfinite(p) & (p > 0) & (p <= 1)
    n = int(known.sum())
    if n == 0:
        return weights
    raw = 1.0 / p[known]
    cap = float(raw.mean()) * np.sqrt(n)
    clipped = np.minimum(raw, cap)
    weights[known] = clipped / clipped.mean()
    return weights
