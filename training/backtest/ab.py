"""Champion versus challenger on the logged outcomes (A/B), and its report.

The unit of the experiment is the customer (the service assigns arms by a hash of the customer
id, :mod:`serving.arms`), so intervals come from a bootstrap **by customer**: each replicate
draws the customers of each arm with replacement and takes every failed charge of the drawn
customers. The arms hold disjoint customers, so they are resampled independently and the
difference's replicates are the differences of the arms' replicates.

A charge belongs to the arm of its first logged decision (the export's ``arm`` column,
:mod:`serving.log_export`); charges never decided are left out. Statistics are what happened
(the observed estimator): no model and no propensity is needed.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints
from retryopt.training.backtest.answer import (
    DECIDING_STATISTIC,
    STATISTICS,
    Verdict,
    answer_box,
    certainty_text,
    fmt_interval,
    page,
    rows_table,
)
from retryopt.training.backtest.charges import prepare_charges
from retryopt.training.backtest.estimators import (
    objective_for,
    observed_contributions,
    percentile_interval,
    summary_statistics,
)

ARM_COLUMN = "arm"
ARM_ORDER = ("champion", "challenger")
AB_STATISTICS = (
    "discounted_value",
    "recovered_amount",
    "recovery_rate",
    "retries_per_failed_charge",
)
_CHUNK = 200  # bootstrap replicates per matrix product


@dataclass(frozen=True, kw_only=True)
class ArmComparison:
    """Per-arm statistics and the challenger-minus-champion differences, with intervals."""

    arms: pd.DataFrame  # arm, customers, failed_charges, statistic, value, ci_low, ci_high
    difference: pd.DataFrame  # statistic, value, ci_low, ci_high, p_challenger_better
    meta: dict[str, Any] = field(default_factory=dict)

    def value(self, arm: str, statistic: str) -> tuple[float, float, float]:
        """``(value, ci_low, ci_high)`` of one arm's statistic."""
        row = self.arms[(self.arms["arm"] == arm) & (self.arms["statistic"] == statistic)]
        r = row.iloc[0]
        return float(r["value"]), float(r["ci_low"]), float(r["ci_high"])


