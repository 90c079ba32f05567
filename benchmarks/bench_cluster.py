"""Benchmark: training on a local Dask cluster whose workers have less memory than one run.

The history comes from the synthetic world (cached as by ``bench_train.py``) and is also written
as a partitioned Parquet dataset (``--files`` files, customers spread over every file). Two runs,
each in a fresh child process:

- **one process**: ``bench_train.py``'s worker (load + validate, examples, LightGBM, calibration,
  evaluation, bundle write), with its peak RSS;
- **cluster**: ``training.cluster_train.train_on_cluster`` on a ``distributed.LocalCluster`` of
  2 worker processes x 1 thread, each limited to ``--worker-memory`` GiB (Dask pauses a worker
  at 80 % and restarts it at 95 % of its limit), with every worker's peak RSS (``VmHWM``, read
  on the worker: :mod:`peak_memory`) and the client's.

With ``--shards K`` the history is ``K`` independently simulated worlds (seeds ``seed`` ...
``seed + K - 1``, the customers split evenly, every id prefixed with its shard), each simulated in
its own child and written straight into the partitioned dataset. No process then ever holds the
whole history except a one-process run, which reads the folder: this is how histories larger than
one simulator process can build (about 20 M attempts in 23 GiB) are measured. The shards are
customers of one merchant over the same months, so the time split, the features and the model see
one history (customer ids never collide across shards).

Run (2 shared cores; a few minutes)::

    .venv/bin/python benchmarks/bench_cluster.py --attempts 1000000 --worker-memory 1.0
    .venv/bin/python benchmarks/bench_cluster.py --attempts 30000000 --shards 2 \
        --worker-memory 10 --files 32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_train import CACHE, MONTHS, ROOT, _dataset, simulated_attempts
from peak_memory import peak_rss_gib

HERE = Path(__file__).resolve().parent


def _partitioned(data: Path, files: int) -> Path:
    """``data`` as a folder of ``files`` Parquet files, customers split across files (cached)."""
    import pandas as pd

    folder = CACHE / f"{data.stem}_{files}parts"
    if folder.exists():
        return folder
    attempts = pd.read_parquet(data)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for part in range(files):
        attempts.iloc[part::files].to_parquet(tmp / f"part-{part:03d}.parquet", index=False)
    tmp.rename(folder)
    return folder


ID_COLUMNS = ("attempt_id", "charge_id", "customer_id", "card_id")
"""Columns prefixed with the shard's name, so two shards never share a customer, card or charge."""


