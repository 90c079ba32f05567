"""Issue 14: rare-code bounds and the timing shrinkage (model.adjust, training.planning_fit).

- units: the zero-success bound (the rule of three), fitting the bounds, parsing the bundle's
  planning section, capping by level, shrinking a decision's timing component, fitting its slope;
- the planner applies the shrinkage of its model (a hand-made success curve);
- behaviour on a real trained bundle: a history where ``restricted_card`` retries never succeed
  gets the code bounded in the bundle, on both scoring paths, and the service stops such a
  charge with ``not_worth_an_attempt`` while the unbounded model would have retried it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_policy import CurveModel, _decide
from test_rules import FAIL, Z, request

import retryopt
from retryopt.features import contract as ct
from retryopt.features.decisions import Constraints
from retryopt.features.io import write_table_atomic
from retryopt.features.objective import FREE_OBJECTIVE
from retryopt.model.adjust import (
    GAP_EDGES_HOURS,
    Adjustment,
    fit_code_bounds,
    shrink_timing,
    zero_success_upper_bound,
)
from retryopt.model.bundle import BundleError, load_bundle
from retryopt.serving.policies import BundleSuccessModel, PlannerPolicy
from retryopt.training.planning_fit import fit_shrinkage_beta, fit_timing_shrinkage
from retryopt.training.simulate.config import WorldConfig
from retryopt.training.simulate.world import simulate_world
from retryopt.training.train import flat_metrics, run_training, summary_table
from retryopt.training.train_config import load_config

HOPELESS = "restricted_card"


def test_zero_success_bound_is_the_rule_of_three() -> None:
    assert zero_success_upper_bound(1, 0.95) == pytest.approx(0.95)
    for n in (100, 1000, 10_000):
        u = zero_success_upper_bound(n, 0.95)
        assert (1 - u) ** n == pytest.approx(0.05)  # exact: P(0 successes | p = u) = 5 %
        assert u == pytest.approx(3 / n, rel=0.02)
    with pytest.raises(ValueError):
        zero_success_upper_bound(0, 0.95)


def test_fit_code_bounds_keeps_only_levels_without_success() -> None:
    codes = ["a"] * 50 + ["b"] * 50 + ["c"] * 30 + [None] * 10 + ["other"] * 40
    labels = np.array([0] * 50 + [0] * 49 + [1] + [0] * 30 + [0] * 10 + [0] * 40)
    got = fit_code_bounds(
        np.array(codes, dtype=object),
        labels,
        levels=("a", "b", "other", "missing"),
        confidence=0.95,
    )
    assert list(got) == ["a"]  # b succeeded once, c is not a level, other/missing are skipped
    assert got["a"]["retries"] == 50.0
    assert got["a"]["upper_bound"] == pytest.approx(zero_success_upper_bound(50, 0.95))


def test_adjustment_parsing_and_capping() -> None:
    adj = Adjustment.from_planning(
        {"rare_code_bounds": {"a": {"retries": 300, "upper_bound": 0.01}}, "timing_shrinkage": 0.5}
    )
    assert adj.code_bounds == {"a": 0.01} and adj.timing_shrinkage == 0.5
    table = adj.level_bounds(("x", "a", "other"))
    assert table is not None
    np.testing.assert_array_equal(table, [1.0, 0.01, 1.0, 1.0])
    p = np.array([0.3, 0.3, 0.005, 0.3, 0.3])
    codes = np.array([0, 1, 1, np.nan, -1])
    np.testing.assert_array_equal(
        Adjustment.bound_levels(p, codes, table), [0.3, 0.01, 0.005, 0.3, 0.3]
    )
    assert Adjustment.from_planning(None) == Adjustment()
    assert Adjustment().level_bounds(("a",)) is None
    bad: dict[str, Any]
    for bad in (
        {"rare_code_bounds": {"a": {"upper_bound": 1.5}}},
        {"rare_code_bounds": {"a": 0.1}},
        {"rare_code_bounds": []},
        {"timing_shrinkage": -0.1},
        {"timing_shrinkage": "1"},
    ):
        with pytest.raises(ValueError):
            Adjustment.from_planning(bad)


@given(
    st.lists(st.floats(0.001, 0.999), min_size=2, max_size=30),
    st.floats(0.0, 1.0),
)
def test_shrink_timing_keeps_the_order_and_the_centre(values: list[float], beta: float) -> None:
    p = np.array([values])
    mask = np.ones(p.shape, dtype=bool)
    out = shrink_timing(p, mask, beta)
    lg = np.log(p / (1 - p))
    lo = np.log(out / (1 - out))
    # The mean logit is kept and every deviation from it is scaled by beta.
    assert lo.mean() == pytest.approx(lg.mean(), abs=1e-6)
    np.testing.assert_allclose(lo - lo.mean(), beta * (lg - lg.mean()), atol=1e-6)
    np.testing.assert_array_equal(shrink_timing(p, mask, 1.0), p)


def test_shrink_timing_centre_mask_and_padding() -> None:
    p = np.array([[0.1, 0.5, np.nan, 0.9], [0.2, 0.2, 0.2, np.nan]])
    centre = np.array([[True, False, False, False], [False, False, False, False]])
    out = shrink_timing(p, centre, 0.0)
    np.testing.assert_allclose(out[0, [0, 1, 3]], 0.1)  # all pulled to the masked centre
    assert np.isnan(out[0, 2]) and np.isnan(out[1, 3])
    np.testing.assert_allclose(out[1, :3], 0.2)  # no masked point: centre over scored points
    stacked = shrink_timing(np.stack([p, p]), centre, 0.0)
    np.testing.assert_array_equal(stacked[1], out)


@pytest.mark.parametrize("true_beta", [0.3, 0.6, 1.0])
def test_fit_shrinkage_recovers_the_timing_slope(true_beta: float) -> None:
    """The model's timing component is noisy; the fitted slope is the share that is real."""
    rng = np.random.default_rng(17)
    n = 40_000
    center = rng.normal(-1.0, 0.5, n)
    real = rng.normal(0.0, 0.8, n)
    # The estimate's deviation = real + noise, scaled so that its regression slope is true_beta.
    noise = rng.normal(0.0, 0.8 * np.sqrt(1 / true_beta - 1), n) if true_beta < 1 else 0.0
    estimate = real + noise
    y = (rng.random(n) < 1 / (1 + np.exp(-(center + real)))).astype(float)
    beta = fit_shrinkage_beta(y, center + estimate, center, np.ones(n))
    assert beta == pytest.approx(true_beta, abs=0.06)
    p = 1 / (1 + np.exp(-(center + estimate)))
    report = fit_timing_shrinkage(
        y,
        p,
        center,
        propensity=np.full(n, np.nan),
        groups=np.arange(n) % 500,
        n_folds=3,
        seed=0,
    )
    assert report["beta_fitted"] == pytest.approx(beta, abs=1e-3)
    if true_beta < 0.9:
        assert report["oof_log_loss_shrunk"] < report["oof_log_loss_unshrunk"]
        assert report["beta"] == report["beta_fitted"]


