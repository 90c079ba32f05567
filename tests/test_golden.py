"""Golden pins: decisions for a fixed set of varied requests and a backtest's results file.

Written before the package restructuring (issue 12) so that moving code cannot change what the
product decides. Everything goes through the public interfaces only: ``retryopt simulate``,
``retryopt train`` and ``retryopt backtest`` on the command line, and the decision API over real
HTTP. The pinned outputs live in ``tests/fixtures/golden/``.

A deliberate behaviour change regenerates them (and says why in its commit)::

    RETRYOPT_REGENERATE_GOLDEN=1 pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from retryopt.cli import app
from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.settings import Settings

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
REGENERATE = os.environ.get("RETRYOPT_REGENERATE_GOLDEN") == "1"

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

CODES = (
    ("insufficient_funds", None),
    ("do_not_honor", None),
    ("generic_decline", None),
    ("try_again_later", None),
    ("processing_error", None),
    ("card_velocity_exceeded", None),
    ("restricted_card", None),
    ("expired_card", None),
    ("stolen_card", None),
    ("authentication_required", None),
    ("51", None),
    ("05", "24"),
    ("insufficient_funds", "25"),
    ("do_not_honor", "03"),
    ("generic_decline", "21"),
    ("insufficient_funds", "28"),
    ("some_unknown_code", None),
)
ZONES = (
    ("US", "America/New_York", "usd"),
    ("US", "America/Los_Angeles", "usd"),
    ("GB", "Europe/London", "gbp"),
    ("DE", None, "eur"),
    ("BR", "America/Sao_Paulo", "brl"),
    ("JP", "Asia/Tokyo", "jpy"),
    ("AU", "Australia/Sydney", "aud"),
    ("IN", None, "inr"),
)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def varied_requests(n: int, *, seed: int = 20261204) -> list[dict[str, Any]]:
    """``n`` valid decision requests spread over codes, brands, zones, histories and constraints."""
    rng = np.random.default_rng(seed)
    base = datetime(2026, 3, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        country, zone, currency = ZONES[i % len(ZONES)]
        code, advice = CODES[int(rng.integers(len(CODES)))]
        brand = ("visa", "mastercard", "amex", "discover")[int(rng.integers(4))]
        first = base + timedelta(hours=float(rng.uniform(0, 24 * 240)))
        n_attempts = 1 + int(rng.integers(4))
        times = [first]
        for _ in range(n_attempts - 1):
            times.append(times[-1] + timedelta(hours=float(rng.uniform(2, 120))))
        attempts = [
            {
                "attempted_at": _iso(t),
                "outcome": "failed",
                "decline_code": code if k == n_attempts - 1 else CODES[int(rng.integers(6))][0],
                "network_advice_code": advice if k == n_attempts - 1 else None,
            }
            for k, t in enumerate(times)
        ]
        customer = f"cus_{i // 3}"
        history = None
        if i % 4 == 0:
            history = [
                {
                    "charge_id": f"old_{i}_{m}",
                    "attempted_at": _iso(
                        first - timedelta(days=30 * (m + 1) + float(rng.uniform(0, 3)))
                    ),
                    "outcome": "succeeded" if m % 3 else "failed",
                    "decline_code": None if m % 3 else "insufficient_funds",
                    "amount": 1999,
                    "currency": currency,
                }
                for m in range(1 + i % 5)
            ]
        added = first - timedelta(days=float(rng.uniform(1, 1500)))
        constraints: dict[str, Any] = {
            "max_retries": int((4, 2, 6, 1, 8)[i % 5]),
            "window_hours": float((504, 336, 720, 168)[i % 4]),
        }
        if i % 6 == 1:
            constraints["quiet_hours"] = [22, 7]
        if i % 7 == 2:
            constraints["min_gap_hours"] = 12.0
        if i % 9 == 3:
            constraints["cost_per_attempt"] = 0.05
        if i % 11 == 4:
            constraints["daily_cancel_hazard"] = 0.002
        req: dict[str, Any] = {
            "charge": {
                "charge_id": f"ch_{i}",
                "customer_id": customer,
                "amount": int(rng.choice([499, 999, 1999, 4900, 12900, 99900])),
                "currency": currency,
                "card": {
                    "brand": brand,
                    "funding": ("credit", "debit", "prepaid", "unknown")[int(rng.integers(4))],
                    "country": country,
                    "added_at": _iso(added),
                    "exp_month": 1 + int(rng.integers(12)),
                    "exp_year": 2026 + int(rng.integers(4)),
                    "issuer": None if i % 3 else f"bank_{i % 7}",
                    "card_id": f"card_{i // 2}",
                },
                "customer_timezone": zone,
            },
            "attempts": attempts,
            "now": _iso(times[-1] + timedelta(minutes=float(rng.uniform(1, 600)))),
            "constraints": constraints,
        }
        if history is not None:
            req["customer_history"] = history
        out.append(req)
    return out


def _check(name: str, got: Any) -> None:
    path = GOLDEN / name
    text = json.dumps(got, indent=1, sort_keys=True) + "\n"
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    want = json.loads(path.read_text())
    assert _same(json.loads(text), want), f"{name} differs from the pinned output"


def _same(got: Any, want: Any) -> bool:
    """Equal, floats up to round-off (a relative 1e-12).

    numpy's SIMD reductions may sum in another order depending on the memory alignment of the
    array, so a bootstrap quantile can move in its 16th digit from one run or machine to the
    next (seen: 8.97075963408679 against 8.970759634086793). A behaviour change moves figures by
    far more than that.
    """
    if isinstance(got, float) or isinstance(want, float):
        if isinstance(got, bool) or isinstance(want, bool):
            return got == want
        if not isinstance(got, int | float) or not isinstance(want, int | float):
            return False
        return math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12)
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_same(a, b) for a, b in zip(got, want, strict=True))
    return bool(got == want)


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def golden_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A simulated world and a bundle trained on it, both through the command line."""
    root = tmp_path_factory.mktemp("golden")
    data = root / "world.parquet"
    _invoke("simulate", "--customers", "700", "--months", "5", "--seed", "21", "--out", str(data))
    (root / "train.toml").write_text(TRAIN_TOML)
    _invoke(
        "train",
        "--data",
        str(data),
        "--out",
        str(root / "models"),
        "--config",
        str(root / "train.toml"),
        "--seed",
        "3",
        "--no-mlflow",
    )
    (bundle,) = [p for p in (root / "models").iterdir() if p.is_dir()]
    return data, bundle


