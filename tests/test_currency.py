"""Minor units and exchange rates for reporting amounts in one currency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retryopt.features.currency import (
    REFERENCE_UNITS_PER_USD,
    FxRates,
    currency_exponent,
    load_fx_rates,
)


@pytest.mark.parametrize(
    ("currency", "exponent"),
    [("usd", 2), ("USD", 2), ("jpy", 0), ("krw", 0), ("kwd", 3), ("inr", 2), ("huf", 2)],
)
def test_currency_exponent(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent


def test_to_reporting_converts_minor_units_of_each_currency() -> None:
    fx = FxRates()
    out = fx.to_reporting(
        np.array([900, 75_600, 1_350, 3_000, 828]),
        np.array(["usd", "inr", "JPY", "jpy", "eur"], dtype=object),
    )
    # 75,600 paise = INR 756 = $9; 1,350 yen = $9; 828 cents of a euro = $9
    np.testing.assert_allclose(out, [9.0, 9.0, 9.0, 20.0, 9.0])
    assert REFERENCE_UNITS_PER_USD["usd"] == 1.0


def test_unknown_currency_is_named_with_its_row_count() -> None:
    with pytest.raises(ValueError, match=r"'kwd' \(2 rows\).*--fx-rates"):
        FxRates().to_reporting(np.array([1, 2, 3]), np.array(["kwd", "usd", "kwd"], dtype=object))


def test_reporting_in_euros() -> None:
    fx = FxRates(reporting="eur")
    np.testing.assert_allclose(
        fx.to_reporting(np.array([100, 92]), np.array(["usd", "eur"], dtype=object)), [0.92, 0.92]
    )


def test_load_fx_rates_overrides_and_extends(tmp_path: Path) -> None:
    path = tmp_path / "fx.json"
    path.write_text(json.dumps({"EUR": 0.9, "kwd": 0.31}), encoding="utf-8")
    fx = load_fx_rates(path)
    assert fx.units_per_usd["eur"] == 0.9 and fx.units_per_usd["gbp"] == 0.79
    # 10,000 fils = 10 KWD = 32.26 USD
    np.testing.assert_allclose(
        fx.to_reporting(np.array([10_000]), np.array(["kwd"], dtype=object)), [10 / 0.31]
    )
    assert fx.source == str(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("[1, 2]", "JSON object"),
        ('{"euro": 0.9}', "not an ISO 4217"),
        ('{"eur": "0.9"}', "must be a number"),
        ('{"eur": -1}', "positive"),
        ('{"usd": 2}', "'usd' must be 1"),
        ("{not json", "cannot read"),
    ],
)
def test_bad_rates_files_are_named(tmp_path: Path, payload: str, message: str) -> None:
    path = tmp_path / "fx.json"
    path.write_text(payload, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_fx_rates(path)


def test_reporting_currency_needs_a_rate() -> None:
    with pytest.raises(ValueError, match="reporting currency 'xyz'"):
        FxRates(reporting="xyz")
