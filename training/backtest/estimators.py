"""Off-policy estimators for retry policies: DM, IPS, SNIPS and DR, with charge bootstrap CIs.

The unit of evaluation is the *failed charge*: after its first failure a policy makes a sequence
of retry decisions (a time, or stop) until the charge is collected, the budget or the window runs
out, or the policy stops. A logged history shows outcomes only at the times the logging policy
chose, so the value of another policy is estimated from

- the logged retries, one row per retry (:class:`StepLog`): the state is the charge's attempts so
  far, the logged action is the retry time (hours since the first failure), its logged
  ``retry_propensity`` and the outcome; plus the target policy's decision *at that same logged
  state* (its retry time, or stop);
- optionally a success model (:class:`ModelTerms`), fitted on data kept apart from the evaluated
  policy's training data, which gives the direct method and the model part of DR.

Matching continuous times (kernel on the time grid)
    ``retry_propensity`` is the probability with which the logging policy chose the logged time
    slot (``slot_hours`` wide, hourly by default). A deterministic target policy almost never picks
    exactly the logged hour, so we evaluate its *smoothed* version ``pi_h``: retry uniformly within
    ``bandwidth_hours`` around the target's time. Its per-step importance weight is::

        w_k = 1{-h/2 <= t_log - t_pi < h/2} * slot_hours / (h * p_log)     (target retries)
        w_k = 0                                                            (target stops)

    which is unbiased for ``pi_h`` (sum over slots of mu * pi_h / mu = 1); the bias w.r.t. ``pi``
    is the change in success probability within +-h/2 (chosen small, validated on ground truth).

Sequential estimators (per failed charge i, logged steps k = 1..K_i, W_ik = prod_{j<=k} w_ij)
    Every metric is a reward ``g_k`` paid when retry k succeeds plus a cost ``c_k`` per retry
    (:class:`MetricSet`), so for every metric m::

        IPS_i   = sum_k W_ik (c_k + y_k g_k)                 (per-decision importance sampling)
        rho_i   = W_i,last step before the target stops       (trajectory weight, E_mu[rho] = 1)
        SNIPS   = sum_i IPS_i / sum_i rho_i
        DM_i    = V(s_i1)                                     (success model played forward)
        DR_i    = V(s_i1) + sum_k W_ik (y_k - q_k)(g_k - V(f_ik))

    where ``q_k`` is the model's success probability at the logged state and time and ``V(f_ik)``
    the model value-to-go of the target policy from the state after retry k *failed*. The DR form
    is the per-decision doubly robust estimator (Jiang & Li 2016) simplified for rewards paid only
    on success: the retry cost cancels between the observed and the modelled term.

Without exploration (``retry_propensity`` absent or all 1.0) only the direct method is possible;
IPS, SNIPS and DR are then reported as unavailable, never as numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints
from retryopt.features.objective import Objective
from retryopt.training.backtest.config import MIN_ESS

NO_EXPLORATION_WARNING = (
    "the history has no exploration: only model-based (direct method) estimates are possible"
)

ESTIMATORS: tuple[str, ...] = ("observed", "dm", "ips", "snips", "dr", "truth")


INSUFFICIENT_OVERLAP = "insufficient overlap"


class EstimatorError(ValueError):
    """Inputs of an estimator are inconsistent (lengths, order, ranges)."""


@dataclass(frozen=True, kw_only=True)
class MetricSet:
    """Per-charge metrics expressed as a success reward plus a per-retry cost.

    Parameters
    ----------
    max_step
        Largest retry number that gets its own ``attempted_k`` / ``succeeded_k`` columns.
    curve_days
        Days since the first failure at which the cumulative recovery curve is evaluated.
    objective
        The decision objective (:class:`features.objective.Objective`, the planner's own):
        ``discounted_value`` is the amount discounted from the first failure to the success,
        minus the cost of every retry, in the reporting currency.
    """

    max_step: int = 8
    curve_days: tuple[int, ...] = tuple(range(1, 22))
    objective: Objective = field(default_factory=Objective)

    @property
    def names(self) -> tuple[str, ...]:
        """Column names, in order."""
        steps = tuple(f"attempted_{k}" for k in range(1, self.max_step + 1)) + tuple(
            f"succeeded_{k}" for k in range(1, self.max_step + 1)
        )
        curve = tuple(f"recovered_by_day_{d}" for d in self.curve_days)
        return (
            "recovered",
            "recovered_amount",
            "retries",
            "recovered_7d",
            "recovered_amount_7d",
            *steps,
            *curve,
            "discounted_value",
        )

    def success_reward(self, step: np.ndarray, hours: np.ndarray, amount: np.ndarray) -> np.ndarray:
        """Reward matrix ``(n, m)`` if retry ``step`` at ``hours`` succeeds for ``amount``."""
        step = np.asarray(step)
        hours = np.asarray(hours, dtype=np.float64)
        amount = np.asarray(amount, dtype=np.float64)
        n = step.shape[0]
        out = np.zeros((n, len(self.names)), dtype=np.float64)
        within7 = hours <= 7 * 24.0
        out[:, 0] = 1.0
        out[:, 1] = amount
        out[:, 3] = within7
        out[:, 4] = amount * within7
        base = 5 + self.max_step
        for k in range(1, self.max_step + 1):
            out[:, base + k - 1] = step == k
        base = 5 + 2 * self.max_step
        for j, d in enumerate(self.curve_days):
            out[:, base + j] = hours <= d * 24.0
        out[:, -1] = amount * self.objective.discount(hours / 24.0)
        return out

    def retry_cost(self, step: np.ndarray) -> np.ndarray:
        """Cost matrix ``(n, m)`` of making retry ``step`` (counts retries)."""
        step = np.asarray(step)
        out = np.zeros((step.shape[0], len(self.names)), dtype=np.float64)
        out[:, 2] = 1.0
        for k in range(1, self.max_step + 1):
            out[:, 4 + k] = step == k
        out[:, -1] = -self.objective.cost_per_attempt
        return out


def objective_for(constraints: Constraints, fx: FxRates | None) -> tuple[Constraints, MetricSet]:
    """The constraints (their objective converting with ``fx``) and the metrics valuing them.

    The policies played or evaluated and the reported ``discounted_value`` then share one
    :class:`features.objective.Objective`, in the backtest's reporting currency.
    """
    objective = constraints.objective if fx is None else replace(constraints.objective, fx=fx)
    return replace(constraints, objective=objective), MetricSet(objective=objective)


@dataclass(frozen=True, kw_only=True)
class StepLog:
    """Logged retries of failed charges, one row per retry, ordered by charge then retry number.

    Parameters
    ----------
    charge
        Charge index (``0..n_charges-1``) per row, non-decreasing.
    step
        Retry number (1 = first retry after the first failure), consecutive within a charge.
    logged_hours
        Hours since the charge's first failure of the logged retry.
    success
        Whether the logged retry succeeded (only a charge's last row may be a success).
    propensity
        Logged ``retry_propensity`` (NaN = absent).
    target_hours
        The target policy's retry time at the same logged state, hours since the first failure;
        NaN = the target policy stops there.
    amount
        Amount of the charge per row (minor units).
    """

    charge: np.ndarray
    step: np.ndarray
    logged_hours: np.ndarray
    success: np.ndarray
    propensity: np.ndarray
    target_hours: np.ndarray
    amount: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.charge)
        for name in ("step", "logged_hours", "success", "propensity", "target_hours", "amount"):
            if len(getattr(self, name)) != n:
                raise EstimatorError(
                    f"StepLog.{name} has {len(getattr(self, name))} rows, charge has {n}"
                )
        if n and np.any(np.diff(self.charge) < 0):
            bad = int(np.flatnonzero(np.diff(self.charge) < 0)[0]) + 2
            raise EstimatorError(f"StepLog rows must be ordered by charge (row {bad})")
        first = self.first_row_of_charge
        expected = np.ones(n, dtype=np.int64)
        if n:
            cont = ~first
            expected[cont] = np.asarray(self.step)[np.flatnonzero(cont) - 1] + 1
        if np.any(np.asarray(self.step) != expected):
            bad_rows = np.flatnonzero(np.asarray(self.step) != expected)[:5] + 1
            raise EstimatorError(
                f"StepLog.step must count 1, 2, ... within each charge; rows {bad_rows.tolist()}"
            )

    @property
    def first_row_of_charge(self) -> np.ndarray:
        """Boolean mask of each charge's first logged retry."""
        charge = np.asarray(self.charge)
        first = np.ones(len(charge), dtype=bool)
        first[1:] = charge[1:] != charge[:-1]
        return first


@dataclass(frozen=True, kw_only=True)
class ModelTerms:
    """Success-model quantities for the direct method and DR.

    Parameters
    ----------
    value_start
        ``(n_charges, m)`` model value of the target policy from the first decision state.
    q_logged
        Per step row: model P(success) at the logged state and logged time.
    value_after_fail
        ``(n_rows, m)`` model value-to-go of the target policy from the state after the row's
        retry failed (only needed where the cumulative weight is non-zero; NaN elsewhere).
    """

    value_start: np.ndarray
    q_logged: np.ndarray | None = None
    value_after_fail: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class Overlap:
    """Overlap diagnostics of a target policy against the logging policy."""

    exploration: bool
    warning: str | None
    n_charges: int
    n_decisions: int
    target_retry_share: float
    support_share: float
    matched_share: float
    ess: float
    ess_share: float
    max_weight: float
    method: str = "kernel"
    supported: bool = True
    min_ess: float = MIN_ESS
    mean_weight: float = 1.0
    n_informative: int = 0
    first_retry_support: float = 1.0
    first_retry_support_se: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """Plain-dict form for JSON."""
        return {
            "exploration": self.exploration,
            "warning": self.warning,
            "n_charges": self.n_charges,
            "n_decisions": self.n_decisions,
            "target_retry_share": self.target_retry_share,
            "support_share": self.support_share,
            "matched_share": self.matched_share,
            "effective_sample_size": self.ess,
            "effective_sample_share": self.ess_share,
            "max_trajectory_weight": self.max_weight,
            "weights": self.method,
            "mean_trajectory_weight": self.mean_weight,
            "charges_with_target_retries": self.n_informative,
            "first_retry_support": self.first_retry_support,
            "first_retry_support_se": self.first_retry_support_se,
            "min_effective_sample_size": self.min_ess,
            "weighted_estimators": "available"
            if self.supported
            else f"unavailable: {INSUFFICIENT_OVERLAP}",
        }


def exploration_warning(propensity: np.ndarray) -> str | None:
    """Return the no-exploration warning when propensities are absent or all 1.0, else None.

    Parameters
    ----------
    propensity
        Logged ``retry_propensity`` of the retries.
    """
    p = np.asarray(propensity, dtype=np.float64)
    if p.size == 0 or np.all(np.isnan(p)) or np.all(p[~np.isnan(p)] >= 1.0 - 1e-12):
        return NO_EXPLORATION_WARNING
    if np.any(np.isnan(p)):
        return (
            f"{int(np.isnan(p).sum())} of {p.size} logged retries have no retry_propensity: "
            "importance-weighted estimates are not possible; " + NO_EXPLORATION_WARNING
        )
    return None


def check_propensity(propensity: np.ndarray) -> None:
    """Raise :class:`EstimatorError` naming rows whose propensity is outside (0, 1]."""
    p = np.asarray(propensity, dtype=np.float64)
    bad = ~np.isnan(p) & ((p <= 0) | (p > 1.0 + 1e-9))
    if bad.any():
        rows = (np.flatnonzero(bad)[:5] + 1).tolist()
        raise EstimatorError(
            f"retry_propensity must be in (0, 1]; rows {rows} have {p[bad][:5].tolist()}"
        )


def step_weights(
    log: StepLog, *, bandwidth_hours: float = 6.0, slot_hours: float = 1.0
) -> np.ndarray:
    """Per-decision importance weights of the smoothed target policy (see module docstring).

    Parameters
    ----------
    log
        Logged retries with the target's decision at each logged state.
    bandwidth_hours
        Width ``h`` of the box kernel around the target's time; ``<= slot_hours`` means exact
        slot matching (``w = 1{same slot} / p``).
    slot_hours
        Width of the time slot that ``retry_propensity`` refers to.
    """
    check_propensity(log.propensity)
    p = np.asarray(log.propensity, dtype=np.float64)
    target = np.asarray(log.target_hours, dtype=np.float64)
    logged = np.asarray(log.logged_hours, dtype=np.float64)
    retries = ~np.isnan(target)
    if bandwidth_hours <= slot_hours:
        match = retries & (np.floor(logged / slot_hours) == np.floor(target / slot_hours))
        scale = 1.0
    else:
        # half-open box [-h/2, h/2): exactly h hours (h slots) of logged times match
        delta = logged - target
        match = retries & (delta >= -bandwidth_hours / 2.0) & (delta < bandwidth_hours / 2.0)
        scale = slot_hours / bandwidth_hours
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(match, scale / p, 0.0)
    return np.nan_to_num(w, nan=0.0)


def exact_ratio_weights(log: StepLog, target_probability: np.ndarray) -> np.ndarray:
    """Exact per-decision ratios ``pi_target(a_log | s) / p_log`` for a stochastic target.

    Parameters
    ----------
    log
        Logged retries (``target_hours`` NaN = the target stops there, weight 0).
    target_probability
        Per row: the target policy's probability of the *logged* hourly slot at the logged state
        (known for stochastic targets on the same grid, e.g. the ``random`` spec).
    """
    check_propensity(log.propensity)
    p = np.asarray(log.propensity, dtype=np.float64)
    pi = np.nan_to_num(np.asarray(target_probability, dtype=np.float64), nan=0.0)
    retries = ~np.isnan(np.asarray(log.target_hours, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(retries & (pi > 0), pi / p, 0.0)
    return np.nan_to_num(w, nan=0.0)


def effective_sample_size(rho: np.ndarray) -> float:
    """``(sum rho)^2 / sum rho^2`` of the trajectory weights (0 when all are zero)."""
    r = np.asarray(rho, dtype=np.float64)
    s2 = float((r**2).sum())
    return float(r.sum()) ** 2 / s2 if s2 > 0 else 0.0


def select_weights(
    log: StepLog,
    n_charges: int,
    *,
    bandwidth_hours: float = 6.0,
    slot_hours: float = 1.0,
    target_probability: np.ndarray | None = None,
    min_ess: float = MIN_ESS,
) -> tuple[np.ndarray, str, bool]:
    """Per-decision weights, the method used and whether the overlap supports them.

    - a stochastic target with known slot probabilities: exact ratios (``"exact-ratio"``);
    - a deterministic target: exact slot matching (``"exact-slot"``, unbiased for the policy
      itself) when its trajectory weights have ``ESS >= min_ess``, otherwise the smoothed policy
      ``pi_h`` (``"kernel"``, see :func:`step_weights`).

    The choice uses the weights only, never the outcomes. ``supported`` is False when the
    chosen weights' ESS is below ``min_ess``: IPS/SNIPS/DR are then unavailable.
    """

    def ok(w: np.ndarray) -> bool:
        rho = trajectory_weights(log, cumulative_weights(log, w), n_charges)
        return weight_support(log, rho, min_ess=min_ess)[2]

    if target_probability is not None:
        w = exact_ratio_weights(log, target_probability)
        return w, "exact-ratio", ok(w)
    exact = step_weights(log, bandwidth_hours=slot_hours, slot_hours=slot_hours)
    if bandwidth_hours <= slot_hours or ok(exact):
        return exact, "exact-slot", ok(exact)
    kern = step_weights(log, bandwidth_hours=bandwidth_hours, slot_hours=slot_hours)
    return kern, "kernel", ok(kern)


def informative_charges(log: StepLog, n_charges: int) -> np.ndarray:
    """Charges with at least one logged state where the target retries (weights matter there).

    Charges the target stops at once (or that the log never retried) have ``rho = 1`` trivially;
    counting them would inflate the effective sample size of the retry decisions.
    """
    out = np.zeros(n_charges, dtype=bool)
    retries = ~np.isnan(np.asarray(log.target_hours, dtype=np.float64))
    out[np.asarray(log.charge)[retries]] = True
    return out


def weight_support(
    log: StepLog, rho: np.ndarray, *, min_ess: float = MIN_ESS
) -> tuple[float, float, bool]:
    """ESS and mean of the trajectory weights over informative charges, and whether they suffice.

    Supported when ``ESS >= min_ess`` and the mean weight, whose expectation is 1, is within
    ``3 / sqrt(ESS)`` of 1 (about three standard errors): a mean far below 1 shows the weight mass
    sits on trajectories the log (almost) never contains, which ESS alone does not reveal.
    """
    info = informative_charges(log, len(rho))
    r = np.asarray(rho, dtype=np.float64)[info]
    if not r.size:
        return 0.0, 0.0, False
    ess = effective_sample_size(r)
    mean = float(r.mean())
    ok = ess >= min_ess and abs(mean - 1.0) <= 3.0 / np.sqrt(max(ess, 1e-12))
    return ess, mean, bool(ok)


def cumulative_weights(log: StepLog, w: np.ndarray) -> np.ndarray:
    """``W_ik = prod_{j<=k} w_ij`` within each charge (rows ordered by charge, step)."""
    out = np.asarray(w, dtype=np.float64).copy()
    step = np.asarray(log.step)
    if out.size == 0:
        return out
    for k in range(2, int(step.max()) + 1):
        rows = np.flatnonzero(step == k)
        out[rows] *= out[rows - 1]
    return out


def trajectory_weights(log: StepLog, W: np.ndarray, n_charges: int) -> np.ndarray:
    """Trajectory weight per charge: ``W`` at the last logged step before the target stops."""
    rho = np.ones(n_charges, dtype=np.float64)
    charge = np.asarray(log.charge)
    if charge.size == 0:
        return rho
    stops = np.isnan(np.asarray(log.target_hours, dtype=np.float64))
    # "alive" = no stop at this or an earlier step of the charge
    stop_seen = np.zeros(len(charge), dtype=bool)
    step = np.asarray(log.step)
    stop_seen[:] = stops
    for k in range(2, int(step.max()) + 1):
        rows = np.flatnonzero(step == k)
        stop_seen[rows] |= stop_seen[rows - 1]
    alive = ~stop_seen
    # last alive row per charge: W there; charges whose first decision is a stop keep 1.0
    alive_rows = np.flatnonzero(alive)
    if alive_rows.size:
        # rows are ordered, so assigning in order leaves the last alive row per charge
        rho[charge[alive_rows]] = W[alive_rows]
    return rho


def _per_charge_sum(charge: np.ndarray, values: np.ndarray, n_charges: int) -> np.ndarray:
    out = np.zeros((n_charges, values.shape[1]), dtype=np.float64)
    if len(charge):
        np.add.at(out, charge, values)
    return out


def observed_contributions(log: StepLog, metrics: MetricSet, n_charges: int) -> np.ndarray:
    """Per-charge metric values of what actually happened (the logged trajectories)."""
    step = np.asarray(log.step)
    success = np.asarray(log.success, dtype=np.float64)[:, None]
    reward = metrics.success_reward(step, log.logged_hours, log.amount)
    values = metrics.retry_cost(step) + success * reward
    return _per_charge_sum(np.asarray(log.charge), values, n_charges)


def ips_contributions(
    log: StepLog, W: np.ndarray, metrics: MetricSet, n_charges: int
) -> np.ndarray:
    """Per-charge per-decision IPS values ``sum_k W_ik (c_k + y_k g_k)``, shape ``(n, m)``."""
    step = np.asarray(log.step)
    success = np.asarray(log.success, dtype=np.float64)[:, None]
    reward = metrics.success_reward(step, log.logged_hours, log.amount)
    values = W[:, None] * (metrics.retry_cost(step) + success * reward)
    return _per_charge_sum(np.asarray(log.charge), values, n_charges)


def dr_contributions(
    log: StepLog, W: np.ndarray, model: ModelTerms, metrics: MetricSet, n_charges: int
) -> np.ndarray:
    """Per-charge doubly robust values ``V_1 + sum_k W_k (y_k - q_k)(g_k - V(f_k))``."""
    if model.q_logged is None or model.value_after_fail is None:
        raise EstimatorError("DR needs ModelTerms.q_logged and value_after_fail")
    step = np.asarray(log.step)
    y = np.asarray(log.success, dtype=np.float64)
    q = np.asarray(model.q_logged, dtype=np.float64)
    reward = metrics.success_reward(step, log.logged_hours, log.amount)
    nz = W != 0
    v_fail = np.where(nz[:, None], np.nan_to_num(model.value_after_fail, nan=0.0), 0.0)
    if np.any(nz & np.isnan(q)):
        raise EstimatorError("ModelTerms.q_logged is NaN on a row with non-zero weight")
    corr = (W * (y - np.nan_to_num(q)))[:, None] * (reward - v_fail)
    return np.asarray(model.value_start, dtype=np.float64) + _per_charge_sum(
        np.asarray(log.charge), corr, n_charges
    )


def overlap_diagnostics(
    log: StepLog,
    w: np.ndarray,
    rho: np.ndarray,
    *,
    warning: str | None,
    method: str = "kernel",
    min_ess: float = MIN_ESS,
    support_weights: np.ndarray | None = None,
) -> Overlap:
    """Effective sample size and the share of target decisions the logging policy could make.

    A target *retry* decision is supported when the logging policy randomised at that state
    (``retry_propensity < 1``) or its logged time matches the target's (non-zero weight). Stops
    need no support (their value is known: nothing more is collected).

    ``first_retry_support`` is the mean of ``support_weights`` (default ``w``) over the target's
    first retry decisions, with its standard error. Given exact-slot weights (or exact ratios
    for a stochastic target) its expectation is the share of those retries the logging policy
    could have made at the hour the target picks: 1 when it could have made all of them, so a
    value well below 1 says the target's retries lie outside what the log explored, which no
    amount of volume repairs, and a value near 1 with a small ESS says the weights are merely
    spread. (Kernel weights would also count the kernel's hours the log never explores.) NaN
    without exploration (``warning``): the propensities that would measure it are missing.
    """
    n = len(rho)
    target = np.asarray(log.target_hours, dtype=np.float64)
    retries = ~np.isnan(target)
    p = np.asarray(log.propensity, dtype=np.float64)
    supported = retries & ((np.nan_to_num(p, nan=1.0) < 1.0) | (w > 0))
    n_ret = int(retries.sum())
    ess, mean_w, ok = weight_support(log, rho, min_ess=min_ess)
    first = retries & (np.asarray(log.step) == 1)
    first_w = np.asarray(w if support_weights is None else support_weights)[first]
    if warning is not None:  # no propensities: what the log could have made is unknown
        support, support_se = math.nan, math.nan
    elif first_w.size:
        support, support_se = float(first_w.mean()), float(first_w.std() / np.sqrt(first_w.size))
    else:  # no first retry to support
        support, support_se = 1.0, 0.0
    n_info = int(informative_charges(log, n).sum())
    return Overlap(
        exploration=warning is None,
        warning=warning,
        n_charges=n,
        n_decisions=len(target),
        target_retry_share=n_ret / len(target) if len(target) else 0.0,
        support_share=float(supported.sum()) / n_ret if n_ret else 1.0,
        matched_share=float((w > 0).sum()) / n_ret if n_ret else 0.0,
        ess=ess,
        ess_share=ess / n_info if n_info else 0.0,
        max_weight=float(rho.max()) if n else 0.0,
        method=method,
        supported=warning is None and ok,
        min_ess=min_ess,
        mean_weight=mean_w,
        n_informative=n_info,
        first_retry_support=support,
        first_retry_support_se=support_se,
    )


def poisson_weight_chunks(
    n: int, n_boot: int, *, seed: int, chunk: int = 16_384
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(slice of charges, (n_boot, chunk) Poisson(1) weights)`` for a charge bootstrap.

    The Poisson bootstrap approximates multinomial resampling of charges; chunking keeps memory
    at ``n_boot * chunk`` small integers whatever the number of charges. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        yield slice(start, stop), rng.poisson(1.0, size=(n_boot, stop - start)).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class Resampled:
    """Point estimates and bootstrap replicates of per-charge means for several estimators."""

    point: dict[str, np.ndarray]
    replicates: dict[str, np.ndarray]  # estimator -> (n_boot, m)
    metric_names: tuple[str, ...]
    groups: dict[str, dict[str, tuple[np.ndarray, np.ndarray, int]]] = field(default_factory=dict)


def bootstrap_means(
    numerators: Mapping[str, np.ndarray],
    denominators: Mapping[str, np.ndarray | None],
    *,
    metric_names: Sequence[str],
    n_boot: int,
    seed: int,
    group_codes: dict[str, tuple[np.ndarray, Sequence[str]]] | None = None,
) -> Resampled:
    """Charge bootstrap of ratio-of-sums estimates, vectorised over resamples.

    Parameters
    ----------
    numerators
        Estimator name -> ``(n_charges, m)`` per-charge contributions, or ``(1 + R, n_charges,
        m)``: the point contributions, then R model replicates (e.g. the direct method under
        refitted models); bootstrap replicate ``b`` is the charge resample of the point
        contributions plus the scaled deviation of replicate ``1 + b mod R``'s mean from the
        replicates' average (:func:`model_shift_scale`), so the interval reflects model error
        as well as charge sampling.
    denominators
        Estimator name -> ``(n_charges,)`` per-charge normaliser (None = count of charges, i.e. a
        plain mean; the trajectory weights for SNIPS).
    metric_names
        Names of the ``m`` columns.
    n_boot
        Number of resamples (the same Poisson weights are used for every estimator and group, so
        differences between policies are resampled jointly).
    seed
        Seed of the resampling.
    group_codes
        Optional breakdowns: name -> (integer code per charge, level names).
    """
    names = list(numerators)
    if not names:
        raise EstimatorError("no estimator to bootstrap")
    variants = {k: v for k, v in numerators.items() if np.ndim(v) == 3 and v.shape[0] > 1}
    numerators = {k: (v[0] if np.ndim(v) == 3 else v) for k, v in numerators.items()}
    n = numerators[names[0]].shape[0]
    m = len(metric_names)
    for name in names:
        if numerators[name].shape != (n, m):
            raise EstimatorError(
                f"{name}: contributions have shape {numerators[name].shape}, expected {(n, m)}"
            )
    # model replicates: replicate b adds model shift 1 + b mod R (see model_shift_scale)
    v_index = {k: 1 + np.arange(n_boot) % (v.shape[0] - 1) for k, v in variants.items()}
    v_scale = {k: model_shift_scale(v.shape[0] - 1) for k, v in variants.items()}
    stacked = np.concatenate([numerators[k] for k in names], axis=1)  # (n, E*m)
    dens = np.stack(
        [
            np.ones(n) if denominators.get(k) is None else np.asarray(denominators[k], float)
            for k in names
        ],
        axis=1,
    )  # (n, E)
    groups = group_codes or {}
    # per group dimension: one-hot (n, G) for the group sums
    num_b = np.zeros((n_boot, stacked.shape[1]))
    den_b = np.zeros((n_boot, len(names)))
    g_num_b: dict[str, np.ndarray] = {
        g: np.zeros((len(levels), n_boot, stacked.shape[1])) for g, (_, levels) in groups.items()
    }
    g_den_b: dict[str, np.ndarray] = {
        g: np.zeros((len(levels), n_boot, len(names))) for g, (_, levels) in groups.items()
    }
    col_of = {k: slice(names.index(k) * m, (names.index(k) + 1) * m) for k in variants}
    for sl, wts in poisson_weight_chunks(n, n_boot, seed=seed):
        x = stacked[sl]
        d = dens[sl]
        num_b += wts @ x
        den_b += wts @ d
        for g, (codes, levels) in groups.items():
            c = np.asarray(codes)[sl]
            for j in range(len(levels)):
                mask = c == j
                if mask.any():
                    wj = wts[:, mask]
                    g_num_b[g][j] += wj @ x[mask]
                    g_den_b[g][j] += wj @ d[mask]

    # model error: replicate b gets the (scaled) deviation of refit r(b)'s mean from the refits'
    # average, added to its charge resample under the point model (mean space, times the
    # replicate's denominator so the ratio shifts by exactly that amount)
    for k, arr in variants.items():
        cols = col_of[k]
        e = names.index(k)
        dev = _model_deviations(arr, np.ones(n, dtype=bool), v_scale[k])
        num_b[:, cols] += dev[v_index[k] - 1] * den_b[:, e : e + 1]
        for g, (codes, levels) in groups.items():
            cg = np.asarray(codes)
            for j in range(len(levels)):
                mask = cg == j
                if mask.any():
                    dev = _model_deviations(arr, mask, v_scale[k])
                    g_num_b[g][j][:, cols] += dev[v_index[k] - 1] * g_den_b[g][j][:, e : e + 1]
    point: dict[str, np.ndarray] = {}
    reps: dict[str, np.ndarray] = {}
    total_num = stacked.sum(axis=0)
    total_den = dens.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        for e, name in enumerate(names):
            cols = slice(e * m, (e + 1) * m)
            point[name] = total_num[cols] / total_den[e]
            reps[name] = num_b[:, cols] / den_b[:, e : e + 1]
    out_groups: dict[str, dict[str, tuple[np.ndarray, np.ndarray, int]]] = {}
    for g, (codes, levels) in groups.items():
        c = np.asarray(codes)
        out_groups[g] = {}
        for j, level in enumerate(levels):
            mask = c == j
            if not mask.any():
                continue
            gn = stacked[mask].sum(axis=0)
            gd = dens[mask].sum(axis=0)
            for e, name in enumerate(names):
                cols = slice(e * m, (e + 1) * m)
                with np.errstate(divide="ignore", invalid="ignore"):
                    pt = gn[cols] / gd[e]
                    rp = g_num_b[g][j][:, cols] / g_den_b[g][j][:, e : e + 1]
                out_groups[g][f"{level}\x1f{name}"] = (pt, rp, int(mask.sum()))
    return Resampled(
        point=point, replicates=reps, metric_names=tuple(metric_names), groups=out_groups
    )


# 97.5 % quantiles of Student's t for 1..20 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)  # fmt: skip


def model_shift_scale(refits: int) -> float:
    """Scale of the refit deviations added to the charge bootstrap (Rubin's rules, small R).

    The between-refit variance ``B`` of R refits enters the total variance as ``(1 + 1/R) B``
    (Rubin 1987, combining R imputations); the R deviations from their mean have variance
    ``(R-1)/R B``, so they are scaled by ``sqrt((1 + 1/R) R / (R-1))``, and by ``t_{R-1} / z`` so a
    percentile interval from few refits widens like a t interval.
    """
    if refits < 2:
        return 0.0
    t = _T975[refits - 2] if refits - 1 <= len(_T975) else 1.96 + 2.4 / (refits - 1)
    return float(np.sqrt((1.0 + 1.0 / refits) * refits / (refits - 1)) * t / 1.959964)


def _model_deviations(arr: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """``(R, m)`` scaled deviations of each refit's mean (over ``mask``) from their average."""
    means = np.asarray(arr[1:, mask], dtype=np.float64).mean(axis=1)
    return scale * (means - means.mean(axis=0, keepdims=True))


@dataclass(frozen=True, kw_only=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    value: float
    low: float
    high: float


def summary_statistics(means: np.ndarray, metrics: MetricSet) -> dict[str, np.ndarray | float]:
    """Derived statistics from per-charge mean vectors (last axis = metrics).

    Works on a single vector ``(m,)`` or on replicates ``(B, m)``; returns the same leading shape.
    """
    names = metrics.names
    col = {n: i for i, n in enumerate(names)}
    x = np.asarray(means, dtype=np.float64)
    rec = x[..., col["recovered"]]
    out: dict[str, np.ndarray | float] = {}
    out["recovery_rate"] = rec
    out["recovered_amount"] = x[..., col["recovered_amount"]]
    out["retries_per_failed_charge"] = x[..., col["retries"]]
    out["discounted_value"] = x[..., col["discounted_value"]]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["retries_per_recovered_charge"] = x[..., col["retries"]] / rec
        out["recovered_within_7d_rate"] = x[..., col["recovered_7d"]]
        out["recovered_within_7d_share"] = x[..., col["recovered_7d"]] / rec
        # median days to recovery among recovered charges, read off the cumulative curve
        curve = np.stack(
            [x[..., col[f"recovered_by_day_{d}"]] for d in metrics.curve_days], axis=-1
        )
        frac = curve / rec[..., None]
        days = np.asarray(metrics.curve_days, dtype=np.float64)
        reached = frac >= 0.5
        idx = np.argmax(reached, axis=-1)
        med = np.where(reached.any(axis=-1), days[idx], np.nan)
        out["median_days_to_recovery"] = med
        for k in range(1, metrics.max_step + 1):
            out[f"success_rate_retry_{k}"] = (
                x[..., col[f"succeeded_{k}"]] / x[..., col[f"attempted_{k}"]]
            )
    return out


def percentile_interval(point: float, replicates: np.ndarray, *, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval, ignoring non-finite replicates."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0 or not np.isfinite(point):
        return Interval(value=float(point), low=float("nan"), high=float("nan"))
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(r, [a, 1.0 - a])
    return Interval(value=float(point), low=float(lo), high=float(hi))
