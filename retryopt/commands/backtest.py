"""``retryopt backtest``: compare retry policies on logged history (see docs/backtesting.md)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from retryopt.training.backtest.config import BacktestConfig

_DEFAULTS = BacktestConfig()


def _progress(message: str) -> None:
    """Progress lines of long runs (stderr, timestamped)."""
    typer.echo(f"[backtest {time.strftime('%H:%M:%S')}] {message}", err=True)


def command(
    data: str | None = typer.Option(
        None,
        "--data",
        help="Attempts (CSV or Parquet, the data contract); with --dask also a partitioned "
        "Parquet folder, a glob or an fsspec URL the workers can read.",
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="Backtest a decision/outcome store's log instead (sqlite:///PATH or "
        "postgresql://...), exported as by `retryopt export` (propensities from the log).",
    ),
    policy: list[str] = typer.Option(
        ...,
        "--policy",
        help="Policy spec, repeatable: logged, fixed:72,120,168,216, random, greedy:MODEL, "
        "model:MODEL (bundle path or registry name), fallback, oracle (simulated data only).",
    ),
    out: Path = typer.Option(..., "--out", help="Output directory (replaced atomically)."),
    simulate: bool = typer.Option(
        _DEFAULTS.simulate,
        "--simulate",
        help="Also play every policy in the simulated world (ground truth).",
    ),
    bootstrap: int = typer.Option(
        _DEFAULTS.n_boot, "--bootstrap", min=10, help="Bootstrap resamples."
    ),
    seed: int = typer.Option(
        _DEFAULTS.seed, "--seed", help="Seed of the resampling and random policies."
    ),
    truth: Path | None = typer.Option(
        None, "--truth", help="World file written by `retryopt simulate` (default: next to --data)."
    ),
    bandwidth: float = typer.Option(
        _DEFAULTS.bandwidth_hours, "--bandwidth", help="IPS kernel width in hours."
    ),
    dm_model: str | None = typer.Option(
        None,
        "--dm-model",
        help="Bundle for the direct method, trained on data kept apart from the evaluated "
        "policy's training data (default: fit one on other customers).",
    ),
    holdout: bool = typer.Option(
        _DEFAULTS.holdout,
        "--holdout/--all-months",
        help="Evaluate only the charges of the model bundles' test months (default).",
    ),
    dm_refits: int = typer.Option(
        _DEFAULTS.dm_refits,
        "--dm-refits",
        min=0,
        help="Refits of the backtest's direct-method model on customer-bootstrap resamples "
        "(its interval then includes model error; 0 = charge sampling only).",
    ),
    min_ess: float = typer.Option(
        _DEFAULTS.min_ess,
        "--min-ess",
        min=1.0,
        help="Minimum effective sample size of the importance weights below which IPS, SNIPS "
        "and DR are reported as unavailable (insufficient overlap).",
    ),
    fx_rates: Path | None = typer.Option(
        None,
        "--fx-rates",
        help='JSON object of exchange rates, units of each currency per USD ({"eur": 0.92}); '
        "amounts of all currencies are reported in --reporting-currency (default rates: "
        "approximate 2025 reference rates, see docs/backtesting.md).",
    ),
    reporting_currency: str = typer.Option(
        _DEFAULTS.reporting_currency,
        "--reporting-currency",
        help="Currency of reported amounts (major units).",
    ),
    cost_per_attempt: float | None = typer.Option(
        None,
        "--cost-per-attempt",
        min=0.0,
        help="Cost of one retry in the reporting currency (the objective every policy is "
        "valued with and the planner optimises; default 0.12, sources in docs/serving.md).",
    ),
    daily_cancel_hazard: float | None = typer.Option(
        None,
        "--daily-cancel-hazard",
        min=0.0,
        max=0.999,
        help="Daily probability that the customer cancels during dunning (discounting; "
        "default 0.005).",
    ),
    annual_interest_rate: float | None = typer.Option(
        None,
        "--annual-interest-rate",
        min=0.0,
        max=1.0,
        help="Annual time value of cash (discounting; default 0.045).",
    ),
    dask: str | None = typer.Option(
        None,
        "--dask",
        help="Backtest on a Dask cluster: scheduler address (tcp://host:8786) or local[:N] "
        "(same result as one process for the same seed; see README, 'Running on a cluster').",
    ),
    truth_replications: int = typer.Option(
        _DEFAULTS.truth_replications,
        "--truth-replications",
        min=1,
        help="With --simulate: plays per policy (distinct common random numbers) averaged into "
        "the truth.",
    ),
) -> None:
    """Compare policies with DM, IPS, SNIPS and DR estimates and 95 % bootstrap intervals."""
    from retryopt.commands.train import store_or_data

    options = (
        policy,
        out,
        simulate,
        bootstrap,
        seed,
        truth,
        bandwidth,
        dm_model,
        holdout,
        dm_refits,
        min_ess,
        fx_rates,
        reporting_currency,
        truth_replications,
        {
            "cost_per_attempt": cost_per_attempt,
            "daily_cancel_hazard": daily_cancel_hazard,
            "annual_interest_rate": annual_interest_rate,
        },
    )
    if dask is not None:
        if data is None or store is not None:
            raise typer.BadParameter("--dask backtests --data only", param_hint="--dask")
        _backtest(data, *options, dask=dask)
        return
    with store_or_data(None if data is None else Path(data), store) as path:
        _backtest(path, *options, dask=None)


def _backtest(
    data: Path | str,
    policy: list[str],
    out: Path,
    simulate: bool,
    bootstrap: int,
    seed: int,
    truth: Path | None,
    bandwidth: float,
    dm_model: str | None,
    holdout: bool,
    dm_refits: int,
    min_ess: float,
    fx_rates: Path | None,
    reporting_currency: str,
    truth_replications: int,
    objective: dict[str, float | None],
    *,
    dask: str | None,
) -> None:
    from retryopt.features.decisions import Constraints
    from retryopt.features.objective import Objective
    from retryopt.training.backtest.files import run_files
    from retryopt.training.backtest.ground_truth import gap_lines
    from retryopt.training.backtest.report import headline_markdown
    from retryopt.training.backtest.specs import SpecError

    try:
        config = BacktestConfig(
            n_boot=bootstrap,
            seed=seed,
            bandwidth_hours=bandwidth,
            min_ess=min_ess,
            dm_refits=dm_refits,
            holdout=holdout,
            reporting_currency=reporting_currency,
            simulate=simulate,
            truth_replications=truth_replications,
            constraints=Constraints(
                objective=Objective(
                    **{k: float(v) for k, v in objective.items() if v is not None}  # type: ignore[arg-type]
                )
            ),
        )
        if dask is None:
            run = run_files(
                data,
                policy,
                out,
                config=config,
                truth=truth,
                dm_model=dm_model,
                fx_rates=fx_rates,
                progress=_progress,
            )
        else:
            from retryopt.training.cluster import connect
            from retryopt.training.cluster_backtest import (
                check_cluster_options,
                run_files_on_cluster,
            )

            check_cluster_options(policy, config)
            with connect(dask) as client:
                run = run_files_on_cluster(
                    client,
                    data,
                    policy,
                    out,
                    config=config,
                    dm_model=dm_model,
                    fx_rates=fx_rates,
                    progress=_progress,
                )
    except (SpecError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    result = run.result
    typer.echo(headline_markdown(result))
    if result.truth:
        plays = config.truth_replications
        typer.echo(
            "\nGround truth (simulated world, common random numbers, same charges, mean of "
            f"{plays} play{'s' if plays > 1 else ''}; amounts in {run.fx.reporting.upper()}):"
        )
        for line in gap_lines(result.truth):
            typer.echo(f"  {line}")
    for w in result.warnings:
        typer.echo(f"WARNING: {w}")
    typer.echo(f"Backtest report: {(run.path / 'report.html').resolve()}")
