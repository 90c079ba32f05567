"""``retryopt train``: fit, calibrate and evaluate the retry-success model, write a bundle.

Progress lines go to stdout as the long steps run, then a summary table of the test months (the
model next to its baselines), then the MLflow run and registered model, and the bundle's path on
the last line (``retryopt demo`` reads it from there).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer


@contextmanager
def store_or_data(data: Path | None, store: str | None) -> Iterator[Path]:
    """``--data`` as given, or ``--store`` exported to a temporary Parquet file.

    Raises
    ------
    typer.BadParameter
        Unless exactly one of them is given.
    """
    import tempfile

    from retryopt.commands.export import export_store

    if (data is None) == (store is None):
        raise typer.BadParameter("give exactly one of --data and --store", param_hint="--data")
    if data is not None:
        yield data
        return
    assert store is not None
    with tempfile.TemporaryDirectory(prefix="retryopt-store-") as tmp:
        path = Path(tmp) / "attempts.parquet"
        typer.echo(export_store(store, path))
        yield path


def command(
    data: str | None = typer.Option(
        None,
        "--data",
        help="Attempt history (CSV or Parquet, data contract); with --dask also a partitioned "
        "Parquet folder, a glob or an fsspec URL the workers can read.",
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="Train on a decision/outcome store instead (sqlite:///PATH or postgresql://...): "
        "exported as by `retryopt export`.",
    ),
    out: Path = typer.Option(
        Path("models"), "--out", help="Models directory; the bundle goes in <out>/<version>/."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML file overriding training/default_train.toml."
    ),
    experiment: str = typer.Option("retryopt", "--experiment", help="MLflow experiment name."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed (overrides training.seed of the config)."
    ),
    registered_name: str = typer.Option(
        "retryopt-retry-success", "--registered-name", help="MLflow registered model name."
    ),
    mlflow: bool = typer.Option(
        True, "--mlflow/--no-mlflow", help="Log the run and register the model in MLflow."
    ),
    dask: str | None = typer.Option(
        None,
        "--dask",
        help="Train on a Dask cluster: scheduler address (tcp://host:8786) or local[:N] "
        "(see README, 'Running on a cluster').",
    ),
) -> None:
    """Train the calibrated retry-success model on a history and write a verified bundle."""
    # Passive OpenMP waiting: spinning threads slow LightGBM badly on a shared machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    started = time.perf_counter()
    if dask is not None:
        if data is None or store is not None:
            raise typer.BadParameter("--dask trains on --data only", param_hint="--dask")
        _train(data, out, config, experiment, seed, registered_name, mlflow, started, dask)
        return
    with store_or_data(None if data is None else Path(data), store) as path:
        _train(path, out, config, experiment, seed, registered_name, mlflow, started, None)


def _train(
    data: Path | str,
    out: Path,
    config: Path | None,
    experiment: str,
    seed: int | None,
    registered_name: str,
    mlflow: bool,
    started: float,
    dask: str | None,
) -> None:
    from retryopt import api
    from retryopt.features.validation import ContractError
    from retryopt.model.bundle import BundleError
    from retryopt.serving.offline import OfflineInputError
    from retryopt.training.cluster import ClusterError
    from retryopt.training.train import TrainingDataError, summary_table

    def progress(message: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:7.1f}s] {message}")

    try:
        result = api.train(
            data,
            out=out,
            config=config,
            seed=seed,
            experiment=experiment,
            registered_name=registered_name,
            mlflow=mlflow,
            progress=progress,
            dask=dask,
        )
    except ContractError as exc:
        report = exc.report.format() if getattr(exc, "report", None) is not None else str(exc)
        typer.secho(f"error: {data} breaks the data contract:\n{report}", fg="red", err=True)
        raise typer.Exit(2) from None
    except (
        TrainingDataError,
        BundleError,
        ClusterError,
        OfflineInputError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None

    typer.echo("")
    typer.echo(summary_table(result.metrics))
    if result.tracked is not None:
        tracked = result.tracked
        typer.echo(f"MLflow: {tracked.tracking_uri} run {tracked.run_id}")
        if tracked.registered_version is not None:
            typer.echo(
                f"registered model: models:/{tracked.registered_name}/{tracked.registered_version}"
            )
    typer.echo(f"Bundle: {result.bundle_path.resolve()}")
