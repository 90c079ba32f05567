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
