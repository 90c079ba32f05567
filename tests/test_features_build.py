"""Point-in-time features: exact values, batch/online parity, leakage, encoding."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pytest
from synthetic_attempts import synthetic_attempts

from retryopt.features.decisions import DecisionBatch
from retryopt.features.encoder import CandidateEncoder
from retryopt.features.examples import TrainingExamples, build_training_examples
from retryopt.features.localtime import NS_PER_HOUR, to_local_ns
from retryopt.features.online import build_candidate_features
from retryopt.features.registry import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from retryopt.features.spec import (
    MISSING_LEVEL,
    OTHER_LEVEL,
    FeatureSpec,
    encode_features,
    fit_feature_spec,
)

UTC = "UTC"


def _frame(rows: Sequence[Mapping[str, object]]) -> pd.DataFrame:
    """A canonical contract frame from row dicts (defaults for unspecified columns)."""
    defaults: dict[str, object] = {
        "customer_id": "cus_1",
        "amount": 1000,
        "currency": "USD",
        "decline_code": None,
        "network_advice_code": None,
        "card_brand": "mastercard",
        "card_funding": "debit",
        "card_country": "US",
        "card_added_at": "2023-03-09T15:00:00Z",
        "card_exp_month": 12,
        "card_exp_year": 2024,
        "card_id": "card_1",
        "issuer": "bank_a",
        "customer_timezone": "America/New_York",
        "retry_propensity": math.nan,
    }
    recs = [{**defaults, **r} for r in rows]
    df = pd.DataFrame(recs)
    for col in ("attempted_at", "card_added_at"):
        df[col] = pd.to_datetime(df[col], utc=True).astype("datetime64[ns, UTC]")
    for col in ("amount", "card_exp_month", "card_exp_year"):
        df[col] = df[col].astype(np.int64)
    df["retry_propensity"] = df["retry_propensity"].astype(np.float64)
    for col in df.columns:
        if col not in (
            "attempted_at",
            "card_added_at",
            "amount",
            "card_exp_month",
            "card_exp_year",
            "retry_propensity",
        ):
            df[col] = df[col].astype("str")
    return df


@pytest.fixture(scope="module")
def story() -> pd.DataFrame:
    """One customer: a recovered charge, a paid charge, then a charge in dunning."""
    return _frame(
        [
            # Charge A: failed, recovered after 72 h.
            {
                "attempt_id": "a1",
                "charge_id": "A",
                "attempted_at": "2024-01-05T14:00:00Z",
                "outcome": "failed",
                "decline_code": "insufficient_funds",
            },
            {
                "attempt_id": "a2",
                "charge_id": "A",
                "attempted_at": "2024-01-08T14:00:00Z",
                "outcome": "succeeded",
            },
            # Charge B: paid at once.
            {
                "attempt_id": "b1",
                "charge_id": "B",
                "attempted_at": "2024-02-05T14:00:00Z",
                "outcome": "succeeded",
            },
            # Charge X: two failures, then the retry we predict.
            {
                "attempt_id": "x1",
                "charge_id": "X",
                "attempted_at": "2024-03-05T14:00:00Z",
                "outcome": "failed",
                "decline_code": "51",
                "network_advice_code": "24",
                "amount": 2000,
            },
            {
                "attempt_id": "x2",
                "charge_id": "X",
                "attempted_at": "2024-03-06T02:00:00Z",
                "outcome": "failed",
                "decline_code": "05",
                "amount": 2000,
            },
            {
                "attempt_id": "x3",
                "charge_id": "X",
                "attempted_at": "2024-03-09T15:00:00Z",
                "outcome": "succeeded",
                "amount": 2000,
                "retry_propensity": 0.25,
            },
            # Charge E starts after X's second failure: unknown to X's second retry.
            {
                "attempt_id": "e1",
                "charge_id": "E",
                "attempted_at": "2024-03-08T10:00:00Z",
                "outcome": "failed",
                "decline_code": "05",
            },
        ]
    )


def _row(ex: TrainingExamples, attempt_id: str) -> pd.Series:
    pos = int(np.flatnonzero(ex.meta["attempt_id"].to_numpy() == attempt_id)[0])
    return ex.features.iloc[pos]


def test_story_values(story: pd.DataFrame) -> None:
    ex = build_training_examples(story)
    # Retries: a2 (after A's failed first attempt), x2, x3. b1/e1/x1/a1 are not retries.
    assert sorted(ex.meta["attempt_id"].tolist()) == ["a2", "x2", "x3"]
    assert list(ex.features.columns) == list(NUMERIC_FEATURES + CATEGORICAL_FEATURES)
    i = int(np.flatnonzero(ex.meta["attempt_id"].to_numpy() == "x3")[0])
    assert ex.label[i] == 1 and ex.propensity[i] == 0.25
    assert ex.meta["decision_time"].iloc[i] == pd.Timestamp("2024-03-06T02:00:00Z")
    f = ex.features.iloc[i]
    assert f["retry_number"] == 2
    assert f["hours_since_first_failure"] == 97.0
    assert f["hours_since_prev_attempt"] == 85.0
    assert f["hours_from_now"] == 85.0
    # Card attempts known before t: x1, x2 in 30 days (A/B are older, e1 is after now).
    assert f["card_attempts_30d"] == 2
    assert f["card_attempts_24h"] == 0
    # 2024-03-09 15:00 UTC is Saturday 10:00 EST in New York (DST starts on 03-10).
    assert f["local_hour"] == 10.0
    assert f["local_weekday"] == 5
    assert f["local_day_of_month"] == 9
    assert f["days_to_month_end"] == 22
    assert f["is_business_day"] == 0
    assert f["days_since_1st"] == 8 and f["days_until_1st"] == 23
    assert f["days_since_15th"] == 9 + 29 - 15 and f["days_until_15th"] == 6
    # Last business days: Thu 2024-02-29 and Fri 2024-03-29.
    assert f["days_since_last_business_day"] == 9 and f["days_until_last_business_day"] == 20
    assert f["days_since_friday"] == 1 and f["days_until_friday"] == 6
    # Customer history before now: charges A and B (E starts later).
    assert f["prior_charges"] == 2
    assert f["prior_first_failures"] == 1
    assert f["prior_recoveries"] == 1
    assert f["prior_recovery_rate"] == 1.0
    assert f["mean_recovery_hours"] == 72.0
    assert f["prior_successes"] == 2
    assert f["amount_vs_customer_mean"] == 2.0
    assert f["log_amount"] == pytest.approx(math.log1p(2000))
    assert f["tenure_days"] == pytest.approx(64 + 1 / 24)
    assert f["card_age_days"] == pytest.approx(366.0)
    exp_end = pd.Timestamp("2025-01-01T00:00:00Z")
    assert f["days_to_expiry"] == pytest.approx(
        (exp_end - pd.Timestamp("2024-03-09T15:00:00Z")) / pd.Timedelta(days=1)
    )
    assert f["card_expired"] == 0 and f["card_changed"] == 0
    # Decline state of the charge.
    assert f["last_decline_code"] == "05" and f["first_decline_code"] == "51"
    assert f["decline_sequence"] == "51>05"
    assert f["last_decline_family"] == "generic" or isinstance(f["last_decline_family"], str)
    assert f["distinct_codes"] == 2
    assert pd.isna(f["network_advice_code"])
    assert f["card_brand"] == "mastercard" and f["issuer"] == "bank_a"
    # The first retry of X: advice 24 on the previous attempt (Mastercard: retry after 1 hour).
    g = _row(ex, "x2")
    assert g["retry_number"] == 1
    assert g["network_advice_code"] == "24"
    assert g["advice_min_wait_hours"] == 1.0
    assert g["decline_sequence"] == "none>51"
    assert g["card_attempts_24h"] == 1


def test_success_pattern_uses_local_days(story: pd.DataFrame) -> None:
    ex = build_training_examples(story)
    f = _row(ex, "x3")
    # Past successes on Jan 8 and Feb 5 (local): typical day-of-month is about the 6th.
    assert 0.9 < f["success_dom_concentration"] <= 1.0
    assert 2.0 < f["success_dom_distance"] < 4.5
    # Jan 8 2024 and Feb 5 2024 were both Mondays; t is a Saturday: 2 days away.
    assert f["success_weekday_concentration"] == pytest.approx(1.0, abs=1e-5)
    assert f["success_weekday_distance"] == pytest.approx(2.0, abs=1e-5)


def test_dst_switch_changes_local_hour(story: pd.DataFrame) -> None:
    own = story[story["charge_id"] == "X"].iloc[:2]
    hist = story[story["charge_id"] != "X"]
    now = np.datetime64("2024-03-06T02:00:00", "ns")
    batch = DecisionBatch(
        charge_ids=np.array(["X"]), now=np.array([now]), attempts=own, history=hist
    )
    cand = np.array([["2024-03-09T15:00", "2024-03-10T15:00", "NaT"]], dtype="datetime64[ns]")
    f = build_candidate_features(batch, cand)
    assert f["local_hour"].tolist()[:2] == [10.0, 11.0]  # EST, then EDT
    assert len(f) == 3 and np.isnan(f["local_hour"].iloc[2])
    assert f["retry_number"].tolist() == [2.0, 2.0, 2.0]  # padding keeps the charge's state


def test_local_time_matches_pandas() -> None:
    rng = np.random.default_rng(7)
    zones = np.array(
        [
            "America/New_York",
            "Europe/Berlin",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "America/Sao_Paulo",
            "UTC",
            "Pacific/Chatham",
        ],
        dtype=object,
    )
    t = rng.integers(
        pd.Timestamp("2001-01-01").value, pd.Timestamp("2035-01-01").value, size=20_000
    )
    # Add instants right around the 2024 transitions.
    edges = pd.to_datetime(["2024-03-10T07:00:00Z", "2024-11-03T06:00:00Z"]).asi8
    t = np.concatenate([t, edges - 1, edges, edges + 1]).astype(np.int64)
    codes = rng.integers(0, zones.size, size=t.size)
    local = to_local_ns(t, codes, zones)
    for z in range(zones.size):
        sel = codes == z
        expected = (
            pd.DatetimeIndex(t[sel].view("datetime64[ns]"))
            .tz_localize("UTC")
            .tz_convert(str(zones[z]))
            .tz_localize(None)
            .asi8
        )
        np.testing.assert_array_equal(local[sel], expected)


@pytest.fixture(scope="module")
def synth() -> pd.DataFrame:
    return synthetic_attempts(customers=900, months=6, seed=11)


@pytest.fixture(scope="module")
def synth_examples(synth: pd.DataFrame) -> TrainingExamples:
    return build_training_examples(synth)


def _assert_same(a: pd.DataFrame, b: pd.DataFrame, context: str) -> None:
    assert list(a.columns) == list(b.columns)
    for name in NUMERIC_FEATURES:
        x = a[name].to_numpy(np.float64)
        y = b[name].to_numpy(np.float64)
        np.testing.assert_allclose(
            x, y, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=f"{name} ({context})"
        )
    for name in CATEGORICAL_FEATURES:
        left = [None if pd.isna(v) else v for v in a[name].tolist()]
        right = [None if pd.isna(v) else v for v in b[name].tolist()]
        assert left == right, f"{name} ({context})"


def _decision_batch(frame: pd.DataFrame, meta_row: pd.Series) -> DecisionBatch:
    now = meta_row["decision_time"]
    g = frame[frame["customer_id"] == meta_row["customer_id"]]
    own = g[(g["charge_id"] == meta_row["charge_id"]) & (g["attempted_at"] <= now)]
    return DecisionBatch(
        charge_ids=np.array([meta_row["charge_id"]], dtype=object),
        now=np.array([now.tz_localize(None).to_datetime64()]),
        attempts=own,
        history=g,  # the whole customer, future rows and the charge's own rows included
    )


def test_parity_one_by_one(synth: pd.DataFrame, synth_examples: TrainingExamples) -> None:
    ex = synth_examples
    rng = np.random.default_rng(3)
    picks = rng.choice(len(ex.label), size=min(1000, len(ex.label)), replace=False)
    by_customer = dict(tuple(synth.groupby("customer_id", sort=False)))
    online = []
    for i in picks.tolist():
        m = ex.meta.iloc[i]
        batch = _decision_batch(by_customer[m["customer_id"]], m)
        cand = np.array([[m["retry_time"].tz_localize(None).to_datetime64()]])
        online.append(build_candidate_features(batch, cand))
    got = pd.concat(online, ignore_index=True)
    _assert_same(got, ex.features.iloc[picks].reset_index(drop=True), "one by one")
    assert len(picks) == 1000


def test_parity_batched_decisions(synth: pd.DataFrame, synth_examples: TrainingExamples) -> None:
    """Every training example again, through a few large DecisionBatches (2 candidates each)."""
    ex = synth_examples
    m = ex.meta
    now = m["decision_time"].dt.tz_localize(None).to_numpy("datetime64[ns]")
    retry = m["retry_time"].dt.tz_localize(None).to_numpy("datetime64[ns]")
    # A charge appears once per batch (its attempts frame is cut at its now): one batch per
    # retry number.
    covered = 0
    for k in sorted(m["retry_number"].unique().tolist()):
        sel = (m["retry_number"] == k).to_numpy()
        cut = pd.Series(m["decision_time"].to_numpy()[sel], index=m["charge_id"].to_numpy()[sel])
        limit = synth["charge_id"].map(cut)
        att = synth[limit.notna().to_numpy() & (synth["attempted_at"] <= limit).to_numpy()]
        batch = DecisionBatch(
            charge_ids=m["charge_id"].to_numpy(dtype=object)[sel],
            now=now[sel],
            attempts=att,
            history=synth,  # everything, future rows and the charges' own rows included
        )
        cand = np.stack([retry[sel], retry[sel] + np.timedelta64(3, "h")], axis=1)
        got = build_candidate_features(batch, cand)
        _assert_same(
            got.iloc[::2].reset_index(drop=True),
            ex.features[sel].reset_index(drop=True),
            f"batched retry {k}",
        )
        gap = got["hours_from_now"].to_numpy()[1::2] - got["hours_from_now"].to_numpy()[::2]
        assert gap == pytest.approx(3.0)
        covered += int(sel.sum())
    assert covered == len(ex.label) >= 1500


def _mutate_future(
    frame: pd.DataFrame,
    *,
    charge_id: str,
    now: pd.Timestamp,
    retry_id: str,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Change or delete every row at/after now, except the charge's known attempts."""
    own_known = (
        (frame["charge_id"] == charge_id)
        & (frame["attempted_at"] <= now)
        & (frame["attempt_id"] != retry_id)
    )
    future = (frame["attempted_at"] >= now) & ~own_known
    out = frame.copy()
    idx = np.flatnonzero(future.to_numpy())
    n = idx.size
    if n == 0:
        return out
    flip = np.where(out["outcome"].to_numpy()[idx] == "failed", "succeeded", "failed")
    out.loc[out.index[idx], "outcome"] = flip
    out.loc[out.index[idx], "decline_code"] = rng.choice(["05", "lost_card", "91"], size=n)
    out.loc[out.index[idx], "amount"] = rng.integers(1, 10**6, size=n)
    out.loc[out.index[idx], "card_id"] = "card_new"
    out.loc[out.index[idx], "card_brand"] = "amex"
    out.loc[out.index[idx], "card_exp_year"] = 2099
    out.loc[out.index[idx], "issuer"] = "other_bank"
    out.loc[out.index[idx], "customer_timezone"] = "Asia/Tokyo"
    out.loc[out.index[idx], "card_added_at"] = now + pd.Timedelta(hours=1)
    # Shift later rows further into the future (never before now) and delete some of them,
    # but keep the retry itself (its time is the candidate time).
    is_retry = out["attempt_id"].to_numpy()[idx] == retry_id
    shift = pd.to_timedelta(np.where(is_retry, 0, rng.integers(0, 500, size=n)), unit="h")
    moved = out["attempted_at"].iloc[idx].to_numpy(dtype="datetime64[ns]") + shift.to_numpy()
    out.loc[out.index[idx], "attempted_at"] = pd.DatetimeIndex(moved).tz_localize(UTC)
    drop = idx[(rng.random(n) < 0.3) & ~is_retry]
    return out.drop(index=out.index[drop])


