"""End to end on a simulated world: the model beats its baselines, is calibrated, follows the
world's ground-truth mechanisms, is logged to MLflow and registered.

The world's logging policy also retries hard declines (``retry_hard_declines``), so the history
contains evidence that they never succeed; a policy that never retries them leaves the model
without data for that case (serving's rules stop them instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retryopt.features.decisions import DecisionBatch
from retryopt.features.io import write_table_atomic
from retryopt.features.online import build_candidate_features
from retryopt.model.bundle import ModelBundle, load_bundle
from retryopt.model.registry import resolve_model
from retryopt.training.train import run_training
from retryopt.training.train_config import TrainConfig, load_config

pytestmark = pytest.mark.slow

CUSTOMERS = 100_000
MONTHS = 9
REGISTERED = "world-test-model"
HOUR = np.timedelta64(1, "h")


@dataclass
class Trained:
    world: Any
    attempts: pd.DataFrame
    bundle: ModelBundle
    run: Any
    uri: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from retryopt.features.validation import validate_attempts
    from retryopt.training.simulate.config import WorldConfig
    from retryopt.training.simulate.world import simulate_world

    world = simulate_world(
        WorldConfig().replace(logging_policy={"retry_hard_declines": True}),
        customers=CUSTOMERS,
        months=MONTHS,
        seed=5,
    )
    attempts = world.attempts.copy()
    attempts["currency"] = attempts["currency"].str.lower()  # contract: lower-case ISO 4217
    root = tmp_path_factory.mktemp("world")
    data = root / "attempts.parquet"
    write_table_atomic(attempts, data)
    base = load_config()
    config = TrainConfig.from_dict(
        {
            **base.to_dict(),
            "split": {**base.to_dict()["split"], "test_months": 2},
            "training": {**base.to_dict()["training"], "num_threads": 1},
            "evaluation": {**base.to_dict()["evaluation"], "ece_bins": 10},
        }
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run = run_training(
        data,
        root / "models",
        config=config,
        experiment="world-test",
        registered_name=REGISTERED,
        tracking_uri=uri,
    )
    return Trained(world, validate_attempts(attempts).clean, load_bundle(run.bundle_path), run, uri)


def test_beats_both_baselines_on_the_test_months(trained: Trained) -> None:
    test = trained.bundle.metrics["test"]
    for baseline in ("historical_rate", "logistic"):
        assert test["model"]["log_loss"] < test[baseline]["log_loss"], baseline
        assert test["model"]["roc_auc"] > test[baseline]["roc_auc"], baseline


def test_calibrated_on_the_test_months(trained: Trained) -> None:
    assert trained.bundle.metrics["test"]["model"]["ece"] < 0.02
    assert trained.bundle.metrics["split"]["test_rows"] > 10_000


def test_run_logged_and_model_registered(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    tracked = trained.run.tracked
    client = mlflow.MlflowClient(trained.uri)
    run = client.get_run(tracked.run_id)
    assert run.data.params["training.num_threads"] == "1"
    assert run.data.metrics["test.model.ece"] < 0.02
    assert run.data.tags["data.sha256"] == trained.bundle.data_fingerprint["sha256"]
    artifacts = {f.path for f in client.list_artifacts(tracked.run_id)}
    assert {"bundle", "plots", "data_fingerprint.json"} <= artifacts
    assert tracked.registered_version == "1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    assert resolve_model(f"{REGISTERED}/1").version == trained.bundle.version


# ------------------------------------------------------------------ behaviour vs ground truth


def _test_charges(trained: Trained) -> pd.DataFrame:
    """First failed attempt of charges first failing in the test months."""
    a = trained.attempts.sort_values(["charge_id", "attempted_at"])
    first = a.drop_duplicates("charge_id", keep="first")
    first = first[first["outcome"] == "failed"]
    start = pd.Timestamp(trained.bundle.metrics["split"]["test_months"][0], tz="UTC")
    return first[first["attempted_at"] >= start]


def _predict_grid(
    trained: Trained, rows: pd.DataFrame, attempts: pd.DataFrame, offsets_h: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted P(success) (n, m) for retries ``offsets_h`` hours after each row's time."""
    now = rows["attempted_at"].dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    times = now[:, None] + (offsets_h * 3600).astype("timedelta64[s]")[None, :]
    batch = DecisionBatch(
        charge_ids=rows["charge_id"].to_numpy(dtype=object),
        now=now,
        attempts=attempts,
        history=trained.attempts,
    )
    raw = build_candidate_features(batch, times.astype("datetime64[ns]"))
    p = trained.bundle.predict_proba(raw).reshape(len(rows), len(offsets_h))
    return p, times


