"""Benchmark: backtest of four policies on N failed charges with B bootstrap resamples.

Target (issue 7): 4 policies x 100,000 failed charges x 200 resamples under 5 minutes on the
2-core machine. Uses the synthetic world when ``training.simulate.simulate_world`` is available
(``--world``), else a vectorised synthetic history with a mixed logging policy (propensities) and
a direct-method LightGBM fitted by the backtest itself.

    .venv/bin/python benchmarks/bench_backtest.py --charges 100000 --bootstrap 200
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from retryopt.features.decisions import Constraints, RetryPolicy
from retryopt.features.validation import validate_attempts
from retryopt.serving.policies import FixedSchedule, UniformRandom
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.runner import run_backtest


def _progress(message: str) -> None:
    print(f"[backtest {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synthetic_history(n: int, *, seed: int, explore: float = 0.3) -> pd.DataFrame:
    """First failures plus up to four logged retries (fixed schedule mixed with random hours)."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2025-01-01T00:00:00Z") + pd.to_timedelta(
        rng.integers(0, 300 * 24, n), unit="h"
    )
    base = pd.DataFrame(
        {
            "charge_id": [f"ch_{i}" for i in range(n)],
            "customer_id": [f"cus_{i}" for i in range(n)],
            "amount": rng.choice([900, 2500, 4900], n),
            "currency": "usd",
            "card_brand": rng.choice(["visa", "mastercard"], n),
            "card_funding": rng.choice(["credit", "debit", "prepaid"], n, p=[0.55, 0.4, 0.05]),
            "card_country": rng.choice(["US", "GB", "DE", "FR"], n),
            "card_added_at": "2024-01-01T00:00:00Z",
            "card_exp_month": 5,
            "card_exp_year": 2030,
            "issuer": rng.choice(["bank_a", "bank_b", "bank_c", "bank_d"], n),
            "customer_timezone": "America/New_York",
            "network_advice_code": rng.choice(["02", "24"], n),
        }
    )
    code = rng.choice(["insufficient_funds", "do_not_honor", "generic_decline"], n)
    frames = [
        base.assign(
            attempt_id=[f"a{i}_0" for i in range(n)],
            attempted_at=t0,
            outcome="failed",
            decline_code=code,
            retry_propensity=np.nan,
        )
    ]
    schedule = (72.0, 168.0, 336.0, 480.0)
    prev = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    fragile = rng.random(n)
    for k, fixed in enumerate(schedule, start=1):
        idx = np.flatnonzero(alive & (prev < 500))
        lo = prev[idx] + 1
        slots = np.maximum(1, np.floor(504 - lo))
        rand = lo + np.floor(rng.random(idx.size) * slots)
        fx = np.maximum(fixed, lo)
        ex = rng.random(idx.size) < explore
        h = np.where(ex, rand, fx)
        p = explore / slots + (1 - explore) * (h == fx)
        local = (h + 10) % 24
        q = 0.12 + 0.25 * (h > 96) + 0.1 * ((local > 8) & (local < 20)) - 0.1 * fragile[idx]
        ok = rng.random(idx.size) < np.clip(q, 0.01, 0.9)
        frames.append(
            base.iloc[idx].assign(
                attempt_id=[f"a{i}_{k}" for i in idx],
                attempted_at=t0[idx] + pd.to_timedelta(h, unit="h"),
                outcome=np.where(ok, "succeeded", "failed"),
                decline_code=pd.Series(code[idx], dtype=object).mask(ok, None).to_numpy(),
                retry_propensity=p,
            )
        )
        prev[idx] = h
        alive[idx[ok]] = False
    raw = pd.concat(frames, ignore_index=True)
    raw["attempted_at"] = raw["attempted_at"].map(lambda t: t.isoformat())
    return validate_attempts(raw).clean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--charges", type=int, default=100_000)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--dm-max-examples", type=int, default=300_000, help="cap on the DM model's examples"
    )
    args = ap.parse_args()
    t = time.perf_counter()
    # 20 % more customers' charges are kept apart to fit the direct-method model
    att = synthetic_history(int(args.charges / 0.8), seed=args.seed)
    gen = time.perf_counter() - t
    policies: dict[str, RetryPolicy | None] = {
        "logged": None,
        "fixed:72,120,168,216": FixedSchedule((72.0, 120.0, 168.0, 216.0)),
        "fixed:24,96,240,408": FixedSchedule((24.0, 96.0, 240.0, 408.0)),
        "random": UniformRandom(seed=1),
    }
    t = time.perf_counter()
    res = run_backtest(
        att,
        policies,
        config=BacktestConfig(
            n_boot=args.bootstrap,
            seed=args.seed,
            dm_share=0.2,
            dm_max_examples=args.dm_max_examples,
            constraints=Constraints(),
        ),
        progress=_progress,
    )
    run = time.perf_counter() - t
    print(f"history generated: {len(att)} attempts in {gen:.1f} s")
    print(f"direct-method model: {res.meta['dm_model']}, phases: see the progress lines above")
    print(
        f"backtest: {len(policies)} policies x {res.meta['n_charges']} failed charges x "
        f"{args.bootstrap} resamples: {run:.1f} s (2-core machine shared with other jobs)"
    )


if __name__ == "__main__":
    main()
