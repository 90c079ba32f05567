"""Run a backtest: logged states -> target decisions -> DM roll-outs -> estimates with CIs.

Pipeline (pure functions over a canonical attempts frame; I/O lives in :mod:`.report` and the
CLI):

1. :func:`prepare_charges` finds the failed charges (first attempt failed) and their logged
   retries (step 1, 2, ...), the first-failure time, amount and the breakdown attributes.
2. For each target policy, :func:`target_decisions` asks the policy what it would do at every
   logged decision state (the charge's attempts up to the previous logged attempt).
3. :func:`rollout` plays a policy forward under a success model from given states, assuming
   every hypothetical retry fails with the charge's last decline code until one succeeds; the
   model's probabilities give the expected metrics (survival-weighted; no sampling).
4. :func:`estimate_policy` combines them into DM, IPS, SNIPS and DR per-charge contributions.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints, DecisionBatch
from retryopt.training.backtest.estimators import (
    INSUFFICIENT_OVERLAP,
    MIN_ESS,
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

HOUR_NS = 3_600_000_000_000
BREAKDOWNS: tuple[str, ...] = ("decline_family", "card_funding", "card_country")


class Policy(Protocol):
    """The :class:`features.decisions.RetryPolicy` protocol (restated for typing)."""

    name: str

    def decide(self, batch: DecisionBatch) -> Any:
        """Return :class:`features.decisions.PolicyDecisions` for ``batch``."""
        ...


class CandidateModel(Protocol):
    """A success model scoring candidate times (``serving.policies.SuccessModel``)."""

    def predict_candidates(self, batch: DecisionBatch, candidate_times: np.ndarray) -> Any:
        """Return an object with ``proba`` of shape ``candidate_times.shape``."""
        ...


Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    return None


def stderr_progress(msg: str) -> None:
    """Progress printer for long runs (stderr, timestamped)."""
    print(f"[backtest {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True, kw_only=True)
class ChargeData:
    """Failed charges and their logged attempts, ready for the estimators.

    ``attempts`` holds the canonical rows of these charges only, ordered by charge then time,
    with two extra columns: ``_charge`` (index into ``charge_ids``) and ``_step`` (0 = the first
    failure, k = retry k).
    """

    charge_ids: np.ndarray
    first_failure: np.ndarray  # datetime64[ns] naive UTC
    amount: np.ndarray
    attrs: pd.DataFrame  # decline_family, card_funding, card_country, customer_id
    attempts: pd.DataFrame
    history: pd.DataFrame | None
    steps: StepLog  # target_hours filled with NaN (no target yet)

    @property
    def n(self) -> int:
        """Number of failed charges."""
        return len(self.charge_ids)


def member(values: pd.Series | np.ndarray, wanted: Any) -> np.ndarray:
    """Boolean mask: which ``values`` are in ``wanted`` (hash lookup on object ids).

    ``Series.isin`` on pandas' Arrow-backed strings and ``np.isin`` on object arrays are both
    quadratic-ish on 10^5 ids (profiled: 45 s of a 20k-charge backtest); a hash index is linear.
    """
    idx = pd.Index(pd.unique(np.asarray(wanted, dtype=object)))
    vals = values.to_numpy(dtype=object) if isinstance(values, pd.Series) else values
    return np.asarray(idx.get_indexer(np.asarray(vals, dtype=object)) >= 0)


def _naive_ns(values: pd.Series) -> np.ndarray:
    s = values
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.to_numpy(dtype="datetime64[ns]")


def prepare_charges(
    attempts: pd.DataFrame,
    *,
    charge_ids: np.ndarray | None = None,
    keep_history: bool = True,
    fx: FxRates | None = None,
) -> ChargeData:
    """Failed charges (first attempt failed) and their logged retries.

    Parameters
    ----------
    attempts
        Canonical attempts frame (``features.validation.load_attempts``).
    charge_ids
        Optional subset of charges to evaluate (e.g. the held-out period).
    keep_history
        Keep the other charges as customer history for the policies' features.
    fx
        Exchange rates: ``amount`` is each charge's amount in the reporting currency's major
        units (default: US dollars at :data:`features.currency.REFERENCE_UNITS_PER_USD`), so
        amounts of different currencies add up.
    """
    from retryopt.features.taxonomy import classify_codes

    missing = [col for col in (c.CHARGE_ID, c.ATTEMPTED_AT, c.OUTCOME) if col not in attempts]
    if missing:
        raise ValueError(f"attempts frame lacks columns {missing}")
    df = attempts.sort_values([c.CHARGE_ID, c.ATTEMPTED_AT], kind="stable")
    step = df.groupby(c.CHARGE_ID, sort=False).cumcount().to_numpy()
    first = df[step == 0]
    failed_first = first[first[c.OUTCOME].astype(str).to_numpy() == c.FAILED]
    ids = failed_first[c.CHARGE_ID].to_numpy()
    if charge_ids is not None:
        ids = ids[member(ids, charge_ids)]
    sel = member(df[c.CHARGE_ID], ids)
    att = df[sel].copy()
    att["_step"] = step[sel]
    codes, uniques = pd.factorize(att[c.CHARGE_ID], sort=False)
    att["_charge"] = codes
    # keep rows up to and including the first success
    succ = (att[c.OUTCOME].astype(str) == c.SUCCEEDED).to_numpy()
    succ_before = pd.Series(succ).groupby(codes).cumsum().to_numpy() - succ
    att = att[succ_before == 0]
    firsts = att[att["_step"].to_numpy() == 0]
    info = classify_codes(firsts[c.DECLINE_CODE], firsts[c.NETWORK_ADVICE_CODE])
    attrs = pd.DataFrame(
        {
            "decline_family": info["family"].astype(str).to_numpy(),
            "card_funding": firsts[c.CARD_FUNDING].astype(str).to_numpy(),
            "card_country": firsts[c.CARD_COUNTRY].astype(str).to_numpy(),
            "customer_id": firsts[c.CUSTOMER_ID].astype(str).to_numpy(),
        }
    )
    t0 = _naive_ns(firsts[c.ATTEMPTED_AT])
    retries = att[att["_step"].to_numpy() > 0]
    rch = retries["_charge"].to_numpy()
    hours = (_naive_ns(retries[c.ATTEMPTED_AT]) - t0[rch]).astype(np.int64) / HOUR_NS
    amount = (fx or FxRates()).to_reporting(
        firsts[c.AMOUNT].to_numpy(dtype=np.float64), firsts[c.CURRENCY].to_numpy(dtype=object)
    )
    steps = StepLog(
        charge=rch.astype(np.int64),
        step=retries["_step"].to_numpy(dtype=np.int64),
        logged_hours=hours,
        success=(retries[c.OUTCOME].astype(str) == c.SUCCEEDED).to_numpy(),
        propensity=retries[c.RETRY_PROPENSITY].to_numpy(dtype=np.float64),
        target_hours=np.full(len(retries), np.nan),
        amount=amount[rch],
    )
    history = None
    if keep_history:
        history = attempts[~member(attempts[c.CHARGE_ID], ids)]
    return ChargeData(
        charge_ids=np.asarray(uniques, dtype=object),
        first_failure=t0,
        amount=amount,
        attrs=attrs,
        attempts=att.reset_index(drop=True),
        history=history,
        steps=steps,
    )


def state_batch(
    data: ChargeData,
    charges: np.ndarray,
    prefix_steps: np.ndarray,
    *,
    constraints: Constraints,
    fail_last: bool = False,
) -> DecisionBatch:
    """Decision states: each charge's attempts up to ``prefix_steps`` (0 = the first failure).

    With ``fail_last`` the last prefix attempt is turned into a failure with the charge's
    previous decline code (the hypothetical state after a logged success had failed).
    """
    limit = np.full(data.n, -1, dtype=np.int64)
    limit[charges] = prefix_steps
    att = data.attempts
    rows = att["_step"].to_numpy() <= limit[att["_charge"].to_numpy()]
    sub = att[rows]
    if fail_last:
        sub = sub.copy()
        is_last = sub["_step"].to_numpy() == limit[sub["_charge"].to_numpy()]
        was_ok = is_last & (sub[c.OUTCOME].astype(str) == c.SUCCEEDED).to_numpy()
        if was_ok.any():
            prev_code = sub[c.DECLINE_CODE].shift(1)
            prev_adv = sub[c.NETWORK_ADVICE_CODE].shift(1)
            sub.loc[was_ok, c.OUTCOME] = c.FAILED
            sub.loc[was_ok, c.DECLINE_CODE] = prev_code[was_ok]
            sub.loc[was_ok, c.NETWORK_ADVICE_CODE] = prev_adv[was_ok]
    last = sub.groupby("_charge", sort=False)[c.ATTEMPTED_AT].max()
    now = _naive_ns(last.reindex(charges))
    history = None
    if data.history is not None and len(data.history):
        customers = data.attrs["customer_id"].to_numpy()[charges]
        history = data.history[member(data.history[c.CUSTOMER_ID], customers)]
    return DecisionBatch(
        charge_ids=data.charge_ids[charges],
        now=now,
        attempts=sub.drop(columns=["_step", "_charge"]),
        history=history,
        constraints=constraints,
    )


def _hours_since_first(data: ChargeData, charges: np.ndarray, at: np.ndarray) -> np.ndarray:
    out = (np.asarray(at, dtype="datetime64[ns]") - data.first_failure[charges]).astype(np.int64)
    hours = out / HOUR_NS
    return np.where(np.isnat(np.asarray(at, dtype="datetime64[ns]")), np.nan, hours)


def _chunks(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(s, min(n, s + size)) for s in range(0, n, size)]


def target_decisions(
    data: ChargeData,
    policy: Policy,
    *,
    constraints: Constraints,
    chunk: int = 20_000,
    progress: Progress = _quiet,
) -> np.ndarray:
    """The policy's retry time (hours since first failure, NaN = stop) at every logged state."""
    return target_decisions_and_probabilities(
        data, policy, constraints=constraints, chunk=chunk, progress=progress
    )[0]


