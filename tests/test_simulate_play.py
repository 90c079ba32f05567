"""Playing policies on the world: oracle vs fixed schedule, common random numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retryopt.features.decisions import Constraints, RetryPolicy
from retryopt.training.simulate import (
    FixedSchedulePolicy,
    LoggingPolicy,
    OraclePolicy,
    RandomPolicy,
    WorldConfig,
    play,
    simulate_world,
)


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    return simulate_world(WorldConfig(), customers=10000, months=2, seed=31)


@pytest.fixture(scope="module")
def charges(world):  # type: ignore[no-untyped-def]
    return world.failed_charges()[:900]


def test_policies_implement_the_protocol(world) -> None:  # type: ignore[no-untyped-def]
    for p in (FixedSchedulePolicy(), RandomPolicy(1), OraclePolicy(world)):
        assert isinstance(p, RetryPolicy)


def test_oracle_beats_fixed_schedule_on_the_same_charges(world, charges) -> None:  # type: ignore[no-untyped-def]
    cons = Constraints(max_retries=4, window_hours=504)
    fixed = play(FixedSchedulePolicy(), world, charges, cons, seed=3)
    oracle = play(OraclePolicy(world), world, charges, cons, seed=3)
    assert len(fixed.charges) == len(oracle.charges) == len(charges)
    fs, os_ = fixed.summary(), oracle.summary()
    assert os_["recovery_rate"] > fs["recovery_rate"] + 0.03
    assert os_["retries_per_charge"] <= fs["retries_per_charge"]
    # Constraints hold.
    assert (oracle.charges["retries"] <= 4).all()
    rec = oracle.charges["recovered"]
    assert (oracle.charges.loc[rec, "hours_to_recovery"] <= 504 + 1e-6).all()


def test_play_is_reproducible_and_seeded(world, charges) -> None:  # type: ignore[no-untyped-def]
    cons = Constraints()
    a = play(RandomPolicy(7), world, charges, cons, seed=1)
    b = play(RandomPolicy(7), world, charges, cons, seed=1)
    pd.testing.assert_frame_equal(a.charges, b.charges)
    pd.testing.assert_frame_equal(a.attempts, b.attempts)
    c = play(RandomPolicy(7), world, charges, cons, seed=2)
    assert not a.charges["recovered"].equals(c.charges["recovered"])


def test_common_random_numbers_same_times_same_luck(world, charges) -> None:  # type: ignore[no-untyped-def]
    """The same schedule expressed by two policy classes gives identical outcomes."""
    cfg = world.config.logging_policy
    fixed_cfg = type(cfg)(**{**cfg.__dict__, "mode": "fixed"})
    cons = Constraints()
    a = play(LoggingPolicy(fixed_cfg, seed=0), world, charges, cons, seed=9)
    b = play(FixedSchedulePolicy(cfg.schedule_hours), world, charges, cons, seed=9)
    np.testing.assert_array_equal(a.charges["recovered"], b.charges["recovered"])
    # ... and the play result does not depend on which other charges are played.
    part = play(FixedSchedulePolicy(cfg.schedule_hours), world, charges[:100], cons, seed=9)
    np.testing.assert_array_equal(part.charges["recovered"], b.charges["recovered"][:100])


def test_constraints_are_enforced(world, charges) -> None:  # type: ignore[no-untyped-def]
    cons = Constraints(max_retries=2, window_hours=100, min_gap_hours=30, quiet_hours=(22, 7))
    r = play(RandomPolicy(3), world, charges, cons, seed=4)
    assert (r.charges["retries"] <= 2).all()
    retries = r.attempts[~r.attempts["attempt_id"].str.endswith("_a0")]
    first = r.charges.set_index("charge_id")["first_failed_at"]
    gap = retries["attempted_at"].to_numpy() - first.reindex(retries["charge_id"]).to_numpy()
    assert (gap >= np.timedelta64(30, "h")).all()
    assert (gap <= np.timedelta64(100, "h")).all()
    pos = world.positions(retries["charge_id"].to_numpy(dtype=object))
    hod = world.local_hour_of_day(pos, world.to_hours(retries["attempted_at"])[:, None])[:, 0]
    assert not ((hod >= 22) | (hod < 7 - 1e-6)).any()
    assert retries["retry_propensity"].between(0, 1).all()


def test_play_rejects_charges_that_did_not_fail(world) -> None:  # type: ignore[no-untyped-def]
    ok = world.truth.loc[~world.truth["first_failed"], "charge_id"].iloc[:2].to_numpy()
    with pytest.raises(ValueError, match="first attempt failed"):
        play(FixedSchedulePolicy(), world, ok, Constraints(), seed=0)
