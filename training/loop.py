"""The closed loop on the synthetic world: serve a month, learn from its log, serve the next.

:func:`run_loop` plays the part of a billing team running retryopt, month after month:

1. **History.** The world's attempts of the charges first attempted before the loop are
   reported to the service (``POST /v1/attempt-outcomes``), as a merchant imports its
   processor's history; the store is exported (:func:`serving.log_export.export_attempts`, what
   ``retryopt export`` writes) and the first model is trained on it and deployed
   (``POST /admin/reload``).
2. **Month N is served.** Charges paid at the first attempt are reported; the world's failed
   charges are played by :func:`training.simulate.play` through the
   :class:`training.billing_client.HttpBillingClient`: each round it reports the new attempts
   and asks the running server when to retry, over HTTP, as a billing client would.
3. **Learning.** The store is exported again (with the logged propensities) and a model is
   retrained on it.
4. **Checking the next model before deploying it.** A backtest on month N's logged charges
   (IPS, SNIPS and DR from the logged propensities, DM from the model that served month N,
   which never saw month N's outcomes) of the retrained model (whose training held month N out
   as its test month) and of the served model without exploration, set against the world's
   truth: each policy played on the same charges (:func:`backtest_month`).
5. The retrained model is deployed and month N+1 is served.

The world's fixed retry schedule (its logging policy's) is played on the same charges with the
same luck, as a baseline. Only the server and the client do I/O; this module holds the steps.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.decisions import Constraints, RetryPolicy
from retryopt.features.io import write_table_atomic
from retryopt.model.bundle import load_bundle
from retryopt.serving.log_export import export_attempts
from retryopt.serving.policies import BundleSuccessModel, FixedSchedule, PlannerPolicy
from retryopt.serving.store import open_store
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.estimators import objective_for
from retryopt.training.backtest.ground_truth import GroundTruth, played_contributions
from retryopt.training.backtest.runner import run_backtest
from retryopt.training.billing_client import HttpBillingClient
from retryopt.training.progress import Progress, quiet
from retryopt.training.simulate import SimulatedWorld, play
from retryopt.training.train import run_training
from retryopt.training.train_config import load_config

FAST_TRAINING = """
[lightgbm]
num_leaves = 15
min_data_in_leaf = 50
[training]
num_boost_round = 80
early_stopping_rounds = 20
num_threads = 1
[calibration]
folds = 3
"""
"""A small LightGBM for the loop's monthly retraining (small worlds; tests and the demo)."""

NEXT_MODEL = "next model"
SERVED_MODEL = "served model, no exploration"
ESTIMATED = ("recovery_rate", "discounted_value")


def month_start(world: SimulatedWorld, k: int) -> pd.Timestamp:
    """Start (UTC) of the world's month ``k`` (0 = the month of its epoch)."""
    epoch = pd.Timestamp(world.epoch).tz_localize(None).normalize()
    starts = pd.date_range(epoch, periods=k + 2, freq="MS")
    if starts[0] != epoch:
        starts = pd.DatetimeIndex([epoch, *starts])
    return pd.Timestamp(starts[k]).tz_localize("UTC")


def month_charges(world: SimulatedWorld, k: int) -> np.ndarray:
    """Ids of the charges first attempted in month ``k`` whose first attempt failed."""
    return world.failed_charges(month_start(world, k), month_start(world, k + 1))


def month_rows(world: SimulatedWorld, start: int, end: int) -> pd.DataFrame:
    """The world's attempts of the charges first attempted in months ``[start, end)``."""
    a = world.attempts
    first = a.groupby(c.CHARGE_ID, sort=False)[c.ATTEMPTED_AT].transform("min")
    keep = (first >= month_start(world, start)) & (first < month_start(world, end))
    return a[keep.to_numpy()]


