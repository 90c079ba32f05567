"""Issue 14, the model side: later planned retries from the model, timing weights, metrics.

- ``features.advance``: the state after hypothetical failed attempts (hand-made matrices) and
  the next-decline-code map fitted from consecutive retries;
- ``training.timing``: truncated, self-normalised inverse-propensity weights;
- behaviour on a real model trained on a simulated world: later-step probabilities come from
  the model (a harder next code lowers them; the time profile survives the shift), the fitted
  map round-trips through the bundle, weighting changes the model, and the decision metrics
  are computed against the world's truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryopt.features.advance import advance_after_failures, fit_next_decline_codes
from retryopt.features.decisions import Constraints
from retryopt.features.spec import FeatureSpec
from retryopt.model.bundle import load_bundle
from retryopt.serving.policies import BundleSuccessModel, PlannerConfig, PlannerPolicy
from retryopt.serving.policies.model import planning_knobs
from retryopt.training.decision_metrics import first_decision_metrics, rank_correlation_rows
from retryopt.training.timing import timing_weights

LEVELS_CODE = ("insufficient_funds", "do_not_honor", "other", "missing")
LEVELS_SEQ = ("none>insufficient_funds", "insufficient_funds>do_not_honor", "other", "missing")
SPEC = FeatureSpec(
    numeric=(
        "retry_number",
        "hours_since_prev_attempt",
        "hours_from_now",
        "hours_since_first_failure",
        "card_attempts_24h",
        "card_attempts_30d",
        "distinct_codes",
        "last_decline_hard",
        "local_hour",
    ),
    categorical=("last_decline_code", "decline_sequence"),
    levels={"last_decline_code": LEVELS_CODE, "decline_sequence": LEVELS_SEQ},
    version="test",
)


def _row(code: int = 0, seq: int = 0) -> np.ndarray:
    return np.array([[1.0, 30.0, 30.0, 30.0, 1.0, 1.0, 1.0, 0.0, 14.5, code, seq]])


def test_advance_one_failure_updates_the_attempt_state() -> None:
    X = _row()
    out = advance_after_failures(
        X, SPEC, failures=1, gap_hours=24.0, next_code={"insufficient_funds": "do_not_honor"}
    )
    col = {n: j for j, n in enumerate(SPEC.names)}
    assert out[0, col["retry_number"]] == 2.0
    assert out[0, col["hours_since_prev_attempt"]] == out[0, col["hours_from_now"]] == 24.0
    assert out[0, col["hours_since_first_failure"]] == 30.0  # same candidate time
    assert out[0, col["card_attempts_24h"]] == 1.0  # the planned attempt is exactly 24 h back
    assert out[0, col["card_attempts_30d"]] == 2.0
    assert LEVELS_CODE[int(out[0, col["last_decline_code"]])] == "do_not_honor"
    assert LEVELS_SEQ[int(out[0, col["decline_sequence"]])] == "insufficient_funds>do_not_honor"
    assert out[0, col["distinct_codes"]] == 2.0
    assert out[0, col["local_hour"]] == 14.5  # calendar / time of t unchanged
    np.testing.assert_array_equal(X, _row())  # input untouched


def test_advance_without_a_map_keeps_the_code_and_counts_several_failures() -> None:
    out = advance_after_failures(_row(), SPEC, failures=3, gap_hours=6.0, next_code={})
    col = {n: j for j, n in enumerate(SPEC.names)}
    assert out[0, col["retry_number"]] == 4.0
    assert out[0, col["card_attempts_24h"]] == 4.0  # planned at t-6, t-12, t-18 h
    assert out[0, col["card_attempts_30d"]] == 4.0
    assert LEVELS_CODE[int(out[0, col["last_decline_code"]])] == "insufficient_funds"
    assert out[0, col["distinct_codes"]] == 1.0
    # "insufficient_funds>insufficient_funds" is not a level of the spec -> "other"
    assert LEVELS_SEQ[int(out[0, col["decline_sequence"]])] == "other"
    np.testing.assert_array_equal(
        advance_after_failures(_row(), SPEC, failures=0, gap_hours=6.0, next_code={}), _row()
    )
    with pytest.raises(ValueError, match="gap_hours"):
        advance_after_failures(_row(), SPEC, failures=1, gap_hours=0.0, next_code={})


def test_fit_next_decline_codes_takes_the_most_frequent_next_code() -> None:
    # charge a: if -> dnh -> dnh; b: if -> dnh; c: if -> if; d: dnh (single retry)
    charge = np.array(["a", "a", "a", "b", "b", "c", "c", "d"], dtype=object)
    retry = np.array([1, 2, 3, 1, 2, 1, 2, 1])
    code = np.array(["if", "dnh", "dnh", "if", "dnh", "if", "if", "dnh"], dtype=object)
    got = fit_next_decline_codes(charge, retry, code, min_count=1)
    assert got == {"if": "dnh", "dnh": "dnh"}
    assert fit_next_decline_codes(charge, retry, code, min_count=4) == {}  # too little support
    # order of the rows does not matter (sorted by charge and retry number)
    perm = np.random.default_rng(0).permutation(len(charge))
    assert fit_next_decline_codes(charge[perm], retry[perm], code[perm], min_count=1) == got


def test_timing_weights_unit() -> None:
    p = np.array([0.9, 0.9, 0.01, np.nan, 0.5])
    w = timing_weights(p)
    assert w[3] == 1.0
    known = np.isfinite(p)
    assert w[known].mean() == pytest.approx(1.0)
    assert w[2] > w[4] > w[0] == w[1]
    np.testing.assert_array_equal(timing_weights(np.full(4, np.nan)), np.ones(4))
    # truncation at mean(1/p) * sqrt(n): one tiny propensity cannot take all the weight
    tiny = np.r_[np.full(99, 0.9), 1e-9]
    wt = timing_weights(tiny)
    raw = 1.0 / tiny
    cap = raw.mean() * np.sqrt(tiny.size)
    assert wt[-1] / wt[0] == pytest.approx(cap / raw[0])


@given(st.lists(st.floats(min_value=1e-4, max_value=1.0), min_size=1, max_size=50))
def test_timing_weights_order_and_normalisation(props: list[float]) -> None:
    p = np.array(props)
    w = timing_weights(p)
    assert np.all(w > 0) and w.mean() == pytest.approx(1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(w[order]) <= 1e-12)  # lower propensity, never lower weight


def test_rank_correlation_rows() -> None:
    a = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    b = np.array([[10.0, 20.0, 30.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    rho = rank_correlation_rows(a, b)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    assert np.isnan(rho[2])


# --------------------------------------------------------------------------- on a trained model


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from retryopt.features.io import write_table_atomic
    from retryopt.training.simulate import WorldConfig, simulate_world
    from retryopt.training.train import run_training
    from retryopt.training.train_config import TrainConfig, load_config

    world = simulate_world(WorldConfig(), customers=4_000, months=5, seed=41)
    attempts = world.attempts.copy()
    attempts["currency"] = attempts["currency"].str.lower()
    root = tmp_path_factory.mktemp("planning")
    data = root / "attempts.parquet"
    write_table_atomic(attempts, data)
    bundles: dict[bool, Path] = {}
    for weights in (True, False):
        base = load_config(seed=3).to_dict()
        base["training"]["timing_weights"] = weights
        base["training"]["num_threads"] = 1
        base["evaluation"]["shap_sample_rows"] = 500
        run = run_training(
            data,
            root / f"models-{weights}",
            config=TrainConfig.from_dict(base),
            experiment="t",
            registered_name=None,
            track=False,
        )
        bundles[weights] = run.bundle_path
    return {"world": world, "bundles": bundles}


def _first_batch(world: Any, n: int) -> tuple[Any, np.ndarray]:
    from retryopt.features import contract as ct
    from retryopt.features.decisions import DecisionBatch

    ids = world.failed_charges()[-n:]
    first = world.attempts[world.attempts[ct.CHARGE_ID].isin(pd.Index(ids))]
    first = first.sort_values(ct.ATTEMPTED_AT).drop_duplicates(ct.CHARGE_ID)
    first = first.set_index(ct.CHARGE_ID).loc[ids].reset_index()
    now = first[ct.ATTEMPTED_AT].dt.tz_convert(None).to_numpy().astype("datetime64[ns]")
    history = world.attempts[~world.attempts[ct.CHARGE_ID].isin(pd.Index(ids))]
    batch = DecisionBatch(
        charge_ids=ids,
        now=now,
        attempts=first,
        history=history.reset_index(drop=True),
        constraints=Constraints(),
    )
    hours = np.arange(1, 24 * 14 + 1, dtype=np.int64) * 3_600_000_000_000
    grid = (now.astype(np.int64)[:, None] + hours[None, :]).astype("datetime64[ns]")
    return batch, grid


def test_bundle_round_trips_the_fitted_next_codes(trained: dict[str, Any]) -> None:
    bundle = load_bundle(trained["bundles"][True])
    stored = bundle.metrics["planning"]["next_decline_code"]
    assert stored and all(isinstance(v, str) for v in stored.values())
    assert planning_knobs(bundle).next_decline_code == stored
    assert BundleSuccessModel(bundle).next_decline_code == stored
    assert bundle.metrics["timing_weights"]["rows_with_propensity"] > 0.5
    assert 0 < bundle.metrics["timing_weights"]["effective_sample_share"] < 1

    class Old:  # a bundle written before issue 14: no planning section
        def __init__(self) -> None:
            self.metrics: dict[str, Any] = {"test": {}}

    assert planning_knobs(Old()).next_decline_code == {}


def test_weighting_changes_the_model(trained: dict[str, Any]) -> None:
    on = (trained["bundles"][True] / "model.txt").read_text()
    off = (trained["bundles"][False] / "model.txt").read_text()
    assert on != off


def test_later_steps_come_from_the_model(trained: dict[str, Any]) -> None:
    bundle = load_bundle(trained["bundles"][True])
    model = BundleSuccessModel(bundle)
    batch, grid = _first_batch(trained["world"], 60)
    enc = model.state_encoder(batch)
    assert enc is not None
    from retryopt.features.encoder import CandidateEncoder

    dec, times = CandidateEncoder.grid_rows(grid, len(batch.charge_ids))
    p_next = model.score_rows(enc, dec, times)
    after = model.score_rows_after_failures(enc, dec, times, failures=2, gap_hours=24.0)
    # A failure lowers the odds on average (the model's own view of the state after it).
    assert after[0].mean() < p_next.mean()
    # The likely next code reaches the model: mapping every code to the code whose logged retries
    # succeed least or most changes the later-step probabilities (which way is the model's
    # conditional view; on this small world it is confounded with the retry number).
    from retryopt.features.examples import build_training_examples

    ex = build_training_examples(trained["world"].attempts)
    rates = (
        pd.DataFrame({"code": ex.features["last_decline_code"], "y": ex.label})
        .groupby("code")["y"]
        .agg(["mean", "size"])
    )
    levels = bundle.feature_spec.levels["last_decline_code"]
    rates = rates[(rates["size"] >= 200) & rates.index.isin(levels)]
    worst, best = str(rates["mean"].idxmin()), str(rates["mean"].idxmax())
    scores = {}
    for code in (worst, best):
        model.next_decline_code = {c: code for c in levels}
        scores[code] = model.score_rows_after_failures(enc, dec, times, failures=1, gap_hours=24.0)[
            0
        ]
    assert worst != best
    assert not np.allclose(scores[worst], scores[best])
    # The later state keeps a time profile of its own (calendar, local time of t still vary),
    # which is not the next retry's curve times a constant (what the decay assumed).
    n, m = grid.shape
    later = after[0].reshape(n, m)
    assert np.mean(later.std(axis=1) > 1e-4) > 0.5
    ratio = later / np.maximum(p_next.reshape(n, m), 1e-9)
    assert np.mean(ratio.std(axis=1) > 1e-3) > 0.5


def test_planner_uses_the_model_for_later_steps(trained: dict[str, Any]) -> None:
    model = BundleSuccessModel(load_bundle(trained["bundles"][True]))
    batch, _ = _first_batch(trained["world"], 30)
    by_model = PlannerPolicy(model).decide_detailed(batch)
    by_decay = PlannerPolicy(model, config=PlannerConfig(later_steps="decay")).decide_detailed(
        batch
    )
    values = [(a.expected_value, b.expected_value) for a, b in zip(by_model, by_decay, strict=True)]
    assert any(a != b for a, b in values)  # the plan's value changed with its later steps
    one = Constraints(max_retries=1)
    single = batch.__class__(
        charge_ids=batch.charge_ids,
        now=batch.now,
        attempts=batch.attempts,
        history=batch.history,
        constraints=one,
    )
    # With one retry left there is no later step: both agree exactly.
    a = PlannerPolicy(model).decide_detailed(single)
    b = PlannerPolicy(model, config=PlannerConfig(later_steps="decay")).decide_detailed(single)
    assert [d.expected_value for d in a] == [d.expected_value for d in b]


def test_decision_metrics_against_the_truth(trained: dict[str, Any]) -> None:
    world = trained["world"]
    policy = PlannerPolicy(BundleSuccessModel(load_bundle(trained["bundles"][True])))
    charges = world.failed_charges()[-80:]
    got = first_decision_metrics(policy, world, charges, Constraints(), n_bins=5)
    assert got["charges"] == 80
    assert 0.0 < got["median_spearman"] <= 1.0  # the model ranks times better than chance
    assert 0.0 < got["chosen_true_p"] <= got["best_true_p"] <= 1.0
    assert got["chosen_bias"] == pytest.approx(got["chosen_pred_p"] - got["chosen_true_p"])
    assert 0.0 <= got["chosen_ece"] <= 1.0
    with pytest.raises(ValueError, match="at least one charge"):
        first_decision_metrics(policy, world, [], Constraints())
