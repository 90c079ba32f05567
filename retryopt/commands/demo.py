"""``retryopt demo``: the whole pipeline on an embedded simulated world.

simulate -> validate -> train (local MLflow store) -> backtest (report). Each step runs the same
subcommand a user would run, through its public command-line contract, so the demo also checks
that the commands fit together.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import typer


def _run_step(title: str, args: list[str]) -> str:
    """Run one ``retryopt`` subcommand, streaming its output; return its stdout."""
    typer.secho(f"\n== {title}: retryopt {' '.join(args)}", bold=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "retryopt", *args],
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(line)
    code = process.wait()
    if code != 0:
        typer.secho(f"!! {title} failed with exit code {code}", fg="red", err=True)
        raise typer.Exit(code)
    typer.secho(f"-- {title} done in {time.perf_counter() - started:.1f} s", dim=True)
    return "".join(lines)


def _last_path(output: str) -> str:
    """The last non-empty line of a command's output (``train`` prints the bundle path last)."""
    for line in reversed(output.splitlines()):
        if line.strip():
            return line.strip().split()[-1]
    raise typer.BadParameter("the step printed nothing")


def command(
    customers: int = typer.Option(20_000, help="Simulated customers."),
    months: int = typer.Option(12, help="Simulated months of monthly renewals."),
    seed: int = typer.Option(7, help="Seed of the simulated world."),
    out_dir: Path = typer.Option(Path("demo-output"), help="Where data and reports go."),
    models_dir: Path = typer.Option(Path("models"), help="Where the model bundle goes."),
    bootstrap: int = typer.Option(200, help="Bootstrap resamples in the backtest."),
) -> None:
    """Run the whole pipeline on a simulated world and print where the report is."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "attempts.parquet"
    _run_step(
        "simulate",
        [
            "simulate",
            "--customers",
            str(customers),
            "--months",
            str(months),
            "--seed",
            str(seed),
            "--out",
            str(data),
        ],
    )
    _run_step("validate", ["validate", str(data)])
    trained = _run_step(
        "train",
        ["train", "--data", str(data), "--out", str(models_dir), "--experiment", "retryopt-demo"],
    )
    bundle = _last_path(trained)
    report_dir = out_dir / "backtest"
    _run_step(
        "backtest",
        [
            "backtest",
            "--data",
            str(data),
            "--simulate",
            "--out",
            str(report_dir),
            "--bootstrap",
            str(bootstrap),
            "--policy",
            "logged",
            "--policy",
            "fixed:72,120,168,216",
            "--policy",
            f"greedy:{bundle}",
            "--policy",
            f"model:{bundle}",
            "--policy",
            "oracle",
        ],
    )
    typer.secho(f"\nModel bundle: {bundle}", bold=True)
    typer.secho(f"Backtest report: {(report_dir / 'report.html').resolve()}", bold=True)
