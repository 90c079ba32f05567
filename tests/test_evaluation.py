"""Evaluation: metrics, ECE binning, baselines, grouped metrics, reliability plot, importance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from retryopt.training.evaluation import (
    HistoricalRateBaseline,
    LogisticBaseline,
    classification_metrics,
    expected_calibration_error,
    feature_importance,
    grouped_metrics,
    plot_reliability,
    reliability_table,
)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 5, size=n)
    y = (rng.random(n) < p).astype(np.int8)
    return y, p


def test_metrics_match_scikit_learn() -> None:
    y, p = _data(5_000, 0)
    m = classification_metrics(y, p)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["log_loss"] == pytest.approx(sk_log_loss(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert m["rows"] == 5_000


def test_ece_uses_equal_mass_bins_and_detects_miscalibration() -> None:
    y, p = _data(50_000, 1)
    table = reliability_table(y, p, n_bins=10)
    assert len(table) == 10
    assert table["rows"].max() - table["rows"].min() <= 1
    assert expected_calibration_error(y, p, n_bins=10) < 0.015
    assert expected_calibration_error(y, np.clip(p + 0.1, 0, 1), n_bins=10) > 0.08


def test_ece_hand_computed() -> None:
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.7, 0.9])
    # two equal-mass bins: {0.1, 0.2} vs rate 0.5 -> gap 0.35; {0.7, 0.9} vs 0.5 -> gap 0.3
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.5 * 0.35 + 0.5 * 0.3)


def test_auc_is_nan_for_one_class() -> None:
    assert np.isnan(classification_metrics(np.zeros(3), np.array([0.1, 0.2, 0.3]))["roc_auc"])


def test_historical_baseline_smooths_towards_family_and_global() -> None:
    frame = pd.DataFrame(
        {
            "decline_family": ["funds"] * 100 + ["generic"] * 4,
            "retry_number": [1] * 50 + [2] * 50 + [1] * 4,
        }
    )
    y = np.array([1] * 25 + [0] * 25 + [1] * 5 + [0] * 45 + [1] * 4)
    base = HistoricalRateBaseline(prior_strength=10.0).fit(frame, y)
    query = pd.DataFrame(
        {
            "decline_family": ["funds", "funds", "generic", "velocity", pd.NA],
            "retry_number": [1, 2, 1, 1, 30],
        }
    )
    p = base.predict_proba(query)
    assert p[0] > p[1]  # retry 1 succeeded more often than retry 2
    assert p[0] < 0.5 and p[0] > 0.3  # shrunk towards the family rate 0.30
    g = 34 / 104
    assert p[2] < 1.0 and p[2] > g  # 4/4 successes, shrunk strongly
    assert p[3] == pytest.approx(g)  # unseen family -> global rate
    assert p[4] == pytest.approx(base.family_rate_.get("unknown", g))


def _frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    fam = rng.choice(["funds", "generic", "risk"], size=n)
    hours = rng.uniform(0, 200, size=n)
    hours[rng.random(n) < 0.05] = np.nan
    logit = -1.0 + np.where(fam == "funds", 1.0, 0.0) - 0.01 * np.nan_to_num(hours, nan=100.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    X = pd.DataFrame(
        {
            "hours": hours,
            "family": pd.Categorical(
                fam, categories=["funds", "generic", "risk", "other", "missing"]
            ),
        }
    )
    return X, y


def test_logistic_baseline_learns_and_handles_missing() -> None:
    X, y = _frame(4_000, 2)
    model = LogisticBaseline().fit(X, y)
    p = model.predict_proba(X)
    assert p.shape == (4_000,)
    assert classification_metrics(y, p)["roc_auc"] > 0.65


def test_grouped_metrics_pools_small_groups() -> None:
    y, p = _data(1_000, 3)
    groups = np.array(["a"] * 600 + ["b"] * 390 + ["c"] * 5 + [None] * 5, dtype=object)
    table = grouped_metrics(y, {"m": p, "n": p * 0.5}, groups, min_rows=10)
    assert list(table["group"]) == ["a", "b", "(other)"]
    assert table["rows"].sum() == 1_000
    assert {"m_roc_auc", "n_log_loss", "m_ece"} <= set(table.columns)


def test_reliability_plot_is_a_png(tmp_path: Path) -> None:
    y, p = _data(2_000, 4)
    out = plot_reliability({"model": (y, p)}, tmp_path / "sub" / "rel.png", n_bins=10)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f.name for f in out.parent.iterdir()] == ["rel.png"]


def test_feature_importance_gain_and_shap() -> None:
    import lightgbm as lgb

    X, y = _frame(3_000, 5)
    booster = lgb.train(
        {"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": 1},
        lgb.Dataset(X, label=y),
        num_boost_round=20,
    )
    table = feature_importance(booster, X.head(500))
    assert set(table["feature"]) == {"hours", "family"}
    assert table["gain_share"].sum() == pytest.approx(1.0)
    assert (table["mean_abs_shap"] > 0).all()
