"""Champion and challenger: assignment, arms over real HTTP on SQLite and PostgreSQL, the
A/B comparison of the logged outcomes, promotion.

The champion is the rule-based fallback (no model needed) and the challenger the control group
``fixed:72,120``; a bundle challenger promoted in every worker of a real ``retryopt serve
--workers 2`` is tested in tests/test_reload_workers.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from retryopt.cli import app as cli
from retryopt.features import contract as c
from retryopt.features.validation import validate_attempts
from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.arms import (
    CHALLENGER,
    CHAMPION,
    ArmConfig,
    assign_arm,
    parse_arm_spec,
    parse_schedule_hours,
)
from retryopt.serving.log_export import export_attempts
from retryopt.serving.settings import Settings, load_settings
from retryopt.serving.store import open_store
from retryopt.training.backtest.ab import compare_arms

T0 = datetime(2026, 1, 5, 8, 12, tzinfo=UTC)
CARD = {
    "brand": "visa",
    "funding": "debit",
    "country": "US",
    "added_at": "2025-03-02T10:00:00Z",
    "exp_month": 4,
    "exp_year": 2028,
}
SALT = Settings().ab_salt
CHALLENGER_SPEC = "fixed:72,120"


def charge(i: int, *, suffix: str = "") -> dict[str, Any]:
    return {
        "charge_id": f"ch_{i}{suffix}",
        "customer_id": f"cus_{i}",
        "amount": 2500,
        "currency": "usd",
        "card": CARD,
        "customer_timezone": "America/New_York",
    }


def request(i: int, *, suffix: str = "") -> dict[str, Any]:
    return {
        "charge": charge(i, suffix=suffix),
        "attempts": [
            {
                "attempted_at": T0.isoformat(),
                "outcome": "failed",
                "decline_code": "insufficient_funds",
            }
        ],
        "now": (T0 + timedelta(minutes=1)).isoformat(),
    }


# ---- assignment ---------------------------------------------------------------------------
def test_assignment_is_stable_salted_and_close_to_the_share() -> None:
    ids = [f"cus_{i}" for i in range(20_000)]
    arms = [assign_arm(i, share=0.3, salt="s1") for i in ids]
    assert arms == [assign_arm(i, share=0.3, salt="s1") for i in ids]  # reproducible
    share = arms.count(CHALLENGER) / len(ids)
    assert 0.28 < share < 0.32  # binomial sd 0.0032: 6 sd either side
    # a bigger share only moves customers from champion to challenger (nested arms)
    bigger = [assign_arm(i, share=0.5, salt="s1") for i in ids]
    assert all(b == CHALLENGER for a, b in zip(arms, bigger, strict=True) if a == CHALLENGER)
    other_salt = [assign_arm(i, share=0.3, salt="s2") for i in ids]
    assert 0.5 < np.mean([a == b for a, b in zip(arms, other_salt, strict=True)]) < 0.7
    assert {assign_arm(i, share=0.0, salt="s") for i in ids[:500]} == {CHAMPION}
    assert {assign_arm(i, share=1.0, salt="s") for i in ids[:500]} == {CHALLENGER}


def test_specs_are_parsed_and_bad_ones_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse_arm_spec(" fixed:72, 120 ").spec == "fixed:72,120"
    assert parse_arm_spec("FALLBACK").kind == "fallback"
    assert parse_arm_spec("models/v2").kind == "bundle"
    assert parse_schedule_hours("24,48") == (24.0, 48.0)
    for bad in ("fixed:", "fixed:72,24", "fixed:abc", "fixed:-1"):
        with pytest.raises(ValueError):
            parse_arm_spec(bad)
    monkeypatch.setenv("RETRYOPT_CHALLENGER", "fixed:72,24")
    with pytest.raises(ValueError, match="RETRYOPT_CHALLENGER"):
        load_settings()
    monkeypatch.setenv("RETRYOPT_CHALLENGER", "fallback")
    monkeypatch.setenv("RETRYOPT_CHALLENGER_SHARE", "1.5")
    with pytest.raises(ValueError, match="RETRYOPT_CHALLENGER_SHARE"):
        load_settings()
    assert ArmConfig.from_json({"champion": None, "challenger": "x", "share": 2}) is None
    assert ArmConfig.from_json({"champion": None, "challenger": "x", "share": 0.2}) == ArmConfig(
        None, "x", 0.2
    )


# ---- the comparison ---------------------------------------------------------------------
def _logged(customers: int, *, p_champion: float, p_challenger: float, seed: int) -> pd.DataFrame:
    """An exported log: each customer 2 failed charges, one retry each, arm by the hash."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(customers):
        customer = f"cus_{k}"
        arm = assign_arm(customer, share=0.5, salt=SALT)
        p = p_challenger if arm == CHALLENGER else p_champion
        for j in range(2):
            first = pd.Timestamp(T0) + pd.Timedelta(days=35 * j)
            succeeded = bool(rng.random() < p)
            for step, (at, outcome) in enumerate(
                (
                    (first, "failed"),
                    (first + pd.Timedelta(hours=72), "succeeded" if succeeded else "failed"),
                )
            ):
                rows.append(
                    {
                        c.CHARGE_ID: f"ch_{k}_{j}",
                        c.CUSTOMER_ID: customer,
                        c.ATTEMPT_ID: f"a_{k}_{j}_{step}",
                        c.ATTEMPTED_AT: at,
                        c.AMOUNT: 2500,
                        c.CURRENCY: "usd",
                        c.OUTCOME: outcome,
                        c.DECLINE_CODE: None if outcome == "succeeded" else "insufficient_funds",
                        c.CARD_BRAND: "visa",
                        c.CARD_FUNDING: "debit",
                        c.CARD_COUNTRY: "US",
                        c.CARD_ADDED_AT: pd.Timestamp("2025-03-02", tz="UTC"),
                        c.CARD_EXP_MONTH: 4,
                        c.CARD_EXP_YEAR: 2028,
                        "arm": arm,
                    }
                )
    raw = pd.DataFrame(rows)
    clean = validate_attempts(raw.drop(columns="arm")).clean
    arm_of = raw.drop_duplicates(c.CHARGE_ID).set_index(c.CHARGE_ID)["arm"]
    return clean.assign(arm=clean[c.CHARGE_ID].map(arm_of).to_numpy())


