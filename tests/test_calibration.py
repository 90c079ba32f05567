"""Calibration: isotonic / Platt maps as plain data, chosen by cross-fitted log loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retryopt.model.calibration import (
    Calibrator,
    choose_calibrator,
    fit_calibrator,
    group_folds,
)
from retryopt.training.evaluation import expected_calibration_error, log_loss


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True probability p; the 'model' reports p**0.5 (over-confident upwards)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1.5, 5.0, size=n)
    y = (rng.random(n) < p).astype(np.int8)
    groups = rng.integers(0, n // 4, size=n).astype(str)
    return np.sqrt(p), y, groups


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_reduces_log_loss_and_ece(method: str) -> None:
    raw, y, _ = _miscalibrated(40_000, seed=1)
    raw_test, y_test, _ = _miscalibrated(40_000, seed=2)
    cal = fit_calibrator(raw, y, method=method)  # type: ignore[arg-type]
    fixed = cal.apply(raw_test)
    assert log_loss(y_test, fixed) < log_loss(y_test, raw_test) - 0.01
    assert expected_calibration_error(y_test, fixed) < 0.02
    assert expected_calibration_error(y_test, raw_test) > 0.1


@pytest.mark.parametrize("method", ["isotonic", "platt", "identity"])
def test_round_trip_through_json_is_exact(method: str) -> None:
    raw, y, _ = _miscalibrated(5_000, seed=3)
    cal = fit_calibrator(raw, y, method=method)  # type: ignore[arg-type]
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(again.apply(raw), cal.apply(raw))


def test_isotonic_is_monotone_and_bounded() -> None:
    raw, y, _ = _miscalibrated(10_000, seed=4)
    cal = fit_calibrator(raw, y, method="isotonic")
    grid = np.linspace(-0.5, 1.5, 501)
    out = cal.apply(grid)
    assert np.all(np.diff(out) >= 0)
    assert out.min() >= 0 and out.max() <= 1


def test_choose_picks_the_lower_out_of_fold_loss_and_reports_all() -> None:
    raw, y, groups = _miscalibrated(20_000, seed=5)
    choice = choose_calibrator(raw, y, groups, methods=("isotonic", "platt", "identity"), seed=0)
    assert set(choice.oof_log_loss) == {"isotonic", "platt", "identity"}
    best = min(choice.oof_log_loss, key=choice.oof_log_loss.__getitem__)
    assert choice.calibrator.method == best
    assert choice.oof_log_loss["identity"] > choice.oof_log_loss[best]


def test_platt_wins_on_a_logistic_distortion_with_few_rows() -> None:
    # A pure logit-linear distortion with few rows: Platt (2 parameters) beats isotonic out of fold.
    rng = np.random.default_rng(6)
    z = rng.normal(-1.0, 1.0, size=600)
    y = (rng.random(600) < 1 / (1 + np.exp(-z))).astype(np.int8)
    raw = 1 / (1 + np.exp(-(0.5 * z + 0.3)))
    choice = choose_calibrator(raw, y, np.arange(600), seed=0)
    assert choice.calibrator.method == "platt"


def test_group_folds_keep_groups_together_and_are_seeded() -> None:
    groups = np.array(["a", "b", "a", "c", "b", "d", "e", "a"])
    folds = group_folds(groups, n_folds=3, seed=1)
    for g in set(groups):
        assert len(set(folds[groups == g])) == 1
    np.testing.assert_array_equal(folds, group_folds(groups, n_folds=3, seed=1))


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "magic"},
        {"method": "platt", "params": {"a": 1.0}},
        {"method": "platt", "params": {"a": float("nan"), "b": 0.0}},
        {"method": "isotonic", "params": {"x": [0.1, 0.05], "y": [0.0, 0.1]}},
        {"method": "isotonic", "params": {"x": [0.1], "y": [0.1, 0.2]}},
        {"params": {}},
    ],
)
def test_malformed_calibration_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Calibrator.from_dict(bad)


def test_single_class_cannot_be_calibrated() -> None:
    with pytest.raises(ValueError, match="both outcomes"):
        fit_calibrator(np.array([0.1, 0.2]), np.array([0, 0]), method="platt")
