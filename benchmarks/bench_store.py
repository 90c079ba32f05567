"""Decision latency with the decision log off and on (SQLite file, real PostgreSQL server).

Run (trains a small bundle on a simulated world unless --model is given)::

    .venv/bin/python benchmarks/bench_store.py [--model BUNDLE_DIR] [--requests 400]

One `retryopt serve --workers 1` process per configuration (loopback only, all running at once), one
client sending single decisions sequentially (distinct charges, so every one is decided and
logged) to each server in turn, then batches of 500 likewise: every configuration sees the same
background load. Figures are medians and p99 over the requests, and ratios log-on / log-off.
The PostgreSQL server is started for the run (Debian's postgresql package, as in the tests)
with its default durability (fsync on, synchronous_commit on); SQLite runs in WAL mode with
the default synchronous=NORMAL. Skips PostgreSQL when its binaries are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

from bench_serving import (  # noqa: E402
    PHASE_STRIDE,
    batch_bodies,
    decision_bodies,
    load_raw,
    request_body,
    start_api,
    train_small_bundle,
)
from postgres_server import PostgresServer, postgres_bin_dir  # noqa: E402


def measure(
    model: Path, configs: list[tuple[str, str | None]], *, n: int
) -> dict[str, dict[str, float]]:
    """Single-decision latency (ms) and batch throughput (decisions/s) of each configuration.

    All servers run at once and the requests alternate between them, so each configuration
    sees the same background load (this machine is shared).
    """
    with contextlib.ExitStack() as stack:
        clients = []
        for _, url in configs:
            proc, base = start_api(model, workers=1, store=url or "off")
            stack.callback(proc.wait, 60)
            stack.callback(proc.terminate)
            clients.append(stack.enter_context(httpx.Client(base_url=base, timeout=60)))
        for client in clients:  # warm-up (distinct charges: every one decided and logged)
            for i in range(20):
                client.post("/v1/retry-decisions", json=request_body(900_000 + i))
        lat: list[list[float]] = [[] for _ in configs]
        for i in range(n):
            body = request_body(i)
            for k, client in enumerate(clients):
                started = time.perf_counter()
                resp = client.post("/v1/retry-decisions", json=body)
                lat[k].append(time.perf_counter() - started)
                assert resp.status_code == 200, resp.text
        rates: list[list[float]] = [[] for _ in configs]
        for b in range(5):
            bodies = [request_body(500_000 + b * 500 + i) for i in range(500)]
            for k, client in enumerate(clients):
                started = time.perf_counter()
                resp = client.post("/v1/retry-decisions/batch", json={"requests": bodies})
                rates[k].append(500 / (time.perf_counter() - started))
                assert resp.status_code == 200, resp.text
    out = {}
    for k, (name, _) in enumerate(configs):
        ms = np.array(lat[k]) * 1000
        out[name] = {
            "median_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)),
            "batch_per_s": float(np.median(rates[k])),
        }
    return out


def sustained(
    model: Path, configs: list[tuple[str, str | None]], *, seconds: float, clients: int
) -> dict[str, dict[str, float]]:
    """The serving targets' load with the log off and on: ``retryopt serve --workers 2``, then
    ``clients`` closed-loop clients of single decisions, then of 200-charge batches.

    Every request holds charges no other request holds (so every decision is decided and
    logged, none answered from the log). Configurations run one after the other.
    """
    out = {}
    for k, (name, url) in enumerate(configs):
        proc, base = start_api(model, workers=2, store=url or "off")
        try:
            single = load_raw(
                base,
                "/v1/retry-decisions",
                decision_bodies(40_000, start=(20 + 2 * k) * PHASE_STRIDE),
                clients=clients,
                seconds=seconds,
                max_requests=40_000,
                proc=proc,
            )
            batch = load_raw(
                base,
                "/v1/retry-decisions/batch",
                batch_bodies(200, n=200, start=(21 + 2 * k) * PHASE_STRIDE),
                clients=clients,
                seconds=seconds,
                max_requests=200,
                items_per_request=200,
                proc=proc,
            )
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        out[name] = {
            "per_s": single["req_per_s"],
            "p50_ms": single["p50_ms"],
            "p99_ms": single["p99_ms"],
            "errors": single["errors"] + batch["errors"],
            "batch_per_s": batch["req_per_s"] * 200,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument(
        "--sustained-seconds",
        type=float,
        default=0.0,
        help="also measure sustained load on 2 workers per configuration (seconds per phase)",
    )
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        model = args.model or train_small_bundle(Path(tmp))
        configs: list[tuple[str, str | None]] = [
            ("log off", None),
            ("SQLite", f"sqlite:///{Path(tmp) / 'store.sqlite3'}"),
        ]
        server = None
        bin_dir = postgres_bin_dir()
        if bin_dir is not None:
            server = PostgresServer(bin_dir, durable=True).start()
            configs.append(("PostgreSQL", server.create_database("bench")))
        else:
            print("PostgreSQL binaries not found: PostgreSQL skipped")
        try:
            results = measure(model, configs, n=args.requests)
            loads = (
                sustained(model, configs, seconds=args.sustained_seconds, clients=args.clients)
                if args.sustained_seconds > 0
                else {}
            )
        finally:
            if server is not None:
                server.stop()
    base = results["log off"]
    print(f"{args.requests} sequential single decisions, 5 batches of 500, interleaved")
    print("| store | median ms | p99 ms | batch decisions/s | median ratio | batch ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['median_ms']:.2f} | {r['p99_ms']:.2f} | {r['batch_per_s']:.0f} | "
            f"{r['median_ms'] / base['median_ms']:.2f} | "
            f"{r['batch_per_s'] / base['batch_per_s']:.2f} |"
        )

    if loads:
        print(
            f"sustained, 2 workers, {args.clients} clients, {args.sustained_seconds:g} s per phase"
        )
        print("| store | decisions/s | median ms | p99 ms | batch decisions/s | errors |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in loads.items():
            print(
                f"| {name} | {r['per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['batch_per_s']:.0f} | {r['errors']:.0f} |"
            )


if __name__ == "__main__":
    main()