def test_no_leakage_from_rows_at_or_after_now(
    synth: pd.DataFrame, synth_examples: TrainingExamples
) -> None:
    ex = synth_examples
    rng = np.random.default_rng(5)
    picks = rng.choice(len(ex.label), size=60, replace=False)
    by_customer = dict(tuple(synth.groupby("customer_id", sort=False)))
    checked = 0
    for i in picks.tolist():
        m = ex.meta.iloc[i]
        g = by_customer[m["customer_id"]]
        mutated = _mutate_future(
            g,
            charge_id=m["charge_id"],
            now=m["decision_time"],
            retry_id=m["attempt_id"],
            rng=rng,
        )
        assert not mutated.equals(g)
        # Batch path on the mutated customer log.
        ex2 = build_training_examples(mutated)
        j = np.flatnonzero(ex2.meta["attempt_id"].to_numpy() == m["attempt_id"])
        assert j.size == 1
        _assert_same(
            ex2.features.iloc[j].reset_index(drop=True),
            ex.features.iloc[[i]].reset_index(drop=True),
            f"batch {m['attempt_id']}",
        )
        # Online path with the mutated history.
        f = build_candidate_features(
            _decision_batch(mutated, m),
            np.array([[m["retry_time"].tz_localize(None).to_datetime64()]]),
        )
        _assert_same(f, ex.features.iloc[[i]].reset_index(drop=True), "online")
        checked += 1
    assert checked == 60