def _customer_replicates(
    per_customer: np.ndarray, charges: np.ndarray, *, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n_boot, m)`` per-charge means over customer resamples (with replacement)."""
    n = len(charges)
    out = np.empty((n_boot, per_customer.shape[1]), dtype=np.float64)
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        counts = np.zeros((b, n), dtype=np.float64)
        draws = rng.integers(0, n, size=(b, n))
        np.add.at(counts, (np.repeat(np.arange(b), n), draws.ravel()), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + b] = (counts @ per_customer) / (counts @ charges)[:, None]
    return out


def compare_arms(
    attempts: pd.DataFrame,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    constraints: Constraints | None = None,
    fx: FxRates | None = None,
) -> ArmComparison:
    """Compare the arms of an exported log (the contract frame with an ``arm`` column).

    Raises
    ------
    ValueError
        Without an ``arm`` column, or when an arm has no failed charge.
    """
    if ARM_COLUMN not in attempts:
        raise ValueError(
            "the attempts carry no 'arm' column: export them from a store (retryopt export)"
        )
    arm_of = (
        attempts.sort_values(c.ATTEMPTED_AT, kind="stable")
        .groupby(c.CHARGE_ID, sort=False)[ARM_COLUMN]
        .first()
    )
    _, metrics = objective_for(constraints or Constraints(), fx)
    data = prepare_charges(attempts, keep_history=False, fx=fx)
    contributions = observed_contributions(data.steps, metrics, data.n)
    charge_arm = arm_of.reindex(pd.Index(data.charge_ids)).to_numpy(dtype=object)
    customers = data.attrs["customer_id"].to_numpy(dtype=object)
    rng = np.random.default_rng(seed)
    point: dict[str, dict[str, Any]] = {}
    reps: dict[str, dict[str, Any]] = {}
    rows = []
    for arm in ARM_ORDER:
        mask = charge_arm == arm
        if not mask.any():
            raise ValueError(f"no failed charge of the {arm} arm in the log")
        codes, uniques = pd.factorize(customers[mask])
        per_customer = np.zeros((len(uniques), contributions.shape[1]))
        np.add.at(per_customer, codes, contributions[mask])
        charges = np.bincount(codes, minlength=len(uniques)).astype(np.float64)
        mean = per_customer.sum(axis=0) / charges.sum()
        replicates = _customer_replicates(per_customer, charges, n_boot=n_boot, rng=rng)
        point[arm] = summary_statistics(mean, metrics)
        reps[arm] = summary_statistics(replicates, metrics)
        for stat in AB_STATISTICS:
            iv = percentile_interval(float(point[arm][stat]), reps[arm][stat], level=level)
            rows.append((arm, len(uniques), int(mask.sum()), stat, iv.value, iv.low, iv.high))
    diff_rows = []
    for stat in AB_STATISTICS:
        d = float(point["challenger"][stat]) - float(point["champion"][stat])
        rd = np.asarray(reps["challenger"][stat]) - np.asarray(reps["champion"][stat])
        iv = percentile_interval(d, rd, level=level)
        finite = rd[np.isfinite(rd)]
        better = float(np.mean(finite > 0)) if finite.size else float("nan")
        diff_rows.append((stat, iv.value, iv.low, iv.high, better))
    return ArmComparison(
        arms=pd.DataFrame(
            rows,
            columns=[
                "arm",
                "customers",
                "failed_charges",
                "statistic",
                "value",
                "ci_low",
                "ci_high",
            ],
        ),
        difference=pd.DataFrame(
            diff_rows, columns=["statistic", "value", "ci_low", "ci_high", "p_challenger_better"]
        ),
        meta={
            "n_boot": n_boot,
            "seed": seed,
            "level": level,
            "amount_unit": (fx or FxRates()).reporting.upper(),
            "undecided_charges": int(pd.isna(charge_arm).sum()),
        },
    )


def ab_verdict(result: ArmComparison) -> Verdict:
    """The better arm on the objective, by how much, how sure (customer bootstrap)."""
    table = result.difference
    diff = table[table["statistic"] == DECIDING_STATISTIC].iloc[0]
    d, lo, hi = float(diff["value"]), float(diff["ci_low"]), float(diff["ci_high"])
    best, other = ("challenger", "champion") if d > 0 else ("champion", "challenger")
    if best == "champion":
        d, lo, hi = -d, -hi, -lo
    p = float(diff["p_challenger_better"])
    p_best = p if best == "challenger" else 1.0 - p
    sure = f"{certainty_text(lo, hi)} {100 * p_best:.0f} % of the resamples favour the {best}."
    return Verdict(
        best=best,
        baseline=other,
        estimator="ab",
        baseline_estimator="ab",
        difference=d,
        low=lo,
        high=hi,
        unit=str(result.meta.get("amount_unit", "USD")),
        certainty=sure,
    )


def arm_rows(result: ArmComparison, served: dict[str, str]) -> list[dict[str, str]]:
    """One row per arm: what served it, its size and each statistic with its interval."""
    unit = str(result.meta.get("amount_unit", "USD"))
    rows = []
    for arm in ARM_ORDER:
        sub = result.arms[result.arms["arm"] == arm]
        row = {
            "arm": arm,
            "served by": served.get(arm, ""),
            "customers": f"{int(sub['customers'].iloc[0]):,}",
            "failed charges": f"{int(sub['failed_charges'].iloc[0]):,}",
        }
        for stat in AB_STATISTICS:
            label, kind = STATISTICS[stat]
            v, lo, hi = result.value(arm, stat)
            row[label] = fmt_interval(v, lo, hi, kind, unit if kind == "amount" else "")
        rows.append(row)
    diff = {"arm": "challenger - champion", "served by": "", "customers": "", "failed charges": ""}
    for _, r in result.difference.iterrows():
        label, kind = STATISTICS[str(r["statistic"])]
        diff[label] = fmt_interval(
            r["value"],
            r["ci_low"],
            r["ci_high"],
            kind,
            unit if kind == "amount" else "",
            signed=True,
        )
    rows.append(diff)
    return rows


def render_ab_html(result: ArmComparison, served: dict[str, str]) -> str:
    """The A/B report: the answer first, then one row per arm, then how it was computed."""
    verdict = ab_verdict(result)
    meta = result.meta
    how = (
        f"Observed outcomes of the logged decisions; {meta['n_boot']} bootstrap resamples by "
        f"customer (the unit of assignment), {100 * meta['level']:.0f} % percentile intervals. "
        "Judged on the value recovered net of attempt costs, discounted from the first failure."
    )
    body = (
        "<h1>retryopt champion vs challenger</h1>"
        + answer_box(verdict, html.escape(how))
        + "<h2>Arms</h2><p>Rates in percent and amounts in "
        + html.escape(str(meta["amount_unit"]))
        + " per failed charge, with 95 % intervals in brackets.</p>"
        + rows_table(arm_rows(result, served))
        + "<h2>Details</h2><pre>"
        + html.escape(json.dumps(meta, indent=1))
        + "</pre>"
    )
    return page("retryopt A/B", body)


def ab_markdown(result: ArmComparison, served: dict[str, str]) -> str:
    """The per-arm table as Markdown (printed by ``retryopt ab-report``)."""
    rows = arm_rows(result, served)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r.values()) + " |" for r in rows]
    return "\n".join([ab_verdict(result).sentence(), "", *lines])


def write_ab_report(result: ArmComparison, served: dict[str, str], out_dir: str | Path) -> Path:
    """Write ``report.html`` and ``ab.json`` into ``out_dir`` (each file atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "verdict": ab_verdict(result).sentence(),
        "served": served,
        "arms": json.loads(result.arms.to_json(orient="records")),
        "difference": json.loads(result.difference.to_json(orient="records")),
        "meta": result.meta,
    }
    for name, text in (
        ("report.html", render_ab_html(result, served)),
        ("ab.json", json.dumps(payload, indent=1, default=str)),
    ):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out / name)
    return out
