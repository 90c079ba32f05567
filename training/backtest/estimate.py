"""One policy's estimates: its decisions at the logged states, DM roll-outs, IPS/SNIPS/DR terms.

1. :func:`target_decisions_and_probabilities` asks the policy what it would do at every logged
   decision state (the charge's attempts up to the previous logged attempt).
2. :func:`rollout` plays a policy forward under a success model from given states (expected
   values, survival-weighted; no sampling of outcomes; the next declines drawn keyed by charge).
3. :func:`policy_terms` (per charge, wherever the charges live), :func:`weigh` (the importance
   weights, over all charges) and :func:`dr_terms` (per logged retry the weights reach) make a
   policy's DM, IPS, SNIPS and DR per-charge contributions (:func:`combine_estimates`);
   :func:`.runner.run_backtest_parts` runs them on one process's charges or a cluster's.

Nothing here depends on which charges are processed together: a charge's decisions, draws and
model values are functions of its own state, so the partition-wise terms are the one-process
terms, and only :func:`weigh` (whose weight choice looks at every charge) runs on all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.decisions import Constraints, DecisionBatch, RetryPolicy
from retryopt.features.keyed_random import keyed_uniforms
from retryopt.features.localtime import NS_PER_HOUR
from retryopt.serving.policies import StochasticPolicy, SuccessModel
from retryopt.training.backtest.charges import (
    ChargeData,
    chunks,
    hours_since_first,
    member,
    state_batch,
)
from retryopt.training.backtest.config import MIN_ESS
from retryopt.training.backtest.dm import TRANSITION_STREAM, DeclineTransitions
from retryopt.training.backtest.estimators import (
    INSUFFICIENT_OVERLAP,
    MetricSet,
    ModelTerms,
    Overlap,
    StepLog,
    cumulative_weights,
    dr_contributions,
    exploration_warning,
    ips_contributions,
    observed_contributions,
    overlap_diagnostics,
    select_weights,
    step_weights,
    trajectory_weights,
)
from retryopt.training.progress import Progress, quiet


def target_decisions(
    data: ChargeData,
    policy: RetryPolicy,
    *,
    constraints: Constraints,
    chunk: int = 20_000,
    progress: Progress = quiet,
) -> np.ndarray:
    """The policy's retry time (hours since first failure, NaN = stop) at every logged state."""
    return target_decisions_and_probabilities(
        data, policy, constraints=constraints, chunk=chunk, progress=progress
    )[0]


