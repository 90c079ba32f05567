"""Test-suite wide settings: no test writes MLflow state or plots outside its temp folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("MPLBACKEND", "Agg")

# Seeded randomness: property-based tests draw the same examples on every run (and keep no
# example database), so a run can only fail for a reason another run would show too.
settings.register_profile("retryopt", derandomize=True, database=None)
settings.load_profile("retryopt")


@pytest.fixture(autouse=True, scope="session")
def _isolated_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point MLflow at a throw-away SQLite store for the whole session."""
    root = tmp_path_factory.mktemp("mlflow")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    yield root
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


TRAIN_TOML = """
[lightgbm]
num_leaves = 15
min_data_in_leaf = 50
[training]
num_boost_round = 60
early_stopping_rounds = 20
num_threads = 1
[calibration]
folds = 3
"""


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model bundle trained on a small simulated world (skips if training is missing)."""
    try:
        from retryopt.features.io import write_table_atomic
        from retryopt.features.online import build_candidate_features  # noqa: F401
        from retryopt.training.simulate.config import WorldConfig
        from retryopt.training.simulate.world import simulate_world
        from retryopt.training.train import run_training
        from retryopt.training.train_config import load_config
    except ImportError as exc:  # pragma: no cover - all modules are part of the project
        pytest.skip(f"training stack not available yet: {exc}")
    root = tmp_path_factory.mktemp("bundle")
    world = simulate_world(WorldConfig(), customers=1500, months=5, seed=11)
    data = root / "attempts.parquet"
    attempts = world.attempts
    # The contract wants lower-case ISO 4217 codes (the simulator may emit upper case).
    attempts = attempts.assign(currency=attempts["currency"].str.lower())
    write_table_atomic(attempts, data)
    (root / "train.toml").write_text(TRAIN_TOML)
    run = run_training(
        data,
        root / "models",
        config=load_config(root / "train.toml", seed=3),
        experiment="test-api",
        registered_name=None,
        track=False,
    )
    return Path(run.bundle_path)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A real PostgreSQL server started for the session (skipped, saying why, without one)."""
    from postgres_server import PostgresServer, postgres_bin_dir

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/postgres): "
            "apt-get install postgresql to run the PostgreSQL store tests"
        )
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


_DATABASES = iter(range(1, 1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL of each backend (a SQLite file; a new PostgreSQL database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    server = request.getfixturevalue("postgres_server")
    return str(server.create_database(f"retryopt_test_{next(_DATABASES)}"))