def target_decisions_and_probabilities(
    data: ChargeData,
    policy: Policy,
    *,
    constraints: Constraints,
    chunk: int = 20_000,
    progress: Progress = _quiet,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Target retry times at every logged state, and the target's probability of the logged slot.

    The probabilities are only known for stochastic policies that expose
    ``action_probability(batch, retry_at)`` (e.g. :class:`~training.backtest.specs.UniformRandom`);
    otherwise None (deterministic targets are matched on the slot or a kernel).
    """
    steps = data.steps
    out = np.full(len(steps.step), np.nan)
    has_prob = hasattr(policy, "action_probability")
    prob = np.full(len(steps.step), np.nan) if has_prob else None
    if not len(steps.step):
        return out, prob
    for k in range(1, int(steps.step.max()) + 1):
        rows = np.flatnonzero(steps.step == k)
        for part in _chunks(len(rows), chunk):
            r = rows[part]
            ch = steps.charge[r]
            batch = state_batch(data, ch, np.full(len(r), k - 1), constraints=constraints)
            dec = policy.decide(batch)
            out[r] = _hours_since_first(data, ch, dec.retry_at)
            if prob is not None:
                at = data.first_failure[ch] + (steps.logged_hours[r] * HOUR_NS).astype(
                    "timedelta64[ns]"
                )
                prob[r] = policy.action_probability(batch, at)  # type: ignore[attr-defined]
        progress(f"{policy.name}: decisions at logged retry {k} ({len(rows)} states)")
    return out, prob


@dataclass(frozen=True, kw_only=True)
class RolloutResult:
    """Expected metrics of a policy played forward under a success model."""

    values: np.ndarray  # (n_states, m)
    decisions: pd.DataFrame  # one row per hypothetical retry: state, step, hours, q, survival


def rollout(
    data: ChargeData,
    policy: Policy,
    model: CandidateModel,
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
    for part in _chunks(n_states, chunk):
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
            hours = _hours_since_first(data, ch[gi], at[go])
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
    extra: dict[str, Any] = field(default_factory=dict)


def estimate_policy(
    data: ChargeData,
    label: str,
    policy: Policy | None,
    *,
    metrics: MetricSet,
    constraints: Constraints,
    model: CandidateModel | None,
    bandwidth_hours: float = 6.0,
    slot_hours: float = 1.0,
    min_ess: float = MIN_ESS,
    progress: Progress = _quiet,
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
                at = data.first_failure[ch] + (log.logged_hours[r] * HOUR_NS).astype(
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


class DeclineTransitions:
    """Empirical distribution of the next decline given the previous one (for DM roll-outs).

    Fitted on consecutive failed attempts of the same charge (a failed attempt followed by a
    failed retry) in the DM's training data: for each previous ``decline_code`` the observed
    ``(decline_code, network_advice_code)`` pairs of the next failure. Unseen previous codes fall
    back to the pooled distribution.
    """

    def __init__(self, table: dict[object, tuple[np.ndarray, np.ndarray]]) -> None:
        self.table = table

    @classmethod
    def fit(cls, attempts: pd.DataFrame) -> DeclineTransitions:
        """Fit on a canonical attempts frame (all charges, all attempts)."""
        df = attempts.sort_values([c.CHARGE_ID, c.ATTEMPTED_AT], kind="stable")
        failed = (df[c.OUTCOME].astype(str) == c.FAILED).to_numpy()
        same = (
            df[c.CHARGE_ID].to_numpy(dtype=object)[1:]
            == df[c.CHARGE_ID].to_numpy(dtype=object)[:-1]
        )
        pair = np.flatnonzero(same & failed[1:] & failed[:-1]) + 1
        prev = df[c.DECLINE_CODE].to_numpy(dtype=object)[pair - 1]
        code = df[c.DECLINE_CODE].to_numpy(dtype=object)[pair]
        adv = df[c.NETWORK_ADVICE_CODE].to_numpy(dtype=object)[pair]
        table: dict[object, tuple[np.ndarray, np.ndarray]] = {None: (code, adv)}
        if len(pair):
            for key, idx in (
                pd.Series(np.arange(len(pair))).groupby(prev.astype(str)).indices.items()
            ):
                table[key] = (code[idx], adv[idx])
        return cls(table)

    def sample(
        self, previous: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw the next ``(decline_code, network_advice_code)`` per previous decline code."""
        prev = np.asarray(previous, dtype=object).astype(str)
        code = np.asarray(previous, dtype=object).copy()
        adv = np.full(len(prev), None, dtype=object)
        pooled = self.table[None]
        for key in np.unique(prev):
            rows = np.flatnonzero(prev == key)
            codes, advs = self.table.get(key, pooled)
            if not len(codes):
                continue
            pick = rng.integers(0, len(codes), size=len(rows))
            code[rows] = codes[pick]
            adv[rows] = advs[pick]
        return code, adv


class FittedSuccessModel:
    """A LightGBM success model for the direct method, fitted by the backtest itself.

    Fitted on the logged retries of charges kept apart from the evaluated ones (other
    customers), with the same point-in-time features as the shipped model
    (:mod:`features.build`). Implements ``predict_candidates`` like ``serving.policies``' models.
    """

    version = "backtest-dm"

    def __init__(
        self, booster: Any, spec: Any, transitions: DeclineTransitions | None = None
    ) -> None:
        self.booster = booster
        self.spec = spec
        self.transitions = transitions
        self.replicates: list[FittedSuccessModel] = []

    def predict_rows(self, raw: pd.DataFrame) -> np.ndarray:
        """P(success) per raw feature row."""
        from retryopt.features.build import encode_features

        if not len(raw):
            return np.empty(0)
        return np.asarray(self.booster.predict(encode_features(raw, self.spec)), dtype=np.float64)

    def predict_candidates(self, batch: DecisionBatch, candidate_times: np.ndarray) -> Any:
        """Score candidate times (``(n_charges, k)``, NaT = padding)."""
        from retryopt.features.build import build_candidate_features

        raw = build_candidate_features(batch, candidate_times)
        flat = ~np.isnat(candidate_times.ravel())
        proba = np.full(candidate_times.size, np.nan)
        if flat.any():
            rows = raw if flat.all() else raw.iloc[np.flatnonzero(flat)]
            proba[flat] = self.predict_rows(rows)
        return _Scores(proba=proba.reshape(candidate_times.shape))


@dataclass(frozen=True)
class _Scores:
    proba: np.ndarray


def fit_success_model(
    attempts: pd.DataFrame, *, seed: int = 0, num_boost_round: int = 200, refits: int = 0
) -> FittedSuccessModel:
    """Fit the direct-method LightGBM on the logged retries of ``attempts``.

    Parameters
    ----------
    attempts
        Canonical attempts of the charges/customers kept apart from the evaluation.
    seed
        LightGBM seed (deterministic, single thread).
    num_boost_round
        Boosting rounds (small learning rate, shallow trees: a smooth, calibrated-enough model).
    refits
        Number of extra fits on customer-bootstrap reweightings of the same data, kept in
        ``model.replicates``; the direct method plays every policy under each of them so its
        interval includes model error, not only charge sampling.
    """
    import lightgbm as lgb

    from retryopt.features.build import build_training_examples, encode_features, fit_feature_spec

    ex = build_training_examples(attempts)
    if len(ex.label) < 50:
        raise ValueError(
            f"only {len(ex.label)} logged retries to fit the direct-method model (need >= 50)"
        )
    spec = fit_feature_spec(ex.features)
    X = encode_features(ex.features, spec)
    params = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.9,
        "bagging_freq": 1,
        "seed": seed,
        "num_threads": 1,
        "deterministic": True,
        "verbose": -1,
    }
    booster = lgb.train(params, lgb.Dataset(X, label=ex.label), num_boost_round=num_boost_round)
    transitions = DeclineTransitions.fit(attempts)
    main = FittedSuccessModel(booster, spec, transitions)
    if not refits:
        return main
    # model-error replicates: the same fit on Poisson(1)-reweighted *customers* (a customer
    # bootstrap of the DM's training data, as sample weights so histories stay intact)
    cust = pd.factorize(ex.meta["customer_id"].astype(str))[0]
    rng = np.random.default_rng(seed + 7919)
    main.replicates = []
    for r in range(refits):
        wc = rng.poisson(1.0, size=int(cust.max()) + 1).astype(np.float64)
        ds = lgb.Dataset(X, label=ex.label, weight=wc[cust])
        b = lgb.train({**params, "seed": seed + r + 1}, ds, num_boost_round=num_boost_round)
        main.replicates.append(FittedSuccessModel(b, spec, transitions))
    return main


