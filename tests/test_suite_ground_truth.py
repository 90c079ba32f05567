"""Ground truth on the evaluation suite: issue 14's "Done when", judged in CI.

The seven worlds of ``training/simulate/suite.py`` (two structurally different configurations x
three seeds, and one world without any timing signal), each simulated at a small size, a real
LightGBM bundle trained on its history, and the planner, the planner in guardrail mode, five fixed
schedules and the oracle played on the held-out month's failed charges with common random numbers,
under the default decision objective (costs and discounting). The oracle plans with the true
probabilities under that same objective.

Every criterion of the issue is written in full. Those the planner does not meet yet are marked
``xfail(strict=True)`` with the numbers measured at this size, so they turn into failures to
remove the mark as soon as the planner meets them; none is weakened.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retryopt.cli import app
from retryopt.training.backtest.suite_run import (
    CRITERIA,
    GUARDED,
    ORACLE,
    PLANNER,
    SuiteRunConfig,
    WorldResult,
    judge_suite,
    judge_world,
    played_retry_truth,
    run_suite,
    suite_table,
)
from retryopt.training.simulate.suite import SUITE, TUNING_WORLD, suite_worlds

# Small worlds: the whole module takes about 4-5 minutes on the shared 2-core machine.
CI_SIZE = SuiteRunConfig(customers=8_000, months=6, replications=2, bootstrap=400)


def test_suite_is_fixed_and_apart_from_the_tuning_world() -> None:
    names = [w.name for w in SUITE]
    assert len(names) == len(set(names)) >= 6
    timing = [w for w in SUITE if w.timing_signal]
    configurations = {w.configuration for w in timing}
    assert len(configurations) >= 2
    for configuration in configurations:
        assert len({w.seed for w in timing if w.configuration == configuration}) >= 3
    assert sum(not w.timing_signal for w in SUITE) == 1
    assert TUNING_WORLD.name not in names
    assert TUNING_WORLD.seed not in {w.seed for w in SUITE}
    assert suite_worlds(["dunning"]) == tuple(w for w in SUITE if w.configuration == "dunning")


def test_world_without_timing_signal_has_none() -> None:
    import numpy as np

    from retryopt.training.simulate import simulate_world

    spec = next(w for w in SUITE if not w.timing_signal)
    world = simulate_world(spec.config(), customers=2_000, months=2, seed=spec.seed)
    ids = world.failed_charges()[:200]
    first = world.charge_first_h[world.positions(ids)]
    times = first[:, None] + np.arange(1.0, 505.0)[None, :]
    p = world.success_probability_hours(world.positions(ids), first[:, None], times)
    np.testing.assert_allclose(p, p[:, :1] * np.ones_like(p), atol=1e-12)


def test_cli_refuses_an_unknown_world(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["suite", "--out", str(tmp_path), "--world", "atlantis"])
    assert res.exit_code == 2
    assert "atlantis" in res.output and "no-timing-521" in res.output
    assert not any(tmp_path.iterdir())


def test_played_retry_truth_is_the_worlds_probability_given_the_earlier_attempts() -> None:
    from retryopt.features.decisions import Constraints
    from retryopt.serving.policies import FixedSchedule
    from retryopt.training.simulate import WorldConfig, play, simulate_world

    world = simulate_world(WorldConfig(), customers=1_500, months=2, seed=4)
    charges = world.failed_charges()[:80]
    played = play(FixedSchedule((24.0, 48.0, 96.0)), world, charges, Constraints(), seed=1)
    truth = played_retry_truth(world, played.attempts)
    assert len(truth) == int(played.charges["retries"].sum()) > 0
    attempts = played.attempts.sort_values("attempted_at")
    for cid, k, true_p in truth.head(40)[["charge_id", "retry_number", "true_p"]].to_numpy():
        n = int(k)
        own = attempts[attempts["charge_id"] == cid]["attempted_at"].to_numpy()
        expected = world.success_probability(str(cid), own[:n], own[n : n + 1])[0]
        assert float(true_p) == pytest.approx(expected, abs=1e-12)


def _result(*, usd: float, usd_hi: float, timing: bool) -> WorldResult:
    planner = {
        "median_days_to_recovery": 2.0,
        "hopeless_share": 0.01,
        "calibration_bias": 0.01,
        "calibration_ece": 0.02,
    }
    return WorldResult(
        world="w",
        configuration="c",
        seed=1,
        timing_signal=timing,
        charges=100,
        best_fixed="fixed:1",
        policies={PLANNER: planner, ORACLE: {"median_days_to_recovery": 2.0}},
        planner_vs_best_fixed={
            "recovered_amount_difference": usd,
            "recovered_amount_difference_hi": usd_hi,
            "retries_difference": -0.1,
        },
    )


def test_judge_world_allows_the_bootstrap_interval_only_without_timing_signal() -> None:
    assert all(judge_world(_result(usd=0.1, usd_hi=0.3, timing=True)).values())
    assert not judge_world(_result(usd=-0.1, usd_hi=0.3, timing=True))["usd_at_least_best_fixed"]
    assert judge_world(_result(usd=-0.1, usd_hi=0.3, timing=False))["usd_at_least_best_fixed"]
    assert not judge_world(_result(usd=-0.4, usd_hi=-0.1, timing=False))["usd_at_least_best_fixed"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[WorldResult]:
    out, verdict = run_suite(SUITE, CI_SIZE, work_dir=tmp_path_factory.mktemp("suite"))
    print("\n" + suite_table(out))
    print(verdict)
    return out


def _failing(results: list[WorldResult], criterion: str) -> list[str]:
    return [r.world for r in results if not r.criteria[criterion]]


@pytest.mark.slow
def test_oracle_is_the_ceiling_of_the_objective(results: list[WorldResult]) -> None:
    for r in results:
        best = r.policies[ORACLE]["discounted_value"]
        for label, values in r.policies.items():
            assert values["discounted_value"] <= best + 1e-9, (r.world, label)


@pytest.mark.slow
def test_every_policy_was_measured(results: list[WorldResult]) -> None:
    for r in results:
        assert r.charges >= 200
        assert {PLANNER, GUARDED, ORACLE} <= set(r.policies)
        for label in (PLANNER, GUARDED):
            row = r.policies[label]
            assert row["predictions_matched"] == 1.0  # every chosen time has its prediction
            assert math.isfinite(row["calibration_bias"]) and math.isfinite(row["calibration_ece"])
        assert set(r.criteria) == set(CRITERIA)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-12-06 at this size (gap support): planner - best fixed, USD per "
    "failed charge: +0.35 (501), +0.29 (502), -0.26 (503), -0.14 (511), -0.79 (512), -0.56 "
    "(513), +0.00 (no-timing-521, interval [0, 0]); below the best fixed schedule in 4 of 7 "
    "worlds (intervals excluding 0 in 512 and 513)",
)
def test_planner_recovers_at_least_the_best_fixed_schedule(results: list[WorldResult]) -> None:
    assert _failing(results, "usd_at_least_best_fixed") == []


@pytest.mark.slow
def test_planner_spends_no_more_retries_than_the_best_fixed_schedule(
    results: list[WorldResult],
) -> None:
    assert _failing(results, "retries_at_most_best_fixed") == []


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-12-06 at this size: median day of recovery, planner 4-9 against the "
    "oracle's 1 in all 7 worlds (best fixed schedules: 2-6)",
)
def test_planner_collects_no_later_than_the_oracle(results: list[WorldResult]) -> None:
    assert _failing(results, "median_day_at_most_oracle") == []


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-12-06 at this size: 20-34 % of the planner's retries have a true "
    "success probability under 1 % in all 7 worlds (the fixed schedules' are as hopeless)",
)
def test_hopeless_retries_are_rare(results: list[WorldResult]) -> None:
    assert _failing(results, "hopeless_under_2pct") == []


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-12-06 at this size (gap support): bias / ECE at the chosen times "
    "-0.009/0.025, +0.031/0.034, -0.017/0.020, +0.001/0.014, -0.009/0.026, +0.001/0.028, "
    "+0.020/0.021; payday-weak-night-strong-502 misses both, no-timing-521 the bias by a hair "
    "(before gap support: only 503 met both)",
)
def test_planner_is_calibrated_at_its_chosen_times(results: list[WorldResult]) -> None:
    assert _failing(results, "bias_within_2pts") == []
    assert _failing(results, "ece_at_most_3pts") == []


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="measured 2026-12-06 at this size (gap support): mean share of the fixed-to-oracle "
    "gap closed -17.2 % in discounted value (-11.1 % in recovered USD); per world +19, +26, "
    "-39, -10, -56, -44, -16 % (in the suite's order; before gap support -26.5 %)",
)
def test_planner_closes_most_of_the_gap_on_average(results: list[WorldResult]) -> None:
    assert judge_suite(results)["mean_gap_closed_at_least_60pct"]
