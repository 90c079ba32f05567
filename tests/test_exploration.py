"""Safe exploration (serving.policies.explore): the draw, the planner with it, the service.

The planner is driven by the same hand-made success curves as ``test_policy``; the service
tests run a real trained bundle over real HTTP with a SQLite store.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_policy import CurveModel, _decide
from test_rules import CARD, FAIL, T0, Z, request

from retryopt.features.decisions import Constraints
from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.policies import GreedyPolicy, PlannerConfig, PlannerPolicy
from retryopt.serving.policies.explore import (
    DEFAULT_EXPLORATION_SHARE,
    DEFAULT_EXPLORATION_TOLERANCE,
    near_best_draw,
    scheme,
    state_uniforms,
)
from retryopt.serving.schemas import to_batch
from retryopt.serving.settings import Settings
from retryopt.serving.store import open_store
from retryopt.training.backtest.specs import SpecError, parse_spec

EXPLORING = PlannerConfig(exploration_tolerance=0.05, exploration_share=1.0)


def flat(hours: np.ndarray) -> np.ndarray:
    """The same 0.3 at every hour: every allowed time ties."""
    return np.full(hours.shape, 0.3)


def wavy(hours: np.ndarray) -> np.ndarray:
    """A daily wave: a handful of hours each day come within a few percent of the peak."""
    return 0.3 + 0.05 * np.cos(2 * np.pi * hours / 24.0)


# ---- the draw ----------------------------------------------------------------------------


def test_without_tolerance_the_draw_is_the_argmax() -> None:
    values = np.array([[1.0, 3.0, 3.0, -np.inf], [0.5, 0.2, 0.1, 0.0]])
    chosen, prop = near_best_draw(values, np.array([0.9, 0.9]), 0.0)
    assert chosen.tolist() == [1, 0] and prop.tolist() == [1.0, 1.0]


def test_a_stop_is_never_explored() -> None:
    values = np.array([[-0.2, -0.1, -0.1], [-np.inf, -np.inf, -np.inf], [0.0, 0.0, 0.0]])
    chosen, prop = near_best_draw(values, np.array([0.99, 0.5, 0.7]), 0.5)
    assert chosen.tolist() == [1, 0, 0] and prop.tolist() == [1.0, 1.0, 1.0]


def test_the_draw_is_uniform_over_the_near_best_times() -> None:
    values = np.array([[10.0, 9.9, 5.0, 9.85, -np.inf, 9.95]])
    u = (np.arange(4000) + 0.5) / 4000
    picks = Counter(
        int(near_best_draw(values, np.array([x]), 0.02)[0][0]) for x in u
    )  # near set: 0, 1, 3, 5 (>= 9.8)
    assert set(picks) == {0, 1, 3, 5}
    assert all(count == 1000 for count in picks.values())
    assert near_best_draw(values, np.array([0.1]), 0.02)[1][0] == 0.25


def test_a_share_keeps_the_rest_on_the_best_time() -> None:
    """share 0.4: 60 % the best, 40 % uniform over the 4 near-best times (best included)."""
    values = np.array([[10.0, 9.9, 5.0, 9.85, -np.inf, 9.95]])
    u = (np.arange(4000) + 0.5) / 4000
    draws = [near_best_draw(values, np.array([x]), 0.02, 0.4) for x in u]
    picks = Counter(int(d[0][0]) for d in draws)
    assert picks == {0: 2800, 1: 400, 3: 400, 5: 400}
    props = {int(d[0][0]): float(d[1][0]) for d in draws}
    assert props[0] == pytest.approx(0.6 + 0.1) and props[1] == pytest.approx(0.1)
    # the empirical frequency of every time is its reported propensity
    assert all(picks[j] / 4000 == pytest.approx(props[j]) for j in picks)


@given(
    arrays(np.float64, (5, 12), elements=st.floats(-5, 20, allow_nan=False)),
    arrays(np.bool_, (5, 12)),
    st.floats(0.0, 0.5),
    st.floats(0.0, 1.0),
    st.lists(st.floats(0.0, 0.999), min_size=5, max_size=5),
)
def test_the_draw_keeps_to_allowed_near_best_times(
    raw: np.ndarray, allowed: np.ndarray, tolerance: float, share: float, u: list[float]
) -> None:
    values = np.where(allowed, raw, -np.inf)
    chosen, prop = near_best_draw(values, np.array(u), tolerance, share)
    best = values.max(axis=1)
    for i in range(5):
        v = values[i, chosen[i]]
        if not np.isfinite(best[i]) or best[i] <= 0:
            assert prop[i] == 1.0  # a stop: the argmax, never a draw
            continue
        assert allowed[i, chosen[i]] and v >= best[i] * (1 - tolerance)
        near = int((values[i] >= best[i] * (1 - tolerance)).sum())
        is_best = chosen[i] == int(np.argmax(values[i]))
        expected = share / near + (1 - share) * is_best if tolerance > 0 and share > 0 else 1.0
        expected = 1.0 if near == 1 else expected
        assert prop[i] == pytest.approx(expected)


def test_state_uniforms_are_reproducible_and_spread() -> None:
    ids = [f"ch_{i}" for i in range(2000)]
    a = state_uniforms(ids, [1] * 2000, [7] * 2000)
    assert np.array_equal(a, state_uniforms(ids, [1] * 2000, [7] * 2000))
    assert not np.array_equal(a, state_uniforms(ids, [2] * 2000, [7] * 2000))
    assert not np.array_equal(a, state_uniforms(ids, [1] * 2000, [7] * 2000, seed=1))
    assert ((a >= 0) & (a < 1)).all()
    # uniform: each decile holds about a tenth (binomial sd ~ 13 of 200)
    assert np.all(np.abs(np.histogram(a, bins=10, range=(0, 1))[0] - 200) < 70)


def test_scheme_names_its_parameters() -> None:
    assert scheme(0.0, 0.3) == "none" and scheme(0.05, 0.0) == "none"
    assert scheme(0.05, 0.3) == "near_best:share=0.3,tolerance=0.05"
    with pytest.raises(ValueError, match="exploration tolerance"):
        PlannerConfig(exploration_tolerance=1.0)
    with pytest.raises(ValueError, match="exploration share"):
        PlannerConfig(exploration_share=1.5)


def test_the_exploring_policy_has_a_backtest_spec() -> None:
    spec = parse_spec("model:models/v1@explore=0.3,0.02")
    assert spec.label == "model+explore" and spec.explore == (0.3, 0.02)
    assert parse_spec("greedy:m@explore=1,0.05").explore == (1.0, 0.05)
    for bad in ("model:m@explore=0.3", "model:m@explore=0,0.02", "model:m@explore=0.3,1"):
        with pytest.raises(SpecError, match="explore="):
            parse_spec(bad)


# ---- the planner with exploration -------------------------------------------------------


def test_the_planner_explores_within_the_rules() -> None:
    """Ties everywhere: the draw spreads over the allowed times and keeps quiet hours."""
    model = CurveModel(flat)
    cons = Constraints(quiet_hours=(22, 7), max_retries=4)
    times = set()
    for k in range(30):
        req = request([(Z, FAIL, "insufficient_funds", None)])
        req = req.model_copy(
            update={"charge": req.charge.model_copy(update={"charge_id": f"ch_{k}"})}
        )
        d = _decide(PlannerPolicy(model, config=EXPLORING), req, cons)
        assert d.action == "retry" and d.retry_at is not None
        assert d.exploration == "near_best:share=1,tolerance=0.05" and 0 < d.propensity < 1
        local = d.retry_at.tz_convert("America/New_York")
        assert 7 <= local.hour < 22  # quiet hours hold
        times.add(d.retry_at)
    assert len(times) > 10


def test_the_same_state_draws_the_same_time() -> None:
    model = CurveModel(wavy)
    req = request([(Z, FAIL, "insufficient_funds", None)])
    policy = PlannerPolicy(model, config=EXPLORING)
    first = _decide(policy, req, Constraints())
    again = _decide(policy, req, Constraints())
    later = _decide(policy, req.model_copy(update={"now": req.now}), Constraints())
    assert first.retry_at == again.retry_at == later.retry_at
    assert first.propensity == again.propensity < 1


def test_exploration_never_retries_a_hard_decline_nor_waives_advice_waits() -> None:
    model = CurveModel(flat)
    policy = PlannerPolicy(model, config=EXPLORING)
    hard = _decide(policy, request([(Z, FAIL, "stolen_card", None)]), Constraints())
    assert hard.action == "stop" and hard.propensity == 1.0
    # Mastercard advice code 25: retry after 24 hours (domain rule)
    req = request([(Z, FAIL, "insufficient_funds", "25")], card={**CARD, "brand": "mastercard"})
    waits = [
        _decide(
            PlannerPolicy(
                model,
                config=PlannerConfig(
                    exploration_tolerance=0.5, exploration_share=1.0, exploration_seed=s
                ),
            ),
            req,
            Constraints(),
        )
        for s in range(10)
    ]
    assert len({w.retry_at for w in waits}) > 1  # it does explore here
    for w in waits:
        assert w.retry_at is not None and w.propensity < 1
        assert w.retry_at >= T0 + timedelta(hours=24)


def test_decide_reports_the_propensities() -> None:
    """``decide`` (what play and the backtests call) carries the drawn propensities."""
    model = CurveModel(wavy)
    reqs = []
    for k in range(8):
        r = request([(Z, FAIL, "insufficient_funds", None)])
        reqs.append(
            r.model_copy(update={"charge": r.charge.model_copy(update={"charge_id": f"c{k}"})})
        )
    prep = to_batch(reqs, nows=[r.now or T0 for r in reqs], constraints=Constraints())
    for policy in (PlannerPolicy(model, config=EXPLORING), GreedyPolicy(model, config=EXPLORING)):
        out = policy.decide(prep.batch)
        assert (out.propensity < 1).all() and (out.propensity > 0).all()
    plain = PlannerPolicy(model).decide(prep.batch)
    assert (plain.propensity == 1).all()


# ---- the service -------------------------------------------------------------------------


def test_the_service_explores_by_default_and_logs_the_propensity(
    trained_bundle: Path, tmp_path: Path
) -> None:
    assert Settings().exploration_tolerance == DEFAULT_EXPLORATION_TOLERANCE > 0
    assert Settings().exploration_share == DEFAULT_EXPLORATION_SHARE > 0
    url = f"sqlite:///{tmp_path / 'store.db'}"
    body: dict[str, Any] = {
        "charge": {
            "charge_id": "ch_explore",
            "customer_id": "cus_1",
            "amount": 4900,
            "currency": "usd",
            "card": CARD,
            "customer_timezone": "America/Chicago",
        },
        "attempts": [
            {
                "attempted_at": "2026-03-02T15:00:00Z",
                "outcome": "failed",
                "decline_code": "insufficient_funds",
            }
        ],
        "now": "2026-03-02T15:01:00Z",
    }
    app = create_app(Settings(model=str(trained_bundle), store_url=url))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        answers = []
        for k in range(12):
            b = {**body, "charge": {**body["charge"], "charge_id": f"ch_{k}"}}
            answers.append(client.post("/v1/retry-decisions", json=b).json())
        repeat = client.post(
            "/v1/retry-decisions", json={**body, "charge": {**body["charge"], "charge_id": "ch_0"}}
        ).json()
    assert all("action" in a for a in answers), answers[0]
    retries = [a for a in answers if a["action"] == "retry"]
    assert retries and all(
        a["exploration"] == "near_best:share=0.3,tolerance=0.02" for a in retries
    )
    assert all(0 < a["propensity"] <= 1 for a in retries)
    assert any(a["propensity"] < 1 for a in retries)
    assert repeat["decision_id"] == answers[0]["decision_id"]
    assert repeat["retry_at"] == answers[0]["retry_at"]
    logged = {d.decision_id: d for d in open_store(url).logged_decisions()}
    for a in answers:
        assert logged[a["decision_id"]].propensity == a["propensity"]
        assert logged[a["decision_id"]].exploration == a["exploration"]
