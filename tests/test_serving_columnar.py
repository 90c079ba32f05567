"""The columnar serving path (no pandas per request) decides exactly as the DataFrame path.

- ``charge_states`` from :class:`AttemptColumns` equals ``charge_states`` from the frames;
- ``decide_detailed`` on a :class:`ColumnarBatch` (the API path) and ``decide`` on the plain
  ``DecisionBatch`` frames (backtests, ``play``) give identical decisions, for the planner, the
  greedy baseline and the fallback, on a varied random batch (hard declines, Mastercard
  advice codes, card changes, history on the same and on other cards, succeeded charges);
- the API's JSON built without pydantic equals ``DecisionOut``'s JSON;
- the performance switches are typed ``Settings`` fields.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pydantic
import pytest
from synthetic_attempts import synthetic_attempts

from retryopt.features import contract as c
from retryopt.features.decisions import Constraints
from retryopt.features.examples import build_training_examples
from retryopt.features.objective import Objective
from retryopt.features.spec import encode_features, fit_feature_spec
from retryopt.model.bundle import write_bundle
from retryopt.model.calibration import fit_calibrator
from retryopt.serving.columnar import ColumnarBatch, columns_frame
from retryopt.serving.model_store import ModelStore
from retryopt.serving.policies import FallbackPolicy, charge_states
from retryopt.serving.schemas import DecisionRequest, to_batch
from retryopt.serving.service import _decision_out, decision_json
from retryopt.serving.settings import Settings

T0 = datetime(2026, 1, 5, 8, 12, tzinfo=UTC)
CODES = (
    "insufficient_funds",
    "insufficient_funds",
    "do_not_honor",
    "generic_decline",
    "expired_card",
    "stolen_card",
    "authentication_required",
    "try_again_later",
    "some_unknown_code",
)
ADVICE = (None, None, None, "24", "25", "03", "21", "01")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (small) LightGBM bundle trained on synthetic attempts."""
    synth = synthetic_attempts(customers=200, months=4, seed=11)
    ex = build_training_examples(synth)
    spec = fit_feature_spec(ex.features, min_level_count=5)
    X = encode_features(ex.features, spec)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 20, "verbose": -1},
        lgb.Dataset(X, label=ex.label),
        num_boost_round=15,
    )
    cal = fit_calibrator(np.asarray(booster.predict(X)), ex.label, method="isotonic")
    return write_bundle(
        tmp_path_factory.mktemp("models"),
        model_text=booster.model_to_string(),
        calibrator=cal,
        feature_spec=spec,
        metrics={"auc": 0.5},
        data_fingerprint={"rows": len(synth)},
        version="v-columnar",
        code_info={"test": True},
    )


def _card(rng: np.random.Generator, brand: str) -> dict[str, Any]:
    card: dict[str, Any] = {
        "brand": brand,
        "funding": str(rng.choice(["debit", "credit", "prepaid"])),
        "country": str(rng.choice(["US", "GB", "FR"])),
        "added_at": "2024-03-02T10:00:00Z",
        "exp_month": int(rng.integers(1, 13)),
        "exp_year": 2028,
    }
    if rng.random() < 0.5:
        card["card_id"] = f"card_{int(rng.integers(0, 3))}"
    return card


def _random_request(i: int, rng: np.random.Generator) -> DecisionRequest:
    brand = ("visa", "mastercard", "amex")[i % 3]
    card = _card(rng, brand)
    n = int(rng.integers(1, 5))
    attempts: list[dict[str, Any]] = []
    t = T0 - timedelta(hours=float(rng.integers(0, 200)))
    for k in range(n):
        row: dict[str, Any] = {
            "attempted_at": t.isoformat(),
            "outcome": "failed",
            "decline_code": str(rng.choice(CODES)),
            "network_advice_code": (
                None if brand != "mastercard" else ADVICE[int(rng.integers(len(ADVICE)))]
            ),
        }
        if k < n - 1 and rng.random() < 0.2:
            row["card"] = _card(rng, brand)  # an earlier attempt on another card
        attempts.append(row)
        t += timedelta(hours=float(rng.integers(1, 50)))
    if rng.random() < 0.05:
        attempts[-1] = {"attempted_at": attempts[-1]["attempted_at"], "outcome": "succeeded"}
    history = []
    for k in range(int(rng.integers(0, 30))):
        row = {
            "charge_id": f"old_{i % 5}_{k // 3}",
            "attempted_at": (T0 - timedelta(hours=float(rng.integers(1, 900)))).isoformat(),
            "outcome": str(rng.choice(["failed", "failed", "succeeded"])),
            "decline_code": "insufficient_funds",
        }
        if rng.random() < 0.3:
            row["card_id"] = f"card_{int(rng.integers(0, 3))}"
        history.append(row)
    last = datetime.fromisoformat(attempts[-1]["attempted_at"])
    body = {
        "charge": {
            "charge_id": f"ch_{i}",
            "customer_id": f"cus_{i % 5}",
            "amount": int(rng.integers(100, 50_000)),
            "currency": "usd",
            "card": card,
            "customer_timezone": (None, "America/New_York", "Europe/Paris")[i % 3],
        },
        "attempts": attempts,
        "customer_history": history or None,
        "now": (max(last, T0) + timedelta(minutes=float(rng.integers(1, 120)))).isoformat(),
    }
    return DecisionRequest.model_validate(body)


