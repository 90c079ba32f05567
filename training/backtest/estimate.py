"""One policy's estimates: its decisions at the logged states, DM roll-outs, IPS/SNIPS/DR terms.

1. :func:`target_decisions_and_probabilities` asks the policy what it would do at every logged
   decision state (the charge's attempts up to the previous logged attempt).
2. :func:`rollout` plays a policy forward under a success model from given states (expected
   values, survival-weighted; no sampling of outcomes).
3. :func:`estimate_policy` combines them into DM, IPS, SNIPS and DR per-charge contributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.decisions import Constraints, DecisionBatch, RetryPolicy
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
from retryopt.training.backtest.dm import DeclineTransitions
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
    code is drawn (seeded) from ``model.transitions`` (:class:`DeclineTransitions`: the empirical
    next-decline distribution given the previous decline code, fitted on the DM's training
    data), so a hard decline after a soft one stops the policy as it would in reality; models
    without ``transitions`` keep the charge's last decline code. The charge's value accumulates
    ``survival * (retry cost + q * success reward)``.
    """
    n_states = len(charges)
    values = np.zeros((n_states, len(metrics.names)))
    transitions: DeclineTransitions | None = getattr(model, "transitions", None)
    rng = np.random.default_rng(seed)
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
                code, advice = transitions.sample(new[c.DECLINE_CODE].to_numpy(dtype=object), rng)
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


@dataclass(kw_only=True)
class PolicyEstimate:
    """Per-charge contributions of one policy under every available estimator."""

    label: str
    numerators: dict[str, np.ndarray]
    denominators: dict[str, np.ndarray | None]
    overlap: Overlap | None
    warning: str | None
    target_hours: np.ndarray | None = None
    rollout: pd.DataFrame | None = None


def estimate_policy(
    data: ChargeData,
    label: str,
    policy: RetryPolicy | None,
    *,
    metrics: MetricSet,
    constraints: Constraints,
    model: SuccessModel | None,
    bandwidth_hours: float = 6.0,
    slot_hours: float = 1.0,
    min_ess: float = MIN_ESS,
    progress: Progress = quiet,
) -> PolicyEstimate:
    """Contributions of DM, IPS, SNIPS and DR for one policy (``None`` = the logged policy).

    The logged policy is evaluated on-policy (``observed``). Without exploration IPS/SNIPS/DR are
    left out and :data:`~training.backtest.estimators.NO_EXPLORATION_WARNING` is returned.
    """
    steps = data.steps
    observed = observed_contributions(steps, metrics, data.n)
    if policy is None:
        return PolicyEstimate(
            label=label,
            numerators={"observed": observed},
            denominators={"observed": None},
            overlap=None,
            warning=None,
        )
    warning = exploration_warning(steps.propensity)
    target, target_prob = target_decisions_and_probabilities(
        data, policy, constraints=constraints, progress=progress
    )
    log = StepLog(**{**steps.__dict__, "target_hours": target})
    nums: dict[str, np.ndarray] = {}
    dens: dict[str, np.ndarray | None] = {}
    roll_df = None
    start: RolloutResult | None = None
    if model is not None:
        start = rollout(
            data,
            policy,
            model,
            np.arange(data.n),
            np.zeros(data.n, dtype=np.int64),
            metrics=metrics,
            constraints=constraints,
        )
        roll_df = start.decisions
        nums["dm"] = start.values
        dens["dm"] = None
        reps = list(getattr(model, "replicates", []) or [])
        if reps:
            # (1 + R, n, m): the point model, then R refits on customer-bootstrap reweightings;
            # bootstrap replicate b plays under refit b mod R (model error + charge sampling)
            played = [
                rollout(
                    data,
                    policy,
                    rep,
                    np.arange(data.n),
                    np.zeros(data.n, dtype=np.int64),
                    metrics=metrics,
                    constraints=constraints,
                    seed=r + 1,
                ).values
                for r, rep in enumerate(reps)
            ]
            nums["dm"] = np.stack([start.values, *played])
        progress(f"{label}: direct method played forward on {data.n} charges")
    overlap = None
    if warning is None:
        w, method, _ok = select_weights(
            log,
            data.n,
            bandwidth_hours=bandwidth_hours,
            slot_hours=slot_hours,
            target_probability=target_prob,
            min_ess=min_ess,
        )
        W = cumulative_weights(log, w)
        rho = trajectory_weights(log, W, data.n)
        overlap = overlap_diagnostics(log, w, rho, warning=None, method=method, min_ess=min_ess)
        if not overlap.supported:
            warning = (
                f"{label}: IPS, SNIPS and DR unavailable: {INSUFFICIENT_OVERLAP} ({method} "
                f"weights: effective sample size {overlap.ess:.1f} (minimum {min_ess:g}), mean "
                f"trajectory weight {overlap.mean_weight:.2f} (expected 1); "
                f"{overlap.matched_share:.1%} of its retry decisions matched by the log)"
            )
            progress(warning)
        else:
            ips = ips_contributions(log, W, metrics, data.n)
            nums["ips"] = ips
            dens["ips"] = None
            nums["snips"] = ips
            dens["snips"] = rho
        if model is not None and start is not None and overlap.supported:
            nz = np.flatnonzero(W != 0)
            q = np.full(len(W), np.nan)
            after = np.full((len(W), len(metrics.names)), np.nan)
            for k in np.unique(log.step[nz]):
                r = nz[log.step[nz] == k]
                ch = log.charge[r]
                batch = state_batch(data, ch, np.full(len(r), k - 1), constraints=constraints)
                at = data.first_failure[ch] + (log.logged_hours[r] * NS_PER_HOUR).astype(
                    "timedelta64[ns]"
                )
                q[r] = np.asarray(model.predict_candidates(batch, at[:, None]).proba)[:, 0]
                after[r] = rollout(
                    data,
                    policy,
                    model,
                    ch,
                    np.full(len(r), k),
                    metrics=metrics,
                    constraints=constraints,
                    fail_last=True,
                ).values
            terms = ModelTerms(value_start=start.values, q_logged=q, value_after_fail=after)
            nums["dr"] = dr_contributions(log, W, terms, metrics, data.n)
            dens["dr"] = None
            progress(f"{label}: doubly robust corrections on {len(nz)} matched retries")
    else:
        overlap = overlap_diagnostics(log, np.zeros(len(target)), np.ones(data.n), warning=warning)
    return PolicyEstimate(
        label=label,
        numerators=nums,
        denominators=dens,
        overlap=overlap,
        warning=warning,
        target_hours=target,
        rollout=roll_df,
    )
