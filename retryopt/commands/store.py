"""``retryopt store``: maintain the decision/outcome store (``migrate``, ``purge``)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer


def _date(text: str) -> datetime:
    """An ISO 8601 date or time (UTC when no zone is given)."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 date (e.g. 2026-01-31)", param_hint="--before"
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def command(
    action: str = typer.Argument(
        ..., help="'migrate' (apply pending schema migrations) or 'purge' (delete old rows)."
    ),
    store: str = typer.Option(
        ..., "--store", help="Store URL: sqlite:///PATH or postgresql://user@host/db."
    ),
    before: str | None = typer.Option(
        None, "--before", help="purge: delete decisions and attempts made before this date."
    ),
) -> None:
    """Migrate the store's schema, or purge rows older than a date (retention)."""
    from retryopt.serving.store import StoreError, open_store, redact_url, to_us

    if action not in ("migrate", "purge"):
        raise typer.BadParameter("must be 'migrate' or 'purge'", param_hint="ACTION")
    if action == "purge" and before is None:
        raise typer.BadParameter("purge needs --before DATE", param_hint="--before")
    cutoff = None if before is None else _date(before)
    try:
        s = open_store(store, migrate=True)
        try:
            if cutoff is None:
                typer.echo(f"{redact_url(store)}: schema version {s.schema_version()}")
                return
            counts = s.purge(to_us(cutoff))
        finally:
            s.close()
    except (ValueError, StoreError) as exc:
        typer.secho(f"error: store {redact_url(store)}: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"purged before {cutoff.isoformat()}: "
        + ", ".join(f"{n} {table}" for table, n in counts.items())
    )