def dm_customers(
    attempts: pd.DataFrame, candidates: np.ndarray, *, max_examples: int, seed: int
) -> np.ndarray:
    """Whole customers (a seeded random subset of ``candidates``) with <= ``max_examples`` retries.

    A retry is an attempt that is not its charge's first; this is the number of examples
    ``features.build.build_training_examples`` makes, so the DM fit stays bounded (~300k
    examples fit in well under a minute) whatever the size of the history.
    """
    cand = np.asarray(candidates, dtype=object)
    rows = attempts[member(attempts[c.CUSTOMER_ID], cand)]
    per_customer = (
        rows.groupby(c.CUSTOMER_ID, sort=False).size()
        - rows.groupby(c.CUSTOMER_ID, sort=False)[c.CHARGE_ID].nunique()
    )
    counts = per_customer.reindex(pd.Index(cand)).fillna(0).to_numpy(dtype=np.int64)
    if counts.sum() <= max_examples:
        return cand
    order = np.random.default_rng(seed).permutation(len(cand))
    keep = order[np.cumsum(counts[order]) <= max_examples]
    return cand[np.sort(keep)]


def split_customers(customer_ids: np.ndarray, *, share: float, seed: int) -> np.ndarray:
    """Deterministic customer-level split: True for customers in the ``share`` part."""
    uniq, inv = np.unique(np.asarray(customer_ids, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    return (rng.random(len(uniq)) < share)[inv]


@dataclass(kw_only=True)
class BacktestResult:
    """Everything a backtest produced (tables are long-format DataFrames)."""

    estimates: pd.DataFrame
    uplift: pd.DataFrame
    breakdowns: pd.DataFrame
    retry_numbers: pd.DataFrame
    curves: pd.DataFrame
    overlap: dict[str, dict[str, Any]]
    rules: dict[str, dict[str, int]]
    calibration: pd.DataFrame
    warnings: list[str]
    meta: dict[str, Any]
    truth: dict[str, Any] = field(default_factory=dict)

    def headline(self) -> pd.DataFrame:
        """One row per policy: the preferred estimator's headline statistics with intervals."""
        from retryopt.training.backtest.metrics import HEADLINE

        est = self.estimates
        rows = []
        for policy in dict.fromkeys(est["policy"]):
            sub = est[est["policy"] == policy]
            have = set(sub["estimator"])
            pick = next(e for e in ("observed", "truth", "dr", "dm", "snips", "ips") if e in have)
            row: dict[str, Any] = {"policy": policy, "estimator": pick}
            for stat in HEADLINE:
                r = sub[(sub["estimator"] == pick) & (sub["statistic"] == stat)]
                if len(r):
                    row[stat] = float(r["value"].iloc[0])
                    row[f"{stat}_low"] = float(r["ci_low"].iloc[0])
                    row[f"{stat}_high"] = float(r["ci_high"].iloc[0])
            rows.append(row)
        return pd.DataFrame(rows)


def run_backtest(
    attempts: pd.DataFrame,
    policies: dict[str, Policy | None],
    *,
    n_boot: int = 200,
    seed: int = 0,
    constraints: Constraints | None = None,
    dm_model: CandidateModel | None = None,
    fit_dm: bool = True,
    dm_share: float = 0.5,
    eval_charges: np.ndarray | None = None,
    bandwidth_hours: float = 6.0,
    metrics: MetricSet | None = None,
    truth: dict[str, np.ndarray] | None = None,
    truth_fn: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
    dm_max_examples: int = 300_000,
    dm_refits: int = 4,
    min_ess: float = MIN_ESS,
    fx: FxRates | None = None,
    progress: Progress = _quiet,
) -> BacktestResult:
    """Compare policies on logged history with DM, IPS, SNIPS and DR and bootstrap intervals.

    Parameters
    ----------
    attempts
        Canonical attempts frame.
    policies
        Label -> policy (``None`` = the logged policy, evaluated on-policy).
    n_boot, seed
        Bootstrap resamples (by charge, shared by all policies) and seed.
    constraints
        Retry constraints applied to every policy (default: 4 retries in 504 h).
    dm_model
        Success model for DM/DR (``predict_candidates``). When None and ``fit_dm``, a LightGBM is
        fitted on the customers of a ``dm_share`` split of the failed charges, and the others are
        evaluated (the model never sees the evaluated charges).
    eval_charges
        Optional charges to evaluate (default: every failed charge not used for the DM model).
    truth
        Optional per-policy ``(n_charges, m)`` true contributions on the same charges (simulated
        worlds), reported as the estimator ``truth``.
    truth_fn
        Alternative to ``truth``: called with the evaluated charge ids (after the DM split) and
        returning their true contributions in that order.
    dm_max_examples
        Cap on the logged retries the backtest's own DM model is fitted on: the kept-apart
        customers are subsampled (whole customers, seeded) until their retries fit the cap.
    dm_refits
        Refits of the backtest's own DM model on customer-bootstrap reweightings; the DM is
        played under each and its interval combines model error with charge sampling.
    min_ess
        Minimum effective sample size of a policy's importance weights for IPS/SNIPS/DR to be
        reported (below: "unavailable: insufficient overlap").
    fx
        Exchange rates into the reporting currency of every amount (default: US dollars at
        the reference rates, :class:`features.currency.FxRates`).
    """
    from retryopt.training.backtest.estimators import bootstrap_means
    from retryopt.training.backtest.metrics import (
        breakdown_table,
        curve_table,
        estimates_table,
        join_key,
        retry_number_table,
        uplift_table,
    )

    cons = constraints or Constraints()
    mset = metrics or MetricSet()
    rates = fx or FxRates()
    started = time.perf_counter()
    all_failed = prepare_charges(attempts, charge_ids=eval_charges, keep_history=False, fx=rates)
    ids = all_failed.charge_ids
    model = dm_model
    if model is None and fit_dm:
        fit_part = split_customers(
            all_failed.attrs["customer_id"].to_numpy(), share=dm_share, seed=seed
        )
        fit_ids = ids[fit_part]
        ids = ids[~fit_part]
        # the DM may learn from every customer that is not evaluated (capped), not only the
        # kept-apart half of the evaluated period's customers
        evaluated = pd.Index(pd.unique(all_failed.attrs["customer_id"].to_numpy()[~fit_part]))
        everyone = pd.unique(attempts[c.CUSTOMER_ID].astype(str).to_numpy(dtype=object))
        others = everyone[evaluated.get_indexer(everyone) < 0]
        fit_customers = dm_customers(attempts, others, max_examples=dm_max_examples, seed=seed)
        fit_rows = attempts[member(attempts[c.CUSTOMER_ID], fit_customers)]
        progress(
            f"fitting the direct-method model on {len(fit_customers)} customers kept apart "
            f"({len(fit_rows)} attempts; {len(fit_ids)} failed charges in the split)"
        )
        model = fit_success_model(fit_rows, seed=seed, refits=dm_refits)
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
            bandwidth_hours=bandwidth_hours,
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
    progress(f"bootstrap: {n_boot} resamples of {data.n} charges x {len(numerators)} estimates")
    res = bootstrap_means(
        numerators,
        denominators,
        metric_names=mset.names,
        n_boot=n_boot,
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
            "n_boot": n_boot,
            "seed": seed,
            "baseline": baseline,
            "bandwidth_hours": bandwidth_hours,
            "min_ess": min_ess,
            "dm_refits": len(getattr(model, "replicates", []) or []),
            "constraints": cons.__dict__,
            "dm_model": getattr(model, "version", None),
            "seconds": round(time.perf_counter() - started, 2),
            "policies": list(policies),
            "amount_unit": rates.reporting.upper(),
            "fx_source": rates.source,
        },
    )


def _hard_states(data: ChargeData) -> np.ndarray:
    """Per logged retry row: whether the decline before it is hard (never retry)."""
    from retryopt.features.taxonomy import classify_codes

    att = data.attempts
    info = classify_codes(att[c.DECLINE_CODE], att[c.NETWORK_ADVICE_CODE])
    hard = info["hard"].to_numpy(dtype=bool) & (att[c.OUTCOME].astype(str) == c.FAILED).to_numpy()
    key = att["_charge"].to_numpy().astype(np.int64) * 1000 + att["_step"].to_numpy()
    lookup = pd.Series(hard, index=key)
    want = data.steps.charge.astype(np.int64) * 1000 + data.steps.step - 1
    return lookup.reindex(want).fillna(False).to_numpy(dtype=bool)


def _rules_for(data: ChargeData, hard_state: np.ndarray, target: np.ndarray) -> dict[str, int]:
    from retryopt.training.backtest.metrics import rule_checks

    steps = data.steps
    k_max = int(steps.step.max()) if len(steps.step) else 0
    hours = np.full((data.n, k_max + 1), np.nan)
    hours[:, 0] = 0.0  # the first failure
    hours[steps.charge, steps.step] = steps.logged_hours
    prior = hours[steps.charge]
    prior[np.arange(k_max + 1)[None, :] >= steps.step[:, None]] = np.nan  # attempts before it
    return rule_checks(hard_state=hard_state, target_hours=target, attempt_hours_by_row=prior)


def _calibration(data: ChargeData, model: CandidateModel, *, n_bins: int = 10) -> pd.DataFrame:
    """Reliability of the DM model on the evaluated charges' first logged retries."""
    steps = data.steps
    rows = np.flatnonzero(steps.step == 1)
    if not rows.size:
        return pd.DataFrame(columns=["bin", "mean_predicted", "observed", "n"])
    ch = steps.charge[rows]
    at = data.first_failure[ch] + (steps.logged_hours[rows] * HOUR_NS).astype("timedelta64[ns]")
    preds = []
    for part in _chunks(len(rows), 5000):
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


def bundle_holdout_months(models: Sequence[str]) -> list[str]:
    """Months (``YYYY-MM``) none of the given bundles trained or validated on.

    Read from each bundle's ``metrics["split"]`` (``test_months`` plus partial months merged into
    them); the intersection over bundles. Empty when a bundle does not describe its split.
    """
    from retryopt.training.bundle import resolve_model

    common: set[str] | None = None
    for name in models:
        split = dict(getattr(resolve_model(name), "metrics", {}) or {}).get("split") or {}
        months = set(split.get("test_months", [])) | set(split.get("merged_partial_months", []))
        common = months if common is None else common & months
    return sorted(common or ())


def charges_in_months(attempts: pd.DataFrame, months: Sequence[str]) -> np.ndarray:
    """Failed charges whose first attempt falls in one of ``months`` (UTC ``YYYY-MM``)."""
    data = prepare_charges(attempts, keep_history=False)
    month = pd.DatetimeIndex(data.first_failure).strftime("%Y-%m").to_numpy(dtype=object)
    return np.asarray(data.charge_ids[member(month, list(months))], dtype=object)


def run_cli(
    *,
    data: Any,
    specs: list[str],
    out: Any,
    simulate: bool = False,
    n_boot: int = 200,
    seed: int = 0,
    truth: Any = None,
    bandwidth_hours: float = 6.0,
    dm_model: str | None = None,
    holdout: bool = True,
    dm_refits: int = 4,
    min_ess: float = MIN_ESS,
    fx_rates: Any = None,
    reporting_currency: str = "usd",
    truth_replications: int = 3,
    progress: Progress = stderr_progress,
) -> Any:
    """Parse specs, load the history, run the backtest and write the outputs; return the dir.

    With ``holdout`` and ``greedy:``/``model:`` bundles that describe their time split, only the
    failed charges first failing in the bundles' test months are evaluated (the evaluated
    policy never trained on them). ``dm_model`` is a bundle for the direct method, trained on
    data kept apart from the evaluated policy's training data; without it the backtest fits its
    own on other customers (:func:`run_backtest`). Amounts are reported in
    ``reporting_currency`` (major units) at the reference rates or those of the JSON file
    ``fx_rates`` (:func:`features.currency.load_fx_rates`). With ``simulate`` the truth of every
    played policy is its mean over ``truth_replications`` plays with distinct common random
    numbers (the expected value on the same charges, less noisy than one play).
    """
    from retryopt.features.currency import REFERENCE_UNITS_PER_USD, load_fx_rates
    from retryopt.features.validation import load_attempts
    from retryopt.training.backtest.report import headline_markdown, write_outputs
    from retryopt.training.backtest.specs import build_policy, parse_spec, unique_labels

    if truth_replications < 1:
        raise ValueError(f"truth_replications must be >= 1, got {truth_replications}")
    fx = (
        load_fx_rates(fx_rates, reporting=reporting_currency)
        if fx_rates is not None
        else FxRates(
            units_per_usd=dict(REFERENCE_UNITS_PER_USD), reporting=reporting_currency.lower()
        )
    )
    parsed = unique_labels([parse_spec(s) for s in specs])
    progress(f"loading {data}")
    attempts = load_attempts(data)
    world = None
    if simulate or any(p.kind == "oracle" for p in parsed):
        from retryopt.training.backtest.ground_truth import load_world

        progress("re-simulating the world for the ground truth")
        world = load_world(data, truth)
    policies: dict[str, Policy | None] = {}
    for i, spec in enumerate(parsed):
        if spec.kind == "logged":
            policies[spec.label] = None
        else:
            policies[spec.label] = build_policy(spec, seed=seed + i, world=world)  # type: ignore[assignment]
    eval_charges = None
    models = [p.model for p in parsed if p.model]
    if holdout and models:
        months = bundle_holdout_months(models)
        if months:
            eval_charges = charges_in_months(attempts, months)
            progress(
                f"evaluating the {len(eval_charges)} failed charges of the models' held-out "
                f"months {', '.join(months)}"
            )
    dm = None
    if dm_model is not None:
        from retryopt.serving.policies import BundleSuccessModel
        from retryopt.training.bundle import resolve_model

        dm = BundleSuccessModel(resolve_model(dm_model))
    summary: dict[str, Any] = {}
    truth_fn = None
    if simulate and world is not None:
        from retryopt.training.backtest.ground_truth import true_contributions

        def truth_fn(ids: np.ndarray) -> dict[str, np.ndarray]:
            # the truth needs no DM split: play every held-out failed charge (both halves), so
            # the model-vs-fixed verdict rests on twice the charges; the estimators are compared
            # with the truth on the evaluated half only
            wide = ids
            if eval_charges is not None:
                wide = np.asarray(pd.unique(np.asarray(eval_charges, dtype=object)), dtype=object)
            contrib, gaps = true_contributions(
                world,
                attempts,
                policies,
                seed=seed,
                charge_ids=wide,
                replications=truth_replications,
                fx=fx,
                progress=progress,
            )
            summary.update(gaps)
            summary["n_charges"] = len(wide)
            pos = pd.Index(wide).get_indexer(pd.Index(np.asarray(ids, dtype=object)))
            if (pos < 0).any():
                raise ValueError("evaluated charges missing from the ground-truth play")
            return {k: v[pos] for k, v in contrib.items()}

    result = run_backtest(
        attempts,
        policies,
        n_boot=n_boot,
        seed=seed,
        bandwidth_hours=bandwidth_hours,
        eval_charges=eval_charges,
        dm_model=dm,
        truth_fn=truth_fn,
        dm_refits=dm_refits,
        min_ess=min_ess,
        fx=fx,
        progress=progress,
    )
    result.truth = summary
    result.meta["holdout_charges"] = None if eval_charges is None else len(eval_charges)
    path = write_outputs(result, out)
    print(headline_markdown(result))
    if summary:
        from retryopt.training.backtest.ground_truth import gap_lines

        print(
            "\nGround truth (simulated world, common random numbers, same charges, mean of "
            f"{truth_replications} play{'s' if truth_replications > 1 else ''}; amounts in "
            f"{fx.reporting.upper()}):"
        )
        for line in gap_lines(summary):
            print(f"  {line}")
    for w in result.warnings:
        print(f"WARNING: {w}")
    return path