def test_card_change_and_hard_first_decline() -> None:
    df = _frame(
        [
            {
                "attempt_id": "1",
                "charge_id": "C",
                "attempted_at": "2024-05-01T10:00:00Z",
                "outcome": "failed",
                "decline_code": "expired_card",
                "card_exp_year": 2024,
                "card_exp_month": 4,
            },
            {
                "attempt_id": "2",
                "charge_id": "C",
                "attempted_at": "2024-05-02T10:00:00Z",
                "outcome": "failed",
                "decline_code": "do_not_honor",
                "card_id": "card_2",
                "card_exp_year": 2029,
            },
            {
                "attempt_id": "3",
                "charge_id": "C",
                "attempted_at": "2024-05-03T10:00:00Z",
                "outcome": "failed",
                "decline_code": "do_not_honor",
                "card_id": "card_2",
                "card_exp_year": 2029,
            },
            # Attempts after a success are not retry decisions.
            {
                "attempt_id": "4",
                "charge_id": "C",
                "attempted_at": "2024-05-04T10:00:00Z",
                "outcome": "succeeded",
                "card_id": "card_2",
                "card_exp_year": 2029,
            },
            {
                "attempt_id": "5",
                "charge_id": "C",
                "attempted_at": "2024-05-05T10:00:00Z",
                "outcome": "failed",
                "decline_code": "05",
                "card_id": "card_2",
                "card_exp_year": 2029,
            },
        ]
    )
    ex = build_training_examples(df)
    assert ex.meta["attempt_id"].tolist() == ["2", "3", "4"]
    assert ex.label.tolist() == [0, 0, 1]
    f2 = _row(ex, "2")
    assert f2["card_expired"] == 1 and f2["first_decline_hard"] == 1
    assert f2["card_changed"] == 0
    f3 = _row(ex, "3")
    assert f3["card_changed"] == 1 and f3["card_expired"] == 0
    # Only the new card's attempt counts for the new card.
    assert f3["card_attempts_24h"] == 1 and f3["card_attempts_30d"] == 1
    assert f3["decline_sequence"] == "expired_card>do_not_honor"


