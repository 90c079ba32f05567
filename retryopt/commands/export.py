"""``retryopt export``: the store's reported attempts as the data contract (with propensities)."""

from __future__ import annotations

from pathlib import Path

import typer


def export_store(store_url: str, out: Path) -> str:
    """Write the store's attempts to ``out`` (atomically); a one-line summary.

    Raises
    ------
    typer.Exit
        (code 2) with a message on a bad URL or an unreachable store, or when the store holds
        no exportable attempt.
    """
    from retryopt.features.io import write_table_atomic
    from retryopt.serving.log_export import export_attempts
    from retryopt.serving.store import StoreError, open_store, redact_url

    try:
        store = open_store(store_url)
        try:
            result = export_attempts(store)
        finally:
            store.close()
    except (ValueError, StoreError) as exc:
        typer.secho(f"error: store {redact_url(store_url)}: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    if result.attempts.empty:
        typer.secho(
            f"error: store {redact_url(store_url)} holds no exportable attempt "
            f"({result.n_unknown_charge} of unknown charges)",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    write_table_atomic(result.attempts, out)
    return (
        f"{len(result.attempts)} attempts -> {out} ({result.n_with_propensity} retries with a "
        f"logged propensity; {result.n_unknown_charge} attempts of unknown charges left out; "
        f"{result.report.n_rows - result.report.n_valid} rows breaking the contract left out)"
    )


def command(
    store: str = typer.Option(
        ..., "--store", help="Store URL: sqlite:///PATH or postgresql://user@host/db."
    ),
    out: Path = typer.Option(..., "--out", help="Output file (.parquet or .csv)."),
) -> None:
    """Export the reported attempts and logged propensities as the data contract."""
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise typer.BadParameter("--out must end in .parquet or .csv", param_hint="--out")
    typer.echo(export_store(store, out))
