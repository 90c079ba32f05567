"""Backtest runner and outputs on a small handmade history (no world or trained model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retryopt.features.decisions import Constraints, DecisionBatch, RetryPolicy
from retryopt.features.validation import validate_attempts
from retryopt.serving.policies import CandidateScores, FixedSchedule, UniformRandom
from retryopt.training.backtest.charges import prepare_charges
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.estimators import NO_EXPLORATION_WARNING
from retryopt.training.backtest.report import headline_markdown, write_outputs
from retryopt.training.backtest.runner import run_backtest
from retryopt.training.backtest.specs import SpecError, parse_spec

T0 = pd.Timestamp("2025-03-01T10:00:00Z")


def p_true(hours: np.ndarray) -> np.ndarray:
    """Success probability by hours since the first failure (better after 3 days)."""
    return np.where(np.asarray(hours) >= 72, 0.4, 0.15)


def history(n: int, *, seed: int, explore: float = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    schedule = (96.0, 168.0, 240.0)
    for i in range(n):
        start = T0 + pd.Timedelta(hours=int(rng.integers(0, 24 * 20)))
        base = {
            "charge_id": f"ch_{i}",
            "customer_id": f"cus_{i % (n // 2)}",
            "amount": int(rng.choice([900, 2500])),
            "currency": "usd",
            "card_brand": "visa",
            "card_funding": str(rng.choice(["credit", "debit"])),
            "card_country": str(rng.choice(["US", "GB"])),
            "card_added_at": "2024-01-01T00:00:00Z",
            "card_exp_month": 5,
            "card_exp_year": 2030,
        }
        code = (
            "lost_card" if i % 25 == 0 else str(rng.choice(["insufficient_funds", "do_not_honor"]))
        )
        rows.append(
            {
                **base,
                "attempt_id": f"a_{i}_0",
                "attempted_at": start.isoformat(),
                "outcome": "failed",
                "decline_code": code,
                "retry_propensity": np.nan,
            }
        )
        if code == "lost_card":
            continue
        prev = 0.0
        for k, fixed in enumerate(schedule, start=1):
            lo = prev + 1
            slots = 200.0
            if rng.random() < explore:
                h = lo + float(np.floor(rng.random() * slots))
            else:
                h = max(fixed, lo)
            p = explore / slots + (1 - explore) * (h == max(fixed, lo))
            ok = rng.random() < float(p_true(np.array([h]))[0])
            rows.append(
                {
                    **base,
                    "attempt_id": f"a_{i}_{k}",
                    "attempted_at": (start + pd.Timedelta(hours=h)).isoformat(),
                    "outcome": "succeeded" if ok else "failed",
                    "decline_code": None if ok else code,
                    "retry_propensity": p if explore > 0 else 1.0,
                }
            )
            prev = h
            if ok:
                break
    return validate_attempts(pd.DataFrame(rows)).clean


class HoursModel:
    """A success model that knows the true curve (hours since the first failure)."""

    version = "hours"

    def predict_candidates(
        self, batch: DecisionBatch, candidate_times: np.ndarray
    ) -> CandidateScores:
        first = batch.attempts.groupby("charge_id")["attempted_at"].min()
        t0 = first.reindex(batch.charge_ids).dt.tz_localize(None).to_numpy("datetime64[ns]")
        hours = (candidate_times - t0[:, None]).astype("timedelta64[s]").astype(float) / 3600
        return CandidateScores(proba=p_true(hours))


def _cell(rate: pd.DataFrame, policy: str, estimator: str, column: str) -> float:
    """One numeric cell of the estimates table indexed by (policy, estimator)."""
    return float(rate[column].loc[(policy, estimator)])


def test_specs_parse_and_reject() -> None:
    assert parse_spec("fixed:72,120,168,216").hours == (72, 120, 168, 216)
    assert parse_spec("model:models/v1").model == "models/v1"
    assert parse_spec("logged").kind == "logged"
    guarded = parse_spec("model:models/v1@guardrail=72,120,168,216")
    assert guarded.kind == "model" and guarded.label == "model+guardrail"
    assert guarded.model == "models/v1" and guarded.guardrail == (72, 120, 168, 216)
    for bad, msg in (
        ("model:m@guardrail=72,24", "increasing"),
        ("model:m@guardrail=", "give hours"),
        ("model:m@budget=3", "the only option"),
        ("greedy:m@guardrail=72", "the only option"),
        ("model:@guardrail=72", "bundle path"),
        ("fixed:", "give hours"),
        ("fixed:72,24", "increasing"),
        ("fixed:a", "numbers"),
        ("greedy:", "bundle path"),
        ("best", "unknown policy spec"),
        ("random:3", "takes no argument"),
    ):
        with pytest.raises(SpecError, match=msg):
            parse_spec(bad)


def test_fixed_policy_follows_schedule_and_skips_hard_declines() -> None:
    att = history(60, seed=2)
    data = prepare_charges(att)
    first = data.attempts[data.attempts["_step"] == 0]
    batch = DecisionBatch(
        charge_ids=data.charge_ids,
        now=first["attempted_at"].dt.tz_localize(None).to_numpy("datetime64[ns]"),
        attempts=first.drop(columns=["_step", "_charge"]),
        constraints=Constraints(),
    )
    dec = FixedSchedule((72.0, 120.0)).decide(batch)
    hours = (dec.retry_at - data.first_failure).astype("timedelta64[s]").astype(float) / 3600
    hard = data.attrs["decline_family"].to_numpy() == "lost_stolen_fraud"
    assert hard.any()
    assert np.isnat(dec.retry_at[hard]).all()
    np.testing.assert_allclose(hours[~hard], 72.0)
    rnd = UniformRandom(seed=1).decide(batch)
    assert np.isnat(rnd.retry_at[hard]).all() and not np.isnat(rnd.retry_at[~hard]).any()


def test_backtest_recovers_the_better_schedule_and_writes_outputs(tmp_path: Path) -> None:
    att = history(1500, seed=5)
    policies: dict[str, RetryPolicy | None] = {
        "logged": None,
        "fixed:96,168": FixedSchedule((96.0, 168.0)),
        "fixed:2,4": FixedSchedule((2.0, 4.0)),
        "random": UniformRandom(seed=3),
    }
    res = run_backtest(
        att,
        policies,
        config=BacktestConfig(
            n_boot=60, seed=1, fit_dm=False, constraints=Constraints(max_retries=2)
        ),
        dm_model=HoursModel(),
    )
    est = res.estimates
    rate = est[est["statistic"] == "recovery_rate"].set_index(["policy", "estimator"])
    # exact values of the two schedules (non-hard charges only; p_true known)
    hard_share = 1 / 25
    late = (1 - hard_share) * (1 - 0.6 * 0.6)
    early = (1 - hard_share) * (1 - 0.85 * 0.85)
    for est_name in ("dm", "ips", "snips", "dr"):
        lo = _cell(rate, "fixed:96,168", est_name, "ci_low")
        hi = _cell(rate, "fixed:96,168", est_name, "ci_high")
        assert lo - 0.03 <= late <= hi + 0.03, (est_name, lo, hi, late)
    # the early schedule is only seen through rare random retries: IPS/SNIPS/DR declare
    # insufficient overlap (not a number); compare the direct method
    assert res.overlap["fixed:2,4"]["weighted_estimators"] == "unavailable: insufficient overlap"
    assert not {"ips", "snips", "dr"} & set(est.loc[est["policy"] == "fixed:2,4", "estimator"])
    assert any("fixed:2,4: IPS, SNIPS and DR unavailable" in w for w in res.warnings)
    assert _cell(rate, "fixed:96,168", "dm", "value") > _cell(rate, "fixed:2,4", "dm", "value")
    assert _cell(rate, "fixed:2,4", "dm", "value") == pytest.approx(early, abs=0.02)
    assert res.rules["fixed:96,168"]["retries_of_hard_declines"] == 0
    assert res.overlap["fixed:96,168"]["effective_sample_size"] > 10
    assert set(res.breakdowns["breakdown"]) == {"decline_family", "card_funding", "card_country"}
    out = write_outputs(res, tmp_path / "bt")
    for name in (
        "results.json",
        "estimates.csv",
        "uplift.csv",
        "breakdowns.csv",
        "curves.csv",
        "retry_numbers.csv",
        "calibration.csv",
        "report.html",
        "recovery_curves.png",
        "uplift.png",
        "families.png",
        "calibration.png",
        "comparison.md",
    ):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and 'src="http' not in html
    payload = json.loads((out / "results.json").read_text())
    assert payload["meta"]["n_boot"] == 60
    assert "| fixed:96,168 | dr |" in headline_markdown(res)
    # rewriting replaces the directory atomically and leaves no temp dirs behind
    write_outputs(res, tmp_path / "bt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bt"]


def test_no_exploration_reports_only_the_direct_method() -> None:
    att = history(300, seed=7, explore=0.0)
    res = run_backtest(
        att,
        {"logged": None, "fixed:96": FixedSchedule((96.0,))},
        config=BacktestConfig(n_boot=20, fit_dm=False),
        dm_model=HoursModel(),
    )
    assert res.warnings == [NO_EXPLORATION_WARNING]
    assert set(res.estimates["estimator"]) == {"observed", "dm"}
    assert res.overlap["fixed:96"]["warning"] == NO_EXPLORATION_WARNING


def test_amounts_of_every_currency_are_reported_in_one_currency() -> None:
    att = history(400, seed=9)
    # the same dollar price charged in rupees (paise): summing minor units would let these
    # charges outweigh the dollar ones 84-fold
    inr = att["customer_id"].astype(str).str.endswith(("0", "1", "2", "3", "4"))
    att.loc[inr, "amount"] = att.loc[inr, "amount"] * 84
    att.loc[inr, "currency"] = "inr"
    data = prepare_charges(att, keep_history=False)
    assert set(np.round(data.amount, 6)) == {9.0, 25.0}
    res = run_backtest(
        att,
        {"logged": None},
        config=BacktestConfig(
            n_boot=20, seed=1, fit_dm=False, constraints=Constraints(max_retries=2)
        ),
        dm_model=HoursModel(),
    )
    est = res.estimates
    amount = est[(est["statistic"] == "recovered_amount") & (est["estimator"] == "observed")]
    rate = est[(est["statistic"] == "recovery_rate") & (est["estimator"] == "observed")]
    # recovered dollars per failed charge lie between 9 x and 25 x the recovery rate
    value, share = float(amount["value"].iloc[0]), float(rate["value"].iloc[0])
    assert 9 * share <= value <= 25 * share
    assert res.meta["amount_unit"] == "USD"
    assert "recovered USD / failed charge" in headline_markdown(res)
    att.loc[att.index[:3], "currency"] = "kwd"
    with pytest.raises(ValueError, match="'kwd'"):
        prepare_charges(att, keep_history=False)
