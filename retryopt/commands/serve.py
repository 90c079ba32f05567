"""``retryopt serve``: the retry-decision API (uvicorn)."""

from __future__ import annotations

import os

import typer


def command(
    model: str = typer.Option(
        None,
        "--model",
        help="Model bundle directory or MLflow registry name[/version] (RETRYOPT_MODEL). "
        "Without a model the service answers from the rule-based fallback.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(
        2, "--workers", min=1, help="uvicorn worker processes (one per core is a good start)."
    ),
    policy: str = typer.Option(
        None, "--policy", help="'model' (planner, default) or 'greedy' (RETRYOPT_POLICY)."
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve retry decisions over HTTP (POST /v1/retry-decisions; see docs/serving.md)."""
    import uvicorn

    from serving.settings import Settings

    if model is not None:
        os.environ["RETRYOPT_MODEL"] = model
    if policy is not None:
        os.environ["RETRYOPT_POLICY"] = policy
    try:
        Settings()  # fail fast on bad RETRYOPT_* values, before forking workers
    except Exception as exc:
        raise typer.BadParameter(f"invalid RETRYOPT_* settings: {exc}") from exc
    uvicorn.run(
        "serving.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )
