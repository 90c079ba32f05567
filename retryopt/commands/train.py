"""``retryopt train``: fit, calibrate and evaluate the retry-success model, write a bundle.

Progress lines go to stdout as the long steps run, then a summary table of the test months (the
model next to its baselines), then the MLflow run and registered model, and the bundle's path on
the last line (``retryopt demo`` reads it from there).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer


def command(
    data: Path = typer.Option(
        ..., "--data", help="Attempt history (CSV or Parquet, data contract)."
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
) -> None:
    """Train the calibrated retry-success model on a history and write a verified bundle."""
    # Passive OpenMP waiting: spinning threads slow LightGBM badly on a shared machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from retryopt import api
    from retryopt.features.validation import ContractError
    from retryopt.model.bundle import BundleError
    from retryopt.training.train import TrainingDataError, summary_table

    started = time.perf_counter()

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
        )
    except ContractError as exc:
        report = exc.report.format() if getattr(exc, "report", None) is not None else str(exc)
        typer.secho(f"error: {data} breaks the data contract:\n{report}", fg="red", err=True)
        raise typer.Exit(2) from None
    except (TrainingDataError, BundleError, FileNotFoundError, ValueError) as exc:
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