def test_decisions_are_pinned(golden_world: tuple[Path, Path]) -> None:
    _, bundle = golden_world
    requests = varied_requests(300)
    decisions = []
    with BackgroundServer(create_app(Settings(model=str(bundle)))) as server:
        for k in range(0, len(requests), 100):
            r = httpx.post(
                server.url + "/v1/retry-decisions/batch",
                json={"requests": requests[k : k + 100]},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            decisions.extend(r.json()["decisions"])
        single = [
            httpx.post(server.url + "/v1/retry-decisions", json=req, timeout=60).json()
            for req in requests[:20]
        ]
    for d in [*decisions, *single]:
        d.pop("model_version", None)  # names the bundle folder (a content hash and a date)
    assert single == decisions[:20]
    assert {d["action"] for d in decisions} == {"retry", "stop"}
    _check("decisions.json", decisions)


def test_backtest_results_are_pinned(golden_world: tuple[Path, Path], tmp_path: Path) -> None:
    data, bundle = golden_world
    out = tmp_path / "bt"
    _invoke(
        "backtest",
        "--data",
        str(data),
        "--policy",
        "logged",
        "--policy",
        f"model:{bundle}",
        "--policy",
        f"greedy:{bundle}",
        "--simulate",
        "--bootstrap",
        "20",
        "--dm-refits",
        "1",
        "--all-months",
        "--truth-replications",
        "1",
        "--seed",
        "4",
        "--out",
        str(out),
    )
    results = json.loads((out / "results.json").read_text())
    _check("backtest_results.json", _without_volatile(results))


def _without_volatile(obj: Any) -> Any:
    """The results without run-specific values (paths, model folder names, timings)."""
    if isinstance(obj, dict):
        return {
            k: _without_volatile(v)
            for k, v in obj.items()
            if k not in {"data", "out", "created", "seconds", "model_version", "models"}
        }
    if isinstance(obj, list):
        return [_without_volatile(v) for v in obj]
    if isinstance(obj, str) and ("/tmp" in obj or "pytest-" in obj):
        return "<path>"
    return obj
