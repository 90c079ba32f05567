"""Benchmark: features + training time and peak memory of ``retryopt train`` on large histories.

For each size the attempts come from the synthetic world (``training.simulate``), generated once
and cached as Parquet under ``benchmarks/.cache/``. Each size runs in a fresh child process so its
peak RSS (``VmHWM``, :mod:`peak_memory`) is its own: load + validate, build the retry examples and
features, fit LightGBM with early stopping, calibrate, evaluate against both baselines, and write
the bundle. MLflow logging is left out (``--no-mlflow`` path; it does not depend on the data size
apart from copying the bundle).

Run (the lead can re-run this later on an idle machine)::

    .venv/bin/python benchmarks/bench_train.py --attempts 1000000
    .venv/bin/python benchmarks/bench_train.py --attempts 1000000 --attempts 10000000

Target: 10 million attempts, features plus training, under 15 minutes and 12 GiB peak memory on
the 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from peak_memory import peak_rss_gib

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
MONTHS = 12
ATTEMPTS_PER_CUSTOMER_MONTH = 0.85  # measured on the default world (renewals, retries, churn)


def simulated_attempts(n_attempts: int, *, seed: int) -> tuple[pd.DataFrame, int]:
    """About ``n_attempts`` simulated attempts (default world, contract casing), customers."""
    from retryopt.training.simulate.config import WorldConfig
    from retryopt.training.simulate.world import simulate_world

    customers = max(1_000, int(n_attempts / (MONTHS * ATTEMPTS_PER_CUSTOMER_MONTH)))
    attempts = simulate_world(WorldConfig(), customers=customers, months=MONTHS, seed=seed).attempts
    # The simulator writes upper-case ISO 4217 codes; the contract wants lower case.
    attempts["currency"] = attempts["currency"].str.lower()
    return attempts, customers


def _dataset(n_attempts: int, *, seed: int) -> Path:
    """Simulated attempts of about ``n_attempts`` rows, cached as Parquet."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"attempts_{n_attempts}_{MONTHS}m_seed{seed}.parquet"
    if path.exists():
        return path
    from retryopt.features.io import write_table_atomic

    started = time.perf_counter()
    attempts, customers = simulated_attempts(n_attempts, seed=seed)
    write_table_atomic(attempts, path)
    print(
        f"  generated {len(attempts):,} attempts ({customers:,} customers x {MONTHS} "
        f"months) in {time.perf_counter() - started:.0f} s -> {path}",
        flush=True,
    )
    return path


def _load(data: Path) -> pd.DataFrame:
    """The validated attempts of a Parquet file or of a folder of Parquet files (shards)."""
    import pandas as pd

    from retryopt.features.validation import load_attempts, validate_attempts

    if data.is_dir():
        return validate_attempts(pd.read_parquet(data)).clean
    return load_attempts(data)


def _worker(data: Path, threads: int) -> None:
    """Child process: time each phase and report peak RSS as one JSON line."""
    from retryopt.model.bundle import write_bundle
    from retryopt.training.train import train_from_attempts
    from retryopt.training.train_config import load_config

    marks: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    attempts = _load(data)
    t_load = time.perf_counter() - t0
    config = dataclasses.replace(load_config(), num_threads=threads)
    t1 = time.perf_counter()
    outcome = train_from_attempts(
        attempts, config=config, progress=lambda m: marks.append((time.perf_counter(), m))
    )
    t_train_all = time.perf_counter() - t1
    fit_start = next(t for t, m in marks if m.startswith("fitting LightGBM"))
    with tempfile.TemporaryDirectory() as tmp:
        t2 = time.perf_counter()
        write_bundle(
            tmp,
            model_text=outcome.model_text,
            calibrator=outcome.calibrator,
            feature_spec=outcome.feature_spec,
            metrics=outcome.metrics,
            data_fingerprint={"rows": len(attempts)},
        )
        t_write = time.perf_counter() - t2
    test = outcome.metrics["test"]
    print(
        json.dumps(
            {
                "attempts": len(attempts),
                "examples": outcome.metrics["examples"],
                "load_validate_s": t_load,
                "features_s": fit_start - t1,
                "fit_calibrate_evaluate_s": t_train_all - (fit_start - t1),
                "bundle_write_s": t_write,
                "total_s": time.perf_counter() - t0,
                "best_iteration": outcome.metrics["best_iteration"],
                "lightgbm_fit_s": outcome.metrics["fit_seconds"],
                "test_auc": test["model"]["roc_auc"],
                "test_log_loss": test["model"]["log_loss"],
                "test_ece": test["model"]["ece"],
                "logistic_auc": test["logistic"]["roc_auc"],
                "historical_auc": test["historical_rate"]["roc_auc"],
                "peak_rss_gib": peak_rss_gib(),
            }
        ),
        flush=True,
    )


def main() -> None:
    """Parse arguments, generate or reuse the data, run one child per size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, action="append", help="history size(s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        _worker(args.worker, args.threads)
        return
    sizes = args.attempts or [1_000_000]
    rows = []
    for size in sizes:
        print(f"== {size:,} attempts", flush=True)
        data = _dataset(size, seed=args.seed)
        child = subprocess.run(
            [sys.executable, __file__, "--worker", str(data), "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        if child.returncode != 0:
            print(child.stderr, file=sys.stderr)
            raise SystemExit(child.returncode)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print("  " + json.dumps(result), flush=True)
        rows.append(result)
    print()
    print(
        f"{'attempts':>11} {'examples':>10} {'load+valid':>10} {'features':>9} {'fit+eval':>9} "
        f"{'total':>8} {'peak RSS':>9} {'trees':>6} {'test AUC':>9} {'test ECE':>9}"
    )
    for r in rows:
        print(
            f"{r['attempts']:>11,} {r['examples']:>10,} {r['load_validate_s']:>9.0f}s "
            f"{r['features_s']:>8.0f}s {r['fit_calibrate_evaluate_s']:>8.0f}s "
            f"{r['total_s']:>7.0f}s {r['peak_rss_gib']:>7.2f}GiB {r['best_iteration']:>6} "
            f"{r['test_auc']:>9.4f} {r['test_ece']:>9.4f}"
        )
    print(
        f"(threads={args.threads}; 2-core machine shared with other engineers: figures under load)"
    )


if __name__ == "__main__":
    main()
