"""Benchmark of the point-in-time features: batch (training) and online (serving).

Usage::

    .venv/bin/python benchmarks/bench_features.py --rows 1000000
    .venv/bin/python benchmarks/bench_features.py --rows 10000000 --online-calls 0
    .venv/bin/python benchmarks/bench_features.py --rows 200000 --online-calls 1000

Batch: ``build_training_examples`` on a synthetic canonical frame of ``--rows`` attempts
(generated with numpy by ``tests/synthetic_attempts.py``; generation time is not counted), then
``fit_feature_spec`` + ``encode_features``. Peak RSS is the whole process (generation
included), read by :mod:`peak_memory`.

Online: the frame path ``build_candidate_features`` + ``encode_features`` and the serving path
``CandidateEncoder`` (numpy columns in, float64 matrix out: construction + ``matrix`` of the
whole grid) for one charge x 336 hourly candidate times (two weeks), with the customer's full
history, over ``--online-calls`` calls cycling through random decisions; wall-clock and CPU
medians and p99. The serving path is also timed with a single candidate time, which isolates
its fixed per-call cost.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# The synthetic frame generator is test code: it lives in tests/, outside the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from peak_memory import peak_rss_gib
from synthetic_attempts import synthetic_attempts

from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import DecisionBatch
from retryopt.features.encoder import CandidateEncoder
from retryopt.features.examples import build_training_examples
from retryopt.features.online import build_candidate_features
from retryopt.features.spec import FeatureSpec, encode_features, fit_feature_spec

MONTHS = 12
ATTEMPTS_PER_CHARGE = 1.29  # measured mean of the generator


def bench_batch(rows: int, seed: int) -> pd.DataFrame:
    customers = max(1, round(rows / (MONTHS * ATTEMPTS_PER_CHARGE)))
    t0 = time.perf_counter()
    df = synthetic_attempts(customers=customers, months=MONTHS, seed=seed)
    t_gen = time.perf_counter() - t0
    print(
        f"generated {len(df):,} attempts ({customers:,} customers x {MONTHS} months) "
        f"in {t_gen:.1f} s; peak RSS so far {peak_rss_gib():.2f} GiB"
    )
    t0 = time.perf_counter()
    c0 = time.process_time()
    ex = build_training_examples(df)
    t_build = time.perf_counter() - t0
    c_build = time.process_time() - c0
    print(
        f"build_training_examples: {len(ex.label):,} examples from {len(df):,} attempts in "
        f"{t_build:.1f} s wall ({c_build:.1f} s CPU); peak RSS {peak_rss_gib():.2f} GiB"
    )
    t0 = time.perf_counter()
    spec = fit_feature_spec(ex.features)
    X = encode_features(ex.features, spec)
    t_enc = time.perf_counter() - t0
    print(
        f"fit_feature_spec + encode_features: {X.shape} in {t_enc:.1f} s; "
        f"peak RSS {peak_rss_gib():.2f} GiB"
    )
    return df


def _encode(
    batch: DecisionBatch,
    cand: np.ndarray,
    spec: FeatureSpec,
    cols: tuple[AttemptColumns, AttemptColumns],
) -> np.ndarray:
    """The serving path: one encoder per batch, then the matrix of the whole grid."""
    enc = CandidateEncoder(batch, spec, attempts=cols[0], history=cols[1])
    return enc.matrix(*CandidateEncoder.grid_rows(cand, enc.n_charges))


def bench_online(df: pd.DataFrame, calls: int, seed: int) -> None:
    ex = build_training_examples(df)
    spec = fit_feature_spec(ex.features, min_level_count=5)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(ex.label), size=min(100, len(ex.label)), replace=False)
    groups = df.groupby("customer_id", sort=False)
    cases = []
    for i in picks.tolist():
        m = ex.meta.iloc[i]
        g = groups.get_group(m["customer_id"])
        now = m["decision_time"]
        own = g[(g["charge_id"] == m["charge_id"]) & (g["attempted_at"] <= now)]
        hist = g[g["charge_id"] != m["charge_id"]]
        now64 = now.tz_localize(None).to_datetime64()
        batch = DecisionBatch(
            charge_ids=np.array([m["charge_id"]], dtype=object),
            now=np.array([now64]),
            attempts=own,
            history=hist,
        )
        cand = (now64 + np.arange(1, 337) * np.timedelta64(1, "h")).reshape(1, -1)
        cols = (AttemptColumns.from_frame(own), AttemptColumns.from_frame(hist))
        cases.append((batch, cand, cols))
    for batch, cand, _ in cases[:10]:  # warm caches (zone tables, decline classification)
        encode_features(build_candidate_features(batch, cand), spec)
    hist_rows = np.mean([len(b.history) for b, _, _ in cases if b.history is not None])
    variants: dict[str, Any] = {
        "build_candidate_features + encode_features": lambda b, c, a: encode_features(
            build_candidate_features(b, c), spec
        ),
        "CandidateEncoder (numpy in/out, serving path)": lambda b, c, a: _encode(b, c, spec, a),
        # One candidate instead of 336: the fixed per-call cost of the serving path.
        "CandidateEncoder, 1 candidate only (fixed cost)": lambda b, c, a: _encode(
            b, c[:, :1], spec, a
        ),
    }
    for label, fn in variants.items():
        wall = np.empty(calls)
        cpu = np.empty(calls)
        for k in range(calls):
            batch, cand, cols = cases[k % len(cases)]
            t0 = time.perf_counter()
            c0 = time.process_time()
            fn(batch, cand, cols)
            cpu[k] = time.process_time() - c0
            wall[k] = time.perf_counter() - t0
        print(
            f"online {label} (1 charge x 336 candidates unless stated, mean history "
            f"{hist_rows:.0f} rows, "
            f"{calls} calls): wall median {np.median(wall) * 1e3:.2f} ms, p99 "
            f"{np.percentile(wall, 99) * 1e3:.2f} ms; CPU median {np.median(cpu) * 1e3:.2f} ms, "
            f"p99 {np.percentile(cpu, 99) * 1e3:.2f} ms"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="attempts for the batch run")
    parser.add_argument("--online-calls", type=int, default=1000)
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(
        f"python {platform.python_version()}, pandas {pd.__version__}, numpy {np.__version__},"
        f" {platform.machine()}; load average {' '.join(f'{x:.1f}' for x in _loadavg())}"
    )
    if args.skip_batch:
        df = synthetic_attempts(customers=2000, months=MONTHS, seed=args.seed)
    else:
        df = bench_batch(args.rows, args.seed)
    if args.online_calls > 0:
        small = df if len(df) <= 300_000 else _customers_subset(df, 20_000)
        bench_online(small, args.online_calls, args.seed)


def _customers_subset(df: pd.DataFrame, customers: int) -> pd.DataFrame:
    ids = df["customer_id"].drop_duplicates().iloc[:customers]
    return df[df["customer_id"].isin(ids)].reset_index(drop=True)


def _loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


if __name__ == "__main__":
    main()
