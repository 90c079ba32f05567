"""Backtests on a Dask cluster (``retryopt backtest --dask ADDRESS``), equal to one process.

The history is read and shuffled by customer (:func:`training.cluster.partition_by_customer`);
each worker validates its partitions and keeps them. :func:`.backtest.runner.run_backtest_parts`
then runs the backtest's per-charge steps on the workers (the customer split, the policies'
decisions, the direct method's roll-outs, the doubly robust terms, the DM's calibration) and
the steps over all charges on the client: the DM fit on the customers kept apart (gathered from
the workers, capped at ``dm_max_examples`` retries), the importance weights, the bootstrap and
the report. Every random draw is keyed by charge or customer (:mod:`features.keyed_random`) and
the client merges the workers' charges in one process's order
(:class:`.backtest.parts.ChargeMerge`), so the result is the one-process result for the same
seed. Dask is imported lazily (``pip install 'retryopt[cluster]'``).

What scales with workers: reading, validating, the policies' decisions and the roll-outs (the
bulk of a backtest's time). What does not: the DM fit (bounded by ``dm_max_examples``) and the
client's per-charge contribution arrays (about ``charges x policies x estimators x 43`` floats),
weights and bootstrap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from retryopt.features.currency import FxRates
from retryopt.model.registry import resolve_model
from retryopt.serving.policies import BundleSuccessModel, SuccessModel
from retryopt.training.backtest.charges import charges_in_months
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.files import BacktestRun, holdout_months, load_fx
from retryopt.training.backtest.report import write_outputs
from retryopt.training.backtest.result import BacktestResult
from retryopt.training.backtest.runner import run_backtest_parts
from retryopt.training.backtest.specs import build_policies, parse_spec, unique_labels
from retryopt.training.cluster import (
    ClusterError,
    partition_by_customer,
    read_attempts,
    validated_partition,
    worker_count,
)
from retryopt.training.progress import Progress, quiet

if TYPE_CHECKING:  # pragma: no cover - typing only
    from distributed import Client

__all__ = [
    "DaskExecutor",
    "backtest_on_cluster",
    "backtest_partitions",
    "check_cluster_options",
    "run_files_on_cluster",
]


class DaskExecutor:
    """:class:`.backtest.parts.Executor` on a Dask client: results stay on the workers."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def share(self, value: Any) -> Any:
        """``value`` scattered to every worker once (a future)."""
        return self.client.scatter(value, broadcast=True, hash=False)

    def map(self, fn: Callable[..., Any], *per_part: Sequence[Any], **common: Any) -> list[Any]:
        """Futures of ``fn`` on every partition (on the worker holding it)."""
        return list(self.client.map(fn, *per_part, pure=False, **common))

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        """The results, brought to the client."""
        return list(self.client.gather(list(handles)))


def backtest_partitions(
    client: Client, data: str | os.PathLike[str], *, partitions: int | None = None
) -> list[Any]:
    """Futures of the validated, non-empty customer partitions of ``data`` on the workers."""
    frame = partition_by_customer(
        read_attempts(data), partitions=partitions, workers=worker_count(client)
    )
    raw = client.compute(frame.to_delayed())
    parts = client.map(validated_partition, raw, pure=False)
    sizes = client.gather(client.map(len, parts, pure=False))
    return [part for part, size in zip(parts, sizes, strict=True) if size]


def check_cluster_options(specs: Sequence[str], config: BacktestConfig) -> None:
    """Refuse what a cluster backtest cannot do, before connecting to the cluster.

    Raises
    ------
    ClusterError
        With ``config.simulate`` or the ``oracle`` policy (the simulated world's truth is
        played in one process).
    backtest.specs.SpecError
        For a spec that cannot be parsed.
    """
    kinds = {spec.kind for spec in unique_labels([parse_spec(s) for s in specs])}
    if config.simulate or "oracle" in kinds:
        raise ClusterError(
            "--dask: --simulate and the oracle policy play the simulated world in one process; "
            "run them without --dask"
        )


def _count_in_months(attempts: pd.DataFrame, months: Sequence[str]) -> int:
    return len(charges_in_months(attempts, months))


def backtest_on_cluster(
    client: Client,
    data: str | os.PathLike[str],
    specs: Sequence[str],
    *,
    config: BacktestConfig | None = None,
    dm_model: SuccessModel | None = None,
    fx: FxRates | None = None,
    partitions: int | None = None,
    progress: Progress = quiet,
) -> tuple[BacktestResult, int | None]:
    """The backtest of ``data`` on the cluster's workers, and the held-out charges' count.

    ``data``: a file, a partitioned Parquet folder or glob, or an fsspec URL every worker can
    read; ``specs``: ``--policy`` specs; ``dm_model``: a given direct-method model (default: fit
    one on customers kept apart); ``partitions``: customer partitions (default: the input's, at
    least two per worker). With ``config.holdout`` and model specs, only the bundles' held-out
    months are evaluated (their failed charges are counted on the workers).

    Raises
    ------
    ClusterError
        For options a cluster cannot run (:func:`check_cluster_options`) or data it cannot read.
    serving.offline.OfflineInputError
        The history breaks the data contract (the report names rows within a partition).
    """
    cfg = config or BacktestConfig()
    check_cluster_options(specs, cfg)
    source = os.fspath(data)
    progress(f"reading {source} and partitioning it by customer")
    parts = backtest_partitions(client, source, partitions=partitions)
    if not parts:
        raise ClusterError(f"--data {source}: no attempts found there")
    progress(f"{len(parts)} customer partitions validated on the workers")
    parsed, policies = build_policies(specs, seed=cfg.seed)
    months = holdout_months(parsed, cfg)
    holdout_charges = None
    if months:
        counts = client.gather(client.map(_count_in_months, parts, months=months, pure=False))
        holdout_charges = int(sum(counts))
        progress(
            f"evaluating the {holdout_charges} failed charges of the models' held-out "
            f"months {', '.join(months)}"
        )
    result = run_backtest_parts(
        DaskExecutor(client),
        parts,
        policies,
        config=cfg,
        dm_model=dm_model,
        eval_months=months or None,
        fx=fx,
        progress=progress,
    )
    return result, holdout_charges


def run_files_on_cluster(
    client: Client,
    data: str | os.PathLike[str],
    specs: Sequence[str],
    out: str | Path,
    *,
    config: BacktestConfig | None = None,
    dm_model: str | None = None,
    fx_rates: str | Path | None = None,
    partitions: int | None = None,
    progress: Progress = quiet,
) -> BacktestRun:
    """:func:`.backtest.files.run_files` on the cluster's workers (the same result and outputs).

    :func:`backtest_on_cluster` with the file edge: ``dm_model`` a bundle path or registry name,
    ``fx_rates`` a JSON file of exchange rates; the report is written to ``out``.
    """
    cfg = config or BacktestConfig()
    check_cluster_options(specs, cfg)
    fx = load_fx(fx_rates, cfg.reporting_currency)
    dm = None if dm_model is None else BundleSuccessModel(resolve_model(dm_model))
    result, holdout_charges = backtest_on_cluster(
        client,
        data,
        specs,
        config=cfg,
        dm_model=dm,
        fx=fx,
        partitions=partitions,
        progress=progress,
    )
    result.truth = {}
    result.meta["holdout_charges"] = holdout_charges
    return BacktestRun(result=result, path=write_outputs(result, out), fx=fx)