def test_compare_arms_finds_the_better_arm_with_a_customer_bootstrap() -> None:
    log = _logged(600, p_champion=0.3, p_challenger=0.5, seed=4)
    result = compare_arms(log, n_boot=300, seed=1)
    diff = result.difference.set_index("statistic")
    rate = diff.loc["recovery_rate"]
    assert 0.1 < rate["value"] < 0.3 and rate["ci_low"] > 0.05  # true difference 0.2
    assert result.difference.set_index("statistic")["ci_low"]["recovered_amount"] > 0
    assert rate["p_challenger_better"] > 0.99
    for arm, p in ((CHAMPION, 0.3), (CHALLENGER, 0.5)):
        v, lo, hi = result.value(arm, "recovery_rate")
        assert lo < v < hi and abs(v - p) < 0.06
    # no difference: the interval covers zero
    same = compare_arms(_logged(600, p_champion=0.4, p_challenger=0.4, seed=5), n_boot=300)
    same_rate = same.difference.set_index("statistic").loc["recovery_rate"]
    assert same_rate["ci_low"] < 0 < same_rate["ci_high"]
    with pytest.raises(ValueError, match="arm"):
        compare_arms(log.drop(columns="arm"))


# ---- over real HTTP, both backends -------------------------------------------------------
@pytest.fixture
def served(store_url: str) -> Any:
    settings = Settings(
        model=None,
        store_url=store_url,
        challenger=CHALLENGER_SPEC,
        challenger_share=0.5,
        microbatch_max_size=1,
    )
    with BackgroundServer(create_app(settings)) as server:
        yield server.url, store_url


