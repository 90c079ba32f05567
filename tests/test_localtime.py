"""Tests of country default time zones and per-row zone resolution."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from retryopt.features.localtime import (
    COUNTRY_DEFAULT_TIMEZONE,
    FALLBACK_TIMEZONE,
    canonical_timezone,
    constant_offset,
    country_default_timezone,
    is_valid_timezone,
    local_hours,
    resolve_timezones,
    resolve_zone,
)
from retryopt.serving.schemas import ChargeIn

EU_EEA = ["AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU",
          "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
          "IS", "LI", "NO"]  # fmt: skip
REQUIRED = [*EU_EEA, "GB", "CH", "US", "CA", "MX", "BR", "AR", "CL", "CO", "AU", "NZ", "JP", "KR",
            "IN", "SG", "HK", "ZA", "NG", "AE"]  # fmt: skip


def test_covers_required_countries() -> None:
    assert len(COUNTRY_DEFAULT_TIMEZONE) >= 60
    missing = sorted(set(REQUIRED) - set(COUNTRY_DEFAULT_TIMEZONE))
    assert not missing


@pytest.mark.parametrize(("country", "zone"), sorted(COUNTRY_DEFAULT_TIMEZONE.items()))
def test_every_default_zone_is_valid(country: str, zone: str) -> None:
    assert len(country) == 2 and country.isupper()
    assert is_valid_timezone(zone)
    assert canonical_timezone(zone) == zone
    zoneinfo.ZoneInfo(zone)  # loads


@pytest.mark.parametrize(
    ("country", "zone"),
    [
        ("US", "America/New_York"),
        ("CA", "America/Toronto"),
        ("BR", "America/Sao_Paulo"),
        ("AU", "Australia/Sydney"),
        ("RU", "Europe/Moscow"),
        ("MX", "America/Mexico_City"),
        ("GB", "Europe/London"),
        ("IN", "Asia/Kolkata"),
    ],
)
def test_most_populous_zone_choices(country: str, zone: str) -> None:
    assert COUNTRY_DEFAULT_TIMEZONE[country] == zone


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("Europe/Paris", True),
        ("UTC", True),
        ("america/new_york", True),
        (" Asia/Tokyo ", True),
        ("Mars/Olympus_Mons", False),
        ("", False),
        ("   ", False),
        ("../../etc/passwd", False),
        ("/etc/localtime", False),
        (None, False),
        (float("nan"), False),
    ],
)
def test_is_valid_timezone(name: object, valid: bool) -> None:
    assert is_valid_timezone(name) is valid  # type: ignore[arg-type]


def test_canonical_spelling() -> None:
    assert canonical_timezone(" america/new_york") == "America/New_York"
    assert canonical_timezone("nowhere") is None


@pytest.mark.parametrize(
    ("country", "zone"),
    [("fr", "Europe/Paris"), (" de ", "Europe/Berlin"), ("ZZ", "UTC"), (None, "UTC")],
)
def test_country_default_timezone(country: str | None, zone: str) -> None:
    assert country_default_timezone(country) == zone


@pytest.mark.parametrize(
    ("zone", "winter", "summer"),
    [
        ("America/New_York", -5, -4),
        ("Europe/Paris", 1, 2),
        ("Australia/Sydney", 11, 10),  # southern hemisphere: DST in January
        ("Asia/Tokyo", 9, 9),  # no DST
    ],
)
def test_dst_offsets(zone: str, winter: int, summer: int) -> None:
    tz = zoneinfo.ZoneInfo(zone)
    jan = dt.datetime(2025, 1, 15, 12, tzinfo=tz).utcoffset()
    jul = dt.datetime(2025, 7, 15, 12, tzinfo=tz).utcoffset()
    assert jan == dt.timedelta(hours=winter)
    assert jul == dt.timedelta(hours=summer)


def test_dst_through_pandas_conversion() -> None:
    utc = pd.Series(pd.to_datetime(["2025-01-15T17:00:00Z", "2025-07-15T17:00:00Z"]))
    local = utc.dt.tz_convert(COUNTRY_DEFAULT_TIMEZONE["US"])
    assert local.dt.hour.tolist() == [12, 13]


@pytest.mark.parametrize("dtype", ["str", "object"])
def test_resolve_timezones(dtype: str) -> None:
    index = pd.Index([5, 3, 9, 1, 7, 2, 8])
    tz = pd.Series(
        ["Europe/Paris", None, "bogus/zone", " america/chicago", "", "UTC", None],
        index=index,
        dtype=dtype,
    )
    cc = pd.Series(["US", "US", "br", None, "ZZ", "FR", None], index=index, dtype=dtype)
    out = resolve_timezones(tz, cc)
    assert out.index.equals(index)
    assert out.dtype == "str"
    assert out.name == "timezone"
    assert out.tolist() == [
        "Europe/Paris",  # customer zone wins
        "America/New_York",  # missing zone -> country default
        "America/Sao_Paulo",  # invalid zone -> country default (country case-insensitive)
        "America/Chicago",  # customer zone, canonical spelling
        FALLBACK_TIMEZONE,  # blank zone, unknown country
        "UTC",  # valid customer zone
        FALLBACK_TIMEZONE,  # nothing at all
    ]


def test_resolve_timezones_matches_rowwise_on_random_input() -> None:
    rng = np.random.default_rng(11)
    zones = np.array([None, "", "Europe/Berlin", "asia/tokyo", "nope", "UTC"], dtype=object)
    countries = np.array([None, "US", "gb", "XX", "JP", "AU"], dtype=object)
    n = 2000
    tz = pd.Series(zones[rng.integers(0, len(zones), n)], dtype="str")
    cc = pd.Series(countries[rng.integers(0, len(countries), n)], dtype="str")
    out = resolve_timezones(tz, cc)
    for z, c, got in zip(tz, cc, out, strict=True):
        zone = canonical_timezone(z) if isinstance(z, str) else None
        expected = zone or country_default_timezone(c if isinstance(c, str) else None)
        assert got == expected


def test_resolve_timezones_all_missing_float_column() -> None:
    tz = pd.Series([np.nan, np.nan])
    cc = pd.Series(["DE", "NZ"], dtype="str")
    assert resolve_timezones(tz, cc).tolist() == ["Europe/Berlin", "Pacific/Auckland"]


def test_resolve_timezones_empty_and_length_mismatch() -> None:
    empty = resolve_timezones(pd.Series([], dtype="str"), pd.Series([], dtype="str"))
    assert len(empty) == 0 and empty.dtype == "str"
    with pytest.raises(ValueError, match="customer_timezone has 1 rows but card_country has 2"):
        resolve_timezones(pd.Series(["UTC"]), pd.Series(["US", "FR"]))


# --- one zone rule for the contract, the API and the features -------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("Europe/Paris", "Europe/Paris"),
        (" europe/paris ", "Europe/Paris"),
        ("AMERICA/NEW_YORK", "America/New_York"),
        ("UTC", "UTC"),
        ("Mars/Olympus_Mons", None),
        ("", None),
        ("../../etc/passwd", None),
    ],
)
def test_one_zone_rule_everywhere(given: str, canonical: str | None) -> None:
    """Validation, the API schema and feature resolution accept and spell a zone alike."""
    assert canonical_timezone(given) == canonical
    assert is_valid_timezone(given) is (canonical is not None)
    resolved = resolve_zone(given, "DE")
    assert resolved == (canonical if canonical is not None else "Europe/Berlin")
    card = {"brand": "visa", "funding": "debit", "country": "DE",
            "added_at": "2025-01-01T00:00:00Z", "exp_month": 1, "exp_year": 2030}  # fmt: skip
    charge = {"charge_id": "c", "customer_id": "u", "amount": 100, "currency": "eur", "card": card}
    if not given.strip():
        # Blank is absent, in the API as in the data contract (issue 13): the country's zone.
        parsed = ChargeIn.model_validate({**charge, "customer_timezone": given})
        assert parsed.customer_timezone is None
    elif canonical is None:
        with pytest.raises(ValidationError):
            ChargeIn.model_validate({**charge, "customer_timezone": given})
    else:
        parsed = ChargeIn.model_validate({**charge, "customer_timezone": given})
        assert parsed.customer_timezone == canonical


@pytest.mark.parametrize(
    "zone", ["America/New_York", "Europe/London", "Australia/Sydney", "Africa/Casablanca", "UTC"]
)
def test_local_hours_equal_an_exact_conversion(zone: str) -> None:
    rng = np.random.default_rng(7)
    ns = rng.integers(0, 4_000_000_000, size=5000) * 10**9  # 1970-2096, whole seconds
    times = ns.view("datetime64[ns]")
    want = pd.DatetimeIndex(times).tz_localize("UTC").tz_convert(zone).hour.to_numpy()
    np.testing.assert_array_equal(local_hours(times, zone), want)


def test_constant_offset_sees_a_whole_summer_inside_a_span() -> None:
    """Both ends in winter with a summer between: the offset is not constant."""
    october = int(pd.Timestamp("2025-11-15T12:00Z").value)
    april = int(pd.Timestamp("2026-12-15T12:00Z").value)
    assert constant_offset("America/New_York", october, april) is None
    assert constant_offset("America/New_York", october, october + 3600 * 10**9) == -5 * 3600 * 10**9
    assert constant_offset("UTC", october, april) == 0
