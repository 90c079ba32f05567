"""Probability calibration stored as plain data (no pickle).

Two calibrators map LightGBM's raw probability to a calibrated one:

- ``isotonic``: a monotone step function, fitted with scikit-learn's ``IsotonicRegression`` and
  stored as its thresholds; applied by linear interpolation between thresholds (exactly what
  ``IsotonicRegression.predict`` does), clipped at both ends.
- ``platt``: a logistic regression on the logit of the raw probability,
  ``p = sigmoid(a * logit(raw) + b)``, stored as ``a`` and ``b``.

:func:`choose_calibrator` picks between them on the validation months by *cross-fitting*: the
validation rows are split into folds by customer (so one customer's retries never sit on both
sides), each method is fitted on all folds but one and scored (log loss) on the held-out fold, and
the method with the lower out-of-fold log loss wins. The winner is then refitted on the whole
validation set. Calibration is therefore never scored on the rows it was fitted on; the test
months stay untouched for the final evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

CalibrationMethod = Literal["isotonic", "platt", "identity"]
METHODS: tuple[CalibrationMethod, ...] = ("isotonic", "platt", "identity")
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(q / (1.0 - q))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-15, 1.0 - 1e-15)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1.0 - q)))


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map from raw model probability to calibrated probability.

    Parameters
    ----------
    method
        ``"isotonic"``, ``"platt"`` or ``"identity"``.
    params
        Plain-data parameters: ``x`` and ``y`` threshold lists (isotonic), ``a`` and ``b``
        (Platt), nothing (identity).
    """

    method: CalibrationMethod
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"unknown calibration method {self.method!r}; expected one of {METHODS}"
            )
        if self.method == "isotonic":
            x = np.asarray(self.params.get("x", []), dtype=np.float64)
            y = np.asarray(self.params.get("y", []), dtype=np.float64)
            if x.ndim != 1 or x.shape != y.shape or x.size == 0:
                raise ValueError("isotonic calibration needs equal-length non-empty 'x' and 'y'")
            if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
                raise ValueError("isotonic calibration thresholds must be non-decreasing")
            if not (np.all(np.isfinite(x)) and np.all((y >= 0) & (y <= 1))):
                raise ValueError("isotonic calibration values must be finite probabilities")
        elif self.method == "platt":
            for key in ("a", "b"):
                value = self.params.get(key)
                if not isinstance(value, int | float) or not math.isfinite(float(value)):
                    raise ValueError(
                        f"Platt calibration needs a finite number {key!r}, got {value!r}"
                    )

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Map raw probabilities to calibrated probabilities (same shape, float64)."""
        p = np.asarray(raw, dtype=np.float64)
        if self.method == "identity":
            return p.copy()
        if self.method == "platt":
            z = float(self.params["a"]) * _logit(p) + float(self.params["b"])
            return 1.0 / (1.0 + np.exp(-z))
        x = np.asarray(self.params["x"], dtype=np.float64)
        y = np.asarray(self.params["y"], dtype=np.float64)
        return np.interp(p, x, y)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form (written to ``calibration.json``)."""
        return {"method": self.method, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        """Rebuild a calibrator from :meth:`to_dict` output; raises ``ValueError`` if malformed."""
        if not isinstance(data, Mapping) or "method" not in data:
            raise ValueError("calibration must be an object with a 'method' field")
        params = data.get("params", {})
        if not isinstance(params, Mapping):
            raise ValueError("calibration 'params' must be an object")
        return cls(method=data["method"], params=dict(params))


def fit_calibrator(raw: np.ndarray, y: np.ndarray, *, method: CalibrationMethod) -> Calibrator:
    """Fit one calibration method on raw probabilities ``raw`` and 0/1 labels ``y``."""
    p = np.asarray(raw, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64)
    if p.shape != labels.shape or p.ndim != 1:
        raise ValueError(f"raw and y must be 1-D of equal length, got {p.shape} and {labels.shape}")
    if method == "identity":
        return Calibrator("identity")
    if p.size == 0 or labels.min() == labels.max():
        raise ValueError("calibration needs validation rows with both outcomes")
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
        iso.fit(p, labels)
        x_thr = np.asarray(iso.X_thresholds_, dtype=np.float64)
        y_thr = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return Calibrator("isotonic", {"x": x_thr.tolist(), "y": y_thr.tolist()})
    if method == "platt":
        lr = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
        lr.fit(_logit(p).reshape(-1, 1), labels.astype(np.int64))
        return Calibrator("platt", {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])})
    raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")


def group_folds(groups: np.ndarray, *, n_folds: int, seed: int) -> np.ndarray:
    """Assign each row a fold in ``0..n_folds-1`` so that equal groups share a fold (seeded)."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    uniques, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    fold_of_group = rng.permutation(uniques.size) % n_folds
    return fold_of_group[inverse].astype(np.int64)


@dataclass(frozen=True)
class CalibrationChoice:
    """The chosen calibrator and the out-of-fold log loss of every candidate method."""

    calibrator: Calibrator
    oof_log_loss: dict[str, float]


def choose_calibrator(
    raw: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    methods: Sequence[CalibrationMethod] = ("isotonic", "platt"),
    n_folds: int = 5,
    seed: int = 0,
) -> CalibrationChoice:
    """Pick the calibration method with the lowest cross-fitted log loss, refit on all rows.

    Parameters
    ----------
    raw, y
        Raw model probabilities and 0/1 labels on the validation months.
    groups
        Group per row (customer id): rows of one group never straddle folds.
    methods
        Candidate methods; ``"identity"`` (no calibration) may be included as a candidate.
    n_folds, seed
        Cross-fitting folds and the seed of the fold assignment.
    """
    p = np.asarray(raw, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float64)
    if not methods:
        raise ValueError("at least one calibration method is needed")
    folds = group_folds(groups, n_folds=n_folds, seed=seed)
    scores: dict[str, float] = {}
    for method in methods:
        oof = np.empty_like(p)
        for k in range(n_folds):
            held = folds == k
            if not held.any():
                continue
            fitted = fit_calibrator(p[~held], labels[~held], method=method)
            oof[held] = fitted.apply(p[held])
        scores[method] = _log_loss(labels, oof)
    best = min(methods, key=lambda m: (scores[m], METHODS.index(m)))
    return CalibrationChoice(fit_calibrator(p, labels, method=best), scores)