def _batch(n: int, seed: int, cons: Constraints) -> Any:
    rng = np.random.default_rng(seed)
    reqs = [_random_request(i, rng) for i in range(n)]
    return to_batch(reqs, nows=[r.now for r in reqs], constraints=cons)  # type: ignore[misc]


def test_charge_states_from_columns_equal_frames() -> None:
    prep = _batch(60, seed=1, cons=Constraints())
    frames = prep.batch.to_frames()
    assert not isinstance(frames, ColumnarBatch)
    fast = charge_states(prep.batch, current_cards=prep.current_cards, columns=prep.columns)
    slow = charge_states(frames, current_cards=prep.current_cards)
    assert len(fast) == len(slow) == 60
    for a, b in zip(fast, slow, strict=True):
        for name in ("charge_id", "outcomes", "decline_codes", "advice_codes", "cards"):
            assert getattr(a, name) == getattr(b, name), name
        assert a.current_card == b.current_card and a.timezone == b.timezone
        assert a.now == b.now
        np.testing.assert_array_equal(a.attempt_times, b.attempt_times)
        # Card events may come in another order; the rules only count them.
        ka = sorted(
            zip(
                a.card_event_times.tolist(), a.card_event_failed, a.card_event_is_retry, strict=True
            )
        )
        kb = sorted(
            zip(
                b.card_event_times.tolist(), b.card_event_failed, b.card_event_is_retry, strict=True
            )
        )
        assert ka == kb
    assert any(s.card_event_times.size > len(s.outcomes) for s in fast)  # history was used


@pytest.mark.parametrize(
    "cons",
    [Constraints(), Constraints(max_retries=1, objective=Objective(daily_cancel_hazard=0.01))],
)
def test_columnar_decisions_equal_frame_decisions(bundle_dir: Path, cons: Constraints) -> None:
    loaded = ModelStore(location=str(bundle_dir)).load()
    prep = _batch(50, seed=2, cons=cons)
    frames = prep.batch.to_frames()
    reasons = set()
    for policy in (loaded.planner, loaded.greedy, FallbackPolicy()):
        fast = policy.decide_detailed(
            prep.batch, current_cards=prep.current_cards, columns=prep.columns
        )
        slow = policy.decide_detailed(frames, current_cards=prep.current_cards)
        assert fast == slow
        via_protocol = policy.decide(frames, current_cards=prep.current_cards)
        np.testing.assert_array_equal(
            via_protocol.retry_at,
            np.array(
                [
                    np.datetime64("NaT", "ns")
                    if d.retry_at is None
                    else d.retry_at.tz_localize(None).to_datetime64()
                    for d in fast
                ],
                dtype="datetime64[ns]",
            ),
        )
        assert via_protocol.reason.tolist() == [d.reason for d in fast]
        reasons |= {d.reason for d in fast}
    # The batch mixes stops and retries (so the sub-batch selection is exercised).
    assert "model_optimum" in reasons and len(reasons) >= 4


def test_columnar_batch_frames_are_canonical() -> None:
    prep = _batch(8, seed=3, cons=Constraints())
    batch = prep.batch
    frame = batch.attempts
    assert list(frame.columns) == list(c.ALL_COLUMNS)
    assert str(frame[c.ATTEMPTED_AT].dtype) == "datetime64[ns, UTC]"
    assert frame[c.AMOUNT].dtype == np.int64
    assert pd.api.types.is_string_dtype(frame[c.CHARGE_ID])
    assert frame[c.RETRY_PROPENSITY].isna().all()
    assert batch.attempts is frame  # built once
    back = columns_frame(prep.columns[0])
    pd.testing.assert_frame_equal(back, frame)
    sub = batch.select(np.arange(8) % 2 == 0)
    assert sub.charge_ids.tolist() == batch.charge_ids[::2].tolist()
    assert set(sub.attempts[c.CHARGE_ID]) == set(sub.charge_ids.tolist())


def test_decision_json_equals_response_model(bundle_dir: Path) -> None:
    loaded = ModelStore(location=str(bundle_dir)).load()
    prep = _batch(30, seed=4, cons=Constraints())
    decisions = loaded.planner.decide_detailed(
        prep.batch, current_cards=prep.current_cards, columns=prep.columns
    )
    assert any(d.alternatives for d in decisions)
    for d in decisions:
        assert decision_json(d) == _decision_out(d).model_dump(mode="json")


def test_performance_switches_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETRYOPT_ENGINE", raising=False)
    monkeypatch.delenv("RETRYOPT_PLANNER_SEARCH", raising=False)
    s = Settings()
    assert (s.engine, s.planner_search) == ("lleaves", "hourly")
    assert s.planning_gap_hours == 24.0
    monkeypatch.setenv("RETRYOPT_ENGINE", " LightGBM ")
    assert Settings().engine == "lightgbm"
    monkeypatch.setenv("RETRYOPT_ENGINE", " LLeaves ")
    monkeypatch.setenv("RETRYOPT_PLANNER_SEARCH", "COARSE")
    s = Settings()
    assert (s.engine, s.planner_search) == ("lleaves", "coarse")
    monkeypatch.setenv("RETRYOPT_ENGINE", "xgboost")
    with pytest.raises(pydantic.ValidationError, match="engine"):
        Settings()
