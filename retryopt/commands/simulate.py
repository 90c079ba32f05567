"""``retryopt simulate``: generate a synthetic payment world with known ground truth.

Writes the attempts (data contract, CSV or Parquet), a ground-truth side file with one row per
charge (``<stem>.truth.<ext>``) and the full world config (``<stem>.config.json``), all
atomically, printing progress per month and a summary of the marginals at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer


def _side_paths(out: Path, fmt: str) -> tuple[Path, Path, Path]:
    """Attempts, truth and config paths for ``--out`` and ``--format``."""
    from retryopt.features.io import strip_table_suffix, table_format

    ext = ".csv" if fmt == "csv" else ".parquet"
    try:
        current = table_format(out)
    except ValueError:
        base, attempts = out, out.with_name(out.name + ext)
    else:
        if (current == "parquet") != (fmt == "parquet"):
            raise typer.BadParameter(
                f"--out {out} has a {current} suffix but --format is {fmt}", param_hint="--out"
            )
        base, attempts = strip_table_suffix(out), out
    truth = base.with_name(f"{base.name}.truth{ext}")
    config = base.with_name(f"{base.name}.config.json")
    return attempts, truth, config


def command(
    customers: int = typer.Option(10_000, "--customers", min=1, help="Number of customers."),
    months: int = typer.Option(12, "--months", min=1, help="Monthly billing cycles."),
    seed: int = typer.Option(0, "--seed", help="Seed (the world is deterministic for a seed)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Attempts file (.parquet or .csv).", show_default=False
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="World config (TOML or JSON) overriding the defaults of "
        "training/simulate/default_world.toml.",
        show_default=False,
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        help="parquet or csv (default: by the suffix of --out, else parquet).",
        show_default=False,
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No per-month progress lines."),
) -> None:
    """Simulate subscription customers, their monthly charges and the logged retries."""
    from retryopt import api
    from retryopt.features.io import atomic_path, table_format, write_table_atomic
    from retryopt.training.simulate import WorldConfig, summarize_world

    if fmt is None:
        try:
            fmt = "csv" if table_format(out).startswith("csv") else "parquet"
        except ValueError:
            fmt = "parquet"
    if fmt not in ("parquet", "csv"):
        raise typer.BadParameter(f"expected parquet or csv, got {fmt!r}", param_hint="--format")
    attempts_path, truth_path, config_path = _side_paths(out, fmt)
    try:
        world_config = WorldConfig.from_file(config) if config is not None else WorldConfig()
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc

    started = time.perf_counter()
    typer.echo(f"simulating {customers:,} customers over {months} months (seed {seed})")
    world = api.simulate(
        config=world_config,
        customers=customers,
        months=months,
        seed=seed,
        progress=None if quiet else typer.echo,
    )
    simulated = time.perf_counter() - started
    write_table_atomic(world.attempts, attempts_path)
    write_table_atomic(world.truth, truth_path)
    with atomic_path(config_path) as tmp:
        payload = {
            "customers": customers,
            "months": months,
            "seed": seed,
            "config": world_config.to_dict(),
        }
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    total = time.perf_counter() - started
    typer.echo("")
    typer.echo(summarize_world(world).format())
    typer.echo("")
    typer.echo(f"simulated in {simulated:.1f} s, written in {total - simulated:.1f} s")
    typer.echo(f"truth:    {truth_path}")
    typer.echo(f"config:   {config_path}")
    typer.echo(f"attempts: {attempts_path}")