def test_a_slope_that_does_not_predict_held_out_customers_is_not_applied() -> None:
    rng = np.random.default_rng(7)  # a sample whose in-sample slope (0.94) is noise
    n = 300
    center = rng.normal(-1.0, 0.5, n)
    estimate = rng.normal(0.0, 0.3, n)  # timing that is real, on too few decisions to tell
    y = (rng.random(n) < 1 / (1 + np.exp(-(center + estimate)))).astype(float)
    report = fit_timing_shrinkage(
        y,
        1 / (1 + np.exp(-(center + estimate))),
        center,
        propensity=np.full(n, np.nan),
        groups=np.arange(n),
        n_folds=5,
        seed=0,
    )
    assert report["beta_fitted"] < 1.0
    assert report["oof_log_loss_shrunk"] > report["oof_log_loss_unshrunk"]
    assert report["beta"] == 1.0


class ShrunkCurve(CurveModel):
    timing_shrinkage = 0.5


def test_planner_reports_the_shrunk_probability_at_the_chosen_time() -> None:
    def curve(h: np.ndarray) -> np.ndarray:
        return np.where(np.isclose(h % 24, 15, atol=0.5), 0.6, 0.2)

    cons = Constraints(objective=FREE_OBJECTIVE, max_retries=1)
    req = request([(Z, FAIL, "insufficient_funds", None)])
    plain = _decide(PlannerPolicy(CurveModel(curve)), req, cons)
    shrunk = _decide(PlannerPolicy(ShrunkCurve(curve)), req, cons)
    assert plain.retry_at == shrunk.retry_at  # monotone within the charge: same time
    assert plain.success_probability == pytest.approx(0.6)
    assert shrunk.success_probability is not None
    assert 0.2 < shrunk.success_probability < 0.5


