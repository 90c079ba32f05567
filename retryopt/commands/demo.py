"""``retryopt demo``: the whole pipeline on an embedded simulated world.

simulate -> validate -> train (local MLflow store) -> backtest (report). Each step runs the same
subcommand a user would run, through its public command-line contract, so the demo also checks
that the commands fit together.

``retryopt demo --loop`` closes the loop instead (:mod:`retryopt.training.loop`): a
``retryopt serve`` process with a SQLite store (or the empty store given by ``--store``) decides
the world's failed charges month after month, called over HTTP by a billing client that reports
every attempt back; after each month the store is exported, a model retrained, backtested on
the month's log against the world's truth, and deployed with ``/admin/reload``.
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
    loop: bool = typer.Option(
        False, "--loop", help="Close the loop: serve, report outcomes, retrain, month by month."
    ),
    loop_months: int = typer.Option(
        3, "--loop-months", min=1, max=24, help="With --loop: months served by the server."
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="With --loop: an empty store (sqlite:///PATH or postgresql://...) for the server; "
        "default: a fresh SQLite file under OUT_DIR/loop.",
    ),
) -> None:
    """Run the whole pipeline on a simulated world and print where the report is."""
    if store is not None and not loop:
        raise typer.BadParameter("--store is used with --loop only", param_hint="--store")
    out_dir.mkdir(parents=True, exist_ok=True)
    if loop:
        _closed_loop(
            store_url=_empty_store(store) if store is not None else None,
            customers=customers,
            served_months=loop_months,
            seed=seed,
            out_dir=out_dir,
            models_dir=models_dir,
            bootstrap=bootstrap,
        )
        return
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


def _empty_store(url: str) -> str:
    """``url`` when it names a reachable store holding no decisions, outcomes or charges.

    The loop starts from the world's imported history, so a store that already holds a log
    would mix two histories; it is refused rather than emptied.
    """
    from retryopt.serving.store import StoreError, open_store, redact_url

    try:
        opened = open_store(url)
    except (ValueError, StoreError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--store") from None
    try:
        held = {table: opened.count(table) for table in ("decisions", "outcomes", "charges")}
    finally:
        opened.close()
    if any(held.values()):
        rows = ", ".join(f"{n} {table}" for table, n in held.items() if n)
        raise typer.BadParameter(
            f"{redact_url(url)} is not empty ({rows}); the loop needs an empty store",
            param_hint="--store",
        )
    return url


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _closed_loop(
    *,
    store_url: str | None,
    customers: int,
    served_months: int,
    seed: int,
    out_dir: Path,
    models_dir: Path,
    bootstrap: int,
) -> None:
    """``retryopt demo --loop``: the closed loop against a ``retryopt serve`` process."""
    import os
    import signal

    import httpx

    from retryopt.serving.store import redact_url
    from retryopt.training.billing_client import HttpBillingClient
    from retryopt.training.loop import LoopConfig, run_loop
    from retryopt.training.simulate.config import WorldConfig
    from retryopt.training.simulate.world import simulate_world

    cfg = LoopConfig(served_months=served_months, bootstrap=bootstrap)
    months = cfg.warmup_months + served_months
    typer.secho(f"\n== simulate: {customers} customers, {months} months, seed {seed}", bold=True)
    world = simulate_world(WorldConfig(), customers=customers, months=months, seed=seed)
    loop_dir = out_dir / "loop"
    loop_dir.mkdir(parents=True, exist_ok=True)
    if store_url is None:
        for leftover in loop_dir.glob("store.db*"):
            leftover.unlink()  # a fresh store: the loop starts from the imported history
        store_url = f"sqlite:///{(loop_dir / 'store.db').resolve()}"
    models = (models_dir / "loop").resolve()
    models.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "RETRYOPT_MODELS_ROOT": str(models)}
    env.pop("RETRYOPT_MODEL", None)
    args = ["serve", "--port", str(port), "--store", store_url, "--workers", "1"]
    typer.secho(f"\n== serve: retryopt {' '.join(args)}", bold=True)
    # A terminated demo still stops its server (SystemExit runs the ``finally`` below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = subprocess.Popen(
        [sys.executable, "-m", "retryopt", *args, "--log-level", "warning"], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                typer.secho("!! retryopt serve exited", fg="red", err=True)
                raise typer.Exit(1)
            time.sleep(0.1)
        client = HttpBillingClient(url)
        try:
            result = run_loop(
                world,
                client,
                store_url=store_url,
                models=models,
                config=cfg,
                progress=lambda line: typer.echo(f"   {line}"),
            )
        finally:
            client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    table = result.table()
    estimates = result.estimates()
    table.to_csv(loop_dir / "months.csv", index=False)
    estimates.to_csv(loop_dir / "estimates.csv", index=False)
    typer.secho("\nRecovered value per served month (USD; fixed = the world's schedule)", bold=True)
    typer.echo(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    typer.secho("\nOff-policy estimates on each month's log vs the world's truth", bold=True)
    typer.echo(estimates.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    overlap = result.overlap()
    overlap.to_csv(loop_dir / "overlap.csv", index=False)
    typer.secho("\nOverlap (IPS, SNIPS and DR need an effective sample size >= 30)", bold=True)
    typer.echo(overlap.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    shown = redact_url(store_url)
    typer.secho(f"\nStore: {shown}  (retryopt export --store {shown} --out FILE)", bold=True)
    typer.secho(f"Tables: {loop_dir.resolve()}/months.csv, estimates.csv, overlap.csv", bold=True)
