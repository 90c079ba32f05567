"""``retryopt train`` on small simulated histories: CLI, bad input, reproducibility, config."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from retryopt.cli import app
from retryopt.features.io import write_table_atomic
from retryopt.model.bundle import load_bundle
from retryopt.training.train import run_training, time_split
from retryopt.training.train_config import TrainConfig, load_config

FAST_CONFIG = """
[training]
num_threads = 1
num_boost_round = 60
early_stopping_rounds = 10
[lightgbm]
learning_rate = 0.2
[evaluation]
shap_sample_rows = 500
"""


@pytest.fixture(scope="module")
def world_attempts() -> pd.DataFrame:
    from retryopt.training.simulate.config import WorldConfig
    from retryopt.training.simulate.world import simulate_world

    attempts = simulate_world(WorldConfig(), customers=3_000, months=5, seed=2).attempts.copy()
    # The simulator writes upper-case ISO 4217 codes; the contract wants lower case.
    attempts["currency"] = attempts["currency"].str.lower()
    return attempts


@pytest.fixture(scope="module")
def data_file(world_attempts: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "attempts.parquet"
    write_table_atomic(world_attempts, path)
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(FAST_CONFIG)
    return path


def test_cli_trains_and_prints_the_bundle_path_last(
    data_file: Path, config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "models"
    result = CliRunner().invoke(
        app,
        [
            *("train", "--data", str(data_file), "--out", str(out)),
            *("--config", str(config_file), "--seed", "5", "--no-mlflow"),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Bundle: ")
    assert "building retry examples" in result.output  # progress
    assert re.search(r"historical rate\s+0\.\d+", result.output)  # summary table
    bundle = load_bundle(lines[-1].split()[-1])
    assert [p.name for p in out.iterdir()] == [bundle.version]
    assert bundle.metrics["config"]["training"]["seed"] == 5
    assert {"model", "logistic", "historical_rate"} <= set(bundle.metrics["test"])
    assert bundle.data_fingerprint["rows"] > 0 and len(bundle.data_fingerprint["sha256"]) == 64
    assert (bundle.path / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_same_data_config_and_seed_give_the_same_model_file(
    data_file: Path, tmp_path: Path
) -> None:
    config = load_config(None, seed=9)
    config = TrainConfig.from_dict(
        {**config.to_dict(), "training": {**config.to_dict()["training"], "num_threads": 1}}
    )
    first = run_training(
        data_file, tmp_path / "a", config=config, experiment="x", registered_name=None, track=False
    )
    second = run_training(
        data_file, tmp_path / "b", config=config, experiment="x", registered_name=None, track=False
    )
    for name in ("model.txt", "calibration.json", "feature_spec.json", "data_fingerprint.json"):
        assert (first.bundle_path / name).read_bytes() == (second.bundle_path / name).read_bytes()


def _one_month(attempts: pd.DataFrame) -> pd.DataFrame:
    month = attempts["attempted_at"].dt.month == 3
    return attempts[month]


def _no_retries(attempts: pd.DataFrame) -> pd.DataFrame:
    first = attempts.sort_values("attempted_at").drop_duplicates("charge_id", keep="first")
    return first


def _garbage_amount(attempts: pd.DataFrame) -> pd.DataFrame:
    bad = attempts.astype({"amount": "object"})
    bad.loc[bad.index[[2, 6]], "amount"] = "lots"
    return bad


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("empty.csv", None, "is empty"),
        ("single_month.parquet", _one_month, "at least 3 distinct months"),
        ("no_retries.parquet", _no_retries, "no retries"),
        ("garbage.csv", _garbage_amount, "amount"),
    ],
)
def test_bad_input_fails_clearly_without_artifacts(
    world_attempts: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    make: object,
    message: str,
) -> None:
    data = tmp_path / "in" / name
    data.parent.mkdir()
    if make is None:
        data.write_bytes(b"")
    else:
        frame = make(world_attempts)  # type: ignore[operator]
        if name.endswith(".csv"):
            frame.to_csv(data, index=False)
        else:
            write_table_atomic(frame, data)
    store = tmp_path / "store"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    out = tmp_path / "models"
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not store.exists()


def test_time_split_is_by_first_failure_month_with_embargo() -> None:
    t = pd.to_datetime(
        ["2025-01-10", "2025-01-30", "2025-02-10", "2025-03-05", "2025-03-20", "2025-03-31"],
        utc=True,
    )
    meta = pd.DataFrame(
        {
            "charge_id": ["a", "b", "c", "d", "d", "e"],
            "decision_time": t,
            # b's retry happens in February: embargoed from training
            "retry_time": t + pd.to_timedelta([1, 5, 1, 1, 1, 1], unit="D"),
        }
    )
    split = time_split(meta, load_config())
    assert split.train_months == ("2025-01",)
    assert split.validation_months == ("2025-02",)
    assert split.test_months == ("2025-03",)
    np.testing.assert_array_equal(split.train, [True, False, False, False, False, False])
    np.testing.assert_array_equal(split.test, [False, False, False, True, True, True])
    assert split.embargoed == 1


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nnum_treads = 2\n")
    with pytest.raises(ValueError, match=r"training\.num_treads"):
        load_config(bad)
    bad.write_text("[split]\ntest_months = 0\n")
    with pytest.raises(ValueError, match=r"split\.test_months"):
        load_config(bad)
    bad.write_text("[calibration]\nmethods = ['beta']\n")
    with pytest.raises(ValueError, match=r"calibration\.methods"):
        load_config(bad)
    assert load_config().num_threads == 2


def test_a_sliver_of_a_last_month_is_folded_into_the_month_before() -> None:
    months = ["2025-01"] * 50 + ["2025-02"] * 50 + ["2025-03"] * 50 + ["2025-04"] * 50
    t = pd.to_datetime([f"{m}-10" for m in months] + ["2025-05-01"] * 3, utc=True)
    meta = pd.DataFrame(
        {"charge_id": [f"c{i}" for i in range(len(t))], "decision_time": t, "retry_time": t}
    )
    split = time_split(meta, load_config())
    assert split.test_months == ("2025-04",)
    assert split.test.sum() == 53
    assert split.describe()["merged_partial_months"] == ["2025-05"]
