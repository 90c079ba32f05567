"""Decision quality before/after issue 14 (model-planned later retries, timing weights).

On simulated worlds never used to choose anything (seeds ``WORLD_SEEDS``), train two bundles
(``training.timing_weights`` off / on), play the held-out last month's failed charges with the
fixed schedule, the oracle and four planners (later steps by ``decay`` or by the ``model`` x the
two bundles), all with common random numbers, and print per world: recovered USD, retries per
failed charge, the share of the fixed-to-oracle gap closed, and the first-decision metrics of
:func:`training.decision_metrics.first_decision_metrics` (median within-charge Spearman against
the truth, mean true P at the chosen time, bias and ECE at the chosen times).

    PYTHONPATH=. python benchmarks/bench_decision_model.py [customers] [seed ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from retryopt.features.decisions import Constraints
from retryopt.features.io import write_table_atomic
from retryopt.model.bundle import load_bundle
from retryopt.serving.policies import BundleSuccessModel, PlannerConfig, PlannerPolicy
from retryopt.serving.policies.baselines import FixedSchedule
from retryopt.training.decision_metrics import first_decision_metrics
from retryopt.training.simulate import OraclePolicy, WorldConfig, play, simulate_world
from retryopt.training.train import run_training
from retryopt.training.train_config import TrainConfig, load_config

WORLD_SEEDS = (302, 303)  # 301 is the tuning world (it chose timing_weights = false)
MONTHS = 6
PLAY_SEED = 7


def _bundle(data: Path, out: Path, seed: int, weights: bool) -> BundleSuccessModel:
    base = load_config(seed=seed).to_dict()
    base["training"]["timing_weights"] = weights
    base["training"]["num_threads"] = 1
    run = run_training(
        data,
        out,
        config=TrainConfig.from_dict(base),
        experiment="bench",
        registered_name=None,
        track=False,
    )
    return BundleSuccessModel(load_bundle(run.bundle_path))


def world_rows(customers: int, seed: int) -> list[dict[str, object]]:
    world = simulate_world(WorldConfig(), customers=customers, months=MONTHS, seed=seed)
    attempts = world.attempts.copy()
    attempts["currency"] = attempts["currency"].str.lower()
    tmp = Path(tempfile.mkdtemp(prefix="bench-decision-"))
    data = tmp / "attempts.parquet"
    write_table_atomic(attempts, data)
    models = {w: _bundle(data, tmp / f"models-{w}", seed, w) for w in (False, True)}
    failed = world.failed_charges()
    first = world.attempts.groupby("charge_id")["attempted_at"].min().loc[failed]
    # The last 30 days of first failures (a held-out month; the bundle's test month).
    charges = world.failed_charges(start=first.max() - pd.Timedelta(days=30))
    cons = Constraints()
    policies: dict[str, object] = {
        "fixed:72,120,168,216": FixedSchedule(),
        "oracle": OraclePolicy(world),
    }
    for w, model in models.items():
        for steps in ("decay", "model"):
            policies[f"planner weights={'on' if w else 'off'} later={steps}"] = PlannerPolicy(
                model, config=PlannerConfig(later_steps=steps)
            )
    rows: list[dict[str, object]] = []
    for name, policy in policies.items():
        started = time.perf_counter()
        summary = play(policy, world, charges, cons, seed=PLAY_SEED).summary()  # type: ignore[arg-type]
        row: dict[str, object] = {"world": seed, "policy": name, **summary}
        if isinstance(policy, PlannerPolicy):
            row.update(first_decision_metrics(policy, world, charges, cons))
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
    frame = pd.DataFrame(rows)
    key = "recovered_amount_usd" if "recovered_amount_usd" in frame else "recovered_amount"
    fixed = float(frame.loc[frame["policy"] == "fixed:72,120,168,216", key].iloc[0])
    oracle = float(frame.loc[frame["policy"] == "oracle", key].iloc[0])
    frame["gap_closed"] = (frame[key] - fixed) / (oracle - fixed)
    frame["failed_charges"] = len(charges)
    return frame.to_dict(orient="records")  # type: ignore[return-value]


def main() -> None:
    customers = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    seeds = tuple(int(s) for s in sys.argv[2:]) or WORLD_SEEDS
    rows = [r for seed in seeds for r in world_rows(customers, seed)]
    frame = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    print(frame.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
