"""Direction of each mechanism, read from the ground-truth API of a small world."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retryopt.training.simulate import WorldConfig, simulate_world
from retryopt.training.simulate.truth import MECHANISMS, failure_probabilities, history_features

M = {m: i for i, m in enumerate(MECHANISMS)}


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    # Updater mostly after expiry so that expired-card declines are common.
    cfg = WorldConfig().replace(expiry={"updater_delay_mean_days": 6.0, "updater_coverage": 0.95})
    return simulate_world(cfg, customers=6000, months=3, seed=21)


def _failed(world, code: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    t = world.truth
    return np.flatnonzero((t["first_decline_code"] == code).to_numpy())


def test_success_after_payday_beats_before(world) -> None:  # type: ignore[no-untyped-def]
    pos = _failed(world, "insufficient_funds")
    assert pos.size > 50
    t0 = world.charge_first_h[pos][:, None]
    payday = t0 + world.hours_to_next_payday(pos, t0)
    times = np.hstack([payday - 3.0, payday + 3.0])
    prev = t0
    fail = world.failure_probabilities_hours(pos, prev, times)
    assert (fail[M["funds"], :, 1] < fail[M["funds"], :, 0]).all()
    p = world.success_probability_hours(pos, prev, times)
    assert p[:, 1].mean() > p[:, 0].mean() + 0.05
    flat = world.config.replace(pay_cycle={"enabled": False})
    f2 = failure_probabilities(
        flat, world.tables, world.state.take(pos), times, history_features(prev, times)
    )
    np.testing.assert_allclose(f2[M["funds"], :, 0], f2[M["funds"], :, 1])


def test_hard_declines_never_succeed(world) -> None:  # type: ignore[no-untyped-def]
    hard = np.flatnonzero(world.truth["hard_decline_code"].notna().to_numpy())
    assert hard.size > 0
    t0 = world.charge_first_h[hard][:, None]
    times = t0 + np.arange(0, 24 * 60, 1.0)[None, :]
    assert (world.success_probability_hours(hard, t0, times) == 0).all()
    cid = world.charge_ids[hard[0]]
    p = world.success_probability(cid, None, pd.date_range("2025-01-01", periods=50, freq="7h"))
    assert (p == 0).all()


def test_expired_card_succeeds_only_after_the_updater(world) -> None:  # type: ignore[no-untyped-def]
    pos = _failed(world, "expired_card")
    upd = world.state.replace_h[pos]
    pos, upd = pos[np.isfinite(upd)], upd[np.isfinite(upd)]
    assert pos.size > 5
    t0 = world.charge_first_h[pos][:, None]
    before = world.success_probability_hours(pos, t0, np.hstack([upd[:, None] - 1.0, t0 + 0.5]))
    assert (before == 0).all()
    after = world.success_probability_hours(pos, t0, upd[:, None] + 1.0)
    assert (after > 0).mean() > 0.9
    # The replaced card has a new id and a reset card age in the contract rows.
    rows = world.contract_rows(
        pos,
        np.ones(pos.size, dtype=np.int64),
        upd + 1.0,
        np.ones(pos.size, dtype=bool),
        np.full(pos.size, -1),
        np.full(pos.size, -1),
        np.ones(pos.size),
        prefix="x",
    )
    assert rows["card_id"].str.endswith("b").all()
    assert (rows["attempted_at"] - rows["card_added_at"]).max() < pd.Timedelta(hours=2)


def test_issuer_night_maintenance_lowers_success(world) -> None:  # type: ignore[no-untyped-def]
    pos = np.arange(400)
    t0 = world.charge_first_h[pos][:, None]
    start = world.tables.issuer_maint_start[world.state.issuer[pos]]
    hod = world.local_hour_of_day(pos, t0)[:, 0]
    t_in = t0[:, 0] + np.mod(start + 0.5 - hod, 24.0)
    t_out = t_in + 12.0
    fail = world.failure_probabilities_hours(pos, np.full((400, 1), np.nan), np.c_[t_in, t_out])
    assert (fail[M["maintenance"], :, 0] > 0).all() and (fail[M["maintenance"], :, 1] == 0).all()
    p = world.success_probability_hours(pos, np.full((400, 1), np.nan), np.c_[t_in, t_out])
    assert p[:, 0].mean() < p[:, 1].mean() - 0.3


def test_more_failures_and_short_gaps_lower_success(world) -> None:  # type: ignore[no-untyped-def]
    pos = _failed(world, "do_not_honor")[:200]
    t0 = world.charge_first_h[pos]
    t = (t0 + 200.0)[:, None]
    one = world.success_probability_hours(pos, t0[:, None], t)
    three = world.success_probability_hours(pos, np.c_[t0, t0 + 50, t0 + 100], t)
    assert (three <= one + 1e-12).all() and three.mean() < one.mean()
    short = world.success_probability_hours(pos, np.c_[t0, t[:, 0] - 0.5], t)
    long = world.success_probability_hours(pos, np.c_[t0, t[:, 0] - 72.0], t)
    assert (short <= long + 1e-12).all() and short.mean() < long.mean()


def test_velocity_block(world) -> None:  # type: ignore[no-untyped-def]
    cid = world.charge_ids[0]
    t = pd.Timestamp(world.truth["first_attempt_at"].iloc[0]) + pd.Timedelta(days=2)
    burst = [t - pd.Timedelta(hours=h) for h in (2, 5, 9)]
    spread = [t - pd.Timedelta(hours=h) for h in (30, 50, 70)]
    mb = world.mechanism_probabilities(cid, burst, [t])
    ms = world.mechanism_probabilities(cid, spread, [t])
    assert mb["velocity"].iloc[0] == pytest.approx(0.9) and ms["velocity"].iloc[0] == 0.0
    off = simulate_world(
        world.config.replace(velocity={"enabled": False}), customers=100, months=1, seed=1
    )
    cid2 = off.charge_ids[0]
    t2 = pd.Timestamp(off.truth["first_attempt_at"].iloc[0]) + pd.Timedelta(days=2)
    burst2 = [t2 - pd.Timedelta(hours=h) for h in (2, 5, 9)]
    assert off.mechanism_probabilities(cid2, burst2, [t2])["velocity"].iloc[0] == 0.0


def test_single_charge_api_and_sampling(world) -> None:  # type: ignore[no-untyped-def]
    cid = world.failed_charges()[0]
    row = world.attempts[world.attempts["charge_id"] == cid].iloc[:1]
    times = row["attempted_at"].iloc[0] + pd.to_timedelta(np.arange(1, 100), unit="h")
    p = world.success_probability(cid, row, times)
    assert p.shape == (99,) and ((p >= 0) & (p <= 1)).all()
    a = world.sample_outcome(cid, row, times[10], seed=5)
    b = world.sample_outcome(cid, row, times[10], seed=5)
    assert a == b and a.probability == pytest.approx(p[10])
    assert a.succeeded or a.decline_code is not None
    with pytest.raises(KeyError, match="unknown charge_id"):
        world.success_probability("ch_nope", None, times)
