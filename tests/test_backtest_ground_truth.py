"""Ground truth: `retryopt simulate` -> train -> `retryopt backtest --simulate`, on two worlds.

Two differently seeded and differently configured worlds (the default; and one with more
exploration, stronger issuer outages and another pay-cycle mix in the US). A real LightGBM bundle
is trained with ``training.train.run_training`` on each world's history; the backtest evaluates
the charges of the bundle's held-out test months and plays every policy in the world with common
random numbers (the truth: the mean of three plays with distinct random numbers; amounts in US
dollars at the reference rates). Checks:

(a) coverage: over (world x policy x statistic) replicates, each estimator's 95 % interval covers
    the true value at roughly its nominal rate;
(b) the model policy beats the best fixed schedule on recovered amount with fewer retries, and
    the share of the fixed-to-oracle gap it closes is reported (JSON and stdout); both under the
    money-only objective (no cost per attempt, no discounting), the one the claim was made for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from retryopt.cli import app

pytestmark = pytest.mark.slow

CUSTOMERS = 20_000
MONTHS = 12
# the second schedule is the worlds' logging schedule (72, 168, 336, 480 h), which the logged
# history supports well; `random` is the logging policy's exploration component (exact ratios)
FIXED = ("fixed:72,120,168,216", "fixed:72,168,336,480")
STATS = ("recovery_rate", "recovered_amount", "retries_per_failed_charge")
WEIGHTED = ("ips", "snips", "dr")
MIN_CASES = 6  # per estimator: at least two (world x policy) pairs of three statistics


def _changed_config() -> dict[str, Any]:
    """The default world with more exploration, stronger outages, weekly-paid US customers."""
    from retryopt.training.simulate import WorldConfig

    cfg = WorldConfig().to_dict()
    cfg["logging_policy"]["exploration"] = 0.5
    cfg["outage"]["episodes_per_month"] = 4.0
    cfg["outage"]["mean_duration_hours"] = 6.0
    cfg["population"]["countries"]["US"]["pay_cycles"] = {
        "weekly": 0.5,
        "biweekly": 0.2,
        "semimonthly": 0.2,
        "irregular": 0.1,
    }
    return cfg


WORLDS: dict[str, dict[str, Any]] = {
    "default": {"seed": 11, "config": None},
    "explore-outages-paycycles": {"seed": 23, "config": _changed_config},
}


def _run_world(name: str, tmp: Path) -> dict[str, Any]:
    from retryopt.training.train import run_training
    from retryopt.training.train_config import load_config

    spec = WORLDS[name]
    runner = CliRunner()
    data = tmp / "attempts.parquet"
    args = ["simulate", "--customers", str(CUSTOMERS), "--months", str(MONTHS)]
    args += ["--seed", str(spec["seed"]), "--out", str(data), "--quiet"]
    if spec["config"] is not None:
        cfg = tmp / "world.json"
        cfg.write_text(json.dumps(spec["config"]()), encoding="utf-8")
        args += ["--config", str(cfg)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    trained = run_training(
        data,
        tmp / "models",
        config=load_config(seed=spec["seed"]),
        experiment="test",
        registered_name=None,
        track=False,
    )
    bundle = str(trained.bundle_path)
    out = tmp / "bt"
    args = ["backtest", "--data", str(data), "--simulate", "--out", str(out)]
    args += ["--bootstrap", "100", "--seed", "3", "--truth-replications", "3"]
    # Money only (no cost per attempt, no discounting): the objective under which (b) was
    # established. With the default objective of issue 14 (0.12 USD per attempt, a daily
    # cancellation hazard) the planner trades a few more retries for earlier money in the second
    # world (+0.04 retries per failed charge for +0.22 USD; README, Known gaps).
    args += ["--cost-per-attempt", "0", "--daily-cancel-hazard", "0", "--annual-interest-rate", "0"]
    args += ["--policy", "logged"]
    for f in FIXED:
        args += ["--policy", f]
    args += ["--policy", "random", "--policy", f"model:{bundle}", "--policy", "oracle"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads((out / "results.json").read_text())
    return {
        "stdout": res.output,
        "payload": payload,
        "estimates": pd.read_csv(out / "estimates.csv"),
    }


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return {n: _run_world(n, tmp_path_factory.mktemp(n)) for n in WORLDS}


def test_reports_truth_and_gap_closed(worlds: dict[str, dict[str, Any]]) -> None:
    for name, run in worlds.items():
        out = run["stdout"]
        print(f"\n{name}:", out[out.find("Ground truth") :])
        truth = run["payload"]["truth"]
        assert truth["best_fixed"] in FIXED
        assert "model_gap_closed" in truth
        assert "share of the" in run["stdout"] and "oracle gap closed" in run["stdout"]
        assert run["payload"]["meta"]["holdout_charges"] > 0


def test_estimator_intervals_cover_the_truth(worlds: dict[str, dict[str, Any]]) -> None:
    hits: dict[str, list[bool]] = {}
    for run in worlds.values():
        est = run["estimates"]
        truth = est[est["estimator"] == "truth"].set_index(["policy", "statistic"])["value"]
        for row in est[est["estimator"].isin(["dm", "ips", "snips", "dr"])].itertuples():
            if row.statistic not in STATS or row.policy == "oracle":
                continue
            t = truth[(row.policy, row.statistic)]
            hits.setdefault(row.estimator, []).append(bool(row.ci_low <= t <= row.ci_high))
    rates = {k: sum(v) / len(v) for k, v in hits.items()}
    print("coverage of the 95 % intervals:", rates, {k: len(v) for k, v in hits.items()})
    assert set(rates) == {"dm", "ips", "snips", "dr"}
    # IPS/SNIPS/DR only leave out cases the estimator itself declares unsupported (insufficient
    # overlap, recorded in results.json); enough cases must remain for the check to mean something
    for name, cases in hits.items():
        assert len(cases) >= MIN_CASES, (name, len(cases))
    for run in worlds.values():
        est = run["estimates"]
        for label, diag in run["payload"]["overlap"].items():
            have = set(est.loc[est["policy"] == label, "estimator"])
            if diag.get("weighted_estimators", "available") != "available":
                assert not have & set(WEIGHTED), (label, diag)
            elif diag.get("exploration"):
                assert set(WEIGHTED) <= have, (label, have)
    for name, rate in rates.items():
        assert rate >= 0.75, (name, rate)


def test_supported_policies_include_the_logging_schedule_and_random(
    worlds: dict[str, dict[str, Any]],
) -> None:
    for name, run in worlds.items():
        overlap = run["payload"]["overlap"]
        assert overlap["fixed:72,168,336,480"]["weighted_estimators"] == "available", name
        assert overlap["random"]["weights"] == "exact-ratio", name


def test_model_beats_best_fixed_with_fewer_retries(worlds: dict[str, dict[str, Any]]) -> None:
    for name, run in worlds.items():
        verdict = run["payload"]["truth"]["model_vs_best_fixed"]
        assert verdict["recovered_amount_difference"] > 0, (name, verdict)
        assert verdict["retries_difference"] < 0, (name, verdict)
        assert run["payload"]["truth"]["model_gap_closed"] > 0
