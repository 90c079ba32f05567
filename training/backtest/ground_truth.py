"""Ground truth on the synthetic world: play every policy on the same failed charges.

``training.simulate.play(policy, world, charges, constraints, seed=...)`` plays a policy forward
with common random numbers (two policies see the same luck on the same charge). The played
attempts are turned into per-charge metric contributions with exactly the same definitions as the
estimators (:class:`~.estimators.MetricSet` via :func:`~.runner.prepare_charges`), so the true
value and every estimate are directly comparable, charge by charge.

``PlayResult.attempts`` holds contract rows of the first attempts and every played retry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints
from retryopt.training.backtest.estimators import MetricSet, observed_contributions
from retryopt.training.backtest.runner import Progress, _quiet, prepare_charges


def load_world(data: str | Path, truth: str | Path | None = None) -> Any:
    """Rebuild the simulated world that produced ``data`` (deterministic for its seed).

    Reads ``<stem>.config.json`` written by ``retryopt simulate`` next to ``data`` (or the
    config file given as ``truth``) and re-simulates the world from it.
    """
    import json

    from retryopt.features.io import strip_table_suffix
    from retryopt.training.simulate import WorldConfig, simulate_world

    path = Path(truth) if truth is not None else None
    if path is None or not str(path).endswith(".json"):
        base = strip_table_suffix(data)
        path = base.with_name(f"{base.name}.config.json")
    if not path.exists():
        raise FileNotFoundError(
            f"--simulate needs the world config written by `retryopt simulate`: {path} not found"
        )
    payload = json.loads(path.read_text(encoding="utf-8"))
    for key in ("customers", "months", "seed", "config"):
        if key not in payload:
            raise ValueError(f"{path}: field {key!r} missing")
    config = WorldConfig.from_dict(payload["config"])
    return simulate_world(
        config,
        customers=int(payload["customers"]),
        months=int(payload["months"]),
        seed=int(payload["seed"]),
    )


def played_contributions(
    played_attempts: pd.DataFrame,
    charge_ids: np.ndarray,
    *,
    metrics: MetricSet,
    fx: FxRates | None = None,
) -> np.ndarray:
    """Per-charge metric values ``(len(charge_ids), m)`` of played trajectories.

    ``played_attempts`` are contract rows (first failure + the policy's retries) of the charges;
    amounts are converted with ``fx`` (default: US dollars at the reference rates).
    """
    data = prepare_charges(played_attempts, charge_ids=charge_ids, keep_history=False, fx=fx)
    contrib = observed_contributions(data.steps, metrics, data.n)
    pos = pd.Index(data.charge_ids).get_indexer(pd.Index(charge_ids))
    out = np.zeros((len(charge_ids), len(metrics.names)))
    ok = pos >= 0
    out[ok] = contrib[pos[ok]]
    return out


def true_contributions(
    world: Any,
    attempts: pd.DataFrame,
    policies: dict[str, Any],
    *,
    seed: int,
    constraints: Constraints | None = None,
    metrics: MetricSet | None = None,
    charge_ids: np.ndarray | None = None,
    replications: int = 1,
    fx: FxRates | None = None,
    progress: Progress = _quiet,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """True per-charge contributions of every policy on the same failed charges (CRN).

    Every policy is played ``replications`` times, with common random numbers keyed by
    ``seed``, ``seed + 1``, ...; its truth is the mean contribution per charge (the expected
    value on these charges; one play's luck on a few large charges can otherwise decide a
    comparison). The logged policy's truth is what happened. Returns the contributions and a
    summary with the fixed-to-oracle gap closed by the model policy when both are present.
    """
    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    from retryopt.training.simulate import play

    mset = metrics or MetricSet()
    cons = constraints or Constraints()
    data = prepare_charges(attempts, charge_ids=charge_ids, keep_history=False, fx=fx)
    ids = data.charge_ids
    if charge_ids is not None:  # report in the caller's order
        order = pd.Index(ids).get_indexer(pd.Index(np.asarray(charge_ids, dtype=object)))
        if (order < 0).any():
            bad = np.asarray(charge_ids, dtype=object)[order < 0][:5].tolist()
            raise ValueError(f"charges {bad} are not failed charges of the history")
    else:
        order = np.arange(len(ids))
    out: dict[str, np.ndarray] = {}
    for label, policy in policies.items():
        if policy is None:
            out[label] = observed_contributions(data.steps, mset, data.n)[order]
            continue
        started = time.perf_counter()
        total: np.ndarray | None = None
        for r in range(replications):
            result = play(policy, world, ids[order], cons, seed=seed + r)
            one = played_contributions(result.attempts, ids[order], metrics=mset, fx=fx)
            total = one if total is None else total + one
        assert total is not None
        out[label] = total / replications
        progress(
            f"{label}: played in the simulated world on {len(ids)} charges x {replications} "
            f"({time.perf_counter() - started:.1f} s)"
        )
    return out, gap_summary(out, mset)


def gap_summary(contrib: dict[str, np.ndarray], metrics: MetricSet) -> dict[str, Any]:
    """True means per policy and the share of the fixed-to-oracle gap each model closes."""
    col = {n: i for i, n in enumerate(metrics.names)}
    means = {
        k: {
            "recovery_rate": float(v[:, col["recovered"]].mean()),
            "recovered_amount": float(v[:, col["recovered_amount"]].mean()),
            "retries_per_failed_charge": float(v[:, col["retries"]].mean()),
        }
        for k, v in contrib.items()
    }
    fixed = [k for k in means if k.startswith("fixed")]
    summary: dict[str, Any] = {"true_values": means}
    if fixed:
        best = max(fixed, key=lambda k: means[k]["recovered_amount"])
        summary["best_fixed"] = best
        gap = (
            means["oracle"]["recovered_amount"] - means[best]["recovered_amount"]
            if "oracle" in means
            else float("nan")
        )
        summary["fixed_to_oracle_gap"] = gap
        for k in means:
            if not k.startswith(("model", "greedy")):
                continue
            amount = means[k]["recovered_amount"] - means[best]["recovered_amount"]
            retries = (
                means[k]["retries_per_failed_charge"] - means[best]["retries_per_failed_charge"]
            )
            summary[f"{k}_vs_best_fixed"] = {
                "recovered_amount_difference": amount,
                "retries_difference": retries,
                "beats_best_fixed": bool(amount > 0 and retries < 0),
            }
            if gap > 0:
                summary[f"{k}_gap_closed"] = amount / gap
    return summary


def gap_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of :func:`gap_summary` (printed by ``retryopt backtest --simulate``)."""
    lines = []
    if "n_charges" in summary:
        lines.append(f"true values on {summary['n_charges']} held-out failed charges")
    for label, v in summary.get("true_values", {}).items():
        lines.append(
            f"truth {label}: recovery rate {v['recovery_rate']:.4f}, recovered amount "
            f"{v['recovered_amount']:.2f} per failed charge, "
            f"{v['retries_per_failed_charge']:.3f} retries per failed charge"
        )
    best = summary.get("best_fixed")
    for key, v in summary.items():
        if key.endswith("_vs_best_fixed"):
            label = key.removesuffix("_vs_best_fixed")
            closed = summary.get(f"{label}_gap_closed")
            share = f"{closed:.1%}" if closed is not None else "n/a (no oracle)"
            verdict = "beats" if v["beats_best_fixed"] else "does NOT beat"
            lines.append(
                f"{label} {verdict} {best} (recovered amount "
                f"{v['recovered_amount_difference']:+.2f}, retries "
                f"{v['retries_difference']:+.3f} per failed charge); "
                f"share of the {best} -> oracle gap closed: {share}"
            )
    return lines


def covered(lo: float, hi: float, truth: float) -> bool:
    """Whether an interval covers the truth."""
    return bool(np.isfinite(lo) and np.isfinite(hi) and lo <= truth <= hi)


__all__ = [
    "covered",
    "gap_lines",
    "gap_summary",
    "load_world",
    "played_contributions",
    "true_contributions",
]

_ = c  # the contract names the played attempts' columns