def _make_shard(
    folder: Path, shard: int, attempts: int, files: int, shards: int, seed: int
) -> None:
    """Child process: simulate shard ``shard`` and write its ``files / shards`` Parquet files."""
    started = time.perf_counter()
    frame, customers = simulated_attempts(attempts // shards, seed=seed + shard)
    for column in ID_COLUMNS:
        frame[column] = f"s{shard}_" + frame[column].astype(str)
    per_shard = max(1, files // shards)
    for part in range(per_shard):
        frame.iloc[part::per_shard].to_parquet(
            folder / f"part-{shard:02d}-{part:03d}.parquet", index=False
        )
    print(
        json.dumps(
            {
                "shard": shard,
                "attempts": len(frame),
                "customers": customers,
                "seconds": round(time.perf_counter() - started, 1),
                "peak_rss_gib": peak_rss_gib(),
            }
        ),
        flush=True,
    )


def _sharded(attempts: int, files: int, shards: int, seed: int) -> Path:
    """The sharded partitioned dataset (cached): one child process per shard, in turn."""
    folder = CACHE / f"attempts_{attempts}_{MONTHS}m_seed{seed}_{shards}shards_{files}parts"
    if folder.exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        made = _run(
            [
                str(Path(__file__).resolve()),
                "--make-shard",
                str(shard),
                "--shard-folder",
                str(tmp),
                "--attempts",
                str(attempts),
                "--files",
                str(files),
                "--shards",
                str(shards),
                "--seed",
                str(seed),
            ]
        )
        print("  generated " + json.dumps(made), flush=True)
    tmp.rename(folder)
    return folder


def _cluster_worker(folder: Path, memory_gib: float) -> None:
    """Child process: train on a 2-worker local cluster; one JSON line with times and peaks."""
    from retryopt.training.cluster import connect
    from retryopt.training.cluster_train import train_on_cluster
    from retryopt.training.train_config import load_config

    started = time.perf_counter()
    marks: list[tuple[float, str]] = []
    with connect("local:2", memory_limit=f"{memory_gib}GiB") as client:
        ready = time.perf_counter()
        outcome, fingerprint = train_on_cluster(
            client,
            str(folder),
            config=load_config(),
            progress=lambda m: marks.append((time.perf_counter(), m)),
        )
        trained = time.perf_counter()
        peaks = client.run(peak_rss_gib)
    test = outcome.metrics["test"]["model"]
    fit_start = next(t for t, m in marks if m.startswith("fitting LightGBM"))
    print(
        json.dumps(
            {
                "attempts": fingerprint["rows"],
                "examples": outcome.metrics["examples"],
                "cluster_start_s": ready - started,
                "features_s": fit_start - ready,
                "fit_calibrate_evaluate_s": trained - fit_start,
                "total_s": trained - started,
                "best_iteration": outcome.metrics["best_iteration"],
                "lightgbm_fit_s": outcome.metrics["fit_seconds"],
                "test_auc": test["roc_auc"],
                "test_log_loss": test["log_loss"],
                "test_ece": test["ece"],
                "worker_peak_rss_gib": sorted(peaks.values()),
                "client_peak_rss_gib": peak_rss_gib(),
                "partitions": outcome.metrics["cluster"]["partitions"],
            }
        ),
        flush=True,
    )


def _run(args: list[str]) -> dict[str, object]:
    child = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if child.returncode != 0:
        print(child.stderr[-4000:], file=sys.stderr)
        raise SystemExit(child.returncode)
    result: dict[str, object] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Generate or reuse the data, run one process and the cluster, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--worker-memory", type=float, default=1.0, help="GiB per worker")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--shards", type=int, default=1, help="simulate the history in K worlds")
    parser.add_argument("--skip-single", action="store_true", help="cluster run only")
    parser.add_argument("--make-shard", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shard-folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cluster-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cluster_worker is not None:
        _cluster_worker(args.cluster_worker, args.worker_memory)
        return
    if args.make_shard is not None:
        _make_shard(
            args.shard_folder, args.make_shard, args.attempts, args.files, args.shards, args.seed
        )
        return
    data_args = ["--attempts", str(args.attempts), "--files", str(args.files)]
    data_args += ["--seed", str(args.seed)]
    if args.prepare:
        data = _dataset(args.attempts, seed=args.seed)
        print(json.dumps({"data": str(data), "folder": str(_partitioned(data, args.files))}))
        return
    if args.shards > 1:  # no single file: the one-process run reads the folder
        folder = _sharded(args.attempts, args.files, args.shards, args.seed)
        data = folder
    else:
        # Generated and partitioned in a child: this process stays small while runs use memory.
        prepared = _run([str(Path(__file__).resolve()), "--prepare", *data_args])
        data, folder = Path(str(prepared["data"])), Path(str(prepared["folder"]))
    single = None
    if not args.skip_single:
        print(f"== one process, {args.attempts:,} attempts", flush=True)
        single = _run([str(HERE / "bench_train.py"), "--worker", str(data), "--threads", "2"])
        print("  " + json.dumps(single), flush=True)
    print(f"== 2 workers x {args.worker_memory} GiB, {args.files} files", flush=True)
    cluster = _run(
        [
            str(Path(__file__).resolve()),
            "--cluster-worker",
            str(folder),
            "--worker-memory",
            str(args.worker_memory),
        ]
    )
    print("  " + json.dumps(cluster), flush=True)
    print()
    print(f"{'mode':<24}{'attempts':>11}{'total':>8}{'AUC':>8}{'ECE':>8}  peak RSS (GiB)")
    if single is not None:
        print(
            f"{'one process (2 threads)':<24}{single['attempts']:>11,}{single['total_s']:>7.0f}s"
            f"{single['test_auc']:>8.4f}{single['test_ece']:>8.4f}  {single['peak_rss_gib']:.2f}"
        )
    peaks = ", ".join(f"{p:.2f}" for p in cluster["worker_peak_rss_gib"])  # type: ignore[attr-defined]
    label = f"2 workers x {args.worker_memory} GiB"
    print(
        f"{label:<24}{cluster['attempts']:>11,}{cluster['total_s']:>7.0f}s"
        f"{cluster['test_auc']:>8.4f}{cluster['test_ece']:>8.4f}  workers {peaks}; "
        f"client {cluster['client_peak_rss_gib']:.2f}"
    )


if __name__ == "__main__":
    main()
