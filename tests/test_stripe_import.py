"""Stripe import: Charge objects / Dashboard CSV -> attempt contract, and `retryopt import-stripe`.

Fixtures in tests/fixtures/stripe are shaped like Stripe's documented objects
(docs.stripe.com/api/charges/object) and the Dashboard "unified payments" export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from retryopt.cli import app
from retryopt.features import contract as c
from retryopt.features.importing import (
    SKIP_DUPLICATE,
    SKIP_INCOMPLETE_CARD,
    SKIP_INVALID,
    SKIP_MISSING_CUSTOMER,
    SKIP_NO_DECLINE_CODE,
    SKIP_NON_CARD,
    SKIP_NOT_A_CHARGE,
    SKIP_PENDING,
    SKIP_UNKNOWN_STATUS,
    SKIP_UNREADABLE,
    RecordError,
    normalize_brand,
    parse_major_amount,
)
from retryopt.features.stripe_import import (
    choose_decline_code,
    import_stripe_files,
    map_csv_header,
    parse_charge_object,
    parse_created_text,
)

FIXTURES = Path(__file__).parent / "fixtures" / "stripe"
LIST_JSON = FIXTURES / "charges_list.json"
ARRAY_JSON = FIXTURES / "charges_array.json"
JSONL = FIXTURES / "charges.jsonl"
CSV = FIXTURES / "unified_payments.csv"

# Charge ids in the fixtures
A0 = "ch_3PA0aaLkdIwHu7ix0aaaaaa0"
A1, A2, A3 = (f"ch_3PA1aaLkdIwHu7ix0aaaaaa{i}" for i in (1, 2, 3))
B1, B2, B3 = (f"ch_3PB1bbLkdIwHu7ix0bbbbbb{i}" for i in (1, 2, 3))
C1, C2 = "ch_3PC1ccLkdIwHu7ix0cccccc1", "ch_3PC2ccLkdIwHu7ix0cccccc2"
T0 = pd.Timestamp("2024-06-01", tz="UTC")


def _by_id(frame: pd.DataFrame) -> Any:
    """Attempts indexed by attempt id (typed Any: scalar ``.loc`` cells defeat pandas-stubs)."""
    return frame.set_index(c.ATTEMPT_ID)


def _list_fixture() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(LIST_JSON.read_text())["data"]
    return data


# ------------------------------------------------------------------ fixture shape


def test_fixtures_follow_the_documented_charge_object() -> None:
    outcome_keys = {
        "advice_code",
        "network_advice_code",
        "network_decline_code",
        "network_status",
        "reason",
        "risk_level",
        "risk_score",
        "seller_message",
        "type",
    }
    card_keys = {"brand", "checks", "country", "exp_month", "exp_year", "fingerprint", "funding"}
    card_keys |= {"last4", "network", "three_d_secure", "wallet"}
    for charge in _list_fixture():
        assert charge["object"] == "charge"
        assert set(charge["outcome"]) == outcome_keys
        assert {"invoice", "payment_intent", "customer", "failure_code", "status"} <= set(charge)
        if charge["payment_method_details"]["type"] == "card":
            assert card_keys <= set(charge["payment_method_details"]["card"])


# ------------------------------------------------------------------ JSON charges


def test_list_endpoint_page_converts_and_groups_by_invoice_then_payment_intent() -> None:
    result = import_stripe_files([LIST_JSON])
    att = _by_id(result.attempts)
    assert result.n_records == 10
    assert len(att) == 8
    assert att.loc[A1, c.CHARGE_ID] == "in_1PA1aaLkdIwHu7ixAAAA1111"
    assert att.loc[A2, c.CHARGE_ID] == att.loc[A3, c.CHARGE_ID] == att.loc[A1, c.CHARGE_ID]
    # cus_B has no invoice on the charge: grouped by its PaymentIntent
    assert set(att.loc[[B1, B2, B3], c.CHARGE_ID]) == {"pi_3PB1bbLkdIwHu7ix0bbbbbb1"}
    assert result.grouped_by == {"invoice": 3, "payment_intent": 1}
    assert result.n_charges == 4
    assert att.loc[A1, c.CUSTOMER_ID] == "cus_QAaaaaaaaaaaaa"
    assert att.loc[A1, c.ATTEMPTED_AT] == T0
    assert att.loc[A1, c.AMOUNT] == 2000
    assert att.loc[B1, c.CURRENCY] == "gbp"
    assert att.loc[A1, c.OUTCOME] == c.FAILED
    assert att.loc[A3, c.OUTCOME] == c.SUCCEEDED
    assert att.loc[A1, c.CARD_BRAND] == "visa"
    assert att.loc[A1, c.CARD_FUNDING] == "debit"
    assert att.loc[B1, c.CARD_COUNTRY] == "GB"
    assert (att.loc[B1, c.CARD_EXP_MONTH], att.loc[B1, c.CARD_EXP_YEAR]) == (11, 2026)
    assert att.loc[A1, c.CARD_ID] == "Xt5EWLLDS7FJjR1c"
    assert att.loc[A1, c.ISSUER] == "Chase Bank"
    assert pd.isna(att.loc[B1, c.ISSUER])
    assert att[c.CUSTOMER_TIMEZONE].isna().all()
    assert att[c.RETRY_PROPENSITY].isna().all()
    assert result.attempts[c.ATTEMPTED_AT].is_monotonic_increasing


def test_charge_without_invoice_or_payment_intent_is_its_own_group() -> None:
    result = import_stripe_files([ARRAY_JSON])
    att = _by_id(result.attempts)
    legacy = "ch_1E5legacyLkdIwHu7ixLEGACY"
    assert att.loc[legacy, c.CHARGE_ID] == legacy
    # legacy charge: card details come from the `source` card object ("Visa" -> visa)
    assert att.loc[legacy, c.CARD_BRAND] == "visa"
    assert att.loc[legacy, c.DECLINE_CODE] == "expired_card"
    assert att.loc["ch_3PF1ffLkdIwHu7ix0ffffff1", c.AMOUNT] == 1500  # JPY: zero-decimal
    assert result.grouped_by == {"charge": 1, "invoice": 1}


def test_output_has_contract_columns_and_dtypes() -> None:
    att = import_stripe_files([LIST_JSON]).attempts
    assert list(att.columns) == list(c.ALL_COLUMNS)
    for col in c.TIMESTAMP_COLUMNS:
        assert str(att[col].dtype) == "datetime64[ns, UTC]"
    for col in c.INTEGER_COLUMNS:
        assert att[col].dtype == "int64"
    assert att[c.RETRY_PROPENSITY].dtype == "float64"
    for col in c.STRING_COLUMNS:
        assert pd.api.types.is_string_dtype(att[col]), col


@pytest.mark.parametrize(
    ("reason", "decline", "failure", "network", "expected"),
    [
        ("insufficient_funds", None, "card_declined", "51", "insufficient_funds"),
        ("generic_decline", None, "card_declined", "05", "05"),  # generic -> ISO code
        (None, None, "card_declined", "65", "65"),
        (None, None, "card_declined", None, "card_declined"),
        ("generic_decline", None, "card_declined", None, "generic_decline"),
        (None, "do_not_honor", "card_declined", "05", "do_not_honor"),  # decline_code field
        (None, None, "expired_card", "54", "expired_card"),
        ("highest_risk_level", None, "card_declined", None, "highest_risk_level"),
        (None, None, None, "n7", "N7"),
        ("", "  ", "", "", None),
        ("Insufficient funds", None, None, None, "insufficient_funds"),
    ],
)
def test_decline_code_precedence(
    reason: str | None,
    decline: str | None,
    failure: str | None,
    network: str | None,
    expected: str | None,
) -> None:
    got = choose_decline_code(
        outcome_reason=reason,
        decline_code=decline,
        failure_code=failure,
        network_decline_code=network,
    )
    assert got == expected


def test_decline_and_advice_codes_from_charge_objects() -> None:
    att = _by_id(import_stripe_files([LIST_JSON]).attempts)
    assert att.loc[A1, c.DECLINE_CODE] == "insufficient_funds"  # outcome.reason beats ISO 51
    assert att.loc[A2, c.DECLINE_CODE] == "05"  # generic_decline + network code 05
    assert att.loc[B1, c.DECLINE_CODE] == "65"  # only failure_code card_declined + 65
    assert att.loc[B2, c.DECLINE_CODE] == "highest_risk_level"  # Radar block
    assert att.loc[[A0, A3, B3, C2], c.DECLINE_CODE].isna().all()
    assert att.loc[B1, c.NETWORK_ADVICE_CODE] == "24"  # Mastercard MAC beats advice_code
    assert att.loc[A1, c.NETWORK_ADVICE_CODE] == "try_again_later"  # fallback: advice_code
    assert pd.isna(att.loc[A3, c.NETWORK_ADVICE_CODE])


def test_decline_code_from_last_payment_error_when_outcome_has_no_reason() -> None:
    charge = dict(_list_fixture()[4])  # B1: reason None, network 65
    charge["outcome"] = {**charge["outcome"], "network_decline_code": None}
    charge["last_payment_error"] = {"code": "card_declined", "decline_code": "do_not_honor"}
    assert parse_charge_object(charge).decline_code == "do_not_honor"


def test_card_added_at_is_first_appearance_of_the_fingerprint_per_customer() -> None:
    result = import_stripe_files([LIST_JSON])
    att = _by_id(result.attempts)
    first_a = T0 - pd.Timedelta(days=30)
    assert (att.loc[[A0, A1, A2, A3], c.CARD_ADDED_AT] == first_a).all()
    # cus_B: the Mastercard is first seen at B1; the replacement Amex at B3 itself
    assert att.loc[B2, c.CARD_ADDED_AT] == att.loc[B1, c.ATTEMPTED_AT]
    assert att.loc[B3, c.CARD_ADDED_AT] == att.loc[B3, c.ATTEMPTED_AT]
    # cus_C: a pending charge (skipped as an attempt) still dates the card
    assert C1 not in att.index
    assert att.loc[C2, c.CARD_ADDED_AT] == T0 + pd.Timedelta(days=1)
    assert "card fingerprint" in result.format_summary()


def test_card_added_at_is_per_customer_and_falls_back_without_fingerprint(tmp_path: Path) -> None:
    base = _list_fixture()[3]  # A3, succeeded, fingerprint Xt5...
    shared_other_customer = dict(base, id="ch_other", customer="cus_other", created=1600000000)
    no_fp_early = json.loads(json.dumps(base))
    no_fp_early.update(id="ch_nofp1", created=1700000000, invoice=None, payment_intent="pi_x")
    no_fp_early["payment_method_details"]["card"]["fingerprint"] = None
    no_fp_late = json.loads(json.dumps(no_fp_early))
    no_fp_late.update(id="ch_nofp2", created=1710000000)
    no_fp_no_last4 = json.loads(json.dumps(no_fp_early))
    no_fp_no_last4.update(id="ch_nofp3", created=1720000000)
    no_fp_no_last4["payment_method_details"]["card"]["last4"] = None
    path = tmp_path / "x.json"
    path.write_text(
        json.dumps([base, shared_other_customer, no_fp_early, no_fp_late, no_fp_no_last4])
    )
    att = _by_id(import_stripe_files([path]).attempts)
    # the same fingerprint at another customer does not age cus_A's card
    assert att.loc[A3, c.CARD_ADDED_AT] == att.loc[A3, c.ATTEMPTED_AT]
    when = pd.Timestamp(1700000000, unit="s", tz="UTC")
    assert att.loc["ch_nofp2", c.CARD_ADDED_AT] == when  # same brand/last4/expiry
    assert att.loc["ch_nofp3", c.CARD_ADDED_AT] == att.loc["ch_nofp3", c.ATTEMPTED_AT]
    assert pd.isna(att.loc["ch_nofp2", c.CARD_ID])


def test_pending_and_non_card_are_skipped_and_counted() -> None:
    result = import_stripe_files([LIST_JSON])
    assert result.skipped_by_reason == {SKIP_NON_CARD: 1, SKIP_PENDING: 1}
    pending = next(s for s in result.skipped if s.reason == SKIP_PENDING)
    assert pending.charge_id == C1
    assert pending.location == "charges_list.json record 8"
    non_card = next(s for s in result.skipped if s.reason == SKIP_NON_CARD)
    assert "sepa_debit" in non_card.detail
    summary = result.format_summary()
    assert "pending: 1" in summary
    assert "non_card_payment_method: 1" in summary


def test_bad_records_in_json_lines_are_reported_not_fatal() -> None:
    result = import_stripe_files([JSONL])
    assert sorted(result.attempts[c.ATTEMPT_ID]) == [A1, A3]
    by_location = {s.location: s for s in result.skipped}
    assert by_location["charges.jsonl line 3"].reason == SKIP_INVALID
    assert "not valid JSON" in by_location["charges.jsonl line 3"].detail
    assert by_location["charges.jsonl line 4"].reason == SKIP_NOT_A_CHARGE
    assert by_location["charges.jsonl line 5"].reason == SKIP_INVALID
    assert "amount" in by_location["charges.jsonl line 5"].detail
    assert "created is missing" in by_location["charges.jsonl line 6"].detail
    assert by_location["charges.jsonl line 7"].reason == SKIP_NO_DECLINE_CODE
    assert result.n_records == 7


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"status": "requires_capture"}, SKIP_UNKNOWN_STATUS),
        ({"customer": None}, SKIP_MISSING_CUSTOMER),
        ({"amount": 0}, SKIP_INVALID),
        ({"amount": 12.5}, SKIP_INVALID),
        ({"currency": "us dollars"}, SKIP_INVALID),
        ({"id": None}, SKIP_INVALID),
        ({"created": "yesterday"}, SKIP_INVALID),
        ({"payment_method_details": None}, SKIP_NON_CARD),
        ({"object": "payment_intent"}, SKIP_NOT_A_CHARGE),
    ],
)
def test_each_kind_of_bad_charge_is_reported(
    tmp_path: Path, patch: dict[str, Any], reason: str
) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(dict(_list_fixture()[1], **patch)) + "\n")
    result = import_stripe_files([path])
    assert result.attempts.empty
    assert [s.reason for s in result.skipped] == [reason]
    assert result.skipped[0].location == "one.jsonl line 1"


def test_card_without_country_is_reported(tmp_path: Path) -> None:
    charge = json.loads(json.dumps(_list_fixture()[1]))
    charge["payment_method_details"]["card"]["country"] = None
    path = tmp_path / "c.json"
    path.write_text(json.dumps(charge))
    result = import_stripe_files([path])
    assert result.skipped_by_reason == {SKIP_INCOMPLETE_CARD: 1}
    assert "country" in result.skipped[0].detail


def test_json_variants_single_object_event_and_paged_jsonl(tmp_path: Path) -> None:
    charges = _list_fixture()
    single = tmp_path / "single.json"
    single.write_text(json.dumps(charges[0]))
    event = tmp_path / "events.jsonl"
    event.write_text(
        json.dumps({"object": "event", "type": "charge.failed", "data": {"object": charges[1]}})
        + "\n"
    )
    pages = tmp_path / "pages.ndjson"
    pages.write_text(
        "\n".join(json.dumps({"object": "list", "data": charges[i : i + 2]}) for i in (2, 4))
    )
    no_suffix = tmp_path / "dump"
    no_suffix.write_text("\n".join(json.dumps(ch) for ch in charges[6:8]))
    result = import_stripe_files([single, event, pages, no_suffix])
    assert result.n_records == 8
    assert len(result.attempts) == 7  # charges[7] is pending
    assert {s.location for s in result.skipped} == {"dump line 2"}


def test_overlapping_inputs_drop_duplicate_charge_ids() -> None:
    result = import_stripe_files([LIST_JSON, JSONL])
    assert result.attempts[c.ATTEMPT_ID].is_unique
    dups = [s for s in result.skipped if s.reason == SKIP_DUPLICATE]
    assert sorted(s.charge_id for s in dups if s.charge_id) == [A1, A3]
    first_a = T0 - pd.Timedelta(days=30)
    assert (_by_id(result.attempts).loc[[A1, A3], c.CARD_ADDED_AT] == first_a).all()


def test_duplicate_keeps_the_settled_copy_over_the_pending_one(tmp_path: Path) -> None:
    charge = _list_fixture()[3]
    pending = dict(charge, status="pending")
    (tmp_path / "a.json").write_text(json.dumps([pending]))
    (tmp_path / "b.json").write_text(json.dumps([charge]))
    result = import_stripe_files([tmp_path / "a.json", tmp_path / "b.json"])
    assert list(result.attempts[c.OUTCOME]) == [c.SUCCEEDED]
    assert result.skipped[0].location == "a.json record 1"


# ------------------------------------------------------------------ Dashboard CSV


def test_dashboard_csv_mapping() -> None:
    result = import_stripe_files([CSV])
    att = _by_id(result.attempts)
    assert len(att) == 6
    assert att.loc[A1, c.DECLINE_CODE] == "insufficient_funds"  # Decline Reason
    assert att.loc[B1, c.DECLINE_CODE] == "do_not_honor"  # from the Seller Message
    refunded = "ch_3PH1hhLkdIwHu7ix0hhhhhh1"
    assert att.loc[refunded, c.OUTCOME] == c.SUCCEEDED  # Refunded: authorization succeeded
    assert att.loc[refunded, c.AMOUNT] == 123456  # "1,234.56"
    assert att.loc[refunded, c.CARD_BRAND] == "amex"  # "American Express"
    assert att.loc["ch_3PH2hhLkdIwHu7ix0hhhhhh2", c.DECLINE_CODE] == "generic_decline"
    assert att.loc[B1, c.CARD_BRAND] == "mastercard"  # "MasterCard"
    assert att.loc[B1, c.CARD_COUNTRY] == "GB"  # "gb"; Card Issue Country, not Address
    assert att.loc[A1, c.CARD_COUNTRY] == "US"
    assert att.loc[B1, c.CURRENCY] == "gbp"
    assert att.loc["ch_3PF1ffLkdIwHu7ix0ffffff1", c.AMOUNT] == 1500  # JPY
    assert att.loc[A1, c.ATTEMPTED_AT] == T0
    assert att.loc[A1, c.CHARGE_ID] == att.loc[A3, c.CHARGE_ID] == "in_1PA1aaLkdIwHu7ixAAAA1111"
    assert att.loc[B1, c.CHARGE_ID] == "pi_3PB1bbLkdIwHu7ix0bbbbbb1"
    # no fingerprint: card dated by (customer, brand, last4, expiry)
    later = "ch_3PH2hhLkdIwHu7ix0hhhhhh2"
    assert att.loc[later, c.CARD_ADDED_AT] == att.loc[refunded, c.ATTEMPTED_AT]
    reasons = {s.location: s.reason for s in result.skipped}
    assert reasons == {
        "unified_payments.csv row 6": SKIP_PENDING,
        "unified_payments.csv row 7": SKIP_NON_CARD,
        "unified_payments.csv row 9": SKIP_INVALID,
    }


def test_csv_headers_are_matched_case_insensitively_and_old_variants(tmp_path: Path) -> None:
    text = (
        "ID,created (utc),AMOUNT,currency,STATUS,customer_id,card_brand,card funding,"
        "CARD ISSUE COUNTRY,Card Exp Month,card_exp_year,Card Fingerprint,decline_reason,"
        "Invoice ID,payment_intent,Network Decline Code\n"
        "ch_1,2024-06-01T02:00:00+02:00,10.00,EUR,failed,cus_1,visa,Debit,de,1,2030,fp1,"
        "generic_decline,in_1,pi_1,05\n"
        "ch_2,2024-06-02 00:00:00Z,10.00,EUR,paid,cus_1,visa,Debit,de,1,2030,fp1,,in_1,pi_1,\n"
    )
    path = tmp_path / "export.txt"
    path.write_text(text)
    result = import_stripe_files([path], fmt="csv")
    att = _by_id(result.attempts)
    assert att.loc["ch_1", c.ATTEMPTED_AT] == T0
    assert att.loc["ch_1", c.DECLINE_CODE] == "05"  # generic + network code
    assert att.loc["ch_1", c.CHARGE_ID] == "in_1"
    assert att.loc["ch_2", c.CARD_ADDED_AT] == T0
    assert att.loc["ch_1", c.CARD_FUNDING] == "debit"


def test_csv_missing_required_column_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,Amount,Currency,Status\nch_1,1.00,usd,Paid\n")
    result = import_stripe_files([path])
    assert result.attempts.empty
    assert result.skipped[0].reason == SKIP_UNREADABLE
    assert "'created date (utc)'" in result.skipped[0].detail
    with pytest.raises(RecordError, match="created"):
        map_csv_header(["id", "Amount", "Currency", "Status"])


@pytest.mark.parametrize(
    ("text", "currency", "expected"),
    [
        ("20.00", "usd", 2000),
        ("399,00", "eur", 39900),
        ("1.234,56", "eur", 123456),
        ("1,234.56", "usd", 123456),
        ("1,500", "usd", 150000),
        ("1500", "jpy", 1500),
        ("1,500", "jpy", 1500),
        ("12.345", "kwd", 12345),
        ("0.5", "usd", 50),
    ],
)
def test_major_amounts_to_minor_units(text: str, currency: str, expected: int) -> None:
    assert parse_major_amount(text, currency) == expected


@pytest.mark.parametrize(("text", "currency"), [("10.5", "jpy"), ("abc", "usd"), ("", "usd")])
def test_bad_major_amounts(text: str, currency: str) -> None:
    with pytest.raises(RecordError):
        parse_major_amount(text, currency)


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        ("2024-06-01 00:00:00", "UTC", "2024-06-01T00:00:00Z"),
        ("2024-06-01 00:00", "UTC", "2024-06-01T00:00:00Z"),
        ("2024-06-01T00:00:00Z", "UTC", "2024-06-01T00:00:00Z"),
        ("2024-06-01T02:00:00+02:00", "UTC", "2024-06-01T00:00:00Z"),
        ("2024-06-01 02:00:00", "Europe/Berlin", "2024-06-01T00:00:00Z"),
        ("1717200000", "UTC", "2024-06-01T00:00:00Z"),
    ],
)
def test_created_dates(text: str, zone: str, expected: str) -> None:
    assert parse_created_text(text, zone=zone) == pd.Timestamp(expected)


def test_created_header_with_zone_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "berlin.csv"
    path.write_text(
        "id,Created date (Europe/Berlin),Amount,Currency,Status,Customer ID,Card Brand,"
        "Card Issue Country,Card Exp Month,Card Exp Year\n"
        "ch_1,2024-06-01 02:00:00,5.00,eur,Paid,cus_1,Visa,DE,1,2030\n"
    )
    att = import_stripe_files([path]).attempts
    assert att.loc[0, c.ATTEMPTED_AT] == T0
    path.write_text(path.read_text().replace("Europe/Berlin", "Mars/Olympus"))
    result = import_stripe_files([path])
    assert result.attempts.empty
    assert result.skipped[0].reason == SKIP_UNREADABLE
    assert "Mars/Olympus" in result.skipped[0].detail


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Visa", "visa"),
        ("American Express", "amex"),
        ("MasterCard", "mastercard"),
        ("Diners Club", "diners"),
        ("UnionPay", "unionpay"),
        ("cartes_bancaires", "cartes_bancaires"),
        (None, "unknown"),
    ],
)
def test_brand_names(raw: str | None, expected: str) -> None:
    assert normalize_brand(raw) == expected


def test_unknown_format_and_missing_file() -> None:
    with pytest.raises(ValueError, match="format"):
        import_stripe_files([LIST_JSON], fmt="xml")
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        import_stripe_files([FIXTURES / "nope.json"])


# ------------------------------------------------------------------ command line


def test_cli_end_to_end_writes_a_valid_contract_file(tmp_path: Path) -> None:
    from retryopt.features.validation import load_attempts

    out = tmp_path / "attempts.csv"
    result = CliRunner().invoke(
        app, ["import-stripe", str(LIST_JSON), str(ARRAY_JSON), str(CSV), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    loaded = load_attempts(out)
    # 8 (list page) + 2 (array) + 6 (CSV) minus the 4 charges the CSV shares with the JSON
    # inputs (A1, A3, B1 and the JPY charge): the first copy is kept
    assert len(loaded) == 12
    assert loaded[c.ATTEMPT_ID].is_unique
    assert "pending: 1" in result.output
    assert "card fingerprint" in result.output
    assert "attempts written:" in result.output
    assert str(out) in result.output


def test_cli_writes_parquet(tmp_path: Path) -> None:
    from retryopt.features.validation import load_attempts

    out = tmp_path / "attempts.parquet"
    result = CliRunner().invoke(app, ["import-stripe", str(LIST_JSON), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(load_attempts(out)) == 8


def _two_successes_in_one_invoice(tmp_path: Path) -> Path:
    charges = _list_fixture()
    second = dict(charges[3], id="ch_second_success", created=charges[3]["created"] + 60)
    path = tmp_path / "conflict.json"
    path.write_text(json.dumps([*charges[:4], second]))
    return path


def test_cli_is_strict_by_default(tmp_path: Path) -> None:
    out = tmp_path / "attempts.csv"
    path = _two_successes_in_one_invoice(tmp_path)
    result = CliRunner().invoke(app, ["import-stripe", str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert "nothing written" in result.output
    assert not out.exists()


def test_cli_drop_invalid_writes_clean_rows_and_rejects(tmp_path: Path) -> None:
    from retryopt.features.validation import load_attempts

    out = tmp_path / "attempts.csv"
    path = _two_successes_in_one_invoice(tmp_path)
    result = CliRunner().invoke(
        app, ["import-stripe", str(path), "--out", str(out), "--drop-invalid"]
    )
    assert result.exit_code == 0, result.output
    rejects = tmp_path / "attempts.rejects.csv"
    assert rejects.exists()
    assert len(pd.read_csv(rejects)) >= 1
    assert "ch_second_success" not in set(load_attempts(out)[c.ATTEMPT_ID])


def test_cli_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "a.csv"
    runner = CliRunner()
    bad_format = runner.invoke(
        app, ["import-stripe", str(LIST_JSON), "-o", str(out), "--format", "xml"]
    )
    assert bad_format.exit_code != 0
    missing = runner.invoke(app, ["import-stripe", str(tmp_path / "nope.json"), "-o", str(out)])
    assert missing.exit_code == 2
    assert "not found" in missing.output
    bad_out = runner.invoke(app, ["import-stripe", str(LIST_JSON), "-o", str(tmp_path / "a.txt")])
    assert bad_out.exit_code == 2
    assert not (tmp_path / "a.txt").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    nothing = runner.invoke(app, ["import-stripe", str(empty), "-o", str(out)])
    assert nothing.exit_code == 1
    assert not out.exists()


# --- hostile nesting (issue 13, item 8) -------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".txt"])
def test_a_deeply_nested_json_file_is_reported_not_raised(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 1_000_000 + "]" * 1_000_000)
    result = import_stripe_files([path])
    assert len(result.attempts) == 0
    assert [s.reason for s in result.skipped] == [SKIP_UNREADABLE]
    assert "nested too deeply" in result.skipped[0].detail


def test_a_deeply_nested_json_line_is_skipped_and_the_others_imported(tmp_path: Path) -> None:
    good = json.loads(LIST_JSON.read_text())["data"]
    lines = [json.dumps(good[0]), "[" * 200_000 + "]" * 200_000, json.dumps(good[1])]
    path = tmp_path / "charges.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = import_stripe_files([path])
    assert result.n_records == 3  # read: two charges and the hostile line
    assert len(result.attempts) == 2
    deep = [s for s in result.skipped if s.location.endswith("line 2")]
    assert [s.reason for s in deep] == [SKIP_INVALID]


def test_nesting_below_the_parser_limit_costs_no_recursion(tmp_path: Path) -> None:
    path = tmp_path / "nested.json"
    path.write_text("[" * 900 + "]" * 900)  # parses; not a Stripe shape
    result = import_stripe_files([path])
    assert len(result.attempts) == 0
