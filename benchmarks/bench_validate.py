"""Benchmark: read + validate a payment-attempt table of N rows.

Generates N rows of contract data with numpy/pyarrow (seeded), by default every column stored as
text like a CSV export (the slowest case: every timestamp and number must be parsed; or
``--format parquet-typed`` / ``csv``), with a small share of
bad rows of several kinds (zone-less timestamps, unknown currencies, non-positive amounts,
duplicate attempt ids, attempts after the success, ...). The file is written once, then a fresh
child process times ``read_table`` and ``validate_attempts(drop_invalid=True)`` and reports its
peak resident memory, so generation does not count.

Usage::

    .venv/bin/python benchmarks/bench_validate.py                 # 1M and 10M rows, Parquet
    .venv/bin/python benchmarks/bench_validate.py --rows 1000000 --format csv
    .venv/bin/python benchmarks/bench_validate.py --format parquet-typed
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

DECLINE_CODES = np.array(
    ["insufficient_funds", "do_not_honor", "generic_decline", "expired_card", "51", "05",
     "card_velocity_exceeded", "try_again_later", "mystery_code_x"]
)  # fmt: skip
CURRENCIES = np.array(["usd", "eur", "gbp", "cad", "aud"])
COUNTRIES = np.array(["US", "GB", "DE", "FR", "CA", "AU", "NL", "BR"])
BRANDS = np.array(["visa", "mastercard", "amex", "discover"])
FUNDINGS = np.array(["credit", "debit", "prepaid", "unknown"])
ZONES = np.array(["America/New_York", "Europe/London", "Europe/Berlin", "Australia/Sydney"])


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def _iso(seconds: np.ndarray) -> pa.Array:
    text = pc.cast(pa.array(seconds, pa.timestamp("s", tz="UTC")), pa.string())
    return pc.utf8_replace_slice(text, start=10, stop=11, replacement="T")  # "...T10:00:00Z"


def generate(n: int, *, bad_share: float, seed: int) -> pa.Table:
    """Return ``n`` attempt rows (all text columns) with about ``bad_share`` invalid rows."""
    rng = np.random.default_rng(seed)
    per_charge = rng.integers(1, 5, size=n // 2 + 2)
    n_charges = int(np.searchsorted(np.cumsum(per_charge), n)) + 1
    per_charge = per_charge[:n_charges]
    per_charge[-1] -= per_charge.sum() - n
    charge = np.repeat(np.arange(n_charges), per_charge)
    starts = np.r_[0, np.cumsum(per_charge)[:-1]]
    position = np.arange(n) - starts[charge]
    last = position == per_charge[charge] - 1
    succeeded = last & (rng.random(n_charges) < 0.6)[charge]
    customer = rng.integers(0, max(n_charges // 3, 1), size=n_charges)[charge]
    base = rng.integers(1_640_995_200, 1_735_689_600, size=n_charges)[charge]
    attempted = base + position * 86_400 * 2 + rng.integers(0, 3_600, size=n)
    card_added = base - rng.integers(86_400, 86_400 * 900, size=n_charges)[charge]
    codes = np.where(succeeded, "", DECLINE_CODES[rng.integers(0, DECLINE_CODES.size, n)])
    outcome = np.where(succeeded, "succeeded", "failed")
    amount = rng.integers(100, 50_000, size=n_charges)[charge].astype(str)
    currency = CURRENCIES[rng.integers(0, CURRENCIES.size, n_charges)][charge].astype("<U8")
    attempt_number = np.arange(n)
    attempted_text = _iso(attempted)
    # A small share of bad rows, of several kinds (each row index gets one defect).
    bad = np.flatnonzero(rng.random(n) < bad_share)
    kinds = bad % 7
    amount[bad[kinds == 0]] = "-5"
    currency[bad[kinds == 1]] = "usdx"
    outcome[bad[kinds == 2]] = "maybe"
    dup = bad[(kinds == 3) & (bad > 0)]
    attempt_number[dup] = attempt_number[dup - 1]
    naive_rows = bad[kinds == 4]  # zone-less attempted_at
    if naive_rows.size:
        mask = np.zeros(n, dtype=bool)
        mask[naive_rows] = True
        attempted_text = pc.if_else(
            pa.array(mask), pc.utf8_replace_slice(attempted_text, 19, 20, ""), attempted_text
        )
    codes[bad[kinds == 5]] = ""  # failed without decline code (or fine when it succeeded)
    early = bad[(kinds == 6) & ~last[bad]]  # an early success: later attempts come after it
    outcome[early] = "succeeded"
    codes[early] = ""
    return pa.table(
        {
            "attempt_id": _ids("att_", attempt_number),
            "charge_id": _ids("ch_", charge),
            "customer_id": _ids("cus_", customer),
            "attempted_at": attempted_text,
            "amount": pa.array(amount),
            "currency": pa.array(currency),
            "outcome": pa.array(outcome),
            "decline_code": pa.array(codes),
            "network_advice_code": pa.array(np.where(rng.random(n) < 0.1, "24", "")),
            "card_brand": pa.array(BRANDS[rng.integers(0, BRANDS.size, n)]),
            "card_funding": pa.array(FUNDINGS[rng.integers(0, FUNDINGS.size, n)]),
            "card_country": pa.array(COUNTRIES[rng.integers(0, COUNTRIES.size, n)]),
            "card_added_at": _iso(card_added),
            "card_exp_month": pa.array(rng.integers(1, 13, n).astype(str)),
            "card_exp_year": pa.array(rng.integers(2024, 2032, n).astype(str)),
            "card_id": _ids("card_", customer),
            "customer_timezone": pa.array(ZONES[rng.integers(0, ZONES.size, n)]),
            "retry_propensity": pa.array(rng.uniform(0.05, 1.0, n).round(4).astype(str)),
        }
    )


def typed(table: pa.Table) -> pa.Table:
    """The same rows with typed columns, as retryopt itself writes Parquet.

    Timestamps become ``timestamp[ns, UTC]`` (the zone-less bad values become missing, still
    bad rows), numbers ``int64`` / ``float64``, empty strings missing.
    """
    columns = {}
    for name in table.column_names:
        column = table[name]
        if name in ("attempted_at", "card_added_at"):
            column = pc.cast(
                pc.strptime(column, format="%Y-%m-%dT%H:%M:%SZ", unit="ns", error_is_null=True),
                pa.timestamp("ns", tz="UTC"),
            )
        elif name in ("amount", "card_exp_month", "card_exp_year"):
            column = pc.cast(column, pa.int64())
        elif name == "retry_propensity":
            column = pc.cast(column, pa.float64())
        else:
            column = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
        columns[name] = column
    return pa.table(columns)


def measure(path: Path) -> dict[str, float]:
    """Time reading and validating ``path`` in this process; return the figures."""
    from retryopt.features.io import read_table
    from retryopt.features.validation import validate_attempts

    started, cpu = time.perf_counter(), time.process_time()
    raw = read_table(path)
    read_s, read_cpu = time.perf_counter() - started, time.process_time() - cpu
    started, cpu = time.perf_counter(), time.process_time()
    result = validate_attempts(raw, drop_invalid=True)
    validate_s, validate_cpu = time.perf_counter() - started, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {
        "rows": len(raw),
        "valid": result.report.n_valid,
        "issues": len(result.report.issues),
        "read_s": read_s,
        "validate_s": validate_s,
        "cpu_s": read_cpu + validate_cpu,
        "peak_rss_mb": peak_mb,
    }


def main() -> None:
    """Run the benchmark for each ``--rows`` value and print one line per size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument(
        "--format",
        choices=["parquet", "parquet-typed", "csv"],
        default="parquet",
        help="parquet: every column as text (slowest); parquet-typed: typed timestamps and"
        " numbers (as retryopt writes); csv: text",
    )
    parser.add_argument("--bad-share", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    load = os.getloadavg()[0]
    print(
        f"bench_validate: format={args.format}, bad share {args.bad_share};"
        f" {os.cpu_count()} CPUs, load average {load:.1f} at start"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            started = time.perf_counter()
            table = generate(n, bad_share=args.bad_share, seed=args.seed)
            suffix = "csv" if args.format == "csv" else "parquet"
            path = Path(tmp) / f"attempts_{n}.{suffix}"
            if args.format == "parquet-typed":
                pq.write_table(typed(table), path)
            elif args.format == "parquet":
                pq.write_table(table, path)
            else:
                pacsv.write_csv(table, path)
            del table
            gen_s = time.perf_counter() - started
            child = subprocess.run(
                [sys.executable, __file__, "--measure", str(path)],
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode != 0:
                sys.exit(f"measuring {path} failed (exit {child.returncode}):\n{child.stderr}")
            r = json.loads(child.stdout.strip().splitlines()[-1])
            total = r["read_s"] + r["validate_s"]
            print(
                f"{n:>12,} rows: read {r['read_s']:6.2f} s + validate {r['validate_s']:6.2f} s"
                f" = {total:6.2f} s wall ({n / total / 1e6:.2f} M rows/s), {r['cpu_s']:6.2f} s CPU;"
                f" {r['valid']:,} valid,"
                f" {r['issues']} issue kinds; peak RSS {r['peak_rss_mb']:,.0f} MB"
                f" (file {path.stat().st_size / 1e6:,.0f} MB, generated in {gen_s:.1f} s)"
            )


if __name__ == "__main__":
    main()