def _truth_state(trained: Trained, charge_ids: np.ndarray, times: np.ndarray) -> Any:
    from retryopt.training.simulate.truth import local_hours

    world = trained.world
    state = world.state.take(world.positions(charge_ids))
    local = local_hours(world.tables, state.zone, world.to_hours(times))
    return state, local


def test_success_rises_after_a_payday(trained: Trained) -> None:
    from retryopt.training.simulate.truth import pay_cycle_position

    first = _test_charges(trained)
    funds = first[first["decline_code"] == "insufficient_funds"].head(400)
    p, times = _predict_grid(trained, funds, funds, np.arange(1, 337, dtype=np.float64))
    state, local = _truth_state(trained, funds["charge_id"].to_numpy(), times)
    since, until, _ = pay_cycle_position(trained.world.tables, state, local)
    after = (since >= 6) & (since < 30)  # the day after the money was posted
    before = (until > 0) & (until <= 24)  # the last day before payday
    both = after.any(axis=1) & before.any(axis=1)
    assert both.sum() > 100
    gain = [p[i][after[i]].mean() - p[i][before[i]].mean() for i in np.flatnonzero(both)]
    assert np.mean(gain) > 0.01
    assert np.mean(np.asarray(gain) > 0) > 0.6


def test_success_drops_in_the_issuer_night_window(trained: Trained) -> None:
    first = _test_charges(trained)
    soft = first[
        first["decline_code"].isin(["insufficient_funds", "do_not_honor", "generic_decline"])
    ]
    rows = soft.head(400)
    p, times = _predict_grid(trained, rows, rows, np.arange(24, 24 * 8, dtype=np.float64))
    state, local = _truth_state(trained, rows["charge_id"].to_numpy(), times)
    tables = trained.world.tables
    start = tables.issuer_maint_start[state.issuer][:, None]
    length = tables.issuer_maint_hours[state.issuer][:, None]
    hod = np.mod(local, 24.0)
    inside = np.mod(hod - start, 24.0) < length
    # Compare with the daytime hours 10:00-18:00 local, away from any window or night effect.
    day = (hod >= 10) & (hod < 18)
    drop = [p[i][inside[i]].mean() - p[i][day[i]].mean() for i in range(len(rows))]
    assert np.mean(drop) < -0.02
    assert np.mean(np.asarray(drop) < 0) > 0.7


def test_near_zero_after_a_hard_decline(trained: Trained) -> None:
    first = _test_charges(trained)
    hard = first[
        first["decline_code"].isin(["lost_card", "stolen_card", "pickup_card", "invalid_account"])
    ]
    assert len(hard) > 20
    p, _ = _predict_grid(trained, hard, hard, np.array([24.0, 72.0, 168.0]))
    assert p.mean() < 0.03
    soft = first[first["decline_code"] == "insufficient_funds"].head(200)
    p_soft, _ = _predict_grid(trained, soft, soft, np.array([24.0, 72.0, 168.0]))
    assert p_soft.mean() > 5 * p.mean()


def test_success_falls_with_each_failed_attempt(trained: Trained) -> None:
    a = trained.attempts.sort_values(["charge_id", "attempted_at"])
    first_ids = set(_test_charges(trained)["charge_id"])
    a = a[a["charge_id"].isin(first_ids)]
    failed = a[a["outcome"] == "failed"]
    counts = failed.groupby("charge_id").size()
    ids = counts[counts >= 3].index[:300]
    assert len(ids) > 50
    means = []
    for k in (1, 2, 3):
        so_far = failed[failed["charge_id"].isin(ids)].groupby("charge_id").head(k)
        last = so_far.groupby("charge_id").tail(1)
        p, _ = _predict_grid(trained, last, so_far, np.array([48.0]))
        means.append(p.mean())
    assert means[0] > means[1] > means[2]