def test_missing_card_id_uses_surrogate() -> None:
    rows = [
        {
            "attempt_id": "1",
            "charge_id": "C",
            "attempted_at": "2024-05-01T10:00:00Z",
            "outcome": "failed",
            "decline_code": "51",
            "card_id": None,
        },
        {
            "attempt_id": "2",
            "charge_id": "C",
            "attempted_at": "2024-05-01T20:00:00Z",
            "outcome": "failed",
            "decline_code": "51",
            "card_id": None,
        },
        {
            "attempt_id": "3",
            "charge_id": "C",
            "attempted_at": "2024-05-02T10:00:00Z",
            "outcome": "failed",
            "decline_code": "51",
            "card_id": None,
        },
        {
            "attempt_id": "4",
            "charge_id": "D",
            "attempted_at": "2024-05-02T10:00:00Z",
            "outcome": "failed",
            "decline_code": "51",
            "card_id": None,
            "card_brand": "visa",
            "customer_id": "cus_2",
            "customer_timezone": None,
            "card_country": "DE",
        },
    ]
    ex = build_training_examples(_frame(rows))
    f = _row(ex, "3")
    assert f["card_attempts_24h"] == 2  # 1 and 2, same customer+brand+expiry


def test_bad_inputs_raise_clear_errors(story: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="card_brand"):
        build_training_examples(story.drop(columns=["card_brand"]))
    own = story[story["charge_id"] == "X"]
    now = np.datetime64("2024-03-06T02:00:00", "ns")
    batch = DecisionBatch(charge_ids=np.array(["X"]), now=np.array([now]), attempts=own)
    cand = np.array([["2024-03-09T15:00"]], dtype="datetime64[ns]")
    with pytest.raises(ValueError, match="after their charge's now"):
        build_candidate_features(batch, cand)
    ok = DecisionBatch(charge_ids=np.array(["X"]), now=np.array([now]), attempts=own.iloc[:2])
    with pytest.raises(ValueError, match="shape"):
        build_candidate_features(ok, np.zeros((2, 3), dtype="datetime64[ns]"))
    missing = DecisionBatch(
        charge_ids=np.array(["nope"]), now=np.array([now]), attempts=own.iloc[:2]
    )
    with pytest.raises(ValueError, match="nope"):
        build_candidate_features(missing, cand)


