"""``retryopt ab-report``: champion versus challenger on a store's logged outcomes."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    store: str = typer.Option(
        ..., "--store", help="Decision/outcome store: sqlite:///PATH or postgresql://..."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory (report.html, ab.json)."),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", min=10, help="Bootstrap resamples (by customer)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the resampling."),
) -> None:
    """Compare the champion and challenger arms (recovered value, recovery rate) with
    intervals from a bootstrap by customer."""
    from retryopt.serving.store import StoreError, redact_url
    from retryopt.training.backtest.ab import ab_markdown
    from retryopt.training.backtest.files import run_ab

    try:
        run = run_ab(store, out, n_boot=bootstrap, seed=seed)
    except (ValueError, StoreError) as exc:
        typer.secho(f"error: store {redact_url(store)}: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(ab_markdown(run.result, run.served))
    typer.echo(f"A/B report: {(run.path / 'report.html').resolve()}")