def train_on(
    attempts: pd.DataFrame, out: Path, *, config: str = FAST_TRAINING, seed: int = 0
) -> str:
    """Train a bundle on a contract frame (no MLflow tracking); the bundle's path."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        data = Path(tmp) / "attempts.parquet"
        write_table_atomic(attempts, data)
        toml = Path(tmp) / "train.toml"
        toml.write_text(config)
        run = run_training(
            data,
            out,
            config=load_config(toml, seed=seed),
            experiment="retryopt-loop",
            registered_name=None,
            track=False,
        )
    return str(run.bundle_path)


def played_value(attempts: pd.DataFrame, ids: np.ndarray, cons: Constraints) -> dict[str, float]:
    """Recovery rate, recovered amount and net discounted value (USD) of played charges."""
    _, metrics = objective_for(cons, None)
    contrib = played_contributions(attempts, ids, metrics=metrics)
    names = list(metrics.names)
    return {
        "recovery_rate": float(contrib[:, names.index("recovered")].mean()),
        "recovered_amount": float(contrib[:, names.index("recovered_amount")].sum()),
        "net_value": float(contrib[:, names.index("discounted_value")].sum()),
    }


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """Options of :func:`run_loop`."""

    warmup_months: int = 3
    """Months of the world's history imported before the loop (the first model's data)."""
    served_months: int = 3
    """Months decided by the running server, one retraining after each."""
    constraints: Constraints = field(default_factory=Constraints)
    bootstrap: int = 100
    """Bootstrap resamples of the backtest's intervals."""
    truth_replications: int = 2
    """Plays of the next model in the world behind its truth."""
    training: str = FAST_TRAINING
    """Training configuration (TOML text) of every model."""
    seed: int = 0


@dataclass(kw_only=True)
class MonthResult:
    """One served month."""

    month: str
    charges: int
    bundle: str  # the model that served it
    served: dict[str, float]
    fixed: dict[str, float]
    explored_share: float
    logged_propensities: int
    estimates: pd.DataFrame  # policy, estimator, statistic, value, ci_low, ci_high, truth, covers
    overlap: dict[str, dict[str, Any]]  # the backtest's overlap diagnostics per evaluated policy


@dataclass(kw_only=True)
class LoopResult:
    """Every served month, in order."""

    months: list[MonthResult]
    bundles: list[str]

    def table(self) -> pd.DataFrame:
        """Recovered value per month: served (with the model of the time) vs the fixed schedule."""
        return pd.DataFrame(
            [
                {
                    "month": m.month,
                    "failed_charges": m.charges,
                    "recovery_rate": m.served["recovery_rate"],
                    "recovered_usd": m.served["recovered_amount"],
                    "net_value_usd": m.served["net_value"],
                    "fixed_recovery_rate": m.fixed["recovery_rate"],
                    "fixed_net_value_usd": m.fixed["net_value"],
                    "explored_share": m.explored_share,
                }
                for m in self.months
            ]
        )

    def overlap(self) -> pd.DataFrame:
        """Per month and evaluated policy: effective sample size, the log's support of its first
        retries (mean first-retry weight, 1 = full) and whether IPS/SNIPS/DR are available."""
        return pd.DataFrame(
            [
                {
                    "month": m.month,
                    "policy": label,
                    "ess": overlap.get("effective_sample_size"),
                    "first_retry_support": overlap.get("first_retry_support"),
                    "first_retry_support_se": overlap.get("first_retry_support_se"),
                    "weighted_estimators": overlap.get("weighted_estimators") == "available",
                }
                for m in self.months
                for label, overlap in m.overlap.items()
            ]
        )

    def estimates(self) -> pd.DataFrame:
        """Each month's off-policy estimates, with the truth and coverage."""
        frames = [m.estimates.assign(month=m.month) for m in self.months]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _estimates(result: Any, label: str) -> pd.DataFrame:
    est = result.estimates
    est = est[(est["policy"] == label) & est["statistic"].isin(ESTIMATED)]
    truth = est[est["estimator"] == "truth"].set_index("statistic")["value"]
    out = est[est["estimator"] != "truth"][
        ["estimator", "statistic", "value", "ci_low", "ci_high"]
    ].copy()
    out["truth"] = out["statistic"].map(truth).astype(np.float64)
    out["covers"] = (out["ci_low"] <= out["truth"]) & (out["truth"] <= out["ci_high"])
    return out.reset_index(drop=True)


