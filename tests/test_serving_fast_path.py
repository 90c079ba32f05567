"""The serving fast path gives the same answers as the reference path.

- the frame path's matrix (``feature_reference.encode_candidate_matrix``, optionally from
  ``AttemptColumns``) equals ``encode_features(build_candidate_features(...))`` on random
  decisions, and ``CandidateEncoder`` rows equal it;
- the fast scoring path (and the lleaves engine, when installed) reproduces
  ``bundle.predict_proba`` on the pandas frame;
- the coarse-to-fine planner picks a time whose planned value is within 2 % of the hourly
  optimum on realistic charges;
- a real ``retryopt serve`` subprocess reloads a new model version on SIGHUP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from feature_reference import encode_candidate_matrix
from synthetic_attempts import synthetic_attempts

from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import Constraints, DecisionBatch
from retryopt.features.encoder import CandidateEncoder
from retryopt.features.examples import build_training_examples
from retryopt.features.objective import Objective
from retryopt.features.online import build_candidate_features
from retryopt.features.spec import encode_features, fit_feature_spec
from retryopt.model.bundle import load_bundle, write_bundle
from retryopt.model.calibration import fit_calibrator
from retryopt.serving.app import performance_options
from retryopt.serving.model_store import ModelStore
from retryopt.serving.policies import BundleSuccessModel, Decision, PlannerConfig, PlannerPolicy
from retryopt.serving.policies.explain import _alternative_picks, _pick_alternatives
from retryopt.serving.schemas import DecisionRequest, to_batch

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 5, 8, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def synth() -> pd.DataFrame:
    return synthetic_attempts(customers=300, months=6, seed=3)


@pytest.fixture(scope="module")
def bundle_dir(synth: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (small) LightGBM bundle trained on synthetic attempts."""
    ex = build_training_examples(synth)
    spec = fit_feature_spec(ex.features, min_level_count=5)
    X = encode_features(ex.features, spec)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 20, "verbose": -1},
        lgb.Dataset(X, label=ex.label),
        num_boost_round=40,
    )
    raw = np.asarray(booster.predict(X), dtype=np.float64)
    cal = fit_calibrator(raw, ex.label, method="isotonic")
    out = tmp_path_factory.mktemp("models")
    return write_bundle(
        out,
        model_text=booster.model_to_string(),
        calibrator=cal,
        feature_spec=spec,
        metrics={"auc": 0.5},
        data_fingerprint={"rows": len(synth)},
        version="v1",
        code_info={"test": True},
    )


def _decisions(synth: pd.DataFrame, n: int, seed: int) -> list[tuple[DecisionBatch, np.ndarray]]:
    ex = build_training_examples(synth)
    rng = np.random.default_rng(seed)
    out = []
    groups = synth.groupby("customer_id", sort=False)
    for i in rng.choice(len(ex.label), size=n, replace=False).tolist():
        m = ex.meta.iloc[i]
        g = groups.get_group(m["customer_id"])
        now = m["decision_time"]
        own = g[(g["charge_id"] == m["charge_id"]) & (g["attempted_at"] <= now)]
        hist = g[g["charge_id"] != m["charge_id"]]
        now64 = now.tz_localize(None).to_datetime64().astype("datetime64[ns]")
        batch = DecisionBatch(
            charge_ids=np.array([m["charge_id"]], dtype=object),
            now=np.array([now64]),
            attempts=own.reset_index(drop=True),
            history=hist.reset_index(drop=True),
        )
        cand = (now64 + np.arange(1, 169) * np.timedelta64(1, "h")).reshape(1, -1)
        out.append((batch, cand))
    return out


