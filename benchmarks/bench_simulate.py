"""Benchmark of the synthetic world: generation speed and play/oracle throughput.

Run: ``.venv/bin/python benchmarks/bench_simulate.py [--customers 100000] [--months 12]
[--play 2000]``. Prints wall-clock figures and peak memory (RSS).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retryopt.features.decisions import Constraints
from retryopt.serving.policies import FixedSchedule
from retryopt.training.simulate import (
    OraclePolicy,
    WorldConfig,
    play,
    simulate_world,
    summarize_world,
)


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--play", type=int, default=2000, help="failed charges to play")
    args = parser.parse_args()

    started = time.perf_counter()
    world = simulate_world(
        WorldConfig(), customers=args.customers, months=args.months, seed=args.seed
    )
    elapsed = time.perf_counter() - started
    s = summarize_world(world)
    print(
        f"simulate_world: {args.customers:,} customers x {args.months} months -> "
        f"{s.charges:,} charges, {s.attempts:,} attempts in {elapsed:.1f} s "
        f"({s.attempts / elapsed:,.0f} attempts/s)"
    )
    print(
        f"  failure {s.first_attempt_failure_rate:.2%}, logging recovery {s.recovery_rate:.2%}, "
        f"recoveries 2-12 d {s.recovered_2_12_days:.1%}"
    )
    charges = world.failed_charges()[: args.play]
    for policy in (FixedSchedule(), OraclePolicy(world)):
        t = time.perf_counter()
        result = play(policy, world, charges, Constraints(), seed=1)
        dt = time.perf_counter() - t
        summ = result.summary()
        print(
            f"play {policy.name:<7}: {len(charges):,} charges in {dt:.1f} s "
            f"({len(charges) / dt:,.0f} charges/s), recovery {summ['recovery_rate']:.2%}, "
            f"retries/charge {summ['retries_per_charge']:.2f}"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
