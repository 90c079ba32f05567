"""Benchmark: what safe exploration costs and what it buys (issue 15, item 3).

On tuning worlds (seeds 101, 102, 103: never the README's demo world, seed 7), for each world:

1. train a model on the first months;
2. play the planner on the failed charges of the last month in the simulated world (common
   random numbers, ``--plays`` plays per setting), without exploration and with each tolerance
   of the grid: the **cost** is the relative loss of recovered amount and of net discounted
   value (recovered amount discounted from the first failure, less the cost of every retry)
   against no exploration;
3. for each tolerance, take the exploring planner's played month as the logged data set and
   backtest policies near the deployed one (the planner without exploration, greedy) and a far
   one (a fixed schedule) with IPS, SNIPS and DR: the **overlap** (effective sample size of the
   trajectory weights, whether the estimators are available) and the estimates against the
   world's truth.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_exploration.py --customers 4000 --months 6

Prints tables (copied into the README, "Safe exploration").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.decisions import Constraints, RetryPolicy
from retryopt.model.bundle import load_bundle
from retryopt.serving.policies import (
    BundleSuccessModel,
    FixedSchedule,
    GreedyPolicy,
    PlannerConfig,
    PlannerPolicy,
)
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.estimators import objective_for
from retryopt.training.backtest.ground_truth import GroundTruth, played_contributions
from retryopt.training.backtest.runner import run_backtest
from retryopt.training.loop import FAST_TRAINING, month_charges, month_rows, train_on
from retryopt.training.simulate.config import WorldConfig
from retryopt.training.simulate.play import play
from retryopt.training.simulate.world import simulate_world

TOLERANCES = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)


def _log(message: str) -> None:
    print(f"[explore {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _value(attempts: pd.DataFrame, ids: np.ndarray, cons: Constraints) -> dict[str, float]:
    _, metrics = objective_for(cons, None)
    contrib = played_contributions(attempts, ids, metrics=metrics)
    names = list(metrics.names)
    return {
        "recovered_amount": float(contrib[:, names.index("recovered_amount")].sum()),
        "net_value": float(contrib[:, names.index("discounted_value")].sum()),
        "recovered": float(contrib[:, names.index("recovered")].mean()),
    }


def one_world(seed: int, args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Cost and overlap rows of one tuning world."""
    world = simulate_world(WorldConfig(), customers=args.customers, months=args.months, seed=seed)
    ids = month_charges(world, args.months - 1)
    history = month_rows(world, 0, args.months - 1)
    bundle = load_bundle(train_on(history, root / f"models_{seed}", config=FAST_TRAINING))
    model = BundleSuccessModel(bundle)
    cons = Constraints()
    _log(f"world {seed}: {len(ids)} failed charges in the evaluated month")
    rows: list[dict[str, Any]] = []
    base: dict[str, float] = {}
    played: dict[float, pd.DataFrame] = {}
    for tol in TOLERANCES:
        totals = {"recovered_amount": 0.0, "net_value": 0.0, "recovered": 0.0}
        props: list[np.ndarray] = []
        for r in range(args.plays):
            policy = PlannerPolicy(
                model, config=PlannerConfig(exploration_tolerance=tol, exploration_seed=r)
            )
            result = play(policy, world, ids, cons, seed=1000 + r)
            if r == 0:
                played[tol] = result.attempts
            v = _value(result.attempts, ids, cons)
            totals = {k: totals[k] + v[k] / args.plays for k in totals}
            p = result.attempts[c.RETRY_PROPENSITY].to_numpy(dtype=np.float64)
            props.append(p[~np.isnan(p)])
        if tol == 0:
            base = totals
        p_all = np.concatenate(props)
        rows.append(
            {
                "world": seed,
                "tolerance": tol,
                "charges": len(ids),
                "recovery_rate": totals["recovered"],
                "amount_cost_pct": 100
                * (1 - totals["recovered_amount"] / base["recovered_amount"]),
                "net_cost_pct": 100 * (1 - totals["net_value"] / base["net_value"]),
                "explored_share": float((p_all < 1).mean()) if p_all.size else 0.0,
                "median_propensity": float(np.median(p_all)) if p_all.size else 1.0,
            }
        )
        _log(f"world {seed} tolerance {tol:g}: {rows[-1]}")
    overlap: list[dict[str, Any]] = []
    for tol in args.backtest_tolerances:
        logged = pd.concat(
            [world.attempts[~world.attempts[c.CHARGE_ID].isin(pd.Index(ids))], played[tol]],
            ignore_index=True,
        ).sort_values([c.ATTEMPTED_AT, c.ATTEMPT_ID], kind="mergesort")
        policies: dict[str, RetryPolicy | None] = {
            "model": PlannerPolicy(model),
            "greedy": GreedyPolicy(model),
            "fixed:72,120,168,216": FixedSchedule((72.0, 120.0, 168.0, 216.0)),
        }
        truth = GroundTruth(
            world=world,
            attempts=logged,
            policies=policies,
            kinds={k: k.split(":")[0] for k in policies},
            seed=2000,
            replications=2,
        )
        res = run_backtest(
            logged,
            policies,
            config=BacktestConfig(n_boot=args.bootstrap, fit_dm=False),
            dm_model=model,
            eval_charges=ids,
            truth_fn=truth,
        )
        est = res.estimates
        for label in policies:
            ov = res.overlap.get(label, {})
            row: dict[str, Any] = {
                "world": seed,
                "tolerance": tol,
                "policy": label,
                "ess": ov.get("effective_sample_size"),
                "method": ov.get("weights"),
                "available": ov.get("weighted_estimators") == "available",
            }
            sub = est[(est["policy"] == label) & (est["statistic"] == "recovery_rate")]
            truth_v = sub[sub["estimator"] == "truth"]["value"]
            row["truth"] = float(truth_v.iloc[0]) if len(truth_v) else float("nan")
            for name in ("dm", "ips", "snips", "dr"):
                e = sub[sub["estimator"] == name]
                if len(e):
                    lo, hi = float(e["ci_low"].iloc[0]), float(e["ci_high"].iloc[0])
                    row[name] = float(e["value"].iloc[0])
                    row[f"{name}_covers"] = bool(lo <= row["truth"] <= hi)
            overlap.append(row)
            _log(f"world {seed} tolerance {tol:g} {label}: {row}")
    return [*rows, *({"overlap": o} for o in overlap)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--months", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--plays", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--backtest-tolerances", type=float, nargs="*", default=[0.0, 0.02, 0.05])
    args = parser.parse_args()
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out += one_world(seed, args, Path(tmp))
    cost = pd.DataFrame([r for r in out if "overlap" not in r])
    over = pd.DataFrame([r["overlap"] for r in out if "overlap" in r])
    pd.set_option("display.width", 200)
    print("## Cost of exploration (per world; cost = loss vs no exploration, %)")
    print(cost.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print("\n## Mean over worlds")
    print(
        cost.groupby("tolerance")[
            ["amount_cost_pct", "net_cost_pct", "explored_share", "median_propensity"]
        ]
        .mean()
        .to_string(float_format=lambda x: f"{x:.3f}")
    )
    if len(over):
        print("\n## Overlap of the logged month (recovery rate; truth = world play)")
        print(over.to_string(index=False, float_format=lambda x: f"{x:.4g}"))


if __name__ == "__main__":
    main()
