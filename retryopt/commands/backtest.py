"""``retryopt backtest``: compare retry policies on logged history (see docs/backtesting.md)."""

from __future__ import annotations

from pathlib import Path

import typer


def command(
    data: Path = typer.Option(..., "--data", help="Attempts (CSV or Parquet, the data contract)."),
    policy: list[str] = typer.Option(
        ...,
        "--policy",
        help="Policy spec, repeatable: logged, fixed:72,120,168,216, random, greedy:MODEL, "
        "model:MODEL (bundle path or registry name), oracle (simulated data only).",
    ),
    out: Path = typer.Option(..., "--out", help="Output directory (replaced atomically)."),
    simulate: bool = typer.Option(
        False, "--simulate", help="Also play every policy in the simulated world (ground truth)."
    ),
    bootstrap: int = typer.Option(200, "--bootstrap", min=10, help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the resampling and random policies."),
    truth: Path | None = typer.Option(
        None, "--truth", help="World file written by `retryopt simulate` (default: next to --data)."
    ),
    bandwidth: float = typer.Option(6.0, "--bandwidth", help="IPS kernel width in hours."),
    dm_model: str | None = typer.Option(
        None,
        "--dm-model",
        help="Bundle for the direct method, trained on data kept apart from the evaluated "
        "policy's training data (default: fit one on other customers).",
    ),
    holdout: bool = typer.Option(
        True,
        "--holdout/--all-months",
        help="Evaluate only the charges of the model bundles' test months (default).",
    ),
    dm_refits: int = typer.Option(
        4,
        "--dm-refits",
        min=0,
        help="Refits of the backtest's direct-method model on customer-bootstrap resamples "
        "(its interval then includes model error; 0 = charge sampling only).",
    ),
    min_ess: float = typer.Option(
        30.0,
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
        "usd", "--reporting-currency", help="Currency of reported amounts (major units)."
    ),
    truth_replications: int = typer.Option(
        3,
        "--truth-replications",
        min=1,
        help="With --simulate: plays per policy (distinct common random numbers) averaged into "
        "the truth.",
    ),
) -> None:
    """Compare policies with DM, IPS, SNIPS and DR estimates and 95 % bootstrap intervals."""
    from retryopt.training.backtest.runner import run_cli
    from retryopt.training.backtest.specs import SpecError

    try:
        path = run_cli(
            data=data,
            specs=policy,
            out=out,
            simulate=simulate,
            n_boot=bootstrap,
            seed=seed,
            truth=truth,
            bandwidth_hours=bandwidth,
            dm_model=dm_model,
            holdout=holdout,
            dm_refits=dm_refits,
            min_ess=min_ess,
            fx_rates=fx_rates,
            reporting_currency=reporting_currency,
            truth_replications=truth_replications,
        )
    except (SpecError, FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"Backtest report: {(path / 'report.html').resolve()}")