def _codes_matrix(frame: pd.DataFrame) -> np.ndarray:
    out = np.empty(frame.shape, dtype=np.float64)
    for j, name in enumerate(frame.columns):
        col = frame[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            out[:, j] = col.cat.codes.to_numpy()
        else:
            out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def test_matrix_equals_two_step_encoding(synth: pd.DataFrame) -> None:
    ex = build_training_examples(synth)
    spec = fit_feature_spec(ex.features, min_level_count=5)
    for batch, cand in _decisions(synth, 40, seed=1):
        ref = _codes_matrix(encode_features(build_candidate_features(batch, cand), spec))
        fast = encode_candidate_matrix(batch, cand, spec)
        np.testing.assert_array_equal(fast, ref)
        assert batch.history is not None
        cols = encode_candidate_matrix(
            batch,
            cand,
            spec,
            attempts=AttemptColumns.from_frame(batch.attempts),
            history=AttemptColumns.from_frame(batch.history),
        )
        np.testing.assert_array_equal(cols, ref)


def test_attempt_columns_roundtrip_and_errors(synth: pd.DataFrame) -> None:
    head = synth.head(50).reset_index(drop=True)
    cols = AttemptColumns.from_frame(head)
    back = cols.to_frame()
    pd.testing.assert_frame_equal(back, head[list(back.columns)], check_dtype=False)
    assert len(cols.take(np.arange(50) < 10)) == 10
    with pytest.raises(ValueError, match="column 'amount' has 2 values, expected 3"):
        AttemptColumns(columns={"amount": np.zeros(2)}, n_rows=3)


def _request(i: int, *, code: str = "insufficient_funds", hours_ago: float = 0.0) -> Any:
    first = T0 - timedelta(hours=hours_ago)
    return DecisionRequest.model_validate(
        {
            "charge": {
                "charge_id": f"ch_{i}",
                "customer_id": f"cus_{i % 7}",
                "amount": 1000 + 137 * i,
                "currency": "usd",
                "card": {
                    "brand": ("visa", "mastercard", "amex")[i % 3],
                    "funding": ("debit", "credit")[i % 2],
                    "country": ("US", "GB", "FR", "DE")[i % 4],
                    "added_at": "2024-03-02T10:00:00Z",
                    "exp_month": 1 + i % 12,
                    "exp_year": 2028,
                },
                "customer_timezone": ("America/New_York", "Europe/London", None)[i % 3],
            },
            "attempts": [
                {"attempted_at": first.isoformat(), "outcome": "failed", "decline_code": code}
            ],
            "customer_history": [
                {
                    "charge_id": f"old_{i}_{k}",
                    "attempted_at": (T0 - timedelta(days=30 * k + i % 5)).isoformat(),
                    "outcome": "succeeded",
                }
                for k in range(1, 4)
            ],
            "now": (T0 + timedelta(minutes=1)).isoformat(),
        }
    )


def test_fast_scoring_matches_bundle(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    model = BundleSuccessModel(bundle)
    slow = BundleSuccessModel(bundle, fast_path=False)
    reqs = [_request(i) for i in range(6)]
    prep = to_batch(reqs, nows=[r.now for r in reqs], constraints=Constraints())
    grid = np.datetime64("2026-01-05T09:00", "ns") + np.arange(200) * np.timedelta64(1, "h")
    grid = np.tile(grid, (6, 1))
    grid[2, 150:] = np.datetime64("NaT")
    assert prep.columns is not None
    fast = model.predict_candidates(
        prep.batch, grid, attempts=prep.columns[0], history=prep.columns[1]
    )
    ref = slow.predict_candidates(prep.batch, grid)
    np.testing.assert_allclose(fast.proba, ref.proba, rtol=1e-12, atol=0)
    assert np.isnan(fast.proba[2, 150:]).all()


def test_lleaves_engine_parity(bundle_dir: Path) -> None:
    # lleaves is a core dependency (the default engine): it must load and match LightGBM
    store = ModelStore(location=str(bundle_dir), engine="lleaves")
    loaded = store.load()
    model = loaded.planner.model
    assert isinstance(model, BundleSuccessModel)
    assert model.engine_name == "lleaves"
    X = np.random.default_rng(0).normal(size=(64, len(loaded.bundle.feature_spec.names)))
    X[:, len(loaded.bundle.feature_spec.numeric) :] = 0.0
    np.testing.assert_allclose(
        model.engine.predict(X), loaded.bundle.booster.predict(X), rtol=1e-9, atol=1e-12
    )


def test_performance_options_parse() -> None:
    assert performance_options({}) == ("lleaves", "hourly")
    assert performance_options(
        {"RETRYOPT_ENGINE": "LLeaves", "RETRYOPT_PLANNER_SEARCH": "coarse"}
    ) == (
        "lleaves",
        "coarse",
    )
    with pytest.raises(ValueError, match="RETRYOPT_ENGINE"):
        performance_options({"RETRYOPT_ENGINE": "xgboost"})
    with pytest.raises(ValueError, match="RETRYOPT_PLANNER_SEARCH"):
        performance_options({"RETRYOPT_PLANNER_SEARCH": "random"})


def test_coarse_to_fine_close_to_hourly_optimum(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    model = BundleSuccessModel(bundle)
    hourly = PlannerPolicy(model)
    coarse = PlannerPolicy(model, config=PlannerConfig(search="coarse"))
    reqs = [_request(i, hours_ago=float(i % 30)) for i in range(40)]
    for cons in (
        Constraints(),
        Constraints(max_retries=1),
        Constraints(objective=Objective(daily_cancel_hazard=0.02)),
    ):
        prep = to_batch(reqs, nows=[r.now for r in reqs], constraints=cons)
        exact = hourly.decide_detailed(prep.batch, current_cards=prep.current_cards)
        fast = coarse.decide_detailed(
            prep.batch, current_cards=prep.current_cards, columns=prep.columns
        )
        for e, f in zip(exact, fast, strict=True):
            assert e.action == f.action == "retry"
            assert e.expected_value is not None and f.expected_value is not None
            # The coarse plan's value never beats the exact optimum and stays within 2 %.
            assert f.expected_value <= e.expected_value + 1e-6
            assert f.expected_value >= 0.98 * e.expected_value


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
def test_sighup_reloads_new_version(bundle_dir: Path, tmp_path: Path) -> None:
    """A real `retryopt serve` process picks up a new bundle at its location on SIGHUP."""
    live = tmp_path / "live"
    shutil.copytree(bundle_dir, live)
    port = _free_port()
    env = {
        **os.environ,
        "RETRYOPT_MODEL": str(live),
        "RETRYOPT_STORE_URL": f"sqlite:///{tmp_path / 'store.db'}",  # not in the repository
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retryopt",
            "serve",
            *("--model", str(live), "--port", str(port), "--log-level", "warning"),
        ],
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        first = _wait(lambda: httpx.get(f"{url}/v1/model", timeout=2).json()["version"], 90)
        assert first == "v1"
        # Publish version v2 at the same location, atomically (new dir renamed over the old).
        bundle = load_bundle(bundle_dir)
        staged = write_bundle(
            tmp_path / "staging",
            model_text=bundle.booster.model_to_string(),
            calibrator=bundle.calibrator,
            feature_spec=bundle.feature_spec,
            metrics={"auc": 0.6},
            data_fingerprint={"rows": 1},
            version="v2",
            code_info={"test": True},
        )
        old = tmp_path / "old"
        os.rename(live, old)
        os.rename(staged, live)
        proc.send_signal(signal.SIGHUP)
        second = _wait(
            lambda: (v := httpx.get(f"{url}/v1/model", timeout=2).json()["version"]) == "v2" and v,
            60,
        )
        assert second == "v2"
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _pick_reference(score: np.ndarray, chosen: int, *, k: int, spacing_steps: int) -> list[int]:
    """The original sort-based alternative selection (walk the stable descending order)."""
    order = np.argsort(-score, kind="stable")
    taken = [chosen]
    picks: list[int] = []
    for j in order.tolist():
        if len(picks) >= k or not np.isfinite(score[j]):
            break
        if any(abs(j - t) < spacing_steps for t in taken):
            continue
        taken.append(j)
        picks.append(j)
    return picks


def test_pick_alternatives_equals_sort_walk() -> None:
    rng = np.random.default_rng(4)
    grid = np.datetime64("2026-01-05T09:00", "ns") + np.arange(120) * np.timedelta64(1, "h")
    for trial in range(300):
        m = int(rng.integers(1, 120))
        # Few distinct values so ties are common; some candidates not allowed (-inf).
        score = rng.integers(0, 6, size=m).astype(np.float64)
        score[rng.random(m) < 0.3] = -np.inf
        if trial % 7 == 0:
            score[:] = -np.inf
            score[0] = 1.0
        chosen = int(np.argmax(score))
        spacing = int(rng.integers(1, 9))
        proba = rng.random(m)
        got = _pick_alternatives(grid[:m], score, proba, chosen, k=3, spacing_steps=spacing)
        want = _pick_reference(score, chosen, k=3, spacing_steps=spacing)
        assert [a.retry_at for a in got] == [pd.Timestamp(grid[j]).tz_localize("UTC") for j in want]
        assert [a.success_probability for a in got] == [round(float(proba[j]), 4) for j in want]


def test_batched_alternative_picks_equal_sort_walk() -> None:
    rng = np.random.default_rng(8)
    for _ in range(40):
        n, m = int(rng.integers(4, 14)), int(rng.integers(1, 90))
        score = rng.integers(0, 6, size=(n, m)).astype(np.float64)
        score[rng.random((n, m)) < 0.3] = -np.inf
        score[rng.random(n) < 0.2] = -np.inf  # rows with nothing allowed
        score[rng.random(n) < 0.2, 0] = np.nan  # NaN rows go to the per-row path
        chosen = np.argmax(np.nan_to_num(score, nan=-np.inf), axis=1)
        spacing = int(rng.integers(1, 9))
        got = _alternative_picks(score, chosen, k=3, spacing_steps=spacing)
        for i in range(n):
            if np.isnan(score[i]).any():
                assert got[i] is None
            else:
                assert got[i] == _pick_reference(
                    score[i], int(chosen[i]), k=3, spacing_steps=spacing
                )
    # Small batches use the per-row walk.
    small = _alternative_picks(np.zeros((3, 5)), np.zeros(3, dtype=np.int64), k=3, spacing_steps=2)
    assert small == [None, None, None]


def test_candidate_encoder_rows_equal_full_matrix(synth: pd.DataFrame) -> None:
    ex = build_training_examples(synth)
    spec = fit_feature_spec(ex.features, min_level_count=5)
    rng = np.random.default_rng(2)
    for batch, cand in _decisions(synth, 12, seed=5):
        full = encode_candidate_matrix(batch, cand, spec)
        enc = CandidateEncoder(batch, spec)
        rows = np.sort(rng.choice(cand.shape[1], size=37, replace=False))
        dec = np.zeros(rows.size, dtype=np.int64)
        for order in ("C", "F"):
            sub = enc.matrix(dec, cand[0, rows], order=order)
            np.testing.assert_array_equal(sub, full[rows])
        assert enc.matrix(dec[:0], cand[0, :0]).shape == (0, len(spec.names))
    with pytest.raises(ValueError, match="dec must be in"):
        enc.matrix(np.array([1]), cand[0, :1])
    with pytest.raises(ValueError, match="order must be"):
        enc.matrix(dec[:1], cand[0, :1], order="K")


def _multi_charge_batch(synth: pd.DataFrame, n: int, seed: int) -> tuple[DecisionBatch, np.ndarray]:
    """One batch of ``n`` decisions of distinct customers, 168 hourly candidates each (some NaT)."""
    picked: list[tuple[DecisionBatch, np.ndarray]] = []
    customers: set[Any] = set()
    for batch, cand in _decisions(synth, 4 * n, seed=seed):
        customer = batch.attempts["customer_id"].iloc[0]
        if customer not in customers:
            customers.add(customer)
            picked.append((batch, cand))
        if len(picked) == n:
            break
    hist = [b.history for b, _ in picked if b.history is not None]
    batch = DecisionBatch(
        charge_ids=np.concatenate([b.charge_ids for b, _ in picked]),
        now=np.concatenate([b.now for b, _ in picked]),
        attempts=pd.concat([b.attempts for b, _ in picked], ignore_index=True),
        history=pd.concat(hist, ignore_index=True),
    )
    cand = np.concatenate([c for _, c in picked])
    cand[1, 5:9] = np.datetime64("NaT", "ns")
    return batch, cand


@pytest.mark.parametrize("key_limit", [None, 0])
def test_candidate_encoder_batch_rows_equal_full_matrix(
    synth: pd.DataFrame, key_limit: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row-major in-place matrices (constant rows + candidate columns, row chunks, the card
    counter and its _pit_counts fallback) equal the full encoding over a many-charge batch."""
    import retryopt.features.encoder as fe
    import retryopt.features.pit as fp

    if key_limit is not None:
        monkeypatch.setattr(fp, "_KEY_LIMIT", key_limit)
    monkeypatch.setattr(fe, "_ROW_CHUNK", 256)  # several chunks per call
    ex = build_training_examples(synth)
    spec = fit_feature_spec(ex.features, min_level_count=5)
    batch, cand = _multi_charge_batch(synth, 10, seed=9)
    full = encode_candidate_matrix(batch, cand, spec)
    enc = CandidateEncoder(batch, spec)
    n, m = cand.shape
    rng = np.random.default_rng(3)
    for select in (np.arange(n * m), np.sort(rng.choice(n * m, size=700, replace=False))):
        dec, col = np.divmod(select, m)
        for order in ("C", "F"):
            sub = enc.matrix(dec, cand[dec, col], order=order)
            assert sub.flags.c_contiguous == (order == "C")
            np.testing.assert_array_equal(sub, full[select])


def _decision_key(d: Decision) -> tuple[Any, ...]:
    return (
        d.charge_id,
        d.action,
        d.reason,
        d.retry_at,
        d.explanation,
        tuple(a.retry_at for a in d.alternatives),
        d.action_required,
    )


def _assert_same_decisions(got: list[Decision], want: list[Decision]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert _decision_key(g) == _decision_key(w)
        for a, b in [
            (g.success_probability, w.success_probability),
            (g.expected_value, w.expected_value),
            *[
                (x.success_probability, y.success_probability)
                for x, y in zip(g.alternatives, w.alternatives, strict=True)
            ],
        ]:
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert abs(a - b) <= 1e-9


@pytest.mark.parametrize("search", ["hourly", "coarse"])
def test_fast_planner_decisions_equal_reference_path(bundle_dir: Path, search: str) -> None:
    """Pins the served decisions: the fast path (one feature state per batch, only the needed
    rows encoded and scored) decides exactly as the reference path (pandas features and
    ``bundle.predict_proba`` on every grid point), for the hourly and the coarse search."""
    bundle = load_bundle(bundle_dir)
    config = PlannerConfig(search=search)
    fast = PlannerPolicy(BundleSuccessModel(bundle), config=config)
    slow = PlannerPolicy(BundleSuccessModel(bundle, fast_path=False), config=config)
    # Different first-failure times give grids of different lengths (padding in the batch).
    reqs = [_request(i, hours_ago=float((7 * i) % 90)) for i in range(24)]
    for cons in (Constraints(), Constraints(max_retries=1, quiet_hours=(22, 7))):
        prep = to_batch(reqs, nows=[r.now for r in reqs], constraints=cons)
        got = fast.decide_detailed(
            prep.batch, current_cards=prep.current_cards, columns=prep.columns
        )
        want = slow.decide_detailed(prep.batch.to_frames(), current_cards=prep.current_cards)
        assert sum(d.action == "retry" for d in want) >= 20
        _assert_same_decisions(got, want)
