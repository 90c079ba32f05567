"""Off-policy estimators on small synthetic logs whose true policy values are known exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from retryopt.training.backtest.estimators import (
    NO_EXPLORATION_WARNING,
    EstimatorError,
    MetricSet,
    ModelTerms,
    StepLog,
    bootstrap_means,
    cumulative_weights,
    dr_contributions,
    exploration_warning,
    ips_contributions,
    observed_contributions,
    overlap_diagnostics,
    percentile_interval,
    step_weights,
    summary_statistics,
    trajectory_weights,
)

METRICS = MetricSet(max_step=3, curve_days=(1, 2, 3, 4, 5, 6, 7))
LOG_FIXED = (18, 66, 114)  # logging schedule (hours)
TARGET = (18, 54)  # target: two retries at these hours, then stop (a budget of 2)


def true_p(hours: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Success probability: piecewise constant over 12-hour blocks, by a visible charge kind."""
    block = (np.asarray(hours) // 12).astype(int)
    base = np.where(block % 2 == 1, 0.35, 0.10)  # odd half-days are good
    return np.clip(base + 0.15 * np.asarray(kind), 0.0, 0.95)


def wrong_p(hours: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """A biased success model (too optimistic, blind to time)."""
    return np.full(np.shape(hours), 0.5) + 0.0 * np.asarray(kind)


@dataclass
class Synthetic:
    log: StepLog
    kind: np.ndarray
    n: int


def simulate_log(n: int, *, seed: int, epsilon: float = 0.5) -> Synthetic:
    """Logging: fixed schedule with prob 1-eps, else a uniform slot among the next 48 hours."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    amount = rng.choice([500, 1500, 4000], n)
    rows: dict[str, list[float]] = {k: [] for k in ("charge", "step", "hours", "y", "p", "amt")}
    prev = np.full(n, 0.0)
    active = np.ones(n, dtype=bool)
    for k in range(1, 4):
        idx = np.flatnonzero(active)
        lo = prev[idx] + 1
        n_allowed = np.full(idx.size, 48.0)  # random slot among the next 48 hours
        fixed = np.maximum(LOG_FIXED[k - 1], lo)
        explore = rng.random(idx.size) < epsilon
        rand = lo + np.floor(rng.random(idx.size) * n_allowed)
        t = np.where(explore, rand, fixed)
        p = epsilon / n_allowed + (1 - epsilon) * (t == fixed)
        y = rng.random(idx.size) < true_p(t, kind[idx])
        rows["charge"] += idx.tolist()
        rows["step"] += [k] * idx.size
        rows["hours"] += t.tolist()
        rows["y"] += y.tolist()
        rows["p"] += p.tolist()
        rows["amt"] += amount[idx].tolist()
        prev[idx] = t
        active[idx[y]] = False
    order = np.lexsort((np.asarray(rows["step"]), np.asarray(rows["charge"])))
    charge = np.asarray(rows["charge"], dtype=np.int64)[order]
    step = np.asarray(rows["step"], dtype=np.int64)[order]
    hours = np.asarray(rows["hours"])[order]
    target = np.array([TARGET[s - 1] if s <= len(TARGET) else np.nan for s in step], float)
    # the target retries at its time only if still after the logged previous attempt
    prev_hours = np.where(step > 1, np.r_[0.0, hours[:-1]], 0.0)
    target = np.where(
        target > prev_hours, target, np.where(np.isnan(target), np.nan, prev_hours + 1)
    )
    log = StepLog(
        charge=charge,
        step=step,
        logged_hours=hours,
        success=np.asarray(rows["y"], dtype=bool)[order],
        propensity=np.asarray(rows["p"])[order],
        target_hours=target,
        amount=np.asarray(rows["amt"])[order],
    )
    return Synthetic(log=log, kind=kind, n=n)


def truth(n_kind: dict[int, float], amount_mean: float) -> dict[str, float]:
    """Exact value of the target (times fixed; success independent across retries given kind)."""
    rec = 0.0
    retries = 0.0
    for kind, share in n_kind.items():
        surv = 1.0
        for t in TARGET:
            retries += share * surv
            q = float(true_p(np.array([t]), np.array([kind]))[0])
            rec += share * surv * q
            surv *= 1 - q
    return {"recovery_rate": rec, "recovered_amount": rec * amount_mean, "retries": retries}


def model_terms(syn: Synthetic, p_fn: object) -> ModelTerms:
    """Direct-method terms for the target (history-independent times) under a success model."""
    fn = p_fn
    log = syn.log
    amount_of_charge = np.zeros(syn.n)
    amount_of_charge[log.charge] = log.amount

    def value_from(step0: int, kind: np.ndarray, amount: np.ndarray) -> np.ndarray:
        m = len(METRICS.names)
        v = np.zeros((kind.size, m))
        surv = np.ones(kind.size)
        for k in range(step0, len(TARGET) + 1):
            t = np.full(kind.size, float(TARGET[k - 1]))
            q = fn(t, kind)  # type: ignore[operator]
            c = METRICS.retry_cost(np.full(kind.size, k))
            g = METRICS.success_reward(np.full(kind.size, k), t, amount)
            v += surv[:, None] * (c + q[:, None] * g)
            surv = surv * (1 - q)
        return v

    start = value_from(1, syn.kind, amount_of_charge)
    kind_rows = syn.kind[log.charge]
    after = np.zeros((len(log.step), len(METRICS.names)))
    for k in (1, 2, 3):
        rows = log.step == k
        after[rows] = value_from(k + 1, kind_rows[rows], log.amount[rows])
    q_logged = fn(log.logged_hours, kind_rows)  # type: ignore[operator]
    return ModelTerms(value_start=start, q_logged=q_logged, value_after_fail=after)


def estimates(syn: Synthetic, p_fn: object, *, seed: int = 0, n_boot: int = 200) -> dict:
    log = syn.log
    w = step_weights(log, bandwidth_hours=6.0)
    W = cumulative_weights(log, w)
    rho = trajectory_weights(log, W, syn.n)
    mt = model_terms(syn, p_fn)
    num = {
        "ips": ips_contributions(log, W, METRICS, syn.n),
        "snips": ips_contributions(log, W, METRICS, syn.n),
        "dm": mt.value_start,
        "dr": dr_contributions(log, W, mt, METRICS, syn.n),
        "observed": observed_contributions(log, METRICS, syn.n),
    }
    den = {"snips": rho}
    res = bootstrap_means(num, den, metric_names=METRICS.names, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {}
    for name in num:
        pt = summary_statistics(res.point[name], METRICS)
        reps = summary_statistics(res.replicates[name], METRICS)
        out[name] = {
            k: percentile_interval(float(pt[k]), np.asarray(reps[k]))
            for k in ("recovery_rate", "recovered_amount", "retries_per_failed_charge")
        }
    out["overlap"] = overlap_diagnostics(log, w, rho, warning=None)
    return out


def test_ips_snips_dr_are_unbiased_and_dm_depends_on_its_model() -> None:
    syn = simulate_log(20_000, seed=1)
    amount = np.zeros(syn.n)
    amount[syn.log.charge] = syn.log.amount
    # exact value on this sample of charges (kinds and amounts fixed, outcomes random)
    by_kind = {k: truth({k: 1.0}, 1.0) for k in (0, 1)}
    rate = float(np.mean([by_kind[int(k)]["recovery_rate"] for k in syn.kind]))
    retries = float(np.mean([by_kind[int(k)]["retries"] for k in syn.kind]))
    amt = float(
        np.mean(
            [by_kind[int(k)]["recovery_rate"] * a for k, a in zip(syn.kind, amount, strict=False)]
        )
    )
    est = estimates(syn, true_p)
    for name in ("ips", "snips", "dr", "dm"):
        for key, tr, tol in (
            ("recovery_rate", rate, 0.06),
            ("retries_per_failed_charge", retries, 0.15),
            ("recovered_amount", amt, 0.12 * amt),
        ):
            iv = est[name][key]
            assert iv.low <= tr <= iv.high, (name, key, iv, tr)
            assert abs(iv.value - tr) < tol, (name, key, iv, tr)
    assert est["dm"]["recovery_rate"].value == pytest.approx(rate, abs=1e-9)
    # a wrong model: DM is biased, DR is still right thanks to the importance correction
    bad = estimates(syn, wrong_p)
    assert abs(bad["dm"]["recovery_rate"].value - rate) > 0.1
    iv = bad["dr"]["recovery_rate"]
    assert iv.low <= rate <= iv.high and abs(iv.value - rate) < 0.06
    # the observed (logging) value differs from the target's: three retries, other times
    assert est["observed"]["retries_per_failed_charge"].value > retries + 0.3
    ov = est["overlap"]
    assert 0 < ov.ess < syn.n and 0 < ov.matched_share < 1 and ov.support_share == 1.0
    # every first retry of the target (18 h) lies where the log explores (the next 48 hours)
    assert ov.first_retry_support == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(("target", "kernel_hours"), [(36.0, 6), (46.0, 5), (100.0, 0)])
def test_first_retry_support_is_the_share_the_log_could_have_made(
    target: float, kernel_hours: int
) -> None:
    """A log exploring hours 24-47 only: the target's own hour is in it or not, while a 6 h
    kernel around it is covered in part (``kernel_hours`` of 6)."""
    rng = np.random.default_rng(11)
    n = 40_000
    log = StepLog(
        charge=np.arange(n),
        step=np.ones(n, dtype=np.int64),
        logged_hours=rng.integers(24, 48, n).astype(float),
        success=rng.random(n) < 0.3,
        propensity=np.full(n, 1.0 / 24),
        target_hours=np.full(n, target),
        amount=np.ones(n),
    )
    kernel = step_weights(log, bandwidth_hours=6.0)
    exact = step_weights(log, bandwidth_hours=1.0)
    rho = trajectory_weights(log, cumulative_weights(log, kernel), n)
    by_kernel = overlap_diagnostics(log, kernel, rho, warning=None)
    assert by_kernel.first_retry_support == pytest.approx(kernel_hours / 6, abs=0.03)
    ov = overlap_diagnostics(log, kernel, rho, warning=None, support_weights=exact)
    in_log = 24 <= target < 48
    assert ov.first_retry_support == pytest.approx(float(in_log), abs=0.1)
    assert ov.to_dict()["first_retry_support"] == ov.first_retry_support
    assert (ov.first_retry_support_se > 0) == in_log and ov.first_retry_support_se < 0.05
    # without propensities the support cannot be measured: unknown, not 0
    blind = overlap_diagnostics(log, np.zeros(n), np.ones(n), warning=NO_EXPLORATION_WARNING)
    assert np.isnan(blind.first_retry_support) and np.isnan(blind.first_retry_support_se)


def test_intervals_cover_the_truth_at_about_the_nominal_rate() -> None:
    hits = {"ips": 0, "snips": 0, "dr": 0}
    reps = 30
    for r in range(reps):
        syn = simulate_log(5_000, seed=100 + r)
        kinds = {0: float(np.mean(syn.kind == 0)), 1: float(np.mean(syn.kind == 1))}
        # the population truth (kind shares 1/2 each), not the sample's
        tr = truth({0: 0.5, 1: 0.5}, 1.0)["recovery_rate"]
        assert kinds
        est = estimates(syn, wrong_p, seed=r, n_boot=200)
        for name in hits:
            iv = est[name]["recovery_rate"]
            hits[name] += int(iv.low <= tr <= iv.high)
    for name, h in hits.items():
        assert h / reps >= 0.8, (name, h, hits)


def test_no_exploration_warning_and_bad_propensities() -> None:
    assert exploration_warning(np.array([np.nan, np.nan])) == NO_EXPLORATION_WARNING
    assert exploration_warning(np.array([1.0, 1.0])) == NO_EXPLORATION_WARNING
    assert exploration_warning(np.array([])) == NO_EXPLORATION_WARNING
    assert exploration_warning(np.array([0.5, 1.0])) is None
    partial = exploration_warning(np.array([0.5, np.nan]))
    assert partial is not None and "1 of 2" in partial
    syn = simulate_log(50, seed=3)
    bad = StepLog(**{**syn.log.__dict__, "propensity": np.where(syn.log.step == 1, 0.0, 0.5)})
    with pytest.raises(EstimatorError, match="retry_propensity must be in"):
        step_weights(bad)


def test_steplog_validates_order_and_steps() -> None:
    base = dict(
        charge=np.array([0, 0, 1]),
        step=np.array([1, 2, 1]),
        logged_hours=np.array([1.0, 2.0, 3.0]),
        success=np.array([False, True, False]),
        propensity=np.array([0.5, 0.5, 0.5]),
        target_hours=np.array([1.0, np.nan, 3.0]),
        amount=np.array([1.0, 1.0, 1.0]),
    )
    StepLog(**base)
    with pytest.raises(EstimatorError, match="ordered by charge"):
        StepLog(**{**base, "charge": np.array([1, 1, 0])})
    with pytest.raises(EstimatorError, match="rows \\[2\\]"):
        StepLog(**{**base, "step": np.array([1, 3, 1])})
    with pytest.raises(EstimatorError, match="success has 2 rows"):
        StepLog(**{**base, "success": np.array([False, True])})


def test_weights_stop_and_trajectory() -> None:
    log = StepLog(
        charge=np.array([0, 0, 0, 1, 2]),
        step=np.array([1, 2, 3, 1, 1]),
        logged_hours=np.array([10.0, 20.0, 30.0, 5.0, 50.0]),
        success=np.array([False, False, True, False, False]),
        propensity=np.array([0.5, 0.25, 0.5, 0.1, 0.2]),
        target_hours=np.array([10.0, 21.0, np.nan, np.nan, 80.0]),
        amount=np.ones(5),
    )
    w = step_weights(log, bandwidth_hours=1.0)  # exact slot match
    assert w.tolist() == [2.0, 0.0, 0.0, 0.0, 0.0]
    w = step_weights(log, bandwidth_hours=4.0)  # box of 4 hours: weight 1 / (4 p)
    assert w.tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0, 0.0])
    W = cumulative_weights(log, w)
    assert W.tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0, 0.0])
    rho = trajectory_weights(log, W, 3)
    # charge 0: target stops at step 3 -> W after step 2; charge 1 stops at once -> 1
    assert rho.tolist() == pytest.approx([0.5, 1.0, 0.0])


def test_bootstrap_groups_and_determinism() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(1000, 2))
    codes = rng.integers(0, 2, 1000)
    a = bootstrap_means(
        {"x": values},
        {"x": None},
        metric_names=("a", "b"),
        n_boot=50,
        seed=4,
        group_codes={"g": (codes, ("zero", "one"))},
    )
    b = bootstrap_means({"x": values}, {"x": None}, metric_names=("a", "b"), n_boot=50, seed=4)
    np.testing.assert_allclose(a.replicates["x"], b.replicates["x"])
    np.testing.assert_allclose(a.point["x"], values.mean(axis=0))
    pt, reps, n = a.groups["g"]["one\x1fx"]
    np.testing.assert_allclose(pt, values[codes == 1].mean(axis=0))
    assert reps.shape == (50, 2) and n == int((codes == 1).sum())
    # the bootstrap standard error is close to the analytic one
    se = np.std(a.replicates["x"][:, 0])
    assert se == pytest.approx(values[:, 0].std() / np.sqrt(1000), rel=0.35)


def test_overlap_gate_declares_rare_matches_unsupported() -> None:
    from retryopt.training.backtest.estimators import MIN_ESS, select_weights, weight_support

    rng = np.random.default_rng(5)
    n = 400
    charge = np.arange(n)
    step = np.ones(n, dtype=np.int64)
    logged = np.where(rng.random(n) < 0.7, 72.0, rng.integers(24, 500, n).astype(float))
    prop = np.where(logged == 72.0, 0.7 + 0.3 / 476, 0.3 / 476)
    base = dict(
        charge=charge,
        step=step,
        logged_hours=logged,
        success=rng.random(n) < 0.5,
        propensity=prop,
        amount=np.ones(n),
    )
    on_schedule = StepLog(**base, target_hours=np.full(n, 72.0))
    w, method, ok = select_weights(on_schedule, n)
    assert method == "exact-slot" and ok
    # a deterministic time the log only reaches by exploration: tiny matched mass, mean << 1
    off = StepLog(**base, target_hours=np.full(n, 300.0))
    w, method, ok = select_weights(off, n)
    assert not ok
    rho = w  # one step per charge
    ess, mean, supported = weight_support(off, rho, min_ess=MIN_ESS)
    assert not supported and (ess < MIN_ESS or abs(mean - 1.0) > 0.2)
    # exact ratios for a uniform stochastic target over the explored slots
    probs = np.where((logged >= 24) & (logged < 500), 1.0 / 476, 0.0)
    w, method, ok = select_weights(on_schedule, n, target_probability=probs)
    assert method == "exact-ratio"
    assert np.allclose(w[logged != 72.0], (1.0 / 476) / prop[logged != 72.0])


def test_model_replicates_widen_the_interval_not_the_point() -> None:
    from retryopt.training.backtest.estimators import bootstrap_means

    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 1))
    arr = np.stack([base, base + 0.2, base - 0.2, base + 0.1, base - 0.1])
    res = bootstrap_means(
        {"plain": base, "refit": arr},
        {"plain": None, "refit": None},
        metric_names=("x",),
        n_boot=200,
        seed=1,
    )
    assert np.allclose(res.point["plain"], res.point["refit"])
    plain = np.quantile(res.replicates["plain"][:, 0], [0.025, 0.975])
    refit = np.quantile(res.replicates["refit"][:, 0], [0.025, 0.975])
    assert refit[1] - refit[0] > plain[1] - plain[0] + 0.2
