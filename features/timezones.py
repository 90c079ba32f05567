"""Customer time zones: IANA zone validation and a default zone per card country.

Retry timing features (local hour, local weekday, payday proximity) need the customer's local
time. The contract's optional ``customer_timezone`` column is used when it holds a valid IANA
zone; otherwise the zone is inferred from ``card_country``.

The default zone of a country is the zone where most of its population lives. For countries
that span several zones (US, CA, MX, BR, AU, RU, ID, KZ, ...) this is an approximation: a
customer in Los Angeles with a US card is placed in ``America/New_York``. Countries not in
:data:`COUNTRY_DEFAULT_TIMEZONE` fall back to ``"UTC"``.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "COUNTRY_DEFAULT_TIMEZONE",
    "FALLBACK_TIMEZONE",
    "canonical_timezone",
    "country_default_timezone",
    "is_valid_timezone",
    "resolve_timezones",
]

FALLBACK_TIMEZONE: Final = "UTC"

# ISO 3166-1 alpha-2 -> IANA zone of the most populous part of the country (tz database,
# zone1970.tab; population by zone from national statistics, rounded judgement).
COUNTRY_DEFAULT_TIMEZONE: Final[Mapping[str, str]] = MappingProxyType(
    {
        # European Union
        "AT": "Europe/Vienna",
        "BE": "Europe/Brussels",
        "BG": "Europe/Sofia",
        "CY": "Asia/Nicosia",
        "CZ": "Europe/Prague",
        "DE": "Europe/Berlin",
        "DK": "Europe/Copenhagen",
        "EE": "Europe/Tallinn",
        "ES": "Europe/Madrid",  # Canary Islands (Atlantic/Canary) are ~5 % of the population
        "FI": "Europe/Helsinki",
        "FR": "Europe/Paris",
        "GR": "Europe/Athens",
        "HR": "Europe/Zagreb",
        "HU": "Europe/Budapest",
        "IE": "Europe/Dublin",
        "IT": "Europe/Rome",
        "LT": "Europe/Vilnius",
        "LU": "Europe/Luxembourg",
        "LV": "Europe/Riga",
        "MT": "Europe/Malta",
        "NL": "Europe/Amsterdam",
        "PL": "Europe/Warsaw",
        "PT": "Europe/Lisbon",  # Azores use Atlantic/Azores
        "RO": "Europe/Bucharest",
        "SE": "Europe/Stockholm",
        "SI": "Europe/Ljubljana",
        "SK": "Europe/Bratislava",
        # Rest of the EEA, other Europe
        "IS": "Atlantic/Reykjavik",
        "LI": "Europe/Vaduz",
        "NO": "Europe/Oslo",
        "CH": "Europe/Zurich",
        "GB": "Europe/London",
        "GG": "Europe/Guernsey",
        "JE": "Europe/Jersey",
        "IM": "Europe/Isle_of_Man",
        "GI": "Europe/Gibraltar",
        "MC": "Europe/Monaco",
        "AD": "Europe/Andorra",
        "SM": "Europe/San_Marino",
        "RS": "Europe/Belgrade",
        "BA": "Europe/Sarajevo",
        "ME": "Europe/Podgorica",
        "MK": "Europe/Skopje",
        "AL": "Europe/Tirane",
        "MD": "Europe/Chisinau",
        "UA": "Europe/Kyiv",
        "BY": "Europe/Minsk",
        "RU": "Europe/Moscow",  # most of the population lives in the Moscow zone
        "TR": "Europe/Istanbul",
        "GE": "Asia/Tbilisi",
        "AM": "Asia/Yerevan",
        "AZ": "Asia/Baku",
        # North America
        "US": "America/New_York",  # Eastern time: the most populous of the US zones
        "CA": "America/Toronto",
        "MX": "America/Mexico_City",
        "PR": "America/Puerto_Rico",
        "GT": "America/Guatemala",
        "CR": "America/Costa_Rica",
        "PA": "America/Panama",
        "DO": "America/Santo_Domingo",
        "JM": "America/Jamaica",
        # South America
        "BR": "America/Sao_Paulo",
        "AR": "America/Argentina/Buenos_Aires",
        "CL": "America/Santiago",
        "CO": "America/Bogota",
        "PE": "America/Lima",
        "EC": "America/Guayaquil",
        "UY": "America/Montevideo",
        "PY": "America/Asuncion",
        "BO": "America/La_Paz",
        "VE": "America/Caracas",
        # Asia-Pacific
        "AU": "Australia/Sydney",
        "NZ": "Pacific/Auckland",
        "JP": "Asia/Tokyo",
        "KR": "Asia/Seoul",
        "CN": "Asia/Shanghai",
        "TW": "Asia/Taipei",
        "HK": "Asia/Hong_Kong",
        "MO": "Asia/Macau",
        "SG": "Asia/Singapore",
        "MY": "Asia/Kuala_Lumpur",
        "TH": "Asia/Bangkok",
        "VN": "Asia/Ho_Chi_Minh",
        "ID": "Asia/Jakarta",
        "PH": "Asia/Manila",
        "IN": "Asia/Kolkata",
        "PK": "Asia/Karachi",
        "BD": "Asia/Dhaka",
        "LK": "Asia/Colombo",
        "NP": "Asia/Kathmandu",
        "KZ": "Asia/Almaty",
        "UZ": "Asia/Tashkent",
        # Middle East
        "AE": "Asia/Dubai",
        "SA": "Asia/Riyadh",
        "QA": "Asia/Qatar",
        "KW": "Asia/Kuwait",
        "BH": "Asia/Bahrain",
        "OM": "Asia/Muscat",
        "IL": "Asia/Jerusalem",
        "JO": "Asia/Amman",
        "LB": "Asia/Beirut",
        # Africa
        "ZA": "Africa/Johannesburg",
        "NG": "Africa/Lagos",
        "KE": "Africa/Nairobi",
        "EG": "Africa/Cairo",
        "MA": "Africa/Casablanca",
        "GH": "Africa/Accra",
        "TN": "Africa/Tunis",
        "DZ": "Africa/Algiers",
        "ET": "Africa/Addis_Ababa",
        "TZ": "Africa/Dar_es_Salaam",
        "UG": "Africa/Kampala",
        "CI": "Africa/Abidjan",
        "SN": "Africa/Dakar",
        "MU": "Indian/Mauritius",
    }
)


@lru_cache(maxsize=1)
def _zones_by_lower_name() -> Mapping[str, str]:
    return MappingProxyType({z.lower(): z for z in zoneinfo.available_timezones()})


@lru_cache(maxsize=4096)
def canonical_timezone(name: str) -> str | None:
    """Return the IANA spelling of a zone name, or None when it is not a valid zone.

    Matching ignores surrounding whitespace and letter case (``" europe/paris"`` ->
    ``"Europe/Paris"``); ``"UTC"`` is valid.
    """
    text = name.strip()
    if not text:
        return None
    found = _zones_by_lower_name().get(text.lower())
    if found is not None:
        return found
    try:  # zones the tzdata index does not list but zoneinfo can load
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None
    return text


def is_valid_timezone(name: str) -> bool:
    """Return whether ``name`` is a valid IANA time-zone name (case-insensitive).

    Non-strings, NA and blank strings are not valid.
    """
    if not isinstance(name, str):
        return False
    return canonical_timezone(name) is not None


def country_default_timezone(country: str | None) -> str:
    """Return the default zone of an ISO 3166-1 alpha-2 country, or ``"UTC"`` when unknown."""
    if not isinstance(country, str):
        return FALLBACK_TIMEZONE
    return COUNTRY_DEFAULT_TIMEZONE.get(country.strip().upper(), FALLBACK_TIMEZONE)


def _resolve_one(customer_timezone: object, card_country: object) -> str:
    if isinstance(customer_timezone, str):
        zone = canonical_timezone(customer_timezone)
        if zone is not None:
            return zone
    return country_default_timezone(card_country if isinstance(card_country, str) else None)


def _factorize(values: pd.Series) -> tuple[np.ndarray, list[object]]:
    """Integer codes (int32) and unique values; missing values map to a trailing None."""
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        encoded = pa.chunked_array(pa.array(values.array)).dictionary_encode().combine_chunks()
        uniques: list[object] = [*encoded.dictionary.to_pylist(), None]
        indices = encoded.indices.fill_null(len(uniques) - 1)
        return indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False), uniques
    codes, raw = pd.factorize(values, use_na_sentinel=True)
    uniques = [*raw.tolist(), None]
    return np.where(codes < 0, len(uniques) - 1, codes).astype(np.int32), uniques


def resolve_timezones(customer_timezone: pd.Series, card_country: pd.Series) -> pd.Series:
    """Resolve the time zone of each row.

    Parameters
    ----------
    customer_timezone
        The contract's ``customer_timezone`` (IANA names; NA, blank or invalid allowed).
    card_country
        The contract's ``card_country`` (ISO 3166-1 alpha-2), aligned with
        ``customer_timezone``.

    Returns
    -------
    pandas.Series
        ``str`` Series named ``"timezone"`` with the index of ``customer_timezone``: the
        customer's zone (canonical spelling) when valid, else the country's default zone
        (:data:`COUNTRY_DEFAULT_TIMEZONE`), else ``"UTC"``. Computed once per unique pair.

    Raises
    ------
    ValueError
        If the two Series differ in length.
    """
    if len(customer_timezone) != len(card_country):
        raise ValueError(
            f"customer_timezone has {len(customer_timezone)} rows but card_country has "
            f"{len(card_country)}"
        )
    tz_idx, tz_values = _factorize(customer_timezone)
    cc_idx, cc_values = _factorize(card_country)
    # Dense rank of the (zone, country) pairs through a lookup table (the pair space is small).
    n_cc = len(cc_values)
    pair = tz_idx.astype(np.int64) * n_cc + cc_idx
    present = np.zeros(len(tz_values) * n_cc, dtype=bool)
    present[pair] = True
    pair_uniques = np.flatnonzero(present)
    rank = np.zeros(present.size, dtype=np.int32)
    rank[pair_uniques] = np.arange(pair_uniques.size, dtype=np.int32)
    resolved = [
        _resolve_one(tz_values[p // n_cc], cc_values[p % n_cc]) for p in pair_uniques.tolist()
    ]
    taken = pa.array(resolved, type=pa.large_string()).take(pa.array(rank[pair]))
    values = taken.to_pandas(types_mapper=lambda _t: pd.StringDtype("pyarrow", na_value=np.nan))
    return pd.Series(values.array, index=customer_timezone.index, name="timezone", copy=False)
