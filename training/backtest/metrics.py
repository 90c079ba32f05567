"""Backtest tables: statistics with intervals, uplift, breakdowns and rule checks.

Statistics are derived from per-charge mean vectors (:class:`~.estimators.MetricSet`) for the
point estimate and for every bootstrap replicate, so ratios (retries per recovered charge,
success rate of retry k) and the median time to recovery get intervals too.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

from retryopt.training.backtest.estimators import (
    MetricSet,
    Resampled,
    percentile_interval,
    summary_statistics,
)

HEADLINE: Final[tuple[str, ...]] = (
    "recovery_rate",
    "recovered_amount",
    "discounted_value",
    "retries_per_failed_charge",
    "retries_per_recovered_charge",
    "median_days_to_recovery",
    "recovered_within_7d_rate",
)
SEP: Final = "\x1f"


def split_key(key: str) -> tuple[str, str]:
    """``"policy<SEP>estimator"`` -> (policy, estimator)."""
    policy, _, estimator = key.rpartition(SEP)
    return policy, estimator


def join_key(policy: str, estimator: str) -> str:
    """Key of a (policy, estimator) pair in the joint bootstrap."""
    return f"{policy}{SEP}{estimator}"


def _stat_rows(
    point: np.ndarray, reps: np.ndarray, metrics: MetricSet, *, level: float
) -> list[tuple[str, float, float, float]]:
    pt = summary_statistics(point, metrics)
    rp = summary_statistics(reps, metrics)
    out = []
    for name, value in pt.items():
        iv = percentile_interval(float(np.asarray(value)), np.asarray(rp[name]), level=level)
        out.append((name, iv.value, iv.low, iv.high))
    return out


def estimates_table(res: Resampled, metrics: MetricSet, *, level: float = 0.95) -> pd.DataFrame:
    """Long table: policy, estimator, statistic, value, ci_low, ci_high."""
    rows = []
    for key, point in res.point.items():
        policy, estimator = split_key(key)
        for stat, v, lo, hi in _stat_rows(point, res.replicates[key], metrics, level=level):
            rows.append((policy, estimator, stat, v, lo, hi))
    return pd.DataFrame(
        rows, columns=["policy", "estimator", "statistic", "value", "ci_low", "ci_high"]
    )


def uplift_table(
    res: Resampled,
    metrics: MetricSet,
    *,
    baseline: str,
    level: float = 0.95,
) -> pd.DataFrame:
    """Difference of each policy/estimator to the baseline's *observed* (or first) estimate.

    Replicates share the same bootstrap weights, so the interval of the difference accounts for
    the correlation between policies evaluated on the same charges.
    """
    base_keys = [k for k in res.point if split_key(k)[0] == baseline]
    if not base_keys:
        return pd.DataFrame(
            columns=["policy", "estimator", "statistic", "uplift", "ci_low", "ci_high"]
        )
    base_key = base_keys[0]
    b_pt = summary_statistics(res.point[base_key], metrics)
    b_rp = summary_statistics(res.replicates[base_key], metrics)
    rows = []
    for key, point in res.point.items():
        policy, estimator = split_key(key)
        if policy == baseline:
            continue
        pt = summary_statistics(point, metrics)
        rp = summary_statistics(res.replicates[key], metrics)
        for stat in (
            "recovery_rate",
            "recovered_amount",
            "discounted_value",
            "retries_per_failed_charge",
        ):
            d = float(np.asarray(pt[stat]) - np.asarray(b_pt[stat]))
            iv = percentile_interval(d, np.asarray(rp[stat]) - np.asarray(b_rp[stat]), level=level)
            rows.append((policy, estimator, stat, iv.value, iv.low, iv.high))
    return pd.DataFrame(
        rows, columns=["policy", "estimator", "statistic", "uplift", "ci_low", "ci_high"]
    )


def breakdown_table(res: Resampled, metrics: MetricSet, *, level: float = 0.95) -> pd.DataFrame:
    """Per-group statistics: breakdown, level, n_charges, policy, estimator, statistic, CI."""
    rows = []
    wanted = ("recovery_rate", "recovered_amount", "retries_per_failed_charge")
    for group, entries in res.groups.items():
        for gkey, (point, reps, n) in entries.items():
            level_name, _, pe = gkey.partition(SEP)
            policy, estimator = split_key(pe)
            for stat, v, lo, hi in _stat_rows(point, reps, metrics, level=level):
                if stat in wanted:
                    rows.append((group, level_name, n, policy, estimator, stat, v, lo, hi))
    return pd.DataFrame(
        rows,
        columns=[
            "breakdown",
            "level",
            "n_charges",
            "policy",
            "estimator",
            "statistic",
            "value",
            "ci_low",
            "ci_high",
        ],
    )


def retry_number_table(res: Resampled, metrics: MetricSet) -> pd.DataFrame:
    """Success rate and retries made per retry number, per policy and estimator."""
    rows = []
    col = {n: i for i, n in enumerate(metrics.names)}
    for key, point in res.point.items():
        policy, estimator = split_key(key)
        for k in range(1, metrics.max_step + 1):
            att = float(point[col[f"attempted_{k}"]])
            suc = float(point[col[f"succeeded_{k}"]])
            if att <= 0:
                continue
            rows.append((policy, estimator, k, att, suc / att))
    return pd.DataFrame(
        rows,
        columns=["policy", "estimator", "retry_number", "retries_per_charge", "success_rate"],
    )


def curve_table(res: Resampled, metrics: MetricSet, *, level: float = 0.95) -> pd.DataFrame:
    """Cumulative recovery rate by day since the first failure, with intervals."""
    rows = []
    col = {n: i for i, n in enumerate(metrics.names)}
    for key, point in res.point.items():
        policy, estimator = split_key(key)
        for d in metrics.curve_days:
            j = col[f"recovered_by_day_{d}"]
            iv = percentile_interval(float(point[j]), res.replicates[key][:, j], level=level)
            rows.append((policy, estimator, d, iv.value, iv.low, iv.high))
    return pd.DataFrame(
        rows, columns=["policy", "estimator", "day", "recovered", "ci_low", "ci_high"]
    )


def rule_checks(
    *,
    hard_state: np.ndarray,
    target_hours: np.ndarray,
    attempt_hours_by_row: list[np.ndarray] | np.ndarray | None = None,
) -> dict[str, int]:
    """Count a policy's retries after hard declines and beyond the networks' caps.

    Parameters
    ----------
    hard_state
        Per logged decision state: the last decline is hard (never retry: Visa category 1,
        Mastercard advice 03/21, lost/stolen/fraud/closed; ``features.taxonomy``).
    target_hours
        The policy's decision at each state (NaN = stop).
    attempt_hours_by_row
        Optional attempt times (hours) of the charge before each decision, to count the
        Mastercard caps (10 declines per 24 h, 35 per 30 days) and Visa's 20 reattempts per
        30 days on the charge's own attempts (domain-facts: card-network retry rules). Either a
        list of arrays or a ``(n_rows, k)`` matrix padded with NaN (vectorised).
    """
    retries = ~np.isnan(np.asarray(target_hours, dtype=np.float64))
    hard = int((retries & np.asarray(hard_state, dtype=bool)).sum())
    violations = 0
    if isinstance(attempt_hours_by_row, np.ndarray):
        t = np.asarray(target_hours, dtype=np.float64)[:, None]
        with np.errstate(invalid="ignore"):
            gap = t - attempt_hours_by_row  # NaN padding compares False
            d24 = (gap < 24).sum(axis=1)
            d30 = (gap < 24 * 30).sum(axis=1)
        bad = retries & ((d24 >= 10) | (d30 >= 35) | (d30 > 20))
        violations = int(bad.sum())
    elif attempt_hours_by_row is not None:
        for t, prev in zip(np.asarray(target_hours), attempt_hours_by_row, strict=True):
            if np.isnan(t):
                continue
            d24 = int(((t - prev) < 24).sum())
            d30 = int(((t - prev) < 24 * 30).sum())
            if d24 >= 10 or d30 >= 35 or d30 > 20:
                violations += 1
    return {"retries_of_hard_declines": hard, "network_rule_violations": violations}
