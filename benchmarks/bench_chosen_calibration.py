"""Calibration at the chosen times with and without the fitted timing shrinkage (issue 14).

On a simulated world, train one bundle (the default configuration: rare-code bounds and the
timing shrinkage fitted on the validation months), then play the held-out last month's failed
charges with the fixed schedule, the oracle and the planner with the bundle's shrinkage and
with none (``beta = 1``), with common random numbers, and print per policy: recovered USD,
retries per failed charge, the share of the fixed-to-oracle gap closed and the first-decision
metrics of :func:`training.decision_metrics.first_decision_metrics` (bias and ECE of the
predicted success probability at the chosen times against the world's truth).

    PYTHONPATH=. python benchmarks/bench_chosen_calibration.py [customers] [seed ...]

Seed 301 is the tuning world; nothing here is chosen on any world (``beta`` is fitted by the
training run on the world's own validation months).
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
from retryopt.serving.policies import BundleSuccessModel, PlannerPolicy
from retryopt.serving.policies.baselines import FixedSchedule
from retryopt.training.decision_metrics import first_decision_metrics
from retryopt.training.simulate import OraclePolicy, WorldConfig, play, simulate_world
from retryopt.training.train import run_training
from retryopt.training.train_config import TrainConfig, load_config

MONTHS = 6
PLAY_SEED = 7


def world_rows(customers: int, seed: int) -> list[dict[str, object]]:
    world = simulate_world(WorldConfig(), customers=customers, months=MONTHS, seed=seed)
    attempts = world.attempts.copy()
    attempts["currency"] = attempts["currency"].str.lower()
    tmp = Path(tempfile.mkdtemp(prefix="bench-chosen-"))
    data = tmp / "attempts.parquet"
    write_table_atomic(attempts, data)
    base = load_config(seed=seed).to_dict()
    base["training"]["num_threads"] = 1
    run = run_training(
        data,
        tmp / "models",
        config=TrainConfig.from_dict(base),
        experiment="bench",
        registered_name=None,
        track=False,
    )
    fitted = BundleSuccessModel(load_bundle(run.bundle_path))
    unshrunk = BundleSuccessModel(load_bundle(run.bundle_path))
    unshrunk.timing_shrinkage = 1.0
    fit = run.metrics["planning"].get("timing_shrinkage_fit", {})
    failed = world.failed_charges()
    first = world.attempts.groupby("charge_id")["attempted_at"].min().loc[failed]
    charges = world.failed_charges(start=first.max() - pd.Timedelta(days=30))
    cons = Constraints()
    policies: dict[str, object] = {
        "fixed:72,120,168,216": FixedSchedule(),
        "oracle": OraclePolicy(world),
        f"planner beta={fitted.timing_shrinkage:.3f} (fitted)": PlannerPolicy(fitted),
        "planner beta=1 (none)": PlannerPolicy(unshrunk),
    }
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
    print(f"world {seed}: timing shrinkage fit {fit}", flush=True)
    return frame.to_dict(orient="records")  # type: ignore[return-value]


def main() -> None:
    customers = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    seeds = tuple(int(s) for s in sys.argv[2:]) or (301,)
    rows = [r for seed in seeds for r in world_rows(customers, seed)]
    frame = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    print(frame.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
