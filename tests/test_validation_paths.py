"""Validation gives the same answer whatever the input order, typing or storage.

The validator has fast paths (input already in canonical order, typed Parquet columns,
dictionary-encoded code columns); these tests pin that every path yields the same canonical
frame, rejects and report as a shuffled text table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as tm
import pytest

from retryopt.features import contract as c
from retryopt.features.io import read_table, write_table_atomic
from retryopt.features.validation import ValidationResult, validate_attempts

N = 400


def _text_table(seed: int = 3) -> pd.DataFrame:
    """N text rows in ~150 charges with a few bad rows of several kinds, in random order."""
    rng = np.random.default_rng(seed)
    charge = rng.integers(0, 150, N)
    seconds = 1_700_000_000 + rng.integers(0, 5, N) * 3_600  # many equal times per charge
    outcome = np.where(rng.random(N) < 0.3, "succeeded", "failed")
    codes = np.where(outcome == "failed", rng.choice(["51", "do_not_honor", "zz_new"], N), "")
    frame = pd.DataFrame(
        {
            "attempt_id": [f"a{i}" for i in rng.permutation(N)],
            "charge_id": [f"ch_{k}" for k in charge],
            "customer_id": [f"cus_{k % 40}" for k in charge],
            "attempted_at": pd.to_datetime(seconds, unit="s", utc=True).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "amount": rng.integers(100, 900, N).astype(str),
            "currency": rng.choice(["usd", "eur", "USD", "xyz"], N, p=[0.6, 0.37, 0.02, 0.01]),
            "outcome": outcome,
            "decline_code": codes,
            "network_advice_code": rng.choice(["", "24", "03"], N),
            "card_brand": rng.choice(["visa", "mastercard", "Visa"], N, p=[0.6, 0.39, 0.01]),
            "card_funding": rng.choice(["credit", "debit", "gift"], N, p=[0.6, 0.39, 0.01]),
            "card_country": rng.choice(["US", "DE", "de", "UK"], N, p=[0.6, 0.38, 0.01, 0.01]),
            "card_added_at": "2023-01-15T08:30:00+01:00",
            "card_exp_month": rng.integers(1, 13, N).astype(str),
            "card_exp_year": "2027",
            "customer_timezone": rng.choice(
                ["Europe/Berlin", "", "Mars/Base"], N, p=[0.8, 0.19, 0.01]
            ),
        },
        dtype="str",
    )
    frame.iat[9, 0] = str(frame.iat[5, 0])  # attempt_id: a duplicate id
    frame.iat[7, 3] = "2024-05-01T10:00:00"  # attempted_at: zone-less
    return frame


def _same(a: ValidationResult, b: ValidationResult, *, rejects: bool = True) -> None:
    tm.assert_frame_equal(a.clean, b.clean)
    if rejects:
        tm.assert_frame_equal(a.rejects, b.rejects)
    assert a.report.n_valid == b.report.n_valid
    assert a.report.unknown_decline_codes == b.report.unknown_decline_codes
    assert a.report.decline_families == b.report.decline_families
    assert sorted((i.rule, i.column, i.n_rows) for i in a.report.issues) == sorted(
        (i.rule, i.column, i.n_rows) for i in b.report.issues
    )


def test_fixture_exercises_many_rules() -> None:
    result = validate_attempts(_text_table(), drop_invalid=True)
    rules = {issue.rule for issue in result.report.issues}
    assert {"duplicate_attempt_id", "timestamp_no_zone", "currency_not_lower_case"} <= rules
    assert {"currency_unknown", "card_brand_not_lower_case", "card_funding_unknown"} <= rules
    assert {"country_not_upper_case", "country_unknown", "timezone_unknown"} <= rules
    assert {"multiple_successes", "attempt_after_success"} & rules
    assert result.report.unknown_decline_codes.get("zz_new", 0) > 0
    assert result.clean["customer_timezone"].isna().any()  # "" became missing
    assert result.clean["network_advice_code"].isna().any()


@pytest.mark.parametrize("seed", [0, 1])
def test_row_order_does_not_change_the_clean_frame(seed: int) -> None:
    frame = _text_table()
    # Keep the first occurrence of the duplicate id first, so the same row is rejected.
    order = np.random.default_rng(seed).permutation(N)
    order = np.r_[5, order[order != 5]]
    shuffled = frame.take(order).reset_index(drop=True)
    _same(
        validate_attempts(frame, drop_invalid=True),
        validate_attempts(shuffled, drop_invalid=True),
        rejects=False,
    )


def test_canonical_order_input_with_invalid_rows() -> None:
    """Input already sorted (the ascending, filter-only path) with invalid rows interleaved."""
    frame = _text_table()
    first = validate_attempts(frame, drop_invalid=True)
    key = pd.DataFrame(
        {
            "c": frame["charge_id"],
            "t": pd.to_datetime(frame["attempted_at"], format="ISO8601", utc=True, errors="coerce"),
            "a": frame["attempt_id"],
        }
    )
    positions = key.sort_values(["c", "t", "a"], kind="stable").index.to_numpy()
    ordered = frame.take(positions).reset_index(drop=True)
    again = validate_attempts(ordered, drop_invalid=True)
    tm.assert_frame_equal(again.clean, first.clean)
    assert again.report.n_valid == first.report.n_valid


def test_canonical_frame_revalidates_to_itself() -> None:
    """A clean canonical frame (typed, sorted) passes unchanged: the identity path."""
    clean = validate_attempts(_text_table(), drop_invalid=True).clean
    again = validate_attempts(clean)
    assert again.report.ok
    tm.assert_frame_equal(again.clean, clean)


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_typed_and_text_files_validate_alike(tmp_path: Path, suffix: str) -> None:
    clean = validate_attempts(_text_table(), drop_invalid=True).clean
    path = write_table_atomic(clean, tmp_path / f"clean.{suffix}")
    again = validate_attempts(read_table(path))
    assert again.report.ok
    tm.assert_frame_equal(again.clean, clean)
    if suffix == "parquet":
        assert str(read_table(path)[c.ATTEMPTED_AT].dtype).startswith("datetime64")