def test_spec_and_encoding_rules() -> None:
    feats = pd.DataFrame(
        {
            "x": [1.0, 2.0, np.nan, 4.0, 5.0],
            "n": np.array([1, 2, 3, 4, 5], dtype=np.int64),
            "c": pd.Series(["a", "a", "b", None, "a"], dtype="str"),
        }
    )
    spec = fit_feature_spec(feats, min_level_count=2)
    assert spec.numeric == ("x", "n") and spec.categorical == ("c",)
    assert spec.levels["c"] == ("a", OTHER_LEVEL, MISSING_LEVEL)  # "b" is rare
    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.names == ("x", "n", "c")
    serve = pd.DataFrame(
        {
            "c": pd.Series(["b", "zzz", None, "a"], dtype="str"),
            "n": [1, 2, 3, 4],
            "x": [0.5, 1.5, 2.5, np.nan],
        }
    )
    enc = encode_features(serve, spec)
    assert list(enc.columns) == ["x", "n", "c"]
    assert enc["x"].dtype == np.float64 and enc["n"].dtype == np.float64
    assert list(enc["c"].cat.categories) == ["a", OTHER_LEVEL, MISSING_LEVEL]
    assert enc["c"].astype(str).tolist() == [OTHER_LEVEL, OTHER_LEVEL, MISSING_LEVEL, "a"]
    # The large-frame path agrees with the small-frame path.
    big = pd.concat([serve] * 3000, ignore_index=True)
    enc_big = encode_features(big, spec)
    assert enc_big["c"].astype(str).tolist()[:4] == enc["c"].astype(str).tolist()
    with pytest.raises(ValueError, match="x"):
        encode_features(serve.drop(columns=["x"]), spec)
    with pytest.raises(ValueError, match="levels"):
        FeatureSpec.from_dict(
            {"version": "v", "numeric": [], "categorical": ["c"], "levels": {"c": ["a"]}}
        )
    with pytest.raises(ValueError, match="numeric"):
        FeatureSpec.from_dict({"version": "v", "categorical": [], "levels": {}})


