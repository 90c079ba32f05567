"""Evaluation of retry-success models: metrics, baselines, reliability curve, importance.

Metrics (all on held-out test months):

- ROC AUC, log loss (natural log, probabilities clipped to ``[1e-15, 1 - 1e-15]``), Brier score.
- Expected calibration error with **equal-mass bins**: rows are sorted by predicted probability and
  cut into ``n_bins`` bins of (almost) equal size;
  ``ECE = sum_b n_b / n * |mean(y_b) - mean(p_b)|``.
  Equal-mass bins keep every bin populated where the predictions are dense (most retries have a
  low success probability), unlike equal-width bins.

Baselines the model must beat:

- :class:`HistoricalRateBaseline`: the historical success rate per (decline family x retry
  number), smoothed towards the family rate and the family rate towards the global rate
  (a Beta prior of ``prior_strength`` pseudo-observations each).
- :class:`LogisticBaseline`: a logistic regression on the same features (one-hot categoricals
  with the feature spec's levels, median-imputed and standardised numerics plus missing
  indicators).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

_CLIP = 1e-15


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary log loss (natural log) with clipped probabilities."""
    labels = np.asarray(y, dtype=np.float64)
    q = np.clip(np.asarray(p, dtype=np.float64), _CLIP, 1.0 - _CLIP)
    return float(-np.mean(labels * np.log(q) + (1.0 - labels) * np.log(1.0 - q)))


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error between predicted probability and the 0/1 outcome."""
    return float(np.mean((np.asarray(p, np.float64) - np.asarray(y, np.float64)) ** 2))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC (rank statistic, ties averaged); NaN when only one class is present."""
    from scipy.stats import rankdata

    labels = np.asarray(y).astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(p, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _equal_mass_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    order = np.argsort(p, kind="stable")
    bins = np.empty(p.size, dtype=np.int64)
    bins[order] = (np.arange(p.size) * n_bins) // max(p.size, 1)
    return bins


def reliability_table(y: np.ndarray, p: np.ndarray, *, n_bins: int = 15) -> pd.DataFrame:
    """Per equal-mass bin: rows, mean predicted probability, observed success rate."""
    labels = np.asarray(y, dtype=np.float64)
    probs = np.asarray(p, dtype=np.float64)
    bins = _equal_mass_bins(probs, n_bins)
    frame = pd.DataFrame({"bin": bins, "y": labels, "p": probs})
    table = frame.groupby("bin", sort=True).agg(
        rows=("y", "size"), mean_predicted=("p", "mean"), observed_rate=("y", "mean")
    )
    return table.reset_index()


def expected_calibration_error(y: np.ndarray, p: np.ndarray, *, n_bins: int = 15) -> float:
    """ECE with equal-mass bins (see the module docstring)."""
    if np.asarray(y).size == 0:
        return float("nan")
    table = reliability_table(y, p, n_bins=n_bins)
    weights = table["rows"].to_numpy() / table["rows"].sum()
    gaps = np.abs(table["observed_rate"].to_numpy() - table["mean_predicted"].to_numpy())
    return float(np.sum(weights * gaps))


def classification_metrics(y: np.ndarray, p: np.ndarray, *, n_bins: int = 15) -> dict[str, float]:
    """ROC AUC, log loss, Brier, ECE, mean prediction and observed rate of one prediction set."""
    labels = np.asarray(y, dtype=np.float64)
    probs = np.asarray(p, dtype=np.float64)
    return {
        "rows": float(labels.size),
        "success_rate": float(labels.mean()) if labels.size else float("nan"),
        "mean_predicted": float(probs.mean()) if probs.size else float("nan"),
        "roc_auc": roc_auc(labels, probs),
        "log_loss": log_loss(labels, probs) if labels.size else float("nan"),
        "brier": brier_score(labels, probs) if labels.size else float("nan"),
        "ece": expected_calibration_error(labels, probs, n_bins=n_bins),
    }


def grouped_metrics(
    y: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    groups: pd.Series | np.ndarray,
    *,
    min_rows: int = 200,
    n_bins: int = 10,
) -> pd.DataFrame:
    """Metrics per group (e.g. decline family, country) for every prediction set.

    Groups with fewer than ``min_rows`` rows are pooled into ``"(other)"``. Columns: ``group``,
    ``rows``, ``success_rate`` and ``<name>_<metric>`` for each prediction set and metric
    (``roc_auc``, ``log_loss``, ``brier``, ``ece``).
    """
    keys = pd.Series(np.asarray(groups, dtype=object)).fillna("missing").astype(str).to_numpy()
    counts = pd.Series(keys).value_counts()
    small = set(counts[counts < min_rows].index)
    keys = np.where(np.isin(keys, list(small)), "(other)", keys)
    labels = np.asarray(y, dtype=np.float64)
    rows: list[dict[str, Any]] = []
    for key in sorted(set(keys)):
        mask = keys == key
        row: dict[str, Any] = {
            "group": key,
            "rows": int(mask.sum()),
            "success_rate": float(labels[mask].mean()),
        }
        for name, p in predictions.items():
            m = classification_metrics(labels[mask], np.asarray(p)[mask], n_bins=n_bins)
            for metric in ("roc_auc", "log_loss", "brier", "ece"):
                row[f"{name}_{metric}"] = m[metric]
        rows.append(row)
    return pd.DataFrame(rows).sort_values("rows", ascending=False, ignore_index=True)


class HistoricalRateBaseline:
    """Smoothed historical success rate per (decline family x retry number).

    Parameters
    ----------
    prior_strength
        Pseudo-observations of the Beta prior: a cell's rate is shrunk towards its family's rate,
        a family's rate towards the global rate.
    max_retry_number
        Retry numbers above this are pooled into one cell.
    """

    def __init__(self, *, prior_strength: float = 20.0, max_retry_number: int = 8) -> None:
        self.prior_strength = prior_strength
        self.max_retry_number = max_retry_number
        self.global_rate_: float | None = None
        self.family_rate_: dict[str, float] = {}
        self.cell_rate_: dict[tuple[str, int], float] = {}

    def _keys(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        for column in ("decline_family", "retry_number"):
            if column not in frame.columns:
                raise ValueError(f"HistoricalRateBaseline needs a column {column!r}")
        family = (
            frame["decline_family"].astype(object).where(frame["decline_family"].notna(), "unknown")
        )
        retry = pd.to_numeric(frame["retry_number"], errors="coerce").fillna(1).astype(np.int64)
        return family.astype(str).to_numpy(), np.minimum(retry.to_numpy(), self.max_retry_number)

    def fit(self, frame: pd.DataFrame, y: np.ndarray) -> HistoricalRateBaseline:
        """Count successes per cell of ``frame`` (columns ``decline_family``, ``retry_number``)."""
        family, retry = self._keys(frame)
        labels = np.asarray(y, dtype=np.float64)
        if labels.size == 0:
            raise ValueError("HistoricalRateBaseline needs at least one example")
        m = self.prior_strength
        self.global_rate_ = float(labels.mean())
        data = pd.DataFrame({"family": family, "retry": retry, "y": labels})
        fam = data.groupby("family")["y"].agg(["sum", "count"])
        self.family_rate_ = {
            str(k): float((r["sum"] + m * self.global_rate_) / (r["count"] + m))
            for k, r in fam.iterrows()
        }
        cell = data.groupby(["family", "retry"])["y"].agg(["sum", "count"])
        self.cell_rate_ = {}
        for key, r in cell.iterrows():
            fam_key, retry_key = str(key[0]), int(key[1])  # type: ignore[index]
            prior = self.family_rate_[fam_key]
            self.cell_rate_[(fam_key, retry_key)] = float((r["sum"] + m * prior) / (r["count"] + m))
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """P(success) per row (1-D); unseen cells fall back to the family, then global rate."""
        if self.global_rate_ is None:
            raise RuntimeError("HistoricalRateBaseline is not fitted")
        family, retry = self._keys(frame)
        g = self.global_rate_
        return np.array(
            [
                self.cell_rate_.get((f, int(n)), self.family_rate_.get(f, g))
                for f, n in zip(family, retry, strict=True)
            ],
            dtype=np.float64,
        )


class LogisticBaseline:
    """Logistic regression on the encoded features (see :func:`features.spec.encode_features`).

    Categoricals are one-hot encoded over their levels; numerics are median-imputed with missing
    indicators and standardised.

    Parameters
    ----------
    C
        Inverse L2 regularisation strength.
    max_iter
        L-BFGS iterations.
    """

    def __init__(self, *, C: float = 1.0, max_iter: int = 300) -> None:
        self.C = C
        self.max_iter = max_iter
        self.pipeline_: Any = None

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> LogisticBaseline:
        """Fit on an encoded feature matrix ``X`` (numeric float64, categoricals Categorical)."""
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline, make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        categorical = [c for c in X.columns if isinstance(X[c].dtype, pd.CategoricalDtype)]
        numeric = [c for c in X.columns if c not in categorical]
        categories = [[str(v) for v in X[c].cat.categories] for c in categorical]
        transformers: list[tuple[str, Any, list[str]]] = []
        if numeric:
            transformers.append(
                (
                    "num",
                    make_pipeline(
                        SimpleImputer(
                            strategy="median", add_indicator=True, keep_empty_features=True
                        ),
                        StandardScaler(),
                    ),
                    numeric,
                )
            )
        if categorical:
            transformers.append(
                (
                    "cat",
                    OneHotEncoder(categories=categories, handle_unknown="ignore"),
                    categorical,
                )
            )
        self.pipeline_ = Pipeline(
            [
                ("columns", ColumnTransformer(transformers, sparse_threshold=0.3)),
                ("model", LogisticRegression(C=self.C, max_iter=self.max_iter)),
            ]
        )
        self.pipeline_.fit(self._prepare(X), np.asarray(y, dtype=np.int64))
        return self

    @staticmethod
    def _prepare(X: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c in X.columns:
            if isinstance(X[c].dtype, pd.CategoricalDtype):
                out[c] = (
                    X[c]
                    .astype(object)
                    .where(X[c].notna(), "missing")
                    .astype(str)
                    .to_numpy(dtype=object)
                )
            else:
                v = pd.to_numeric(X[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                out[c] = np.where(np.isfinite(v), v, np.nan)
        return pd.DataFrame(out, index=X.index)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """P(success) per row (1-D)."""
        if self.pipeline_ is None:
            raise RuntimeError("LogisticBaseline is not fitted")
        return np.asarray(self.pipeline_.predict_proba(self._prepare(X))[:, 1], dtype=np.float64)


def feature_importance(booster: Any, X_sample: pd.DataFrame) -> pd.DataFrame:
    """Gain importance and mean |SHAP| (LightGBM ``pred_contrib``) per feature.

    Parameters
    ----------
    booster
        A trained ``lightgbm.Booster``.
    X_sample
        Encoded rows on which the SHAP-style contributions are averaged (a sample of the test
        months keeps this fast).
    """
    names = list(booster.feature_name())
    gain = np.asarray(booster.feature_importance(importance_type="gain"), dtype=np.float64)
    contrib = np.asarray(booster.predict(X_sample, pred_contrib=True), dtype=np.float64)
    mean_abs = (
        np.abs(contrib[:, : len(names)]).mean(axis=0) if len(X_sample) else np.zeros(len(names))
    )
    total = gain.sum()
    table = pd.DataFrame(
        {
            "feature": names,
            "gain": gain,
            "gain_share": gain / total if total > 0 else gain,
            "mean_abs_shap": mean_abs,
        }
    )
    return table.sort_values("gain", ascending=False, ignore_index=True)


def plot_reliability(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    n_bins: int = 15,
    title: str = "Reliability on the test months",
) -> Path:
    """Write a reliability diagram (observed rate vs mean prediction per bin) as PNG, atomically.

    Parameters
    ----------
    curves
        ``name -> (y, p)`` for every prediction set to draw.
    path
        Target PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(path)
    fig, ax = plt.subplots(figsize=(6.0, 6.0), dpi=100)
    try:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
        top = 0.0
        for name, (y, p) in curves.items():
            table = reliability_table(y, p, n_bins=n_bins)
            ece = expected_calibration_error(y, p, n_bins=n_bins)
            ax.plot(
                table["mean_predicted"],
                table["observed_rate"],
                marker="o",
                markersize=3,
                label=f"{name} (ECE {ece:.3f})",
            )
            top = max(
                top, float(table["mean_predicted"].max()), float(table["observed_rate"].max())
            )
        limit = min(1.0, max(0.05, top * 1.1))
        ax.set_xlim(0, limit)
        ax.set_ylim(0, limit)
        ax.set_xlabel("mean predicted P(success)")
        ax.set_ylabel("observed success rate")
        ax.set_title(f"{title} ({n_bins} equal-mass bins)")
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    return target
