"""Benchmark: validating column-shaped garbage against valid data of the same size.

Issue 13 (item 9): invalid data must cost no more than valid data. Both tables are all-text
frames with the contract's columns: ``valid`` from ``bench_validate.generate`` (0.1 % bad rows),
``garbage`` random 8-character words in every column (every row invalid, every value distinct).

    .venv/bin/python benchmarks/bench_validate_garbage.py --rows 300000 1240000
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd
from bench_validate import generate

from retryopt.features.validation import validate_attempts


def garbage(n: int, columns: list[str], *, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of random distinct-ish 8-character words in every column."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    words = np.array(["".join(w) for w in alphabet[rng.integers(0, 36, size=(n, 8))]])
    return pd.DataFrame({col: rng.permutation(words) for col in columns})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[300_000])
    args = parser.parse_args()
    for n in args.rows:
        valid = generate(n, bad_share=0.001, seed=7).to_pandas()
        tables = {"valid": valid, "garbage": garbage(n, list(valid.columns))}
        for name, frame in tables.items():
            cpu, wall = time.process_time(), time.perf_counter()
            result = validate_attempts(frame, drop_invalid=True)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                f"{name:8s} {n:>10,} rows: {cpu:6.2f} s CPU, {wall:6.2f} s wall, "
                f"{result.report.n_valid:,} valid, peak RSS so far "
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB"
            )


if __name__ == "__main__":
    main()
