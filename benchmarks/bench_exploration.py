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

# (share, tolerance): off, then the schemes compared (share 1 = always draw from the near set)
SCHEMES = ((0.0, 0.0), (1.0, 0.02), (0.3, 0.02), (0.3, 0.05), (0.5, 0.05), (0.3, 0.1))
BACKTESTED = ((1.0, 0.02), (0.3, 0.02), (0.3, 0.05))


def _log(message: str) -> None:
    print(f"[explore {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _per_charge(attempts: pd.DataFrame, ids: np.ndarray, cons: Constraints) -> np.ndarray:
    """``(n, 2)`` recovered amount and net discounted value (USD) per charge."""
    _, metrics = objective_for(cons, None)
    contrib = played_contributions(attempts, ids, metrics=metrics)
    names = list(metrics.names)
    return contrib[:, [names.index("recovered_amount"), names.index("discounted_value")]]


def _first_retry_value(world: Any, attempts: pd.DataFrame, ids: np.ndarray) -> float:
    """Sum over charges of the true P(success) of the first retry x amount (no sampling noise)."""
    a = attempts.sort_values([c.CHARGE_ID, c.ATTEMPTED_AT], kind="stable")
    second = a.groupby(c.CHARGE_ID, sort=False).nth(1)
    first = a.groupby(c.CHARGE_ID, sort=False).nth(0).set_index(c.CHARGE_ID)
    second = second.set_index(c.CHARGE_ID)
    cids = second.index.to_numpy(dtype=object)
    if not len(cids):
        return 0.0
    prev = first.loc[cids, c.ATTEMPTED_AT].dt.tz_localize(None).to_numpy()[:, None]
    at = second[c.ATTEMPTED_AT].dt.tz_localize(None).to_numpy()[:, None]
    p = world.success_probability_batch(cids, prev, at)[:, 0]
    usd = objective_for(Constraints(), None)[0].objective.amounts(
        second[c.AMOUNT].to_numpy(dtype=np.float64).tolist(), second[c.CURRENCY].tolist()
    )
    return float((p * usd).sum())


def _label(share: float, tol: float) -> str:
    return "off" if share == 0 else f"share {share:g}, tolerance {tol:g}"


def one_world(seed: int, args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Cost and overlap rows of one tuning world."""
    world = simulate_world(WorldConfig(), customers=args.customers, months=args.months, seed=seed)
    ids = month_charges(world, args.months - 1)
    history = month_rows(world, 0, args.months - 1)
    bundle = load_bundle(train_on(history, root / f"models_{seed}", config=FAST_TRAINING))
    older = load_bundle(
        train_on(month_rows(world, 0, args.months - 2), root / f"old_{seed}", config=FAST_TRAINING)
    )
    model = BundleSuccessModel(bundle)
    cons = Constraints()
    _log(f"world {seed}: {len(ids)} failed charges in the evaluated month")
    rows: list[dict[str, Any]] = []
    base: list[np.ndarray] = []
    base_first = 0.0
    played: dict[tuple[float, float], pd.DataFrame] = {}
    for share, tol in SCHEMES:
        per_play: list[np.ndarray] = []
        props: list[np.ndarray] = []
        first_value = 0.0
        for r in range(args.plays):
            policy = PlannerPolicy(
                model,
                config=PlannerConfig(
                    exploration_share=share, exploration_tolerance=tol, exploration_seed=r
                ),
            )
            result = play(policy, world, ids, cons, seed=1000 + r)
            if r == 0:
                played[(share, tol)] = result.attempts
            per_play.append(_per_charge(result.attempts, ids, cons))
            first_value += _first_retry_value(world, result.attempts, ids) / args.plays
            p = result.attempts[c.RETRY_PROPENSITY].to_numpy(dtype=np.float64)
            props.append(p[~np.isnan(p)])
        if share == 0:
            base, base_first = per_play, first_value
        # paired by charge and play (common random numbers): relative loss and its 95 % CI
        diff = np.concatenate([b - x for b, x in zip(base, per_play, strict=True)])
        total = np.concatenate(base).sum(axis=0)
        cost = 100 * diff.sum(axis=0) / total
        half = 100 * 1.96 * diff.std(axis=0, ddof=1) * np.sqrt(len(diff)) / total
        p_all = np.concatenate(props)
        rows.append(
            {
                "world": seed,
                "scheme": _label(share, tol),
                "charges": len(ids),
                "amount_cost_pct": cost[0],
                "amount_ci_pct": half[0],
                "net_cost_pct": cost[1],
                "net_ci_pct": half[1],
                "first_retry_true_cost_pct": 100 * (1 - first_value / base_first),
                "drawn_share": float((p_all < 1).mean()) if p_all.size else 0.0,
                "median_propensity": float(np.median(p_all)) if p_all.size else 1.0,
            }
        )
        _log(f"world {seed} {_label(share, tol)}: {rows[-1]}")
    overlap: list[dict[str, Any]] = []
    for share, tol in BACKTESTED:
        logged = pd.concat(
            [
                world.attempts[~world.attempts[c.CHARGE_ID].isin(pd.Index(ids))],
                played[(share, tol)],
            ],
            ignore_index=True,
        ).sort_values([c.ATTEMPTED_AT, c.ATTEMPT_ID], kind="mergesort")
        policies: dict[str, RetryPolicy | None] = {
            "model": PlannerPolicy(model),
            "older model": PlannerPolicy(BundleSuccessModel(older)),
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
                "logged scheme": _label(share, tol),
                "policy": label,
                "ess": ov.get("effective_sample_size"),
                "weights": ov.get("weights"),
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
            _log(f"world {seed} {_label(share, tol)} {label}: {row}")
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
    cols = ["amount_cost_pct", "net_cost_pct", "first_retry_true_cost_pct", "drawn_share"]
    print(
        cost.groupby("scheme", sort=False)[[*cols, "median_propensity"]]
        .mean()
        .to_string(float_format=lambda x: f"{x:.3f}")
    )
    if len(over):
        print("\n## Overlap of the logged month (recovery rate; truth = world play)")
        print(over.to_string(index=False, float_format=lambda x: f"{x:.4g}"))


if __name__ == "__main__":
    main()
