"""Validation of attempt tables against the data contract: one test per rule, canonical output."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from retryopt.features import contract as c
from retryopt.features.iso_codes import COUNTRIES, COUNTRIES_ISO, CURRENCIES, CURRENCIES_ACTIVE
from retryopt.features.validation import (
    MAX_EXAMPLES,
    RULES,
    ContractError,
    ValidationIssue,
    ValidationResult,
    validate_attempts,
)


def _row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "attempt_id": "at_1",
        "charge_id": "ch_1",
        "customer_id": "cus_1",
        "attempted_at": "2024-05-01T10:00:00Z",
        "amount": "1999",
        "currency": "usd",
        "outcome": "failed",
        "decline_code": "insufficient_funds",
        "card_brand": "visa",
        "card_funding": "debit",
        "card_country": "US",
        "card_added_at": "2023-01-15T08:30:00+01:00",
        "card_exp_month": "12",
        "card_exp_year": "2027",
    }
    row.update(overrides)
    return row


def _frame() -> pd.DataFrame:
    """Five valid rows in three charges, as strings (like a CSV read)."""
    rows = [
        _row(attempt_id="at_1", charge_id="ch_b"),
        _row(
            attempt_id="at_2",
            charge_id="ch_b",
            attempted_at="2024-05-04T10:00:00-04:00",
            outcome="succeeded",
            decline_code=None,
        ),
        _row(attempt_id="at_3", charge_id="ch_a", attempted_at="2024-05-02T09:00:00.250+05:30"),
        _row(attempt_id="at_4", charge_id="ch_a", attempted_at="2024-05-01 12:00:00Z"),
        _row(
            attempt_id="at_5",
            charge_id="ch_c",
            customer_id="cus_2",
            decline_code="do_not_honor",
            card_country="DE",
            currency="eur",
        ),
    ]
    return pd.DataFrame(rows, dtype="str")


def _set(df: pd.DataFrame, row: int, column: str, value: Any) -> pd.DataFrame:
    """Copy of ``df`` with 1-based data row ``row`` of ``column`` set to ``value``."""
    out = df.copy()
    out.loc[row - 1, column] = value
    return out


def _only_issue(df: pd.DataFrame) -> ValidationIssue:
    with pytest.raises(ContractError) as info:
        validate_attempts(df)
    issues = info.value.report.issues
    assert len(issues) == 1, info.value.report.format()
    return issues[0]


def _assert_issue(
    issue: ValidationIssue,
    *,
    column: str,
    rule: str,
    rows: tuple[int, ...],
    values: tuple[str, ...],
) -> None:
    assert issue.column == column
    assert issue.rule == rule
    assert issue.rows == rows
    assert issue.values == values
    assert issue.n_rows == len(rows)
    assert column in issue.message
    for row in rows:
        assert str(row) in issue.message
    for value in values:
        assert repr(value) in issue.message


# ---------------------------------------------------------------------------------------------
# A valid table and the canonical frame
# ---------------------------------------------------------------------------------------------


def test_valid_table_passes_with_canonical_columns_and_dtypes() -> None:
    result = validate_attempts(_frame())
    assert isinstance(result, ValidationResult)
    assert result.report.ok
    assert result.report.n_rows == result.report.n_valid == 5
    clean = result.clean
    assert tuple(clean.columns) == c.ALL_COLUMNS
    for col in c.TIMESTAMP_COLUMNS:
        assert str(clean[col].dtype) == "datetime64[ns, UTC]"
    for col in c.INTEGER_COLUMNS:
        assert clean[col].dtype == np.int64
    assert clean[c.RETRY_PROPENSITY].dtype == np.float64
    for col in c.STRING_COLUMNS:
        assert clean[col].dtype == "str", col
    assert clean[c.CARD_ID].isna().all()
    assert pd.isna(clean.loc[clean[c.ATTEMPT_ID] == "at_2", c.DECLINE_CODE]).all()
    assert list(clean.index) == list(range(5))
    assert result.rejects.empty
    assert list(result.rejects.columns[:2]) == ["row", "reason"]


def test_clean_is_sorted_by_charge_time_and_attempt_id() -> None:
    df = _frame()
    df = pd.concat(
        [df, pd.DataFrame([_row(attempt_id="at_0", charge_id="ch_c")], dtype="str")],
        ignore_index=True,
    )  # same charge and time as at_5: the tie is broken by attempt_id
    clean = validate_attempts(df).clean
    assert list(clean[c.ATTEMPT_ID]) == ["at_4", "at_3", "at_1", "at_2", "at_0", "at_5"]


def test_timestamps_are_converted_to_utc() -> None:
    clean = validate_attempts(_frame()).clean.set_index(c.ATTEMPT_ID)
    assert clean.loc["at_2", c.ATTEMPTED_AT] == pd.Timestamp("2024-05-04T14:00:00Z")
    assert clean.loc["at_3", c.ATTEMPTED_AT] == pd.Timestamp("2024-05-02T03:30:00.250Z")
    assert clean.loc["at_1", c.CARD_ADDED_AT] == pd.Timestamp("2023-01-15T07:30:00Z")


def test_typed_input_is_accepted() -> None:
    df = validate_attempts(_frame()).clean  # canonical frame: typed columns
    again = validate_attempts(df)
    pd.testing.assert_frame_equal(again.clean, df)


def test_integral_floats_are_accepted_as_integers() -> None:
    df = _frame()
    df[c.AMOUNT] = df[c.AMOUNT].astype(float)
    clean = validate_attempts(df).clean
    assert clean[c.AMOUNT].dtype == np.int64
    assert (clean[c.AMOUNT] == 1999).all()


def test_extra_columns_are_dropped_and_listed() -> None:
    df = _frame().assign(note="x", zeta="y")
    result = validate_attempts(df)
    assert result.report.extra_columns == ["note", "zeta"]
    assert "note" not in result.clean.columns
    assert "note, zeta" in result.report.format()


def test_empty_table_is_valid() -> None:
    result = validate_attempts(_frame().iloc[:0])
    assert result.report.ok
    assert len(result.clean) == 0
    assert tuple(result.clean.columns) == c.ALL_COLUMNS


def test_not_a_dataframe_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="DataFrame"):
        validate_attempts([1, 2])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Table-level rules
# ---------------------------------------------------------------------------------------------


def test_missing_required_columns_are_all_listed() -> None:
    df = _frame().drop(columns=[c.CURRENCY, c.CARD_EXP_YEAR])
    for drop_invalid in (False, True):
        with pytest.raises(ContractError) as info:
            validate_attempts(df, drop_invalid=drop_invalid)
        (issue,) = info.value.report.issues
        assert issue.rule == "missing_column"
        assert issue.values == (c.CURRENCY, c.CARD_EXP_YEAR)
        assert "'currency'" in issue.message and "'card_exp_year'" in issue.message


def test_duplicate_column_names() -> None:
    df = _frame()
    df = pd.concat([df, df[[c.AMOUNT]]], axis=1)
    with pytest.raises(ContractError) as info:
        validate_attempts(df, drop_invalid=True)
    assert info.value.report.issues[0].rule == "duplicate_column"
    assert "'amount'" in str(info.value)


def test_missing_optional_columns_are_fine() -> None:
    df = _frame().assign(card_id="fp_1", retry_propensity="0.25")
    clean = validate_attempts(df).clean
    assert (clean[c.CARD_ID] == "fp_1").all()
    assert np.allclose(clean[c.RETRY_PROPENSITY], 0.25)


# ---------------------------------------------------------------------------------------------
# One test per row-level rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("column", [c.CHARGE_ID, c.CUSTOMER_ID, c.CARD_BRAND, c.AMOUNT])
def test_missing_required_value(column: str) -> None:
    issue = _only_issue(_set(_frame(), 3, column, None))
    _assert_issue(issue, column=column, rule="missing_value", rows=(3,), values=("<missing>",))


@pytest.mark.parametrize("column", [c.ATTEMPTED_AT, c.CARD_ADDED_AT])
def test_unparseable_timestamp(column: str) -> None:
    issue = _only_issue(_set(_frame(), 2, column, "yesterday 10am"))
    _assert_issue(
        issue, column=column, rule="timestamp_unparseable", rows=(2,), values=("yesterday 10am",)
    )


def test_impossible_date_with_zone_is_unparseable() -> None:
    issue = _only_issue(_set(_frame(), 4, c.ATTEMPTED_AT, "2024-13-45T10:00:00Z"))
    _assert_issue(
        issue,
        column=c.ATTEMPTED_AT,
        rule="timestamp_unparseable",
        rows=(4,),
        values=("2024-13-45T10:00:00Z",),
    )


@pytest.mark.parametrize("value", ["2024-05-01T10:00:00", "2024-05-01", "2024-05-01 10:00"])
def test_timestamp_without_zone(value: str) -> None:
    issue = _only_issue(_set(_frame(), 5, c.ATTEMPTED_AT, value))
    _assert_issue(
        issue, column=c.ATTEMPTED_AT, rule="timestamp_no_zone", rows=(5,), values=(value,)
    )


def test_naive_datetime_column_has_no_zone() -> None:
    df = _frame()
    df[c.CARD_ADDED_AT] = pd.Timestamp("2023-01-01")
    issue = _only_issue(df)
    assert issue.rule == "timestamp_no_zone"
    assert issue.rows == (1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("12.5", "fractional"),
        ("ten", "not_a_number"),
        ("inf", "not_a_number"),
        ("99999999999999999999", "not_a_number"),  # beyond int64
    ],
)
def test_amount_not_an_integer(value: str, rule: str) -> None:
    issue = _only_issue(_set(_frame(), 1, c.AMOUNT, value))
    _assert_issue(issue, column=c.AMOUNT, rule=rule, rows=(1,), values=(value,))


@pytest.mark.parametrize("value", ["0", "-250"])
def test_amount_not_positive(value: str) -> None:
    issue = _only_issue(_set(_frame(), 2, c.AMOUNT, value))
    _assert_issue(issue, column=c.AMOUNT, rule="not_positive", rows=(2,), values=(value,))


def test_currency_upper_case_is_rejected_with_hint() -> None:
    issue = _only_issue(_set(_frame(), 3, c.CURRENCY, "USD"))
    _assert_issue(
        issue, column=c.CURRENCY, rule="currency_not_lower_case", rows=(3,), values=("USD",)
    )
    assert "lower-case" in issue.message


def test_currency_unknown() -> None:
    issue = _only_issue(_set(_frame(), 3, c.CURRENCY, "usdx"))
    _assert_issue(issue, column=c.CURRENCY, rule="currency_unknown", rows=(3,), values=("usdx",))


def test_outcome_unknown() -> None:
    issue = _only_issue(_set(_frame(), 5, c.OUTCOME, "pending"))
    _assert_issue(issue, column=c.OUTCOME, rule="outcome_unknown", rows=(5,), values=("pending",))


def test_failed_without_decline_code() -> None:
    issue = _only_issue(_set(_frame(), 1, c.DECLINE_CODE, None))
    _assert_issue(
        issue, column=c.DECLINE_CODE, rule="decline_code_missing", rows=(1,), values=("failed",)
    )


def test_empty_string_counts_as_missing() -> None:
    issue = _only_issue(_set(_frame(), 1, c.DECLINE_CODE, ""))
    assert issue.rule == "decline_code_missing"


def test_succeeded_with_decline_code() -> None:
    issue = _only_issue(_set(_frame(), 2, c.DECLINE_CODE, "do_not_honor"))
    _assert_issue(
        issue,
        column=c.DECLINE_CODE,
        rule="decline_code_on_success",
        rows=(2,),
        values=("do_not_honor",),
    )


def test_duplicate_attempt_id_flags_every_later_occurrence() -> None:
    df = _set(_set(_frame(), 3, c.ATTEMPT_ID, "at_1"), 5, c.ATTEMPT_ID, "at_1")
    issue = _only_issue(df)
    _assert_issue(
        issue,
        column=c.ATTEMPT_ID,
        rule="duplicate_attempt_id",
        rows=(3, 5),
        values=("at_1", "at_1"),
    )


def test_second_success_within_a_charge() -> None:
    extra = _row(
        attempt_id="at_6",
        charge_id="ch_b",
        attempted_at="2024-05-05T10:00:00Z",
        outcome="succeeded",
        decline_code=None,
    )
    df = pd.concat([_frame(), pd.DataFrame([extra], dtype="str")], ignore_index=True)
    issue = _only_issue(df)
    _assert_issue(issue, column=c.CHARGE_ID, rule="multiple_successes", rows=(6,), values=("ch_b",))


def test_attempt_after_success_within_a_charge() -> None:
    # Row 1 of charge ch_b is moved after its success (row 2).
    df = _set(_frame(), 1, c.ATTEMPTED_AT, "2024-05-06T10:00:00Z")
    issue = _only_issue(df)
    _assert_issue(
        issue, column=c.CHARGE_ID, rule="attempt_after_success", rows=(1,), values=("ch_b",)
    )


def test_card_brand_must_be_lower_case() -> None:
    issue = _only_issue(_set(_frame(), 4, c.CARD_BRAND, "Visa"))
    _assert_issue(
        issue, column=c.CARD_BRAND, rule="card_brand_not_lower_case", rows=(4,), values=("Visa",)
    )


def test_card_funding_unknown() -> None:
    issue = _only_issue(_set(_frame(), 4, c.CARD_FUNDING, "charge"))
    _assert_issue(
        issue, column=c.CARD_FUNDING, rule="card_funding_unknown", rows=(4,), values=("charge",)
    )


def test_country_lower_case_is_rejected_with_hint() -> None:
    issue = _only_issue(_set(_frame(), 5, c.CARD_COUNTRY, "de"))
    _assert_issue(
        issue, column=c.CARD_COUNTRY, rule="country_not_upper_case", rows=(5,), values=("de",)
    )


def test_country_unknown() -> None:
    issue = _only_issue(_set(_frame(), 5, c.CARD_COUNTRY, "UK"))  # GB is the ISO code
    _assert_issue(issue, column=c.CARD_COUNTRY, rule="country_unknown", rows=(5,), values=("UK",))


@pytest.mark.parametrize("value", ["0", "13"])
def test_exp_month_out_of_range(value: str) -> None:
    issue = _only_issue(_set(_frame(), 2, c.CARD_EXP_MONTH, value))
    _assert_issue(
        issue, column=c.CARD_EXP_MONTH, rule="exp_month_out_of_range", rows=(2,), values=(value,)
    )


@pytest.mark.parametrize("value", ["27", "20270"])
def test_exp_year_implausible(value: str) -> None:
    issue = _only_issue(_set(_frame(), 2, c.CARD_EXP_YEAR, value))
    _assert_issue(
        issue, column=c.CARD_EXP_YEAR, rule="exp_year_implausible", rows=(2,), values=(value,)
    )


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_propensity_out_of_range(value: str) -> None:
    df = _frame().assign(retry_propensity="0.5")
    issue = _only_issue(_set(df, 3, c.RETRY_PROPENSITY, value))
    _assert_issue(
        issue,
        column=c.RETRY_PROPENSITY,
        rule="propensity_out_of_range",
        rows=(3,),
        values=(value,),
    )


def test_propensity_not_a_number() -> None:
    df = _frame().assign(retry_propensity="1")
    issue = _only_issue(_set(df, 1, c.RETRY_PROPENSITY, "high"))
    _assert_issue(
        issue, column=c.RETRY_PROPENSITY, rule="not_a_number", rows=(1,), values=("high",)
    )


def test_timezone_unknown() -> None:
    df = _frame().assign(customer_timezone="Europe/Berlin")
    issue = _only_issue(_set(df, 2, c.CUSTOMER_TIMEZONE, "Europe/Atlantis"))
    _assert_issue(
        issue,
        column=c.CUSTOMER_TIMEZONE,
        rule="timezone_unknown",
        rows=(2,),
        values=("Europe/Atlantis",),
    )


def test_issue_lists_first_rows_and_count() -> None:
    df = pd.concat([_frame()] * 3, ignore_index=True)
    df[c.ATTEMPT_ID] = [f"at_{i}" for i in range(len(df))]
    df[c.CHARGE_ID] = [f"ch_{i}" for i in range(len(df))]
    df[c.CURRENCY] = "xyz"
    issue = _only_issue(df)
    assert issue.n_rows == 15
    assert issue.rows == tuple(range(1, MAX_EXAMPLES + 1))
    assert "15 rows" in issue.message and "..." in issue.message


def test_every_rule_has_a_description() -> None:
    assert all(RULES.values())


# ---------------------------------------------------------------------------------------------
# drop_invalid and the report
# ---------------------------------------------------------------------------------------------


def test_drop_invalid_keeps_valid_rows_and_explains_rejects() -> None:
    df = _set(_set(_frame(), 3, c.AMOUNT, "-1"), 3, c.CURRENCY, "USD")
    df = _set(df, 5, c.OUTCOME, "ok")
    result = validate_attempts(df.assign(note="kept in rejects"), drop_invalid=True)
    assert result.report.n_valid == 3
    assert set(result.clean[c.ATTEMPT_ID]) == {"at_1", "at_2", "at_4"}
    rejects = result.rejects
    assert list(rejects["row"]) == [3, 5]
    assert rejects.loc[0, "reason"] == (
        "amount: not positive (must be > 0 minor units); "
        "currency: currency code must be lower-case ISO 4217"
    )
    assert str(rejects.loc[1, "reason"]).startswith("outcome: ")
    assert rejects.loc[0, c.AMOUNT] == "-1"  # raw value, as given
    assert rejects.loc[0, "note"] == "kept in rejects"


def test_charge_level_issue_rejects_only_the_offending_rows() -> None:
    df = _set(_frame(), 1, c.ATTEMPTED_AT, "2024-05-06T10:00:00Z")  # after ch_b's success
    result = validate_attempts(df, drop_invalid=True)
    assert list(result.rejects["row"]) == [1]
    assert "at_2" in set(result.clean[c.ATTEMPT_ID])


def test_unknown_decline_codes_are_kept_and_counted() -> None:
    df = _set(_set(_frame(), 1, c.DECLINE_CODE, "martian_decline"), 3, c.DECLINE_CODE, "zz9")
    df = _set(df, 4, c.DECLINE_CODE, "martian_decline")
    result = validate_attempts(df)
    assert result.report.ok
    assert result.report.unknown_decline_codes == {"martian_decline": 2, "zz9": 1}
    assert result.report.decline_families["unknown"] == 3
    assert set(result.clean[c.DECLINE_CODE].dropna()) >= {"martian_decline", "zz9"}
    assert "'martian_decline': 2" in result.report.format()


def test_contract_error_carries_the_report() -> None:
    with pytest.raises(ContractError) as info:
        validate_attempts(_set(_frame(), 2, c.CURRENCY, "usdx"))
    assert not info.value.report.ok
    assert isinstance(info.value, ValueError)
    assert "[currency_unknown]" in str(info.value)


def test_large_random_table_matches_row_by_row_reference() -> None:
    """Vectorised checks agree with a plain per-row reference on a mixed table."""
    rng = np.random.default_rng(3)
    n = 400
    df = pd.concat([_frame()] * (n // 5), ignore_index=True)
    df[c.ATTEMPT_ID] = [f"at_{i}" for i in range(n)]
    df[c.CHARGE_ID] = [f"ch_{i}" for i in range(n)]
    df[c.OUTCOME] = "failed"
    df[c.DECLINE_CODE] = "do_not_honor"
    amounts = rng.choice(["100", "0", "-3", "1.5", "x", "7"], size=n)
    df[c.AMOUNT] = amounts
    result = validate_attempts(df, drop_invalid=True)
    expected_bad = {i + 1 for i, a in enumerate(amounts) if a not in {"100", "7"}}  # 1-based rows
    assert set(result.rejects["row"]) == expected_bad
    assert result.report.n_valid == n - len(expected_bad)


# ---------------------------------------------------------------------------------------------
# ISO code lists
# ---------------------------------------------------------------------------------------------


def test_iso_lists_are_complete_and_cased() -> None:
    assert len(COUNTRIES_ISO) == 249
    assert {"US", "GB", "DE", "BR", "JP", "AQ"} <= COUNTRIES_ISO
    assert "XK" in COUNTRIES and "UK" not in COUNTRIES
    assert all(code.isupper() and len(code) == 2 for code in COUNTRIES)
    assert len(CURRENCIES_ACTIVE) >= 175
    assert {"usd", "eur", "gbp", "jpy", "brl", "xcg", "zwg", "sle"} <= CURRENCIES_ACTIVE
    assert "hrk" in CURRENCIES and "hrk" not in CURRENCIES_ACTIVE
    assert all(code.islower() and len(code) == 3 for code in CURRENCIES)


def test_categorical_and_mixed_object_columns_are_accepted() -> None:
    df = _frame()
    df[c.CARD_FUNDING] = df[c.CARD_FUNDING].astype("category")
    df[c.ATTEMPT_ID] = pd.Series([1, 2, "x", 4, 5], dtype=object)
    clean = validate_attempts(df).clean
    assert clean[c.CARD_FUNDING].dtype == "str"
    assert sorted(clean[c.ATTEMPT_ID]) == ["1", "2", "4", "5", "x"]


def test_column_shaped_garbage_rejects_every_row_with_its_reasons() -> None:
    """Rows of random text in every column (issue 13, item 9): every row rejected, each with
    its reasons; the reasons are built per distinct set of broken rules (no per-row groupby)."""
    rng = np.random.default_rng(3)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    n = 2000
    words = ["".join(w) for w in alphabet[rng.integers(0, 36, size=(n, 8))]]
    raw = pd.DataFrame({col: rng.permutation(words) for col in c.ALL_COLUMNS})
    result = validate_attempts(raw, drop_invalid=True)
    assert result.report.n_valid == 0
    assert len(result.rejects) == n
    reasons = result.rejects["reason"]
    assert reasons.str.contains("amount: ").all()
    assert reasons.str.contains("attempted_at: ").all()
    first = reasons.iloc[0].split("; ")
    assert first == sorted(set(first), key=first.index)  # no rule twice
