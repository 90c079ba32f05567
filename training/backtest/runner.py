"""Run a backtest: logged states -> target decisions -> DM roll-outs -> estimates with CIs.

Pure functions over a canonical attempts frame (no file reads, no printing; the files are read
and written by :mod:`.files` and the command line):

1. :func:`.charges.prepare_charges` finds the failed charges and their logged retries;
2. the direct-method model is given or fitted on customers kept apart (:mod:`.dm`);
3. :func:`.estimate.estimate_policy` gives every policy's DM, IPS, SNIPS and DR per-charge
   contributions;
4. :func:`run_backtest` bootstraps them by charge into estimates, uplifts and breakdowns with 95 %
   intervals (:class:`.result.BacktestResult`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints, RetryPolicy
from retryopt.features.localtime import NS_PER_HOUR
from retryopt.features.taxonomy import classify_codes
from retryopt.serving.policies import SuccessModel
from retryopt.training.backtest.charges import (
    ChargeData,
    chunks,
    member,
    prepare_charges,
    state_batch,
)
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.dm import dm_customers, fit_success_model, split_customers
from retryopt.training.backtest.estimate import estimate_policy
from retryopt.training.backtest.estimators import MetricSet, bootstrap_means, objective_for
from retryopt.training.backtest.metrics import (
    breakdown_table,
    curve_table,
    estimates_table,
    join_key,
    retry_number_table,
    rule_checks,
    uplift_table,
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
        worlds), reported as the estimator ``truth``.
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
    all_failed = prepare_charges(attempts, charge_ids=eval_charges, keep_history=False, fx=rates)
    ids = all_failed.charge_ids
    model = dm_model
    if model is None and cfg.fit_dm:
        fit_part = split_customers(
            all_failed.attrs["customer_id"].to_numpy(), share=cfg.dm_share, seed=seed
        )
        fit_ids = ids[fit_part]
        ids = ids[~fit_part]
        # the DM may learn from every customer that is not evaluated (capped), not only the
        # kept-apart half of the evaluated period's customers
        evaluated = pd.Index(pd.unique(all_failed.attrs["customer_id"].to_numpy()[~fit_part]))
        everyone = pd.unique(attempts[c.CUSTOMER_ID].astype(str).to_numpy(dtype=object))
        others = everyone[evaluated.get_indexer(everyone) < 0]
        fit_customers = dm_customers(attempts, others, max_examples=cfg.dm_max_examples, seed=seed)
        fit_rows = attempts[member(attempts[c.CUSTOMER_ID], fit_customers)]
        progress(
            f"fitting the direct-method model on {len(fit_customers)} customers kept apart "
            f"({len(fit_rows)} attempts; {len(fit_ids)} failed charges in the split)"
        )
        model = fit_success_model(fit_rows, seed=seed, refits=cfg.dm_refits)
        progress("direct-method model fitted")
    data = prepare_charges(attempts, charge_ids=ids, fx=rates)
    progress(f"evaluating {data.n} failed charges with {len(data.steps.step)} logged retries")
    numerators: dict[str, np.ndarray] = {}
    denominators: dict[str, np.ndarray | None] = {}
    overlap: dict[str, dict[str, Any]] = {}
    rules: dict[str, dict[str, int]] = {}
    warnings: list[str] = []
    hard_state = _hard_states(data)
    for label, policy in policies.items():
        t0 = time.perf_counter()
        est = estimate_policy(
            data,
            label,
            policy,
            metrics=mset,
            constraints=cons,
            model=model,
            bandwidth_hours=cfg.bandwidth_hours,
            min_ess=min_ess,
            progress=progress,
        )
        for name, num in est.numerators.items():
            numerators[join_key(label, name)] = num
            denominators[join_key(label, name)] = est.denominators[name]
        if est.overlap is not None:
            overlap[label] = est.overlap.to_dict()
        if est.warning and est.warning not in warnings:
            warnings.append(est.warning)
        if est.target_hours is not None:
            rules[label] = _rules_for(data, hard_state, est.target_hours)
        progress(f"{label}: done in {time.perf_counter() - t0:.1f} s")
    if truth_fn is not None:
        truth = {**(truth or {}), **truth_fn(data.charge_ids)}
    if truth:
        for label, contrib in truth.items():
            numerators[join_key(label, "truth")] = contrib
            denominators[join_key(label, "truth")] = None
    groups: dict[str, tuple[np.ndarray, Sequence[str]]] = {}
    for g in BREAKDOWNS:
        codes, levels = pd.factorize(data.attrs[g].to_numpy(), sort=True)
        groups[g] = (codes, tuple(str(v) for v in levels))
    progress(f"bootstrap: {cfg.n_boot} resamples of {data.n} charges x {len(numerators)} estimates")
    res = bootstrap_means(
        numerators,
        denominators,
        metric_names=mset.names,
        n_boot=cfg.n_boot,
        seed=seed,
        group_codes=groups,
    )
    baseline = next(iter(policies)) if policies else ""
    calib = _calibration(data, model) if model is not None else pd.DataFrame()
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
            "n_charges": data.n,
            "n_logged_retries": len(data.steps.step),
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


def _hard_states(data: ChargeData) -> np.ndarray:
    """Per logged retry row: whether the decline before it is hard (never retry)."""
    att = data.attempts
    info = classify_codes(att[c.DECLINE_CODE], att[c.NETWORK_ADVICE_CODE])
    hard = info["hard"].to_numpy(dtype=bool) & (att[c.OUTCOME].astype(str) == c.FAILED).to_numpy()
    key = att["_charge"].to_numpy().astype(np.int64) * 1000 + att["_step"].to_numpy()
    lookup = pd.Series(hard, index=key)
    want = data.steps.charge.astype(np.int64) * 1000 + data.steps.step - 1
    return lookup.reindex(want).fillna(False).to_numpy(dtype=bool)


def _rules_for(data: ChargeData, hard_state: np.ndarray, target: np.ndarray) -> dict[str, int]:
    steps = data.steps
    k_max = int(steps.step.max()) if len(steps.step) else 0
    hours = np.full((data.n, k_max + 1), np.nan)
    hours[:, 0] = 0.0  # the first failure
    hours[steps.charge, steps.step] = steps.logged_hours
    prior = hours[steps.charge]
    prior[np.arange(k_max + 1)[None, :] >= steps.step[:, None]] = np.nan  # attempts before it
    return rule_checks(hard_state=hard_state, target_hours=target, attempt_hours_by_row=prior)


def _calibration(data: ChargeData, model: SuccessModel, *, n_bins: int = 10) -> pd.DataFrame:
    """Reliability of the DM model on the evaluated charges' first logged retries."""
    steps = data.steps
    rows = np.flatnonzero(steps.step == 1)
    if not rows.size:
        return pd.DataFrame(columns=["bin", "mean_predicted", "observed", "n"])
    ch = steps.charge[rows]
    at = data.first_failure[ch] + (steps.logged_hours[rows] * NS_PER_HOUR).astype("timedelta64[ns]")
    preds = []
    for part in chunks(len(rows), 5000):
        batch = state_batch(
            data, ch[part], np.zeros(len(part), dtype=np.int64), constraints=Constraints()
        )
        preds.append(np.asarray(model.predict_candidates(batch, at[part][:, None]).proba)[:, 0])
    p = np.concatenate(preds)
    y = steps.success[rows].astype(float)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
    b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    df = pd.DataFrame({"bin": b, "p": p, "y": y})
    out = df.groupby("bin").agg(
        mean_predicted=("p", "mean"), observed=("y", "mean"), n=("y", "size")
    )
    return out.reset_index()
