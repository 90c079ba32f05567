"""The curated public API: ``import retryopt`` and one call per task.

The calls run on a real simulated world, a real LightGBM bundle and the real service code;
``decide`` must answer exactly as the HTTP API does for the same requests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_golden import TRAIN_TOML, varied_requests

import retryopt
from retryopt.features.io import write_table_atomic
from retryopt.features.validation import ContractError
from retryopt.model.bundle import ModelBundle
from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.schemas import RequestError
from retryopt.serving.settings import Settings
from retryopt.training.backtest.config import BacktestConfig

PUBLIC = {"__version__", "backtest", "decide", "load_attempts", "load_model", "simulate", "train"}


def test_the_package_root_lists_the_public_api() -> None:
    assert set(retryopt.__all__) >= PUBLIC
    for name in retryopt.__all__:
        assert getattr(retryopt, name) is not None
    with pytest.raises(AttributeError):
        _ = retryopt.no_such_name


def test_importing_the_package_stays_light() -> None:
    """``import retryopt`` loads no heavy library (the API loads on first use)."""
    code = (
        "import sys, retryopt; "
        "print(sorted(m for m in ('pandas', 'lightgbm', 'mlflow', 'fastapi') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def api_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelBundle]:
    root = tmp_path_factory.mktemp("api")
    world = retryopt.simulate(customers=600, months=5, seed=5)
    data = root / "attempts.parquet"
    write_table_atomic(world.attempts, data)
    (root / "train.toml").write_text(TRAIN_TOML)
    run = retryopt.train(data, out=root / "models", config=root / "train.toml", mlflow=False)
    return data, retryopt.load_model(run.bundle_path)


def test_load_attempts_validates(api_world: tuple[Path, ModelBundle], tmp_path: Path) -> None:
    data, _ = api_world
    frame = retryopt.load_attempts(data)
    assert len(frame) > 1000
    assert str(frame["attempted_at"].dt.tz) == "UTC"
    broken = frame.head(20).assign(amount=-1)
    path = tmp_path / "broken.parquet"
    write_table_atomic(broken, path)
    with pytest.raises(ContractError) as info:
        retryopt.load_attempts(path)
    assert "amount" in str(info.value.report.format())
    assert len(retryopt.load_attempts(path, drop_invalid=True)) == 0


def test_decide_answers_as_the_http_api(api_world: tuple[Path, ModelBundle]) -> None:
    _, bundle = api_world
    requests = varied_requests(40, seed=7)
    got = retryopt.decide(requests, model=bundle)
    with BackgroundServer(create_app(Settings(model=str(bundle.path)))) as server:
        r = httpx.post(
            server.url + "/v1/retry-decisions/batch", json={"requests": requests}, timeout=120
        )
    assert r.status_code == 200, r.text
    assert got == r.json()["decisions"]
    assert {d["action"] for d in got} == {"retry", "stop"}
    by_path = retryopt.decide(requests[:5], model=bundle.path)
    assert by_path == got[:5]


def test_decide_without_a_model_uses_the_rules_fallback() -> None:
    got = retryopt.decide(varied_requests(6, seed=3))
    assert {d["policy"] for d in got} == {"fallback"}


def test_decide_names_the_bad_field() -> None:
    bad = varied_requests(2, seed=1)
    bad[1]["charge"]["amount"] = -5
    with pytest.raises(RequestError) as info:
        retryopt.decide(bad)
    assert [i.field for i in info.value.issues] == ["requests[1].charge.amount"]
    assert "-5" not in str(info.value)


def test_backtest_compares_policies_under_the_same_rules(
    api_world: tuple[Path, ModelBundle],
) -> None:
    data, bundle = api_world
    result = retryopt.backtest(
        data,
        policies=["logged", "fixed:72,120,168,216", f"model:{bundle.path}"],
        config=BacktestConfig(n_boot=20, dm_refits=0, holdout=False),
    )
    labels = ["logged", "fixed:72,120,168,216", "model"]
    assert list(result.meta["policies"]) == labels
    headline = result.headline()
    assert set(headline["policy"]) == set(labels)
    for label in labels[1:]:
        assert result.rules[label]["retries_of_hard_declines"] == 0
        assert result.rules[label]["network_rule_violations"] == 0
