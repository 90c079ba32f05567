"""The processor-neutral import module: an importer for an imaginary processor needs nothing else.

"Acme Pay" exports one dict per transaction with its own field names. Turning those rows into
:class:`ChargeRecord` with the public helpers of :mod:`retryopt.features.importing`, then
:func:`import_records` and :func:`validate_attempts`, must give a valid contract table: this is
the recipe of docs/stripe-import.md ("How to add an importer for another processor").
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from retryopt.features import contract as c
from retryopt.features import importing
from retryopt.features.importing import (
    SKIP_INVALID,
    SKIP_NO_DECLINE_CODE,
    SKIP_UNKNOWN_STATUS,
    STATUS_FAILED,
    STATUS_SUCCEEDED,
    ChargeRecord,
    ImportResult,
    RecordError,
    SkippedRecord,
    clean_text,
    import_records,
    normalize_brand,
    normalize_decline_code,
    normalize_funding,
    parse_major_amount,
    to_int,
)
from retryopt.features.validation import validate_attempts

ACME_ROWS: list[dict[str, Any]] = [
    {
        "txn": "acme_1",
        "at": "2024-03-01T10:00:00+00:00",
        "total": "20.00",
        "ccy": "EUR",
        "result": "DECLINED",
        "reason": "Insufficient Funds",
        "subscriber": "sub_1",
        "bill": "bill_1",
        "scheme": "Visa",
        "kind": "Debit",
        "bin_country": "de",
        "expiry": "12/2027",
        "token": "tok_A",
    },
    {
        "txn": "acme_2",
        "at": "2024-03-04T10:00:00+00:00",
        "total": "20,00",
        "ccy": "EUR",
        "result": "APPROVED",
        "reason": "",
        "subscriber": "sub_1",
        "bill": "bill_1",
        "scheme": "Visa",
        "kind": "Debit",
        "bin_country": "de",
        "expiry": "12/2027",
        "token": "tok_A",
    },
    {
        "txn": "acme_3",
        "at": "2024-03-02T08:30:00+00:00",
        "total": "1500",
        "ccy": "JPY",
        "result": "DECLINED",
        "reason": None,
        "subscriber": "sub_2",
        "bill": None,
        "scheme": "American Express",
        "kind": "credit",
        "bin_country": "JP",
        "expiry": "01/2030",
        "token": "tok_B",
    },
    {"txn": "acme_4", "at": "2024-03-03T00:00:00+00:00", "total": "lots", "result": "APPROVED"},
    {"txn": "acme_5", "at": "2024-03-03T00:00:00+00:00", "total": "1", "result": "REVIEW"},
]
_ACME_STATUS = {"APPROVED": STATUS_SUCCEEDED, "DECLINED": STATUS_FAILED}


def parse_acme_row(row: Mapping[str, Any], *, location: str) -> ChargeRecord:
    """One Acme Pay transaction -> ChargeRecord, with only the public common helpers."""
    txn = clean_text(row.get("txn"))
    if txn is None:
        raise RecordError(SKIP_INVALID, "txn is missing")
    status = _ACME_STATUS.get(clean_text(row.get("result")) or "")
    if status is None:
        raise RecordError(SKIP_UNKNOWN_STATUS, f"result is {row.get('result')!r}")
    currency = (clean_text(row.get("ccy")) or "").lower()
    month, _, year = (clean_text(row.get("expiry")) or "").partition("/")
    return ChargeRecord(
        charge_id=txn,
        status=status,
        created=datetime.fromisoformat(str(row["at"])).astimezone(UTC),
        amount=parse_major_amount(str(row.get("total", "")), currency),
        currency=currency,
        customer=clean_text(row.get("subscriber")),
        invoice=clean_text(row.get("bill")),
        payment_intent=None,
        decline_code=normalize_decline_code(row.get("reason")),
        network_advice_code=None,
        network_decline_code=None,
        card_brand=normalize_brand(row.get("scheme")),
        card_funding=normalize_funding(row.get("kind")),
        card_country=(clean_text(row.get("bin_country")) or "").upper() or None,
        card_exp_month=to_int(month, name="expiry month"),
        card_exp_year=to_int(year, name="expiry year"),
        card_fingerprint=clean_text(row.get("token")),
        card_last4=None,
        issuer=None,
        location=location,
    )


def import_acme(rows: list[dict[str, Any]]) -> ImportResult:
    """The whole Acme Pay importer: parse, collect skips, hand over to the common module."""
    records: list[ChargeRecord] = []
    skipped: list[SkippedRecord] = []
    for i, row in enumerate(rows, start=1):
        where = f"acme export row {i}"
        try:
            records.append(parse_acme_row(row, location=where))
        except RecordError as exc:
            skipped.append(SkippedRecord(where, exc.reason, exc.detail, clean_text(row.get("txn"))))
    return import_records(records, processor="Acme Pay", n_records=len(rows), skipped=skipped)


def test_fake_processor_rows_become_a_valid_contract_table() -> None:
    result = import_acme(ACME_ROWS)
    assert result.n_records == 5
    assert result.skipped_by_reason == {
        SKIP_INVALID: 1,
        SKIP_UNKNOWN_STATUS: 1,
        SKIP_NO_DECLINE_CODE: 1,
    }
    no_code = next(s for s in result.skipped if s.reason == SKIP_NO_DECLINE_CODE)
    assert (no_code.charge_id, no_code.detail) == ("acme_3", "failed charge without a decline code")
    assert result.grouped_by == {"invoice": 1}
    summary = result.format_summary()
    assert summary.startswith("Acme Pay records read:    5")
    assert "Acme Pay charges carry no card-attach time" in summary

    validated = validate_attempts(result.attempts)
    assert validated.report.ok
    att: Any = validated.clean.set_index(c.ATTEMPT_ID)
    assert list(att.index) == ["acme_1", "acme_2"]
    assert set(att[c.CHARGE_ID]) == {"bill_1"}
    assert list(att[c.OUTCOME]) == [c.FAILED, c.SUCCEEDED]
    assert att.loc["acme_1", c.DECLINE_CODE] == "insufficient_funds"
    assert pd.isna(att.loc["acme_2", c.DECLINE_CODE])
    assert list(att[c.AMOUNT]) == [2000, 2000]
    assert (att.loc["acme_1", c.CARD_BRAND], att.loc["acme_1", c.CARD_FUNDING]) == ("visa", "debit")
    assert att.loc["acme_1", c.CARD_COUNTRY] == "DE"
    assert att.loc["acme_2", c.CARD_ID] == "tok_A"
    first_seen = pd.Timestamp("2024-03-01T10:00:00", tz="UTC")
    assert (att[c.CARD_ADDED_AT] == first_seen).all()


def test_failed_record_skipped_by_build_attempts_still_dates_its_card() -> None:
    rows = [dict(ACME_ROWS[2], reason="do not honor"), dict(ACME_ROWS[2], txn="acme_3b")]
    rows[1]["at"] = "2024-02-02T08:30:00+00:00"  # a month earlier, failed without a code
    rows[1]["reason"] = None
    result = import_acme(rows)
    assert result.skipped_by_reason == {SKIP_NO_DECLINE_CODE: 1}
    assert result.skipped[0].charge_id == "acme_3b"
    att: Any = result.attempts.set_index(c.ATTEMPT_ID)
    assert att.loc["acme_3", c.DECLINE_CODE] == "do_not_honor"
    assert att.loc["acme_3", c.AMOUNT] == 1500  # JPY: zero-decimal
    assert att.loc["acme_3", c.CHARGE_ID] == "acme_3"  # no invoice: its own group
    assert att.loc["acme_3", c.CARD_BRAND] == "amex"
    assert att.loc["acme_3", c.CARD_ADDED_AT] == pd.Timestamp("2024-02-02T08:30:00", tz="UTC")


def test_common_module_knows_no_processor() -> None:
    tree = ast.parse(Path(importing.__file__).read_text(encoding="utf-8"))
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert imported
    assert not [name for name in imported if "stripe" in name.lower()]