def test_arms_served_logged_exported_compared_and_promoted(
    served: tuple[str, str], tmp_path: Path
) -> None:
    url, store_url = served
    n = 40
    expected = {f"cus_{i}": assign_arm(f"cus_{i}", share=0.5, salt=SALT) for i in range(n)}
    assert set(expected.values()) == {CHAMPION, CHALLENGER}
    with httpx.Client(base_url=url, timeout=60) as client:
        single = [client.post("/v1/retry-decisions", json=request(i)).json() for i in range(20)]
        batch = client.post(
            "/v1/retry-decisions/batch", json={"requests": [request(i) for i in range(20, n)]}
        ).json()["decisions"]
        decisions = single + batch
        for i, d in enumerate(decisions):
            assert d["arm"] == expected[f"cus_{i}"]
            assert d["policy"] == (CHALLENGER_SPEC if d["arm"] == CHALLENGER else "fallback")
        # The billing service reports every attempt: the first failure, then the retry at the
        # recommended time (the challenger's retries succeed more often).
        reports = []
        for i, d in enumerate(decisions):
            won = d["arm"] == CHALLENGER or i % 4 == 0
            reports += [
                {
                    "charge_id": f"ch_{i}",
                    "attempted_at": T0.isoformat(),
                    "outcome": "failed",
                    "decline_code": "insufficient_funds",
                },
                {
                    "charge_id": f"ch_{i}",
                    "attempted_at": d["retry_at"],
                    "outcome": "succeeded" if won else "failed",
                    "decline_code": None if won else "insufficient_funds",
                    "decision_id": d["decision_id"],
                },
            ]
        stored = client.post("/v1/attempt-outcomes", json={"outcomes": reports})
        assert stored.status_code == 200, stored.text
        info = client.get("/v1/model").json()
    assert info["arms"]["challenger"] == CHALLENGER_SPEC and info["arms"]["share"] == 0.5
    store = open_store(store_url)
    logged = {d.charge_id: d.arm for d in store.logged_decisions()}
    assert logged == {f"ch_{i}": expected[f"cus_{i}"] for i in range(n)}
    exported = export_attempts(store).attempts
    store.close()
    arms = exported.groupby(c.CHARGE_ID)["arm"].unique()
    assert {k: list(v) for k, v in arms.items()} == {k: [v] for k, v in logged.items()}

    out = tmp_path / "ab"
    run = CliRunner().invoke(
        cli, ["ab-report", "--store", store_url, "--out", str(out), "--bootstrap", "200"]
    )
    assert run.exit_code == 0, run.output
    assert run.output.startswith("challenger is best")
    payload = json.loads((out / "ab.json").read_text())
    rate = next(d for d in payload["difference"] if d["statistic"] == "recovery_rate")
    assert rate["ci_low"] > 0
    assert payload["served"] == {CHAMPION: "fallback", CHALLENGER: CHALLENGER_SPEC}
    html = (out / "report.html").read_text()
    assert html.index('id="answer"') < html.index("<table")

    with httpx.Client(base_url=url, timeout=60) as client:
        promoted = client.post("/admin/promote")
        assert promoted.status_code == 200, promoted.text
        assert promoted.json() == {
            "promoted": CHALLENGER_SPEC,
            "champion": CHALLENGER_SPEC,
            "workers": 1,
        }
        after = [
            client.post("/v1/retry-decisions", json=request(i, suffix="_next")).json()
            for i in range(n)
        ]
        again = client.post("/admin/promote")
        info = client.get("/v1/model").json()
    assert {(d["arm"], d["policy"]) for d in after} == {(CHAMPION, CHALLENGER_SPEC)}
    assert again.status_code == 409 and again.json()["detail"][0]["type"] == "no_challenger"
    assert info["arms"] == {
        "champion": CHALLENGER_SPEC,
        "challenger": None,
        "challenger_version": None,
        "share": 0.0,
    }


def test_promote_is_an_admin_route() -> None:
    settings = Settings(model=None, challenger="fallback", admin_token=SecretStr("tok-1"))
    with (
        BackgroundServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        refused = client.post("/admin/promote")
        wrong = client.post("/admin/promote", headers={"Authorization": "Bearer nope"})
        ok = client.post("/admin/promote", headers={"Authorization": "Bearer tok-1"})
    assert refused.status_code == 401 and wrong.status_code == 401
    assert ok.status_code == 200 and ok.json()["champion"] == "fallback"


def test_without_a_challenger_every_decision_is_the_champions() -> None:
    with (
        BackgroundServer(create_app(Settings(model=None))) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        arms = {
            client.post("/v1/retry-decisions", json=request(i)).json()["arm"] for i in range(20)
        }
        promote = client.post("/admin/promote")
    assert arms == {CHAMPION}
    assert promote.status_code == 409


def test_a_reload_after_promoting_a_control_group_brings_the_model_back(
    trained_bundle: Path,
) -> None:
    settings = Settings(
        model=str(trained_bundle),
        engine="lightgbm",
        challenger=CHALLENGER_SPEC,
        challenger_share=0.5,
    )
    with (
        BackgroundServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=120) as client,
    ):

        def policies(tag: str) -> set[tuple[str, str]]:
            return {
                (d["arm"], d["policy"])
                for d in (
                    client.post("/v1/retry-decisions", json=request(i, suffix=tag)).json()
                    for i in range(20)
                )
            }

        assert policies("a") == {(CHAMPION, "model"), (CHALLENGER, CHALLENGER_SPEC)}
        assert client.post("/admin/promote").status_code == 200
        assert policies("b") == {(CHAMPION, CHALLENGER_SPEC)}
        assert client.post("/admin/reload", json={}).status_code == 200
        assert policies("c") == {(CHAMPION, "model")}