def target_decisions_and_probabilities(
    data: ChargeData,
    policy: RetryPolicy,
    *,
    constraints: Constraints,
    chunk: int = 20_000,
    progress: Progress = quiet,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Target retry times at every logged state, and the target's probability of the logged slot.

    The probabilities are only known for stochastic policies
    (:class:`serving.policies.StochasticPolicy`, e.g. ``UniformRandom``); otherwise None
    (deterministic targets are matched on the slot or a kernel).
    """
    steps = data.steps
    out = np.full(len(steps.step), np.nan)
    stochastic = policy if isinstance(policy, StochasticPolicy) else None
    prob = None if stochastic is None else np.full(len(steps.step), np.nan)
    if not len(steps.step):
        return out, prob
    for k in range(1, int(steps.step.max()) + 1):
        rows = np.flatnonzero(steps.step == k)
        for part in chunks(len(rows), chunk):
            r = rows[part]
            ch = steps.charge[r]
            batch = state_batch(data, ch, np.full(len(r), k - 1), constraints=constraints)
            dec = policy.decide(batch)
            out[r] = hours_since_first(data, ch, dec.retry_at)
            if stochastic is not None and prob is not None:
                at = data.first_failure[ch] + (steps.logged_hours[r] * NS_PER_HOUR).astype(
                    "timedelta64[ns]"
                )
                prob[r] = stochastic.action_probability(batch, at)
        progress(f"{policy.name}: decisions at logged retry {k} ({len(rows)} states)")
    return out, prob


@dataclass(frozen=True, kw_only=True)
class RolloutResult:
    """Expected metrics of a policy played forward under a success model."""

    values: np.ndarray  # (n_states, m)
    decisions: pd.DataFrame  # one row per hypothetical retry: state, step, hours, q, survival


def rollout(
    data: ChargeData,
    policy: RetryPolicy,
    model: SuccessModel,
    charges: np.ndarray,
    prefix_steps: np.ndarray,
    *,
    metrics: MetricSet,
    constraints: Constraints,
    fail_last: bool = False,
    chunk: int = 20_000,
    seed: int = 0,
) -> RolloutResult:
    """Play ``policy`` forward from the given states under ``model`` (expected values).

    Every hypothetical retry that fails is appended to the state as a failed attempt. Its decline
    code is drawn from ``model.transitions`` (:class:`DeclineTransitions`: the empirical
    next-decline distribution given the previous decline code, fitted on the DM's training
    data) with a uniform keyed by (``seed``, charge id, retry number), so a charge's draws do
    not depend on the other charges played with it, and a hard decline after a soft one stops
    the policy as it would in reality; models without ``transitions`` keep the charge's last
    decline code. The charge's value accumulates
    ``survival * (retry cost + q * success reward)``.
    """
    n_states = len(charges)
    values = np.zeros((n_states, len(metrics.names)))
    transitions: DeclineTransitions | None = getattr(model, "transitions", None)
    logs: list[pd.DataFrame] = []
    for part in chunks(n_states, chunk):
        ch = charges[part]
        batch = state_batch(
            data, ch, prefix_steps[part], constraints=constraints, fail_last=fail_last
        )
        att = batch.attempts
        surv = np.ones(len(part))
        alive = np.ones(len(part), dtype=bool)
        used = prefix_steps[part].astype(np.int64).copy()
        for _ in range(constraints.max_retries + 1):
            idx = np.flatnonzero(alive)
            if not idx.size:
                break
            sub_ids = batch.charge_ids[idx]
            sub = DecisionBatch(
                charge_ids=sub_ids,
                now=batch.now[idx],
                attempts=att[member(att[c.CHARGE_ID], sub_ids)],
                history=batch.history,
                constraints=constraints,
            )
            dec = policy.decide(sub)
            at = np.asarray(dec.retry_at, dtype="datetime64[ns]")
            go = ~np.isnat(at)
            alive[idx[~go]] = False
            if not go.any():
                break
            gi = idx[go]
            cand = at[go][:, None]
            go_batch = DecisionBatch(
                charge_ids=sub_ids[go],
                now=batch.now[gi],
                attempts=att[member(att[c.CHARGE_ID], sub_ids[go])],
                history=batch.history,
                constraints=constraints,
            )
            q = np.clip(
                np.nan_to_num(np.asarray(model.predict_candidates(go_batch, cand).proba)[:, 0]),
                0,
                1,
            )
            used[gi] += 1
            hours = hours_since_first(data, ch[gi], at[go])
            amt = data.amount[ch[gi]]
            cost = metrics.retry_cost(used[gi])
            reward = metrics.success_reward(used[gi], hours, amt)
            values[part[gi]] += surv[gi, None] * (cost + q[:, None] * reward)
            logs.append(
                pd.DataFrame(
                    {
                        "state": part[gi],
                        "charge": ch[gi],
                        "step": used[gi],
                        "hours": hours,
                        "q": q,
                        "survival": surv[gi],
                    }
                )
            )
            surv[gi] *= 1.0 - q
            # append the hypothetical failed retries to the states
            last = att.groupby(c.CHARGE_ID, sort=False).tail(1).set_index(c.CHARGE_ID)
            new = last.loc[sub_ids[go]].reset_index()
            if transitions is not None:
                draws = keyed_uniforms(seed, sub_ids[go], used[gi], stream=TRANSITION_STREAM)
                code, advice = transitions.sample(new[c.DECLINE_CODE].to_numpy(dtype=object), draws)
                new[c.DECLINE_CODE] = pd.Series(code, index=new.index, dtype=object).astype(
                    att[c.DECLINE_CODE].dtype
                )
                new[c.NETWORK_ADVICE_CODE] = pd.Series(
                    advice, index=new.index, dtype=object
                ).astype(att[c.NETWORK_ADVICE_CODE].dtype)
            new[c.ATTEMPTED_AT] = pd.to_datetime(at[go]).tz_localize("UTC")
            new[c.OUTCOME] = c.FAILED
            new[c.ATTEMPT_ID] = [
                f"{i}_sim{int(s)}" for i, s in zip(sub_ids[go], used[gi], strict=False)
            ]
            new[c.RETRY_PROPENSITY] = np.nan
            att = pd.concat([att, new[att.columns]], ignore_index=True).sort_values(
                [c.CHARGE_ID, c.ATTEMPTED_AT], kind="stable"
            )
            batch = DecisionBatch(
                charge_ids=batch.charge_ids,
                now=_set(batch.now, gi, at[go]),
                attempts=att,
                history=batch.history,
                constraints=constraints,
            )
            alive[gi[surv[gi] < 1e-6]] = False
    decisions = (
        pd.concat(logs, ignore_index=True)
        if logs
        else pd.DataFrame(columns=["state", "charge", "step", "hours", "q", "survival"])
    )
    return RolloutResult(values=values, decisions=decisions)


def _set(arr: np.ndarray, idx: np.ndarray, vals: np.ndarray) -> np.ndarray:
    out = np.asarray(arr).copy()
    out[idx] = vals
    return out


@dataclass(frozen=True, kw_only=True)
class PolicyTerms:
    """What a policy's estimates need from each charge's own state (per charge or logged retry).

    ``target``: its retry time (hours since the first failure, NaN = stop) at every logged
    state; ``probability``: a stochastic target's probability of the logged slot (else None);
    ``dm``: the direct method's values from the first failure, ``(n, m)`` or ``(1 + R, n, m)``
    with R model replicates (None without a model).
    """

    target: np.ndarray
    probability: np.ndarray | None
    dm: np.ndarray | None


def policy_terms(
    data: ChargeData,
    label: str,
    policy: RetryPolicy,
    *,
    metrics: MetricSet,
    constraints: Constraints,
    model: SuccessModel | None,
    progress: Progress = quiet,
) -> PolicyTerms:
    """The policy's decisions at the logged states and its direct-method values."""
    target, target_prob = target_decisions_and_probabilities(
        data, policy, constraints=constraints, progress=progress
    )
    if model is None:
        return PolicyTerms(target=target, probability=target_prob, dm=None)
    start = np.arange(data.n)
    first = np.zeros(data.n, dtype=np.int64)
    values = rollout(
        data, policy, model, start, first, metrics=metrics, constraints=constraints
    ).values
    reps = list(getattr(model, "replicates", []) or [])
    if reps:
        # (1 + R, n, m): the point model, then R refits on customer-bootstrap reweightings;
        # bootstrap replicate b plays under refit b mod R (model error + charge sampling)
        played = [
            rollout(
                data,
                policy,
                rep,
                start,
                first,
                metrics=metrics,
                constraints=constraints,
                seed=r + 1,
            ).values
            for r, rep in enumerate(reps)
        ]
        values = np.stack([values, *played])
    progress(f"{label}: direct method played forward on {data.n} charges")
    return PolicyTerms(target=target, probability=target_prob, dm=values)


@dataclass(frozen=True, kw_only=True)
class Weighing:
    """A policy's importance weights over all evaluated charges and what they allow.

    ``log``: the logged retries with the target's decisions; ``W``: cumulative weights per
    logged retry (None without exploration); ``ips`` / ``rho``: IPS numerators and trajectory
    weights (None when the overlap does not support them).
    """

    log: StepLog
    W: np.ndarray | None
    ips: np.ndarray | None
    rho: np.ndarray | None
    overlap: Overlap
    warning: str | None

    def dr_rows(self) -> np.ndarray:
        """Logged retries whose weight is non-zero (DR needs the model there); none unless
        the weighted estimators are supported."""
        if self.W is None or self.ips is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.W != 0)


