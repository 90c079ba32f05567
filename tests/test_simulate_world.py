"""Tests of the synthetic world's generator: determinism, contract, marginals, config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retryopt.features import contract as C  # noqa: N812
from retryopt.features.taxonomy import classify_decline
from retryopt.training.simulate import WorldConfig, simulate_world, summarize_world
from retryopt.training.simulate.config import (
    CODE_NAMES,
    DEFAULT_CONFIG_PATH,
    NEVER_RETRIED_CODES,
    HardDeclineConfig,
)
from retryopt.training.simulate.logging_policy import logging_retry_offsets


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    return simulate_world(WorldConfig(), customers=8000, months=3, seed=11)


def test_deterministic_for_a_seed() -> None:
    a = simulate_world(WorldConfig(), customers=600, months=2, seed=3)
    b = simulate_world(WorldConfig(), customers=600, months=2, seed=3)
    c = simulate_world(WorldConfig(), customers=600, months=2, seed=4)
    pd.testing.assert_frame_equal(a.attempts, b.attempts)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert not a.attempts[C.ATTEMPTED_AT].equals(c.attempts[C.ATTEMPTED_AT])


def test_attempts_satisfy_the_contract(world) -> None:  # type: ignore[no-untyped-def]
    from retryopt.features.validation import validate_attempts

    result = validate_attempts(world.attempts)
    assert result.report.ok
    assert result.report.unknown_decline_codes == {}
    assert list(world.attempts.columns) == list(C.ALL_COLUMNS)
    for col in C.TIMESTAMP_COLUMNS:
        assert str(world.attempts[col].dtype) == "datetime64[ns, UTC]"
    for col in C.INTEGER_COLUMNS:
        assert world.attempts[col].dtype == np.int64
    assert world.attempts[C.ATTEMPT_ID].is_unique


def test_rows_exercise_optional_columns(world) -> None:  # type: ignore[no-untyped-def]
    a = world.attempts
    missing_tz = a.groupby(C.CUSTOMER_ID)[C.CUSTOMER_TIMEZONE].apply(lambda s: s.isna().all())
    assert 0.06 < missing_tz.mean() < 0.14
    first = a[C.ATTEMPT_ID].str.endswith("_a0")
    assert a.loc[first, C.RETRY_PROPENSITY].isna().all()
    prop = a.loc[~first, C.RETRY_PROPENSITY]
    assert ((prop > 0) & (prop <= 1)).all()
    assert (prop < 0.5).mean() > 0.15  # exploration retries exist
    assert a[C.NETWORK_ADVICE_CODE].notna().any()
    assert a[C.CARD_ID].nunique() > a[C.CUSTOMER_ID].nunique()  # updater replaced some cards


def test_marginals_are_realistic(world) -> None:  # type: ignore[no-untyped-def]
    s = summarize_world(world)
    assert 0.05 <= s.first_attempt_failure_rate <= 0.15
    assert 0.40 <= s.recovery_rate <= 0.60
    big = sum(
        s.decline_mix.get(c, 0.0) for c in ("insufficient_funds", "do_not_honor", "generic_decline")
    )
    assert big >= 0.7
    assert 0.01 <= s.hard_decline_share <= 0.10
    assert s.recovered_2_12_days >= 0.5
    assert "insufficient_funds" in s.format()


def test_fixed_logging_policy_has_propensity_one() -> None:
    cfg = WorldConfig().replace(logging_policy={"mode": "fixed"})
    w = simulate_world(cfg, customers=1500, months=2, seed=2)
    retries = w.attempts[~w.attempts[C.ATTEMPT_ID].str.endswith("_a0")]
    assert len(retries) > 0
    assert (retries[C.RETRY_PROPENSITY] == 1.0).all()
    first = w.truth.set_index("charge_id")["first_attempt_at"]
    offsets = retries[C.ATTEMPTED_AT].to_numpy() - first.reindex(retries[C.CHARGE_ID]).to_numpy()
    hours = {round(pd.Timedelta(x) / pd.Timedelta(hours=1)) for x in offsets}
    assert hours <= {72, 168, 336, 480}


def test_logging_propensity_formula() -> None:
    cfg = WorldConfig().logging_policy
    prev = np.array([0.0, 0.0, 400.0])
    off, prop = logging_retry_offsets(
        cfg, 1, prev, np.array([0.9, 0.1, 0.9]), np.array([0.5, 0.5, 0.5])
    )
    grid = 504 - 1 + 1  # offsets 1..504
    assert off[0] == 72.0 and prop[0] == pytest.approx(0.7 + 0.3 / grid)
    assert off[1] == 1 + np.floor(0.5 * grid) and prop[1] == pytest.approx(0.3 / grid)
    assert off[2] == 401.0  # schedule time already passed: earliest allowed hour
    assert prop[2] == pytest.approx(0.7 + 0.3 / (504 - 401 + 1))
    off, prop = logging_retry_offsets(cfg, 5, prev, prev, prev)
    assert np.isnan(off).all()


@pytest.mark.parametrize(
    ("section", "codes"),
    [
        ("funds", {"insufficient_funds"}),
        ("hard_decline", {"lost_card", "stolen_card", "fraudulent", "pickup_card"}),
        ("authentication", {"authentication_required"}),
        ("outage", {"try_again_later"}),
        ("expiry", {"expired_card"}),
    ],
)
def test_disabling_a_mechanism_removes_its_declines(section: str, codes: set[str]) -> None:
    on = simulate_world(WorldConfig(), customers=3000, months=2, seed=8)
    off = simulate_world(
        WorldConfig().replace(**{section: {"enabled": False}}), customers=3000, months=2, seed=8
    )
    assert on.attempts[C.DECLINE_CODE].isin(list(codes)).any()
    assert not off.attempts[C.DECLINE_CODE].isin(list(codes)).any()


def test_every_emitted_code_is_known_to_the_taxonomy() -> None:
    from retryopt.features.taxonomy import classify_decline

    for code in CODE_NAMES:
        assert classify_decline(code).known, code
    for code in WorldConfig().logging_policy.hard_codes:
        assert classify_decline(code).hard, code


def test_default_toml_equals_defaults_and_overrides(tmp_path: Path) -> None:
    assert WorldConfig.from_file(DEFAULT_CONFIG_PATH) == WorldConfig()
    p = tmp_path / "w.json"
    p.write_text(json.dumps({"velocity": {"max_attempts_24h": 5}}))
    cfg = WorldConfig.from_file(p)
    assert cfg.velocity.max_attempts_24h == 5 and cfg.funds == WorldConfig().funds
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    bad = tmp_path / "bad.toml"
    bad.write_text("[funds]\nlatentt = 1.0\n")
    with pytest.raises(ValueError, match=r"funds: unknown key\(s\) \['latentt'\]"):
        WorldConfig.from_file(bad)
    bad.write_text("[outage]\nfail_probability = 1.5\n")
    with pytest.raises(ValueError, match=r"outage\.fail_probability"):
        WorldConfig.from_file(bad)


def test_cli_writes_attempts_truth_and_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from retryopt.cli import app

    out = tmp_path / "w" / "attempts.csv"
    res = CliRunner().invoke(
        app, ["simulate", "--customers", "400", "--months", "2", "--seed", "1", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "first-attempt failure rate" in res.output and "month   2/2" in res.output
    assert out.exists()
    assert (tmp_path / "w" / "attempts.truth.csv").exists()
    cfg = json.loads((tmp_path / "w" / "attempts.config.json").read_text())
    assert cfg["seed"] == 1 and WorldConfig.from_dict(cfg["config"]) == WorldConfig()
    from retryopt.features.validation import load_attempts

    assert len(load_attempts(out)) > 400
    res = CliRunner().invoke(
        app, ["simulate", "--customers", "10", "--out", str(out), "--format", "parquet"]
    )
    assert res.exit_code != 0


def test_never_retried_codes_follow_the_taxonomy() -> None:
    """One declaration of the world's never-retried codes, checked against the taxonomy."""
    hard = {code for code in CODE_NAMES if classify_decline(code).hard}
    assert set(NEVER_RETRIED_CODES) == hard - {"expired_card"}  # the account updater's case
    assert set(HardDeclineConfig().codes) <= set(NEVER_RETRIED_CODES)
