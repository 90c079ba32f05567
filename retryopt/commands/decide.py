"""``retryopt decide``: offline batch decisions for the failed charges of an attempts table.

The same policy code as the API (``serving.service.decide_requests``); input and output are
described in :mod:`retryopt.serving.offline` and docs/serving.md ("Offline batch decisions").
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer


def _parse_now(text: str | None) -> datetime:
    """``--now`` (ISO 8601 with a zone), default the clock."""
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            "not an ISO 8601 time (2026-01-05T02:00:00Z)", param_hint="--now"
        ) from None
    if value.tzinfo is None:
        raise typer.BadParameter("needs a zone (Z or +hh:mm)", param_hint="--now")
    return value.astimezone(UTC)


def _read_constraints(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--constraints") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(
            "must hold a JSON object (the API's constraints)", param_hint="--constraints"
        )
    return data


def command(
    data: str = typer.Option(
        ...,
        "--data",
        help="Attempts of the failed charges (data contract, CSV or Parquet; with --dask also a "
        "Parquet folder, glob or fsspec URL), optionally with a 'now' column per charge.",
    ),
    out: Path = typer.Option(..., "--out", help="Decisions table (.parquet or .csv), atomic."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Bundle folder or MLflow registry name[/version]; default: the rules-only fallback.",
    ),
    now: str | None = typer.Option(
        None,
        "--now",
        help="Decision time of charges without a 'now' value (ISO 8601 with a zone; default: "
        "the clock).",
    ),
    constraints: Path | None = typer.Option(
        None,
        "--constraints",
        help="JSON file: the API's constraints object for every charge (default: the server "
        "settings' defaults, RETRYOPT_* variables).",
    ),
    policy: str = typer.Option("model", "--policy", help="model (the planner) or greedy."),
    dask: str | None = typer.Option(
        None,
        "--dask",
        help="Run on a Dask cluster: scheduler address (tcp://host:8786) or local[:N].",
    ),
) -> None:
    """Decide when to retry every charge whose last attempt failed, exactly as the API would."""
    from retryopt.features.io import TableIOError, read_table, table_format, write_table_atomic
    from retryopt.features.validation import ContractError, validate_attempts
    from retryopt.model.bundle import BundleError
    from retryopt.serving.model_store import ModelLoadError
    from retryopt.serving.offline import OfflineInputError, decide_attempts, split_now_column
    from retryopt.serving.service import service_for
    from retryopt.serving.settings import load_settings

    if policy not in ("model", "greedy"):
        raise typer.BadParameter("must be model or greedy", param_hint="--policy")
    try:
        table_format(out)
    except TableIOError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    when = _parse_now(now)
    cons = _read_constraints(constraints)
    settings = load_settings()
    started = time.perf_counter()
    try:
        if dask is not None:
            from retryopt.training.cluster import ClusterError, connect, decide_on_cluster

            try:
                with connect(dask) as client:
                    decisions = decide_on_cluster(
                        client,
                        data,
                        model=model,
                        now=when,
                        policy=policy,
                        settings=settings,
                        constraints=cons,
                    )
            except ClusterError as exc:
                typer.secho(f"error: {exc}", fg="red", err=True)
                raise typer.Exit(2) from None
        else:
            raw, nows = split_now_column(read_table(data))
            attempts = validate_attempts(raw).clean
            service = service_for(model, policy=policy, settings=settings)  # type: ignore[arg-type]
            decisions = decide_attempts(
                attempts, service=service, nows=nows, now=when, constraints=cons
            )
    except ContractError as exc:
        typer.secho(f"error: {data} breaks the data contract:\n{exc.report.format()}", err=True)
        raise typer.Exit(2) from None
    except (
        OfflineInputError,
        TableIOError,
        BundleError,
        ModelLoadError,
        FileNotFoundError,
    ) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    write_table_atomic(decisions, out)
    counts = decisions["action"].value_counts().to_dict() if len(decisions) else {}
    typer.echo(
        f"{len(decisions):,} charges decided ({counts.get('retry', 0):,} retry, "
        f"{counts.get('stop', 0):,} stop) in {time.perf_counter() - started:.1f} s"
    )
    typer.echo(f"Decisions: {out.resolve()}")