def weigh(
    steps: StepLog,
    n_charges: int,
    label: str,
    terms: PolicyTerms,
    *,
    metrics: MetricSet,
    bandwidth_hours: float = 6.0,
    slot_hours: float = 1.0,
    min_ess: float = MIN_ESS,
    progress: Progress = quiet,
) -> Weighing:
    """Importance weights of the policy's decisions, their overlap and the IPS numerators.

    Runs over every evaluated charge at once: the choice of weights
    (:func:`.estimators.select_weights`) looks at their effective sample size.
    """
    warning = exploration_warning(steps.propensity)
    log = StepLog(**{**steps.__dict__, "target_hours": terms.target})
    if warning is not None:
        overlap = overlap_diagnostics(
            log, np.zeros(len(terms.target)), np.ones(n_charges), warning=warning
        )
        return Weighing(log=log, W=None, ips=None, rho=None, overlap=overlap, warning=warning)
    w, method, _ok = select_weights(
        log,
        n_charges,
        bandwidth_hours=bandwidth_hours,
        slot_hours=slot_hours,
        target_probability=terms.probability,
        min_ess=min_ess,
    )
    W = cumulative_weights(log, w)
    rho = trajectory_weights(log, W, n_charges)
    # support at the target's own hour: exact-slot weights, or the exact ratios of a stochastic
    # target (the kernel's weights would also count the hours around it)
    exact = (
        w
        if method != "kernel"
        else step_weights(log, bandwidth_hours=slot_hours, slot_hours=slot_hours)
    )
    overlap = overlap_diagnostics(
        log, w, rho, warning=None, method=method, min_ess=min_ess, support_weights=exact
    )
    if not overlap.supported:
        warning = (
            f"{label}: IPS, SNIPS and DR unavailable: {INSUFFICIENT_OVERLAP} ({method} "
            f"weights: effective sample size {overlap.ess:.1f} (minimum {min_ess:g}), mean "
            f"trajectory weight {overlap.mean_weight:.2f} (expected 1); "
            f"{overlap.matched_share:.1%} of its retry decisions matched by the log; "
            f"first-retry support {overlap.first_retry_support:.2f} +- "
            f"{overlap.first_retry_support_se:.2f}: the mean exact-slot weight of its first "
            "retries, 1 when the log could have made each at its hour, below 1 when they lie "
            "outside what the log explored)"
        )
        progress(warning)
        return Weighing(log=log, W=W, ips=None, rho=None, overlap=overlap, warning=warning)
    ips = ips_contributions(log, W, metrics, n_charges)
    return Weighing(log=log, W=W, ips=ips, rho=rho, overlap=overlap, warning=None)


