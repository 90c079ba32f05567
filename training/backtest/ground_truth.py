"""Ground truth on the synthetic world: play every policy on the same failed charges.

``training.simulate.play(policy, world, charges, constraints, seed=...)`` plays a policy forward
with common random numbers (two policies see the same luck on the same charge). The played
attempts are turned into per-charge metric contributions with exactly the same definitions as the
estimators (:class:`~.estimators.MetricSet` via :func:`~.charges.prepare_charges`), so the true
value and every estimate are directly comparable, charge by charge. :class:`GroundTruth` is the
``truth_fn`` of :func:`~.runner.run_backtest` on a simulated world.

``PlayResult.attempts`` holds contract rows of the first attempts and every played retry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints, RetryPolicy
from retryopt.training.backtest.charges import prepare_charges
from retryopt.training.backtest.estimators import (
    MetricSet,
    objective_for,
    observed_contributions,
    summary_statistics,
)
from retryopt.training.progress import Progress, quiet
from retryopt.training.simulate import SimulatedWorld, play


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
    world: SimulatedWorld,
    attempts: pd.DataFrame,
    policies: Mapping[str, RetryPolicy | None],
    *,
    seed: int,
    kinds: Mapping[str, str] | None = None,
    constraints: Constraints | None = None,
    metrics: MetricSet | None = None,
    charge_ids: np.ndarray | None = None,
    replications: int = 1,
    fx: FxRates | None = None,
    progress: Progress = quiet,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """True per-charge contributions of every policy on the same failed charges (CRN).

    Every policy is played ``replications`` times, with common random numbers keyed by
    ``seed``, ``seed + 1``, ...; its truth is the mean contribution per charge (the expected
    value on these charges; one play's luck on a few large charges can otherwise decide a
    comparison). The logged policy's truth is what happened. Returns the contributions and a
    summary with the fixed-to-oracle gap closed by the model policy when both are present
    (:func:`gap_summary`; ``kinds`` gives each label's spec kind).
    """
    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    cons, own_metrics = objective_for(constraints or Constraints(), fx)
    mset = metrics or own_metrics
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
    return out, gap_summary(out, mset, kinds or {})


def gap_summary(
    contrib: Mapping[str, np.ndarray], metrics: MetricSet, kinds: Mapping[str, str]
) -> dict[str, Any]:
    """True means per policy and the share of the fixed-to-oracle gap each model closes.

    ``kinds`` maps each policy label to its spec kind (``fixed``, ``oracle``, ``model``,
    ``greedy``, ...; :class:`.specs.PolicySpec`); labels without a kind only get true means.
    """
    col = {n: i for i, n in enumerate(metrics.names)}
    means = {
        k: {
            "recovery_rate": float(v[:, col["recovered"]].mean()),
            "recovered_amount": float(v[:, col["recovered_amount"]].mean()),
            "discounted_value": float(v[:, col["discounted_value"]].mean()),
            "median_days_to_recovery": float(
                summary_statistics(v.mean(axis=0), metrics)["median_days_to_recovery"]
            ),
            "retries_per_failed_charge": float(v[:, col["retries"]].mean()),
        }
        for k, v in contrib.items()
    }
    fixed = [k for k in means if kinds.get(k) == "fixed"]
    oracle = next((k for k in means if kinds.get(k) == "oracle"), None)
    summary: dict[str, Any] = {"true_values": means}
    if fixed:
        best = max(fixed, key=lambda k: means[k]["recovered_amount"])
        summary["best_fixed"] = best
        gap = (
            means[oracle]["recovered_amount"] - means[best]["recovered_amount"]
            if oracle is not None
            else float("nan")
        )
        summary["fixed_to_oracle_gap"] = gap
        for k in means:
            if kinds.get(k) not in ("model", "greedy"):
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
            if oracle is not None:
                dgap = means[oracle]["discounted_value"] - means[best]["discounted_value"]
                if dgap > 0:
                    summary[f"{k}_discounted_gap_closed"] = (
                        means[k]["discounted_value"] - means[best]["discounted_value"]
                    ) / dgap
    return summary


def gap_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of :func:`gap_summary` (printed by ``retryopt backtest --simulate``)."""
    lines = []
    if "n_charges" in summary:
        lines.append(f"true values on {summary['n_charges']} held-out failed charges")
    for label, v in summary.get("true_values", {}).items():
        lines.append(
            f"truth {label}: recovery rate {v['recovery_rate']:.4f}, recovered amount "
            f"{v['recovered_amount']:.2f} per failed charge, discounted value net of costs "
            f"{v['discounted_value']:.2f}, median {v['median_days_to_recovery']:g} days to "
            f"recovery, {v['retries_per_failed_charge']:.3f} retries per failed charge"
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


@dataclass(kw_only=True)
class GroundTruth:
    """The ``truth_fn`` of :func:`~.runner.run_backtest` on a simulated world.

    Called with the evaluated charges, it plays every policy on ``charge_ids`` (default: those
    charges; the caller may widen them, e.g. to both halves of the DM split, so the verdict rests
    on more charges) with :func:`true_contributions`, keeps the gap summary in :attr:`summary`
    and returns the evaluated charges' true contributions in their order.
    """

    world: SimulatedWorld
    attempts: pd.DataFrame
    policies: Mapping[str, RetryPolicy | None]
    kinds: Mapping[str, str]
    seed: int
    replications: int = 1
    fx: FxRates | None = None
    charge_ids: np.ndarray | None = None
    constraints: Constraints | None = None
    progress: Progress = quiet
    summary: dict[str, Any] = field(default_factory=dict)

    def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """True contributions of every policy on the evaluated charges ``ids`` (their order)."""
        wide = ids
        if self.charge_ids is not None:
            wide = np.asarray(pd.unique(np.asarray(self.charge_ids, dtype=object)), dtype=object)
        contrib, gaps = true_contributions(
            self.world,
            self.attempts,
            self.policies,
            seed=self.seed,
            kinds=self.kinds,
            constraints=self.constraints,
            charge_ids=wide,
            replications=self.replications,
            fx=self.fx,
            progress=self.progress,
        )
        self.summary.update(gaps)
        self.summary["n_charges"] = len(wide)
        pos = pd.Index(wide).get_indexer(pd.Index(np.asarray(ids, dtype=object)))
        if (pos < 0).any():
            raise ValueError("evaluated charges missing from the ground-truth play")
        return {k: v[pos] for k, v in contrib.items()}


def covered(lo: float, hi: float, truth: float) -> bool:
    """Whether an interval covers the truth."""
    return bool(np.isfinite(lo) and np.isfinite(hi) and lo <= truth <= hi)


__all__ = [
    "GroundTruth",
    "covered",
    "gap_lines",
    "gap_summary",
    "played_contributions",
    "true_contributions",
]