def backtest_month(
    world: SimulatedWorld,
    logged: pd.DataFrame,
    ids: np.ndarray,
    *,
    next_bundle: str,
    served_bundle: str,
    config: LoopConfig,
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """IPS, SNIPS, DR and DM on a month's log, with the world's truth, of two policies.

    - the retrained model (``next model``): its training held the month out (the last month of
      its data is its test month), so it is evaluated on charges it never saw;
    - the model that served the month, without exploration (``served model``): what the month
      would have earned without exploring, the deployed policy's nearest neighbour.

    The direct method uses the model that served the month (trained before it); the truth plays
    each policy on the same charges in the world. Returns the estimates (one row per policy,
    estimator and statistic, with the truth and whether the interval covers it), and per
    policy the overlap diagnostics (effective sample size, support, whether IPS, SNIPS and DR
    are available).
    """
    policies: dict[str, RetryPolicy | None] = {
        NEXT_MODEL: PlannerPolicy(BundleSuccessModel(load_bundle(next_bundle))),
        SERVED_MODEL: PlannerPolicy(BundleSuccessModel(load_bundle(served_bundle))),
    }
    truth = GroundTruth(
        world=world,
        attempts=logged,
        policies=policies,
        kinds=dict.fromkeys(policies, "model"),
        seed=config.seed + 500,
        replications=config.truth_replications,
        constraints=config.constraints,
    )
    result = run_backtest(
        logged,
        policies,
        config=BacktestConfig(
            n_boot=config.bootstrap, fit_dm=False, constraints=config.constraints, seed=config.seed
        ),
        dm_model=BundleSuccessModel(load_bundle(served_bundle)),
        eval_charges=ids,
        truth_fn=truth,
    )
    frames = [_estimates(result, label).assign(policy=label) for label in policies]
    overlap = {label: dict(result.overlap.get(label, {})) for label in policies}
    return pd.concat(frames, ignore_index=True), overlap


def export_log(store_url: str) -> pd.DataFrame:
    """The store as the data contract (``retryopt export``'s frame)."""
    store = open_store(store_url)
    try:
        return export_attempts(store).attempts
    finally:
        store.close()


def run_loop(
    world: SimulatedWorld,
    client: HttpBillingClient,
    *,
    store_url: str,
    models: Path,
    config: LoopConfig | None = None,
    progress: Progress = quiet,
) -> LoopResult:
    """Run the closed loop (see the module docstring) against the server behind ``client``.

    Parameters
    ----------
    world
        The synthetic world (at least ``warmup_months + served_months`` months).
    client
        A billing client of the running server, whose store is ``store_url``.
    store_url
        The server's store (exported after every month).
    models
        Where the bundles are written (the server's models root, so it may load them).
    """
    cfg = config or LoopConfig()
    cons = cfg.constraints
    first = cfg.warmup_months
    progress(f"importing the history of months 0-{first - 1} into the store")
    client.report(month_rows(world, 0, first))
    bundle = train_on(export_log(store_url), models, config=cfg.training, seed=cfg.seed)
    client.deploy(bundle)
    progress(f"first model trained on the history and deployed: {bundle}")
    bundles = [bundle]
    months: list[MonthResult] = []
    for k in range(first, first + cfg.served_months):
        label = month_start(world, k).strftime("%Y-%m")
        ids = month_charges(world, k)
        rows = month_rows(world, k, k + 1)
        client.report(rows[~rows[c.CHARGE_ID].isin(pd.Index(ids))])  # paid at once
        served = play(client, world, ids, cons, seed=cfg.seed + k)
        client.report(served.attempts)  # the last round's outcomes
        fixed = play(
            FixedSchedule(world.config.logging_policy.schedule_hours, name="fixed"),
            world,
            ids,
            cons,
            seed=cfg.seed + k,
        )
        logged = export_log(store_url)
        own = logged[logged[c.CHARGE_ID].isin(pd.Index(ids))]
        prop = own[c.RETRY_PROPENSITY].to_numpy(dtype=np.float64)
        prop = prop[~np.isnan(prop)]
        next_bundle = train_on(logged, models, config=cfg.training, seed=cfg.seed + k)
        progress(f"{label}: {len(ids)} failed charges served; retrained: {next_bundle}")
        est, overlap = backtest_month(
            world, logged, ids, next_bundle=next_bundle, served_bundle=bundle, config=cfg
        )
        months.append(
            MonthResult(
                month=label,
                charges=len(ids),
                bundle=bundle,
                served=played_value(served.attempts, ids, cons),
                fixed=played_value(fixed.attempts, ids, cons),
                explored_share=float((prop < 1).mean()) if prop.size else 0.0,
                logged_propensities=int(prop.size),
                estimates=est,
                overlap=overlap,
            )
        )
        client.deploy(next_bundle)
        bundle = next_bundle
        bundles.append(bundle)
        summary = "; ".join(
            f"{policy}: ESS {o.get('effective_sample_size', float('nan')):.1f}, first-retry "
            f"support {o.get('first_retry_support', float('nan')):.2f}, "
            f"{o.get('weighted_estimators')}"
            for policy, o in overlap.items()
        )
        progress(f"{label}: next model deployed (backtest {summary})")
    return LoopResult(months=months, bundles=bundles)