def test_encode_training_examples_roundtrip(synth_examples: TrainingExamples) -> None:
    spec = fit_feature_spec(synth_examples.features, min_level_count=20)
    assert spec.names == NUMERIC_FEATURES + CATEGORICAL_FEATURES
    enc = encode_features(synth_examples.features, spec)
    assert list(enc.columns) == list(spec.names)
    assert (enc["issuer"].astype(str) == OTHER_LEVEL).any()  # long tail below the floor
    assert synth_examples.label.dtype == np.int8
    assert synth_examples.propensity.dtype == np.float64
    assert (synth_examples.meta["retry_number"] >= 1).all()
    # Examples are ordered by retry time.
    assert synth_examples.meta["retry_time"].is_monotonic_increasing
    assert (synth_examples.meta["decision_time"] < synth_examples.meta["retry_time"]).all()
    assert float(NS_PER_HOUR) == 3.6e12


def test_candidate_encoder_matches_two_steps(
    synth: pd.DataFrame, synth_examples: TrainingExamples
) -> None:
    """The serving encoder's grid matrix equals the encoded raw frame (categoricals as codes)."""
    ex = synth_examples
    spec = fit_feature_spec(ex.features, min_level_count=30)
    by_customer = dict(tuple(synth.groupby("customer_id", sort=False)))
    rng = np.random.default_rng(8)
    for i in rng.choice(len(ex.label), size=25, replace=False).tolist():
        m = ex.meta.iloc[i]
        batch = _decision_batch(by_customer[m["customer_id"]], m)
        now = batch.now[0]
        cand = (now + np.arange(1, 337) * np.timedelta64(1, "h")).reshape(1, -1)
        cand[0, -3:] = np.datetime64("NaT")
        two_step = encode_features(build_candidate_features(batch, cand), spec)
        enc = CandidateEncoder(batch, spec)
        fused = enc.matrix(*CandidateEncoder.grid_rows(cand, enc.n_charges))
        codes = np.column_stack(
            [
                two_step[name].cat.codes.to_numpy(np.float64)
                if isinstance(two_step[name].dtype, pd.CategoricalDtype)
                else two_step[name].to_numpy(np.float64)
                for name in spec.names
            ]
        )
        assert list(two_step.columns) == list(spec.names)
        np.testing.assert_array_equal(fused, codes)


@pytest.mark.parametrize("dtype", [object, "float64", "str"])
def test_encode_all_missing_categorical_column(dtype: object) -> None:
    """A categorical column with no value at all encodes every row as "missing"."""
    spec = FeatureSpec(
        numeric=("x",), categorical=("c",), levels={"c": ("a", "other", "missing")}, version="t"
    )
    frame = pd.DataFrame(
        {"x": np.arange(5000.0), "c": pd.Series([None] * 5000, dtype=dtype)}  # type: ignore[call-overload]
    )
    encoded = encode_features(frame, spec)
    assert (encoded["c"] == "missing").all()