def dr_terms(
    data: ChargeData,
    policy: RetryPolicy,
    model: SuccessModel,
    rows: np.ndarray,
    *,
    metrics: MetricSet,
    constraints: Constraints,
) -> tuple[np.ndarray, np.ndarray]:
    """DR's model terms at logged retries ``rows`` (indices into ``data.steps``).

    Returns the model's success probability at the logged state and time, ``(len(rows),)``, and
    the policy's value-to-go after that retry failed, ``(len(rows), m)``.
    """
    steps = data.steps
    q = np.full(len(rows), np.nan)
    after = np.full((len(rows), len(metrics.names)), np.nan)
    for k in np.unique(steps.step[rows]):
        at_k = np.flatnonzero(steps.step[rows] == k)
        r = rows[at_k]
        ch = steps.charge[r]
        batch = state_batch(data, ch, np.full(len(r), k - 1), constraints=constraints)
        at = data.first_failure[ch] + (steps.logged_hours[r] * NS_PER_HOUR).astype(
            "timedelta64[ns]"
        )
        q[at_k] = np.asarray(model.predict_candidates(batch, at[:, None]).proba)[:, 0]
        after[at_k] = rollout(
            data,
            policy,
            model,
            ch,
            np.full(len(r), k),
            metrics=metrics,
            constraints=constraints,
            fail_last=True,
        ).values
    return q, after


@dataclass(kw_only=True)
class PolicyEstimate:
    """Per-charge contributions of one policy under every available estimator."""

    label: str
    numerators: dict[str, np.ndarray]
    denominators: dict[str, np.ndarray | None]
    overlap: Overlap | None
    warning: str | None
    target_hours: np.ndarray | None = None


def combine_estimates(
    label: str,
    steps: StepLog,
    n_charges: int,
    terms: PolicyTerms | None,
    weighing: Weighing | None,
    dr: tuple[np.ndarray, np.ndarray] | None,
    *,
    metrics: MetricSet,
) -> PolicyEstimate:
    """A policy's DM, IPS, SNIPS and DR contributions from its terms, weights and DR terms.

    ``terms is None``: the logged policy, evaluated on-policy (``observed``). ``dr``: the
    :func:`dr_terms` at ``weighing.dr_rows()`` (None when no model or no supported weights).
    """
    if terms is None or weighing is None:
        observed = observed_contributions(steps, metrics, n_charges)
        return PolicyEstimate(
            label=label,
            numerators={"observed": observed},
            denominators={"observed": None},
            overlap=None,
            warning=None,
        )
    nums: dict[str, np.ndarray] = {}
    dens: dict[str, np.ndarray | None] = {}
    if terms.dm is not None:
        nums["dm"] = terms.dm
        dens["dm"] = None
    if weighing.ips is not None:
        nums["ips"] = weighing.ips
        dens["ips"] = None
        nums["snips"] = weighing.ips
        dens["snips"] = weighing.rho
        if terms.dm is not None and dr is not None and weighing.W is not None:
            W = weighing.W
            rows = weighing.dr_rows()
            q = np.full(len(W), np.nan)
            after = np.full((len(W), len(metrics.names)), np.nan)
            q[rows], after[rows] = dr
            start = terms.dm[0] if terms.dm.ndim == 3 else terms.dm
            model_terms = ModelTerms(value_start=start, q_logged=q, value_after_fail=after)
            nums["dr"] = dr_contributions(weighing.log, W, model_terms, metrics, n_charges)
            dens["dr"] = None
    return PolicyEstimate(
        label=label,
        numerators=nums,
        denominators=dens,
        overlap=weighing.overlap,
        warning=weighing.warning,
        target_hours=terms.target,
    )
