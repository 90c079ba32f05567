"""``retryopt import-stripe``: Stripe charges / Dashboard payments export -> attempt contract.

Reads one or more Stripe exports (Charge objects as JSON, list-endpoint pages, JSON lines, or the
Dashboard payments CSV), converts them with :mod:`features.stripe_import`, validates the result
with :func:`features.validation.validate_attempts` and writes the contract file atomically (CSV or
Parquet by the suffix of ``--out``). Prints what was read, converted and skipped, and why.
"""

from __future__ import annotations

from pathlib import Path

import typer

_ROWS_NOTE = (
    "(row numbers count the converted attempts in time order; attempt_id is the Stripe charge id)"
)


def _rejects_path(out: Path) -> Path:
    """``a/attempts.parquet`` -> ``a/attempts.rejects.csv``."""
    from retryopt.features.io import strip_table_suffix

    base = strip_table_suffix(out)
    return base.with_name(f"{base.name}.rejects.csv")


def command(
    inputs: list[Path] = typer.Argument(
        ...,
        help="Stripe exports: Charge objects (.json array or list page, .jsonl) or the "
        "Dashboard payments export (.csv).",
        metavar="INPUT",
        show_default=False,
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Contract file to write (.csv or .parquet).", show_default=False
    ),
    input_format: str = typer.Option(
        "auto",
        "--format",
        help="Input format for every INPUT: auto (by suffix, else content), json, jsonl, csv.",
    ),
    drop_invalid: bool = typer.Option(
        False,
        "--drop-invalid",
        help="Write the rows that pass validation plus a rejects file, instead of failing.",
    ),
    rejects: Path | None = typer.Option(
        None,
        "--rejects",
        help="Where --drop-invalid writes rejected rows (default: OUT with suffix .rejects.csv).",
        show_default=False,
    ),
) -> None:
    """Convert Stripe charges into the retryopt payment-attempt contract.

    Stripe charges carry no card-attach time, so card_added_at is derived: the first charge
    seen with the same customer and card fingerprint. Pending charges are skipped and counted.
    See docs/stripe-import.md for the field mapping.
    """
    from retryopt.features.io import TableIOError, table_format, write_table_atomic
    from retryopt.features.stripe_import import INPUT_FORMATS, import_stripe_files
    from retryopt.features.validation import ContractError, validate_attempts

    if input_format not in INPUT_FORMATS:
        raise typer.BadParameter(
            f"must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}",
            param_hint="--format",
        )
    try:
        table_format(out)
    except TableIOError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    try:
        result = import_stripe_files(inputs, fmt=input_format)
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None

    typer.echo(result.format_summary())
    if result.attempts.empty:
        typer.secho("error: no attempts to write; nothing written.", fg="red", err=True)
        raise typer.Exit(1)

    try:
        validated = validate_attempts(result.attempts, drop_invalid=drop_invalid)
    except ContractError as exc:
        typer.secho("validation failed; nothing written:", fg="red", err=True)
        typer.echo(exc.report.format(), err=True)
        typer.echo(_ROWS_NOTE, err=True)
        typer.echo(
            "Re-run with --drop-invalid to write the valid rows and a rejects file.", err=True
        )
        raise typer.Exit(1) from None

    typer.echo(f"validation: {validated.report.format()}")
    if drop_invalid and len(validated.rejects):
        rejects_path = rejects if rejects is not None else _rejects_path(out)
        write_table_atomic(validated.rejects, rejects_path)
        typer.echo(f"rejected by validation:   {len(validated.rejects)} rows -> {rejects_path}")
        typer.echo(_ROWS_NOTE)
    write_table_atomic(validated.clean, out)
    typer.echo(f"attempts written:         {len(validated.clean)} -> {out}")
