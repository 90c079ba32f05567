"""Run a backtest: logged states -> target decisions -> DM roll-outs -> estimates with CIs.

Pure functions over a canonical attempts frame (no file reads, no printing; the files are read
and written by :mod:`.files` and the command line):

1. :func:`.charges.prepare_charges` finds the failed charges and their logged retries;
2. the direct-method model is given or fitted on customers kept apart (:mod:`.dm`);
3. :mod:`.estimate` gives every policy's DM, IPS, SNIPS and DR per-charge contributions;
4. they are bootstrapped by charge into estimates, uplifts and breakdowns with 95 % intervals
   (:class:`.result.BacktestResult`).

:func:`run_backtest_parts` runs these steps over customer partitions (:mod:`.parts`): the
per-charge steps where each partition lives, the DM fit, the weights and the bootstrap on the
merged charges in one process's order. :func:`run_backtest` is the one-process case (one
partition: the whole history); a Dask cluster runs the same function
(:mod:`training.cluster_backtest`), so both give the same result for the same seed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints, RetryPolicy
from retryopt.serving.policies import SuccessModel
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.dm import fit_success_model, pick_dm_customers
from retryopt.training.backtest.estimate import PolicyTerms, combine_estimates, weigh
from retryopt.training.backtest.estimators import (
    MetricSet,
    StepLog,
    bootstrap_means,
    objective_for,
)
from retryopt.training.backtest.metrics import (
    breakdown_table,
    curve_table,
    estimates_table,
    join_key,
    retry_number_table,
    uplift_table,
)
from retryopt.training.backtest.parts import (
    ChargeMerge,
    Executor,
    FailedPart,
    InProcess,
    calibration_part,
    dr_part,
    eval_part,
    failed_part,
    part_shape,
    policy_part,
    rows_of_customers,
)
from retryopt.training.backtest.result import BacktestResult
from retryopt.training.progress import Progress, quiet

BREAKDOWNS: tuple[str, ...] = ("decline_family", "card_funding", "card_country")


def run_backtest(
    attempts: pd.DataFrame,
    policies: Mapping[str, RetryPolicy | None],
    *,
    config: BacktestConfig | None = None,
    dm_model: SuccessModel | None = None,
    eval_charges: np.ndarray | None = None,
    metrics: MetricSet | None = None,
    truth: Mapping[str, np.ndarray] | None = None,
    truth_fn: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None,
    fx: FxRates | None = None,
    progress: Progress = quiet,
) -> BacktestResult:
    """Compare policies on logged history with DM, IPS, SNIPS and DR and bootstrap intervals.

    Parameters
    ----------
    attempts
        Canonical attempts frame.
    policies
        Label -> policy (``None`` = the logged policy, evaluated on-policy).
    config
        The backtest's options (bootstrap, seed, bandwidth, DM fit, constraints, ...).
    dm_model
        Success model for DM/DR. When None and ``config.fit_dm``, a LightGBM is fitted on the
        customers of a ``config.dm_share`` split of the failed charges, and the others are
        evaluated (the model never sees the evaluated charges).
    eval_charges
        Optional charges to evaluate (default: every failed charge not used for the DM model).
    metrics
        The metrics estimated (default :class:`.estimators.MetricSet`).
    truth
        Optional per-policy ``(n_charges, m)`` true contributions on the same charges (simulated
        worlds, in the evaluated charges' order: by charge id), reported as the estimator
        ``truth``.
    truth_fn
        Alternative to ``truth``: called with the evaluated charge ids (after the DM split) and
        returning their true contributions in that order.
    fx
        Exchange rates into ``config.reporting_currency`` of every amount (default: the
        reference rates, :class:`features.currency.FxRates`).
    progress
        Receives progress lines.

    Returns
    -------
    BacktestResult
    """
    return run_backtest_parts(
        InProcess(),
        [attempts],
        policies,
        config=config,
        dm_model=dm_model,
        eval_charges=eval_charges,
        metrics=metrics,
        truth=truth,
        truth_fn=truth_fn,
        fx=fx,
        progress=progress,
    )


def run_backtest_parts(
    executor: Executor,
    parts: Sequence[Any],
    policies: Mapping[str, RetryPolicy | None],
    *,
    config: BacktestConfig | None = None,
    dm_model: SuccessModel | None = None,
    eval_charges: np.ndarray | None = None,
    eval_months: Sequence[str] | None = None,
    metrics: MetricSet | None = None,
    truth: Mapping[str, np.ndarray] | None = None,
    truth_fn: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None,
    fx: FxRates | None = None,
    progress: Progress = quiet,
) -> BacktestResult:
    """:func:`run_backtest` over customer partitions of the attempts (handles of ``executor``).

    Every customer's attempts must be in one partition. ``eval_months`` (``YYYY-MM``) restricts
    the evaluation to failed charges first failing in those months, found per partition
    (:func:`.charges.charges_in_months`); the other parameters are :func:`run_backtest`'s.
    """
    cfg = config or BacktestConfig()
    rates = fx or FxRates(reporting=cfg.reporting_currency)
    cons, own_metrics = objective_for(cfg.constraints or Constraints(), rates)
    mset = metrics or own_metrics
    if rates.reporting != cfg.reporting_currency:
        raise ValueError(
            f"the FX rates report in {rates.reporting!r}, the config in {cfg.reporting_currency!r}"
        )
    seed, min_ess = cfg.seed, cfg.min_ess
    started = time.perf_counter()
    fit_dm = dm_model is None and cfg.fit_dm
    failed = executor.map(
        failed_part,
        parts,
        eval_charges=None if eval_charges is None else executor.share(eval_charges),
        eval_months=None if eval_months is None else list(eval_months),
        fx=rates,
        fit_dm=fit_dm,
        dm_share=cfg.dm_share,
        seed=seed,
    )
    model = dm_model
    if fit_dm:
        model = _fit_dm(executor, parts, executor.gather(failed), cfg, progress)
    evaluated = executor.map(eval_part, parts, failed, fx=rates)
    merge = ChargeMerge(executor.gather(executor.map(part_shape, evaluated)))
    steps = merge.steps
    progress(f"evaluating {merge.n} failed charges with {len(steps.step)} logged retries")
    shared_model = None if model is None else executor.share(model)
    numerators: dict[str, np.ndarray] = {}
    denominators: dict[str, np.ndarray | None] = {}
    overlap: dict[str, dict[str, Any]] = {}
    rules: dict[str, dict[str, int]] = {}
    warnings: list[str] = []
    for label, policy in policies.items():
        t0 = time.perf_counter()
        terms, weighing, dr = None, None, None
        if policy is not None:
            shared_policy = executor.share(policy)
            done = executor.gather(
                executor.map(
                    policy_part,
                    evaluated,
                    label=label,
                    policy=shared_policy,
                    metrics=mset,
                    constraints=cons,
                    model=shared_model,
                )
            )
            terms = _merge_terms(merge, [d[0] for d in done])
            rules[label] = {k: sum(d[1][k] for d in done) for k in done[0][1]} if done else {}
            progress(f"{label}: decisions and direct method on {merge.n} charges")
            weighing = weigh(
                steps,
                merge.n,
                label,
                terms,
                metrics=mset,
                bandwidth_hours=cfg.bandwidth_hours,
                min_ess=min_ess,
                progress=progress,
            )
            rows = weighing.dr_rows()
            if model is not None and weighing.ips is not None:
                local = merge.split_rows(rows)
                results = executor.gather(
                    executor.map(
                        dr_part,
                        evaluated,
                        local,
                        policy=shared_policy,
                        model=shared_model,
                        metrics=mset,
                        constraints=cons,
                    )
                )
                dr = (
                    merge.place_rows(rows, [r[0] for r in results]),
                    merge.place_rows(rows, [r[1] for r in results]),
                )
                progress(f"{label}: doubly robust corrections on {len(rows)} matched retries")
        est = combine_estimates(label, steps, merge.n, terms, weighing, dr, metrics=mset)
        for name, num in est.numerators.items():
            numerators[join_key(label, name)] = num
            denominators[join_key(label, name)] = est.denominators[name]
        if est.overlap is not None:
            overlap[label] = est.overlap.to_dict()
        if est.warning and est.warning not in warnings:
            warnings.append(est.warning)
        progress(f"{label}: done in {time.perf_counter() - t0:.1f} s")
    if truth_fn is not None:
        truth = {**(truth or {}), **truth_fn(merge.charge_ids)}
    if truth:
        for label, contrib in truth.items():
            numerators[join_key(label, "truth")] = contrib
            denominators[join_key(label, "truth")] = None
    groups: dict[str, tuple[np.ndarray, Sequence[str]]] = {}
    for g in BREAKDOWNS:
        codes, levels = pd.factorize(merge.attrs[g].to_numpy(), sort=True)
        groups[g] = (codes, tuple(str(v) for v in levels))
    progress(
        f"bootstrap: {cfg.n_boot} resamples of {merge.n} charges x {len(numerators)} estimates"
    )
    res = bootstrap_means(
        numerators,
        denominators,
        metric_names=mset.names,
        n_boot=cfg.n_boot,
        seed=seed,
        group_codes=groups,
    )
    baseline = next(iter(policies)) if policies else ""
    calib = pd.DataFrame()
    if model is not None:
        predicted = executor.gather(executor.map(calibration_part, evaluated, model=shared_model))
        calib = calibration_table(merge.rows(predicted), steps)
    return BacktestResult(
        estimates=estimates_table(res, mset),
        uplift=uplift_table(res, mset, baseline=baseline),
        breakdowns=breakdown_table(res, mset),
        retry_numbers=retry_number_table(res, mset),
        curves=curve_table(res, mset),
        overlap=overlap,
        rules=rules,
        calibration=calib,
        warnings=warnings,
        meta={
            "n_charges": merge.n,
            "n_logged_retries": len(steps.step),
            "n_boot": cfg.n_boot,
            "seed": seed,
            "baseline": baseline,
            "bandwidth_hours": cfg.bandwidth_hours,
            "min_ess": min_ess,
            "dm_refits": len(getattr(model, "replicates", []) or []),
            "constraints": dataclasses.asdict(cons),
            "dm_model": getattr(model, "version", None),
            "seconds": round(time.perf_counter() - started, 2),
            "policies": list(policies),
            "amount_unit": rates.reporting.upper(),
            "fx_source": rates.source,
        },
    )


def _fit_dm(
    executor: Executor,
    parts: Sequence[Any],
    failed: Sequence[FailedPart],
    cfg: BacktestConfig,
    progress: Progress,
) -> SuccessModel:
    """The DM fitted on customers kept apart, gathered from the partitions (capped)."""
    # the DM may learn from every customer that is not evaluated (capped), not only the
    # kept-apart half of the evaluated period's customers
    candidates = pd.concat([f.dm_candidates for f in failed if f.dm_candidates is not None])
    customers = pick_dm_customers(candidates, max_examples=cfg.dm_max_examples, seed=cfg.seed)
    shared = executor.share(customers)
    rows = executor.gather(executor.map(rows_of_customers, parts, customers=shared))
    fit_rows = pd.concat(rows, ignore_index=True)
    kept_apart = sum(f.n_kept_apart for f in failed)
    progress(
        f"fitting the direct-method model on {len(customers)} customers kept apart "
        f"({len(fit_rows)} attempts; {kept_apart} failed charges in the split)"
    )
    model = fit_success_model(fit_rows, seed=cfg.seed, refits=cfg.dm_refits)
    progress("direct-method model fitted")
    return model


def _merge_terms(merge: ChargeMerge, terms: Sequence[PolicyTerms]) -> PolicyTerms:
    """One policy's terms of every partition, in the canonical order."""
    probs = [t.probability for t in terms]
    dms = [t.dm for t in terms]
    dm = None
    if dms and all(d is not None for d in dms):
        arrays = [np.asarray(d) for d in dms]
        dm = merge.charges(arrays, axis=arrays[0].ndim - 2)
    return PolicyTerms(
        target=merge.rows([t.target for t in terms]),
        probability=None if any(p is None for p in probs) else merge.rows(probs),  # type: ignore[arg-type]
        dm=dm,
    )


def calibration_table(predicted: np.ndarray, steps: StepLog, *, n_bins: int = 10) -> pd.DataFrame:
    """Reliability of the DM model on the evaluated charges' first logged retries.

    ``predicted``: per logged retry, the DM's success probability (:func:`.parts.calibration_part`,
    set at the first logged retries).
    """
    rows = np.flatnonzero(steps.step == 1)
    if not rows.size:
        return pd.DataFrame(columns=["bin", "mean_predicted", "observed", "n"])
    p = predicted[rows]
    y = steps.success[rows].astype(float)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    df = pd.DataFrame({"bin": b, "p": p, "y": y})
    out = df.groupby("bin").agg(
        mean_predicted=("p", "mean"), observed=("y", "mean"), n=("y", "size")
    )
    return out.reset_index()
