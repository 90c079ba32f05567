"""The backtest's file edge: read the history, FX rates, world and bundles; write the report.

:func:`run_files` is what ``retryopt backtest`` runs: everything that touches the file system
(or a model registry) happens here, around the pure :func:`.runner.run_backtest`. Printing is
left to the caller.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retryopt.features.currency import FxRates, load_fx_rates
from retryopt.features.io import strip_table_suffix
from retryopt.features.validation import load_attempts
from retryopt.model.registry import resolve_model
from retryopt.serving.log_export import export_attempts
from retryopt.serving.policies import BundleSuccessModel
from retryopt.serving.store import open_store
from retryopt.training.backtest.ab import ArmComparison, compare_arms, write_ab_report
from retryopt.training.backtest.charges import charges_in_months
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.ground_truth import GroundTruth
from retryopt.training.backtest.report import write_outputs
from retryopt.training.backtest.result import BacktestResult
from retryopt.training.backtest.runner import run_backtest
from retryopt.training.backtest.specs import (
    PolicySpec,
    build_policies,
    parse_spec,
    unique_labels,
)
from retryopt.training.progress import Progress, quiet
from retryopt.training.simulate import SimulatedWorld, WorldConfig, simulate_world


@dataclass(frozen=True, kw_only=True)
class BacktestRun:
    """A finished :func:`run_files`: the result, where it was written and its FX rates."""

    result: BacktestResult
    path: Path
    fx: FxRates


def load_world(data: str | Path, truth: str | Path | None = None) -> SimulatedWorld:
    """Rebuild the simulated world that produced ``data`` (deterministic for its seed).

    Reads ``<stem>.config.json`` written by ``retryopt simulate`` next to ``data`` (or the
    config file given as ``truth``) and re-simulates the world from it.
    """
    path = Path(truth) if truth is not None else None
    if path is None or not str(path).endswith(".json"):
        base = strip_table_suffix(data)
        path = base.with_name(f"{base.name}.config.json")
    if not path.exists():
        raise FileNotFoundError(
            f"--simulate needs the world config written by `retryopt simulate`: {path} not found"
        )
    payload = json.loads(path.read_text(encoding="utf-8"))
    for key in ("customers", "months", "seed", "config"):
        if key not in payload:
            raise ValueError(f"{path}: field {key!r} missing")
    config = WorldConfig.from_dict(payload["config"])
    return simulate_world(
        config,
        customers=int(payload["customers"]),
        months=int(payload["months"]),
        seed=int(payload["seed"]),
    )


def bundle_holdout_months(models: Sequence[str]) -> list[str]:
    """Months (``YYYY-MM``) none of the given bundles trained or validated on.

    Read from each bundle's ``metrics["split"]`` (``test_months`` plus partial months merged into
    them); the intersection over bundles. Empty when a bundle does not describe its split.
    """
    common: set[str] | None = None
    for name in models:
        split = dict(getattr(resolve_model(name), "metrics", {}) or {}).get("split") or {}
        months = set(split.get("test_months", [])) | set(split.get("merged_partial_months", []))
        common = months if common is None else common & months
    return sorted(common or ())


def holdout_months(parsed: Sequence[PolicySpec], config: BacktestConfig) -> list[str]:
    """The months to evaluate: with ``config.holdout``, the model bundles' held-out months
    (:func:`bundle_holdout_months`); empty = every month."""
    models = [p.model for p in parsed if p.model]
    return bundle_holdout_months(models) if config.holdout and models else []


def load_fx(fx_rates: str | Path | None, reporting_currency: str) -> FxRates:
    """The reference rates, or those of the JSON file ``fx_rates``, into ``reporting_currency``."""
    if fx_rates is not None:
        return load_fx_rates(fx_rates, reporting=reporting_currency.lower())
    return FxRates(reporting=reporting_currency.lower())


def run_files(
    data: str | Path,
    specs: Sequence[str],
    out: str | Path,
    *,
    config: BacktestConfig | None = None,
    truth: str | Path | None = None,
    dm_model: str | None = None,
    fx_rates: str | Path | None = None,
    progress: Progress = quiet,
) -> BacktestRun:
    """Parse the specs, load the history, run the backtest and write its outputs to ``out``.

    Parameters
    ----------
    data
        Attempts (CSV or Parquet, the data contract).
    specs
        ``--policy`` specs (:func:`.specs.parse_spec`).
    out
        Output directory (replaced atomically, :func:`.report.write_outputs`).
    config
        The backtest's options. With ``holdout`` and ``greedy:``/``model:`` bundles that describe
        their time split, only the failed charges first failing in the bundles' test months are
        evaluated (the evaluated policy never trained on them). With ``simulate`` every policy is
        also played in the world that produced ``data`` (its truth: the mean over
        ``truth_replications`` plays with distinct common random numbers).
    truth
        The world's config file (default: ``<data stem>.config.json``).
    dm_model
        Bundle (path or registry name) for the direct method, trained on data kept apart from the
        evaluated policy's training data; without it the backtest fits its own.
    fx_rates
        JSON file of exchange rates (:func:`features.currency.load_fx_rates`); default: the
        reference rates.
    progress
        Receives progress lines.
    """
    cfg = config or BacktestConfig()
    fx = load_fx(fx_rates, cfg.reporting_currency)
    kinds = {spec.label: spec.kind for spec in unique_labels([parse_spec(s) for s in specs])}
    progress(f"loading {data}")
    attempts = load_attempts(data)
    world = None
    if cfg.simulate or "oracle" in kinds.values():
        progress("re-simulating the world for the ground truth")
        world = load_world(data, truth)
    parsed, policies = build_policies(specs, seed=cfg.seed, world=world)
    eval_charges = None
    months = holdout_months(parsed, cfg)
    if months:
        eval_charges = charges_in_months(attempts, months)
        progress(
            f"evaluating the {len(eval_charges)} failed charges of the models' held-out "
            f"months {', '.join(months)}"
        )
    dm = None if dm_model is None else BundleSuccessModel(resolve_model(dm_model))
    ground_truth = None
    if cfg.simulate and world is not None:
        ground_truth = GroundTruth(
            world=world,
            attempts=attempts,
            policies=policies,
            kinds=kinds,
            seed=cfg.seed,
            replications=cfg.truth_replications,
            fx=fx,
            constraints=cfg.constraints,
            charge_ids=None if eval_charges is None else np.asarray(eval_charges, dtype=object),
            progress=progress,
        )
    result = run_backtest(
        attempts,
        policies,
        config=cfg,
        eval_charges=eval_charges,
        dm_model=dm,
        truth_fn=ground_truth,
        fx=fx,
        progress=progress,
    )
    result.truth = {} if ground_truth is None else ground_truth.summary
    result.meta["holdout_charges"] = None if eval_charges is None else len(eval_charges)
    return BacktestRun(result=result, path=write_outputs(result, out), fx=fx)


@dataclass(frozen=True, kw_only=True)
class AbRun:
    """A finished :func:`run_ab`: the comparison, what served each arm, where it was written."""

    result: ArmComparison
    served: dict[str, str]
    path: Path


def served_by_arm(store_url: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The store's exported attempts (with ``arm``) and what served each arm (policies and
    model versions seen in its logged decisions)."""
    store = open_store(store_url)
    try:
        attempts = export_attempts(store).attempts
        seen: dict[str, set[str]] = {}
        for d in store.logged_decisions():
            label = d.policy if d.model_version is None else f"{d.policy} {d.model_version}"
            seen.setdefault(d.arm, set()).add(label)
    finally:
        store.close()
    return attempts, {arm: ", ".join(sorted(labels)) for arm, labels in seen.items()}


def run_ab(
    store_url: str,
    out: str | Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    config: BacktestConfig | None = None,
    fx_rates: str | Path | None = None,
) -> AbRun:
    """Compare champion and challenger on a store's logged outcomes; write the report to
    ``out`` (:func:`.ab.write_ab_report`).

    Raises
    ------
    ValueError
        On a bad store URL, or when an arm has no failed charge.
    serving.store.StoreError
        When the store cannot be reached.
    """
    cfg = config or BacktestConfig()
    attempts, served = served_by_arm(store_url)
    result = compare_arms(
        attempts,
        n_boot=n_boot,
        seed=seed,
        constraints=cfg.constraints,
        fx=load_fx(fx_rates, cfg.reporting_currency),
    )
    return AbRun(result=result, served=served, path=write_ab_report(result, served, out))
