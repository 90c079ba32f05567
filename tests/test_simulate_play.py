"""Playing policies on the world: oracle vs fixed schedule, common random numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retryopt.features import contract as c
from retryopt.features.decisions import Constraints, DecisionBatch, PolicyDecisions, RetryPolicy
from retryopt.serving.policies import FixedSchedule, Reason, UniformRandom
from retryopt.training.simulate import (
    LoggingPolicy,
    OraclePolicy,
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
    for p in (FixedSchedule(), UniformRandom(1), OraclePolicy(world)):
        assert isinstance(p, RetryPolicy)


def test_oracle_beats_fixed_schedule_on_the_same_charges(world, charges) -> None:  # type: ignore[no-untyped-def]
    cons = Constraints(max_retries=4, window_hours=504)
    fixed = play(FixedSchedule(), world, charges, cons, seed=3)
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
    a = play(UniformRandom(7), world, charges, cons, seed=1)
    b = play(UniformRandom(7), world, charges, cons, seed=1)
    pd.testing.assert_frame_equal(a.charges, b.charges)
    pd.testing.assert_frame_equal(a.attempts, b.attempts)
    c = play(UniformRandom(7), world, charges, cons, seed=2)
    assert not a.charges["recovered"].equals(c.charges["recovered"])


class Replay:
    """Retries every charge at the times of another play (a second policy class)."""

    name = "replay"

    def __init__(self, attempts: pd.DataFrame) -> None:
        retries = attempts[~attempts[c.ATTEMPT_ID].str.endswith("_a0")]
        retries = retries.sort_values([c.CHARGE_ID, c.ATTEMPTED_AT])
        self.times = {
            cid: g.dt.tz_localize(None).to_numpy("datetime64[ns]")
            for cid, g in retries.groupby(c.CHARGE_ID)[c.ATTEMPTED_AT]
        }

    def decide(self, batch: DecisionBatch) -> PolicyDecisions:
        done = batch.attempts.groupby(c.CHARGE_ID).size()
        at = np.full(len(batch.charge_ids), np.datetime64("NaT", "ns"))
        for i, cid in enumerate(batch.charge_ids):
            times, k = self.times.get(cid, ()), int(done.get(cid, 1)) - 1
            if k < len(times):
                at[i] = times[k]
        n = len(at)
        return PolicyDecisions(
            retry_at=at, propensity=np.ones(n), reason=np.full(n, "replay", dtype=object)
        )


def test_common_random_numbers_same_times_same_luck(world, charges) -> None:  # type: ignore[no-untyped-def]
    """The same retry times chosen by two policy classes give identical outcomes."""
    cfg = world.config.logging_policy
    fixed_cfg = type(cfg)(**{**cfg.__dict__, "mode": "fixed"})
    cons = Constraints()
    a = play(LoggingPolicy(fixed_cfg, seed=0), world, charges, cons, seed=9)
    b = play(Replay(a.attempts), world, charges, cons, seed=9)
    np.testing.assert_array_equal(a.charges["recovered"], b.charges["recovered"])
    pd.testing.assert_frame_equal(a.attempts, b.attempts)
    # The fixed-schedule baseline plays the same schedule under the network rules: a retry at the
    # first allowed whole hour at or after the logging policy's time, and no retry where the
    # rules stop (the logging policy ignores decline codes).
    fixed = play(FixedSchedule(cfg.schedule_hours), world, charges, cons, seed=9)
    first = {
        name: p.attempts[p.attempts[c.ATTEMPT_ID].str.endswith("_p1")].set_index(c.CHARGE_ID)[
            c.ATTEMPTED_AT
        ]
        for name, p in (("logging", a), ("fixed", fixed))
    }
    both = first["fixed"].index.intersection(first["logging"].index)
    assert len(both) > 0.8 * len(charges)
    late = (first["fixed"][both] - first["logging"][both]).dt.total_seconds()
    assert (late >= -1).all()  # the world's times are rounded to the second
    assert (late < 3600).mean() > 0.95
    never = fixed.charges.set_index("charge_id").loc[
        first["logging"].index.difference(first["fixed"].index), "stop_reason"
    ]
    rule_stops = {
        Reason.HARD_DECLINE,
        Reason.NETWORK_DO_NOT_RETRY,
        Reason.NEVER_RETRY_CODE,
        Reason.UPDATE_PAYMENT_METHOD,
        Reason.CUSTOMER_AUTHENTICATION,
    }
    assert set(never) <= rule_stops
    # ... and the play result does not depend on which other charges are played.
    part = play(FixedSchedule(cfg.schedule_hours), world, charges[:100], cons, seed=9)
    np.testing.assert_array_equal(part.charges["recovered"], fixed.charges["recovered"][:100])


def test_constraints_are_enforced(world, charges) -> None:  # type: ignore[no-untyped-def]
    cons = Constraints(max_retries=2, window_hours=100, min_gap_hours=30, quiet_hours=(22, 7))
    r = play(UniformRandom(3), world, charges, cons, seed=4)
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
        play(FixedSchedule(), world, ok, Constraints(), seed=0)


def _objective_value(result, objective) -> float:  # type: ignore[no-untyped-def]
    """Mean discounted value net of attempt costs per failed charge of a play."""
    ch = result.charges
    amount = objective.amounts(ch["amount"].to_numpy(), ch["currency"].to_numpy())
    days = ch["hours_to_recovery"].to_numpy(dtype=np.float64) / 24.0
    collected = np.where(ch["recovered"].to_numpy(dtype=bool), amount, 0.0)
    value = collected * objective.discount(np.nan_to_num(days)) - (
        objective.cost_per_attempt * ch["retries"].to_numpy(dtype=np.float64)
    )
    return float(value.mean())


def test_oracle_plans_under_the_objective(world, charges) -> None:  # type: ignore[no-untyped-def]
    from retryopt.features.objective import FREE_OBJECTIVE, Objective

    costly = Constraints(objective=Objective(cost_per_attempt=1e6))
    none = play(OraclePolicy(world), world, charges[:200], costly, seed=3)
    assert (none.charges["retries"] == 0).all()  # no retry is worth a million dollars

    cons = Constraints()  # the default objective: costs and discounting
    oracle = play(OraclePolicy(world), world, charges, cons, seed=3)
    fixed = play(FixedSchedule(), world, charges, cons, seed=3)
    free = play(OraclePolicy(world), world, charges, Constraints(objective=FREE_OBJECTIVE), seed=3)
    objective = cons.objective
    assert _objective_value(oracle, objective) > _objective_value(fixed, objective)
    # Discounting makes the oracle collect sooner than when waiting is free.
    assert (
        oracle.summary()["median_hours_to_recovery"] <= free.summary()["median_hours_to_recovery"]
    )


def test_dunning_world_makes_waiting_costly() -> None:
    config = WorldConfig().replace(
        dunning={"enabled": True, "spend_down_per_day": 0.15, "cancel_hazard_per_day": 0.03}
    )
    w = simulate_world(config, customers=3000, months=2, seed=5)
    ids = w.failed_charges()[:400]
    first = w.attempts.groupby("charge_id")["attempted_at"].min().loc[ids]
    t0 = first.dt.tz_convert(None).to_numpy().astype("datetime64[ns]")
    hour = np.timedelta64(3600, "s").astype("timedelta64[ns]")
    times = np.stack([t0 + 48 * hour, t0 + 400 * hour], axis=1)
    p = w.success_probability_batch(ids, t0[:, None], times)
    assert p[:, 1].mean() < p[:, 0].mean() - 0.02
    # Without dunning the same seed draws the same first month (dunning has its own generator;
    # later months differ: more unrecovered charges end more subscriptions).
    plain = simulate_world(WorldConfig(), customers=3000, months=2, seed=5)
    n0 = int((plain.truth["month"] == 0).sum())
    assert n0 == int((w.truth["month"] == 0).sum())
    np.testing.assert_array_equal(plain.charge_first_h[:n0], w.charge_first_h[:n0])
    codes = set(w.attempts["decline_code"].dropna().astype(str))
    assert "stop_payment_order" in codes