# --------------------------------------------------------------------------- real training


@pytest.fixture(scope="module")
def hopeless_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle trained on a history in which retries after ``restricted_card`` never succeed.

    A small simulated world (default training settings) where 30 % of the failed charges with a
    retry are rewritten as ``restricted_card`` declines on every attempt.
    """
    root = tmp_path_factory.mktemp("hopeless")
    world = simulate_world(WorldConfig(), customers=2000, months=5, seed=11)
    a = world.attempts.assign(currency=world.attempts["currency"].str.lower())
    order = a.sort_values(ct.ATTEMPTED_AT, kind="stable")
    first_failed = order.groupby(ct.CHARGE_ID)[ct.OUTCOME].first() == ct.FAILED
    sizes = a.groupby(ct.CHARGE_ID).size()
    charges = np.sort(sizes.index[(sizes >= 2) & first_failed.reindex(sizes.index)].to_numpy())
    pick = np.random.default_rng(5).choice(charges, size=int(0.3 * charges.size), replace=False)
    rewrite = a[ct.CHARGE_ID].isin(pick)
    a.loc[rewrite, ct.OUTCOME] = ct.FAILED
    a.loc[rewrite, ct.DECLINE_CODE] = HOPELESS
    a.loc[rewrite, ct.NETWORK_ADVICE_CODE] = pd.NA
    write_table_atomic(a, root / "attempts.parquet")
    run = run_training(
        root / "attempts.parquet",
        root / "models",
        config=load_config(seed=3),
        experiment="test-hopeless",
        registered_name=None,
        track=False,
    )
    return Path(run.bundle_path)


def _charge(code: str, amount: int) -> dict[str, Any]:
    return {
        "charge": {
            "charge_id": f"ch_{code}",
            "customer_id": "cus_new",
            "amount": amount,
            "currency": "usd",
            "card": {
                "brand": "visa",
                "funding": "debit",
                "country": "US",
                "added_at": "2025-03-02T10:00:00Z",
                "exp_month": 4,
                "exp_year": 2028,
                "card_id": "card_new",
            },
            "customer_timezone": "America/New_York",
        },
        "attempts": [
            {"attempted_at": "2026-01-05T08:12:00Z", "outcome": "failed", "decline_code": code}
        ],
        "now": "2026-01-05T08:13:00Z",
    }


def test_a_code_that_never_succeeds_is_bounded_and_not_worth_an_attempt(
    hopeless_bundle: Path,
) -> None:
    bundle = load_bundle(hopeless_bundle)
    planning = bundle.metrics["planning"]
    bound = planning["rare_code_bounds"][HOPELESS]
    assert bound["retries"] >= 200
    assert bound["upper_bound"] == pytest.approx(
        zero_success_upper_bound(int(bound["retries"]), 0.95)
    )
    assert bundle.adjustment.code_bounds[HOPELESS] == bound["upper_bound"]
    assert "insufficient_funds" not in planning["rare_code_bounds"]
    # Reported and logged (MLflow metrics are flat_metrics).
    assert HOPELESS in summary_table(bundle.metrics)
    assert (
        flat_metrics(bundle.metrics)[f"planning.rare_code_bound.{HOPELESS}"] == bound["upper_bound"]
    )
    assert "planning.timing_shrinkage" in flat_metrics(bundle.metrics)

    # 10 USD: at the default 0.12 USD per attempt a retry needs more than 1.2 % to pay.
    requests = [_charge(HOPELESS, 1000), _charge("insufficient_funds", 1000)]
    got = {d["charge_id"]: d for d in retryopt.decide(requests, model=bundle)}
    hopeless = got[f"ch_{HOPELESS}"]
    assert hopeless["action"] == "stop" and hopeless["reason"] == "not_worth_an_attempt"
    assert hopeless["expected_value"] < hopeless["attempt_cost"]
    assert got["ch_insufficient_funds"]["action"] == "retry"
    # Without the learned bound the lumped model would have spent retries on it.
    unbounded = dataclasses.replace(bundle, adjustment=Adjustment())
    again = {d["charge_id"]: d for d in retryopt.decide(requests, model=unbounded)}
    assert again[f"ch_{HOPELESS}"]["action"] == "retry"


def test_the_bundle_carries_the_gap_support_fit(hopeless_bundle: Path) -> None:
    bundle = load_bundle(hopeless_bundle)
    support = bundle.metrics["planning"]["gap_support"]
    assert len(support) == len(GAP_EDGES_HOURS) + 1
    assert (
        sum(e["retries"] for e in support)
        == bundle.metrics["split"]["train_rows"] + (bundle.metrics["split"]["validation_rows"])
    )
    # The logging policy's ladder (days apart) is well logged; its bucket keeps most credit.
    busiest = max(support, key=lambda e: e["retries"])
    assert busiest["from_hours"] >= 24 and busiest["factor"] > 0.7
    assert all(0.0 <= e["factor"] <= 1.0 for e in support)
    assert bundle.adjustment.gap_factors == tuple(e["factor"] for e in support)
    assert BundleSuccessModel(bundle).gap_table is not None
    assert "gap support" in summary_table(bundle.metrics)
    flat = flat_metrics(bundle.metrics)
    assert flat[f"planning.gap_support.{busiest['from_hours']:g}h.factor"] == busiest["factor"]


def test_both_scoring_paths_apply_the_bound(hopeless_bundle: Path) -> None:
    from retryopt.features.online import build_candidate_features
    from retryopt.serving.schemas import DecisionRequest, to_batch

    bundle = load_bundle(hopeless_bundle)
    u = bundle.adjustment.code_bounds[HOPELESS]
    req = DecisionRequest.model_validate(_charge(HOPELESS, 1000))
    assert req.now is not None
    batch = to_batch([req], nows=[req.now], constraints=Constraints()).batch
    grid = (
        np.datetime64("2026-01-05T09:00", "ns") + np.arange(48) * np.timedelta64(1, "h")
    ).reshape(1, -1)
    fast = BundleSuccessModel(bundle).predict_candidates(batch, grid).proba
    slow = bundle.predict_proba(build_candidate_features(batch, grid))
    np.testing.assert_allclose(fast.ravel(), slow, rtol=1e-9)
    assert (slow <= u + 1e-12).all()
    raw = dataclasses.replace(bundle, adjustment=Adjustment()).predict_proba(
        build_candidate_features(batch, grid)
    )
    assert (raw > u).any()  # the bound is what brings it down


def test_a_tampered_planning_section_is_refused(hopeless_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from retryopt.model.bundle import MANIFEST, METRICS_FILE, sha256_bytes

    copy = tmp_path / "bundle"
    shutil.copytree(hopeless_bundle, copy)
    metrics = json.loads((copy / METRICS_FILE).read_text())
    metrics["planning"]["timing_shrinkage"] = 7
    data = (json.dumps(metrics) + "\n").encode()
    (copy / METRICS_FILE).write_bytes(data)
    with pytest.raises(BundleError, match=r"metrics\.json"):
        load_bundle(copy)  # modified without the manifest: refused by its SHA-256
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"][METRICS_FILE] = {"sha256": sha256_bytes(data), "bytes": len(data)}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="planning"):
        load_bundle(copy)  # consistent manifest, invalid value: refused by name
