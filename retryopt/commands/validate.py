"""``retryopt validate``: check a payment-attempt table against the data contract.

Exit codes: 0 the table is valid (or ``--drop-invalid`` wrote the clean rows), 1 contract
violations in strict mode (nothing is written), 2 usage errors or an unreadable file.
"""

from __future__ import annotations

from pathlib import Path

import typer

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def command(
    path: Path = typer.Argument(
        ..., help="Attempts table: .csv, .csv.gz, .parquet or .pq.", show_default=False
    ),
    drop_invalid: bool = typer.Option(
        False,
        "--drop-invalid",
        help="Keep the valid rows: write them to --out and the rejected rows (with a reason "
        "each) to --rejects, then exit 0.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Where to write the canonical clean table (.parquet or .csv). Default with "
        "--drop-invalid: PATH's stem + '.clean.parquet'. Without --drop-invalid it is written "
        "only when the whole table is valid.",
    ),
    rejects: Path | None = typer.Option(
        None,
        "--rejects",
        help="Where to write the rejected rows (needs --drop-invalid). Default: PATH's stem + "
        "'.rejects.csv'.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print one summary line only."),
) -> None:
    """Validate a payment-attempt table (CSV or Parquet) against the retryopt data contract.

    Strict by default: any violation prints the report and exits 1 without writing anything.
    """
    from retryopt.features.io import (
        TableIOError,
        read_table,
        strip_table_suffix,
        write_table_atomic,
    )
    from retryopt.features.validation import ContractError, ValidationReport, validate_attempts

    def fail(message: str, code: int) -> typer.Exit:
        typer.secho(f"error: {message}", fg="red", err=True)
        return typer.Exit(code)

    if rejects is not None and not drop_invalid:
        raise fail("--rejects needs --drop-invalid", EXIT_USAGE)
    try:
        for target in (out, rejects):
            if target is not None:
                strip_table_suffix(target)  # validates the suffix before any work
        stem = strip_table_suffix(path)
        raw = read_table(path)
    except TableIOError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    def show(report: ValidationReport) -> None:
        if quiet:
            typer.echo(
                f"{path}: {report.n_rows:,} rows, {report.n_valid:,} valid, "
                f"{len(report.issues)} issue(s)"
            )
        else:
            typer.echo(f"{path}\n{report.format()}")

    try:
        result = validate_attempts(raw, drop_invalid=drop_invalid)
    except ContractError as exc:
        show(exc.report)
        if not quiet:
            typer.echo(
                "Nothing written: the table itself breaks the contract (no row can be kept)."
                if drop_invalid
                else "Nothing written (strict mode; use --drop-invalid to keep valid rows)."
            )
        raise typer.Exit(EXIT_INVALID) from None
    show(result.report)

    written: list[str] = []
    try:
        if drop_invalid:
            clean_path = out or stem.with_name(stem.name + ".clean.parquet")
            rejects_path = rejects or stem.with_name(stem.name + ".rejects.csv")
            write_table_atomic(result.clean, clean_path)
            write_table_atomic(result.rejects, rejects_path)
            written += [
                f"{len(result.clean):,} clean rows -> {clean_path}",
                f"{len(result.rejects):,} rejected rows -> {rejects_path}",
            ]
        elif out is not None:
            write_table_atomic(result.clean, out)
            written.append(f"{len(result.clean):,} rows -> {out}")
    except (TableIOError, OSError) as exc:
        raise fail(f"cannot write output: {exc}", EXIT_USAGE) from None
    for line in written:
        typer.echo(f"wrote {line}")
