"""What a backtest produced (:class:`BacktestResult`), shared by the runner and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from retryopt.training.backtest.metrics import HEADLINE


@dataclass(kw_only=True)
class BacktestResult:
    """Everything a backtest produced (tables are long-format DataFrames)."""

    estimates: pd.DataFrame
    uplift: pd.DataFrame
    breakdowns: pd.DataFrame
    retry_numbers: pd.DataFrame
    curves: pd.DataFrame
    overlap: dict[str, dict[str, Any]]
    rules: dict[str, dict[str, int]]
    calibration: pd.DataFrame
    warnings: list[str]
    meta: dict[str, Any]
    truth: dict[str, Any] = field(default_factory=dict)

    def headline(self) -> pd.DataFrame:
        """One row per policy: the preferred estimator's headline statistics with intervals."""
        est = self.estimates
        rows = []
        for policy in dict.fromkeys(est["policy"]):
            sub = est[est["policy"] == policy]
            have = set(sub["estimator"])
            pick = next(e for e in ("observed", "truth", "dr", "dm", "snips", "ips") if e in have)
            row: dict[str, Any] = {"policy": policy, "estimator": pick}
            for stat in HEADLINE:
                r = sub[(sub["estimator"] == pick) & (sub["statistic"] == stat)]
                if len(r):
                    row[stat] = float(r["value"].iloc[0])
                    row[f"{stat}_low"] = float(r["ci_low"].iloc[0])
                    row[f"{stat}_high"] = float(r["ci_high"].iloc[0])
            rows.append(row)
        return pd.DataFrame(rows)
