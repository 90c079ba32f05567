"""From the store back to learning: export as the data contract, validate, train on it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from retryopt.cli import app as cli
from retryopt.features import contract as c
from retryopt.features.validation import load_attempts
from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.settings import Settings
from retryopt.serving.store.migrations import load_migrations

TRAIN_TOML = """
[lightgbm]
num_leaves = 15
min_data_in_leaf = 50
[training]
num_boost_round = 40
early_stopping_rounds = 10
num_threads = 1
[calibration]
folds = 3
"""


def _reports(attempts: pd.DataFrame) -> list[dict[str, Any]]:
    """Contract rows as outcome reports carrying their charge's facts."""
    out = []
    for r in attempts.to_dict("records"):
        card = {
            "brand": r[c.CARD_BRAND],
            "funding": r[c.CARD_FUNDING],
            "country": r[c.CARD_COUNTRY],
            "added_at": r[c.CARD_ADDED_AT].isoformat(),
            "exp_month": int(r[c.CARD_EXP_MONTH]),
            "exp_year": int(r[c.CARD_EXP_YEAR]),
        }
        if not pd.isna(r[c.CARD_ID]):
            card["card_id"] = r[c.CARD_ID]
        report = {
            "charge_id": r[c.CHARGE_ID],
            "attempted_at": r[c.ATTEMPTED_AT].isoformat(),
            "outcome": r[c.OUTCOME],
            "attempt_id": r[c.ATTEMPT_ID],
            "customer_id": r[c.CUSTOMER_ID],
            "amount": int(r[c.AMOUNT]),
            "currency": r[c.CURRENCY],
            "card": card,
        }
        for col in (c.DECLINE_CODE, c.NETWORK_ADVICE_CODE, c.CUSTOMER_TIMEZONE):
            if not pd.isna(r[col]):
                report[col] = r[col]
        out.append(report)
    return out


def _post_all(url: str, reports: list[dict[str, Any]]) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(0, len(reports), 2000):
            resp = client.post("/v1/attempt-outcomes", json={"outcomes": reports[i : i + 2000]})
            assert resp.status_code == 200, resp.text[:500]


@pytest.fixture(scope="module")
def world_attempts() -> pd.DataFrame:
    from retryopt.training.simulate.config import WorldConfig
    from retryopt.training.simulate.world import simulate_world

    world = simulate_world(WorldConfig(), customers=900, months=5, seed=5)
    attempts = world.attempts.assign(currency=world.attempts["currency"].str.lower())
    return attempts


