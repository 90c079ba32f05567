"""``retryopt suite``: judge the decision policy on the fixed evaluation suite of worlds.

Per world (``training/simulate/suite.py``; ``--world`` picks worlds or configurations): simulate,
train a bundle, play the planner, the planner in guardrail mode, the fixed schedules and the
oracle against the ground truth, and print one table row; ``<out>/results.json``,
``policies.csv`` and ``table.md`` hold everything (docs/evaluation.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer


def command(
    out: Path = typer.Option(..., "--out", "-o", help="Output directory.", show_default=False),
    world: list[str] = typer.Option(
        [],
        "--world",
        help="A world or configuration of the suite (repeatable; default: the whole suite; "
        "the tuning world tuning-default-301 may also be named).",
    ),
    customers: int = typer.Option(20_000, "--customers", min=100, help="Customers per world."),
    months: int = typer.Option(6, "--months", min=4, help="Monthly billing cycles per world."),
    replications: int = typer.Option(
        2, "--replications", min=1, help="Plays per policy (common random numbers)."
    ),
    threads: int = typer.Option(1, "--threads", min=1, help="LightGBM training threads."),
) -> None:
    """Run the evaluation suite and judge the planner with issue 14's criteria."""
    import tempfile

    from retryopt.training.backtest.suite_run import (
        SuiteRunConfig,
        run_suite,
        suite_table,
        write_suite_outputs,
    )
    from retryopt.training.simulate.suite import suite_worlds

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        worlds = suite_worlds(world)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--world") from exc
    config = SuiteRunConfig(
        customers=customers, months=months, replications=replications, train_threads=threads
    )
    started = time.perf_counter()

    def say(message: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:7.1f} s] {message}")

    with tempfile.TemporaryDirectory(prefix="retryopt-suite-") as tmp:
        results, verdict = run_suite(worlds, config, work_dir=Path(tmp), progress=say)
    written = write_suite_outputs(out, results, verdict, config)
    typer.echo(suite_table(results))
    for r in results:
        failed = [k for k, ok in r.criteria.items() if not ok]
        typer.echo(
            f"{r.world}: " + ("all criteria hold" if not failed else "misses " + ", ".join(failed))
        )
    value, usd = verdict["mean_gap_closed_value"], verdict["mean_gap_closed_usd"]
    typer.echo(
        f"suite: mean share of the fixed-to-oracle gap closed {value:.1%} (discounted value), "
        f"{usd:.1%} (recovered USD)"
    )
    for path in written:
        typer.echo(f"wrote {path}")