def test_export_round_trip_keeps_every_reported_attempt(store_url: str, tmp_path: Path) -> None:
    t0 = datetime(2026, 2, 2, 9, tzinfo=UTC)
    card = {
        "brand": "visa",
        "funding": "credit",
        "country": "US",
        "added_at": "2025-01-01T00:00:00Z",
        "exp_month": 1,
        "exp_year": 2030,
    }
    charge = {
        "charge_id": "ch_1",
        "customer_id": "cus_1",
        "amount": 900,
        "currency": "eur",
        "card": card,
    }
    first = {
        "charge_id": "ch_1",
        "attempted_at": t0.isoformat(),
        "outcome": "failed",
        "decline_code": "insufficient_funds",
        "customer_id": "cus_1",
        "amount": 900,
        "currency": "eur",
        "card": card,
    }
    app = create_app(Settings(model=None, store_url=store_url, microbatch_max_size=1))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/v1/attempt-outcomes", json={"outcomes": [first]}).status_code == 200
        decision = http.post(
            "/v1/retry-decisions", json={"charge": charge, "now": t0.isoformat()}
        ).json()
        assert decision["action"] == "retry", decision
        retry_at = datetime.fromisoformat(decision["retry_at"].replace("Z", "+00:00"))
        retry = {
            "charge_id": "ch_1",
            "attempted_at": (retry_at + timedelta(minutes=20)).isoformat(),
            "outcome": "succeeded",
            "decision_id": decision["decision_id"],
        }
        orphan = {"charge_id": "ch_orphan", "attempted_at": t0.isoformat(), "outcome": "succeeded"}
        assert (
            http.post("/v1/attempt-outcomes", json={"outcomes": [retry, orphan]}).status_code == 200
        )
    out = tmp_path / "attempts.parquet"
    result = CliRunner().invoke(cli, ["export", "--store", store_url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 attempts of unknown charges left out" in result.output
    assert CliRunner().invoke(cli, ["validate", str(out)]).exit_code == 0
    exported = load_attempts(out)
    assert exported[c.CHARGE_ID].tolist() == ["ch_1", "ch_1"]
    assert exported[c.OUTCOME].tolist() == ["failed", "succeeded"]
    assert np.isnan(exported[c.RETRY_PROPENSITY].iloc[0])  # a first attempt is no retry
    assert exported[c.RETRY_PROPENSITY].iloc[1] == 1.0  # made in the recommended hour
    assert exported[c.CURRENCY].tolist() == ["eur", "eur"]


@pytest.mark.slow
def test_train_and_export_from_a_store(world_attempts: pd.DataFrame, tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    app = create_app(Settings(model=None, store_url=store_url))
    with BackgroundServer(app) as server:
        _post_all(server.url, _reports(world_attempts))
    out = tmp_path / "attempts.parquet"
    result = CliRunner().invoke(cli, ["export", "--store", store_url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    exported = load_attempts(out)
    original = world_attempts.sort_values([c.CHARGE_ID, c.ATTEMPTED_AT]).reset_index(drop=True)
    assert len(exported) == len(original)
    for col in (c.CHARGE_ID, c.CUSTOMER_ID, c.OUTCOME, c.AMOUNT, c.CARD_BRAND):
        assert exported[col].tolist() == original[col].tolist(), col
    (tmp_path / "train.toml").write_text(TRAIN_TOML)
    trained = CliRunner().invoke(
        cli,
        [
            "train",
            "--store",
            store_url,
            "--out",
            str(tmp_path / "models"),
            "--config",
            str(tmp_path / "train.toml"),
            "--no-mlflow",
            "--seed",
            "1",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "Bundle: " in trained.output
    report = tmp_path / "bt"
    backtest = CliRunner().invoke(
        cli,
        [
            "backtest",
            "--store",
            store_url,
            "--policy",
            "logged",
            "--policy",
            "fixed:72,120,168,216",
            "--out",
            str(report),
            "--bootstrap",
            "10",
            "--all-months",
            "--dm-refits",
            "0",
        ],
    )
    assert backtest.exit_code == 0, backtest.output
    assert (report / "report.html").exists()
    both = CliRunner().invoke(cli, ["train", "--store", store_url, "--data", str(out)])
    assert both.exit_code != 0 and "exactly one of --data and --store" in both.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--store", "mysql://x", "--out", "a.parquet"], "sqlite:///PATH"),
        (["export", "--store", "sqlite:///", "--out", "a.parquet"], "sqlite:///PATH"),
        (["export", "--store", "sqlite:///x.db", "--out", "a.txt"], "--out"),
        (["store", "purge", "--store", "sqlite:///x.db", "--before", "soon"], "ISO 8601"),
        (["store", "purge", "--store", "sqlite:///x.db"], "--before"),
        (["store", "vacuum", "--store", "sqlite:///x.db"], "migrate"),
        (["train", "--out", "m"], "exactly one of --data and --store"),
    ],
)
def test_store_commands_refuse_bad_input_clearly(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_store_migrate_and_purge_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    migrated = CliRunner().invoke(cli, ["store", "migrate", "--store", url])
    latest = len(load_migrations("sqlite"))
    assert migrated.exit_code == 0 and f"schema version {latest}" in migrated.output
    purged = CliRunner().invoke(cli, ["store", "purge", "--store", url, "--before", "2026-01-01"])
    assert purged.exit_code == 0, purged.output
    assert "0 decisions, 0 outcomes, 0 charges" in purged.output
    empty = CliRunner().invoke(cli, ["export", "--store", url, "--out", str(tmp_path / "a.csv")])
    assert empty.exit_code == 2 and "no exportable attempt" in empty.output
