"""Time for the whole project: constants, time-zone resolution, local hours and DST.

One module, used by the features, the network rules, the simulator and the backtest:

- **Constants**: nanoseconds per second, hour and day; ``NAT_INT`` (NaT as int64).
- **Zone resolution** (one rule): the customer's ``customer_timezone`` when it names an IANA
  zone (:func:`canonical_timezone`: surrounding space and letter case ignored, canonical spelling
  returned), else the card country's default zone (:data:`COUNTRY_DEFAULT_TIMEZONE`), else
  ``"UTC"``. :func:`resolve_timezones` does it for whole columns, :func:`resolve_zone` for one
  charge.
- **Local civil time, daylight saving correct**: per-zone UTC offset tables
  (:func:`zone_offset_table`, exact to the second, 1970-2100), :func:`to_local_ns` for arrays of
  instants in many zones, :func:`local_hours` for one zone's hour grid, and
  :func:`utc_offset_hours`.
- **A numpy calendar** on int64 "days since 1970-01-01" (Howard Hinnant's ``civil_from_days``,
  proleptic Gregorian): month lengths, weekdays, last business days.

The default zone of a country is the zone where most of its population lives. For countries
that span several zones (US, CA, MX, BR, AU, RU, ID, KZ, ...) this is an approximation: a
customer in Los Angeles with a US card is placed in ``America/New_York``. Countries not in
:data:`COUNTRY_DEFAULT_TIMEZONE` fall back to ``"UTC"``.
"""

from __future__ import annotations

import datetime as dt
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
    "NAT_INT",
    "NS_PER_DAY",
    "NS_PER_HOUR",
    "NS_PER_SECOND",
    "TIMESTAMP_MAX",
    "TIMESTAMP_MAX_NS",
    "TIMESTAMP_MIN",
    "TIMESTAMP_MIN_NS",
    "TIMESTAMP_RANGE_TEXT",
    "canonical_timezone",
    "civil_from_days",
    "constant_offset",
    "country_default_timezone",
    "days_from_civil",
    "days_in_month",
    "in_valid_range",
    "is_valid_timezone",
    "last_business_day",
    "local_hours",
    "resolve_timezones",
    "resolve_zone",
    "shift_month",
    "to_local_ns",
    "utc_offset_hours",
    "weekday_of_days",
    "zone_offset_table",
]

# --------------------------------------------------------------------------------------------
# Constants

NS_PER_SECOND: Final = 1_000_000_000
NS_PER_HOUR: Final = 3600 * NS_PER_SECOND
NS_PER_DAY: Final = 24 * NS_PER_HOUR
NAT_INT: Final = np.iinfo(np.int64).min

# The valid range of every timestamp the project reads (attempts, cards, ``now``; API, data
# contract, importers): TIMESTAMP_MIN <= t < TIMESTAMP_MAX. The upper bound leaves room for what
# is computed after the latest time: a retry window of up to 120 days and the 21-day candidate
# grid stay inside the zone offset tables (1970-2100, :func:`zone_offset_table`) and far inside
# pandas' nanosecond range (1677-2262).
TIMESTAMP_MIN: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
TIMESTAMP_MAX: Final = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
TIMESTAMP_MIN_NS: Final = 0
TIMESTAMP_MAX_NS: Final = int((TIMESTAMP_MAX - TIMESTAMP_MIN).total_seconds()) * NS_PER_SECOND
TIMESTAMP_RANGE_TEXT: Final = "from 1970-01-01T00:00:00Z up to (excluding) 2099-01-01T00:00:00Z"


def in_valid_range(t: dt.datetime) -> bool:
    """Whether an aware datetime lies in ``TIMESTAMP_MIN <= t < TIMESTAMP_MAX``."""
    try:
        return TIMESTAMP_MIN <= t < TIMESTAMP_MAX
    except OverflowError:  # an offset moving the instant past year 9999
        return False


# --------------------------------------------------------------------------------------------
# Zone resolution

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


def canonical_timezone(name: str) -> str | None:
    """Return the IANA spelling of a zone name, or None when it is not a valid zone.

    Valid zones are those of the tz database (``zoneinfo.available_timezones()``); matching
    ignores surrounding whitespace and letter case (``" europe/paris"`` -> ``"Europe/Paris"``);
    ``"UTC"`` is valid. A dictionary look-up: garbage costs no file-system search.
    """
    return _zones_by_lower_name().get(name.strip().lower())


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


def resolve_zone(customer_timezone: object, card_country: object) -> str:
    """The zone of one charge: the customer's own if valid, else the card country's, else UTC."""
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
        resolve_zone(tz_values[p // n_cc], cc_values[p % n_cc]) for p in pair_uniques.tolist()
    ]
    taken = pa.array(resolved, type=pa.large_string()).take(pa.array(rank[pair]))
    values = taken.to_pandas(types_mapper=lambda _t: pd.StringDtype("pyarrow", na_value=np.nan))
    return pd.Series(values.array, index=customer_timezone.index, name="timezone", copy=False)


# --------------------------------------------------------------------------------------------
# Local civil time (DST-correct)

# Offset tables cover 1970-2100; instants outside use the nearest known offset.
_TABLE_START: Final = "1970-01-01"
_TABLE_END: Final = "2100-01-01"


@lru_cache(maxsize=1024)
def zone_offset_table(zone: str) -> tuple[np.ndarray, np.ndarray]:
    """UTC offset transitions of an IANA zone.

    Parameters
    ----------
    zone
        IANA zone name (e.g. ``"Europe/Paris"``).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``starts`` (int64 UTC ns, sorted, ``starts[0]`` is the int64 minimum) and ``offsets``
        (int64 ns): the offset valid from ``starts[i]`` until ``starts[i + 1]``.

    Raises
    ------
    ValueError
        If ``zone`` is not a known IANA zone.
    """
    try:
        info = zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {zone!r}") from exc
    days = pd.date_range(_TABLE_START, _TABLE_END, freq="D", tz="UTC")
    utc_ns = days.as_unit("ns").asi8
    local_ns = days.tz_convert(info).tz_localize(None).as_unit("ns").asi8
    offsets = local_ns - utc_ns
    change = np.flatnonzero(offsets[1:] != offsets[:-1]) + 1
    starts = [NAT_INT]
    values = [int(offsets[0])]
    for i in change.tolist():
        # The transition lies in (utc_ns[i-1], utc_ns[i]]; bisect it to the second with zoneinfo.
        lo = int(utc_ns[i - 1] // NS_PER_SECOND)
        hi = int(utc_ns[i] // NS_PER_SECOND)
        before = offsets[i - 1]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            moment = dt.datetime.fromtimestamp(mid, tz=info)
            off = moment.utcoffset()
            off_ns = 0 if off is None else int(off.total_seconds()) * NS_PER_SECOND
            if off_ns == before:
                lo = mid
            else:
                hi = mid
        starts.append(hi * NS_PER_SECOND)
        values.append(int(offsets[i]))
    return np.asarray(starts, dtype=np.int64), np.asarray(values, dtype=np.int64)


def to_local_ns(utc_ns: np.ndarray, zone_codes: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """Convert UTC instants to local wall-clock instants (as naive int64 ns).

    Parameters
    ----------
    utc_ns
        int64 UTC nanoseconds since the epoch.
    zone_codes
        Index into ``zones`` per instant (same shape as ``utc_ns``).
    zones
        IANA zone names.

    Returns
    -------
    numpy.ndarray
        int64 local wall-clock nanoseconds since 1970-01-01 00:00 (naive).
    """
    out = np.empty_like(utc_ns)
    if utc_ns.size == 0:
        return out
    first = zone_codes.flat[0]
    if zone_codes.size == 1 or bool((zone_codes == first).all()):
        starts, offsets = zone_offset_table(str(zones[first]))
        idx = np.searchsorted(starts, utc_ns, side="right") - 1
        np.add(utc_ns, offsets[idx], out=out)
        return out
    flat_codes = zone_codes.ravel()
    flat_t = utc_ns.ravel()
    flat_out = out.ravel()
    order = np.argsort(flat_codes, kind="stable")
    sorted_codes = flat_codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    for seg in np.split(order, bounds):
        starts, offsets = zone_offset_table(str(zones[flat_codes[seg[0]]]))
        tt = flat_t[seg]
        flat_out[seg] = tt + offsets[np.searchsorted(starts, tt, side="right") - 1]
    return flat_out.reshape(utc_ns.shape)


def civil_from_days(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Year, month (1-12) and day (1-31) of int64 days since 1970-01-01 (Hinnant's algorithm)."""
    z = days + 719468
    era = np.floor_divide(z, 146097)
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    y = y + (m <= 2)
    return y, m, d


def days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """int64 days since 1970-01-01 of a (year, month, day) date (inverse of civil_from_days)."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = np.where(m > 2, m - 3, m + 9)
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_DAYS_IN_MONTH: Final = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def days_in_month(y: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Number of days of month ``m`` (1-12) of year ``y``."""
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    return _DAYS_IN_MONTH[m - 1] + ((m == 2) & leap)


def weekday_of_days(days: np.ndarray) -> np.ndarray:
    """ISO weekday with Monday = 0 ... Sunday = 6 (1970-01-01 was a Thursday)."""
    return (days + 3) % 7


def last_business_day(y: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Day of month of the last Monday-Friday day of the month (public holidays ignored)."""
    dim = days_in_month(y, m)
    wd = weekday_of_days(days_from_civil(y, m, dim))
    return dim - np.where(wd == 5, 1, np.where(wd == 6, 2, 0))


def shift_month(y: np.ndarray, m: np.ndarray, delta: int) -> tuple[np.ndarray, np.ndarray]:
    """(year, month) ``delta`` months away."""
    k = y * 12 + (m - 1) + delta
    return k // 12, k % 12 + 1


def utc_offset_hours(zone: str, utc_ns: np.ndarray) -> np.ndarray:
    """UTC offset of ``zone`` (hours, float64; DST-correct) at int64 UTC instants ``utc_ns``."""
    starts, offsets = zone_offset_table(zone)
    idx = np.searchsorted(starts, utc_ns, side="right") - 1
    return offsets[idx] / float(NS_PER_HOUR)


def constant_offset(zone: str, start_ns: int, end_ns: int) -> int | None:
    """The UTC offset of ``zone`` (int ns) over ``[start_ns, end_ns]``, or None if it changes.

    Exact: the offset table's transitions are looked up, so a span that contains a whole
    daylight-saving period (both ends in winter, a summer between) is not mistaken for constant.
    """
    starts, offsets = zone_offset_table(zone)
    i = int(np.searchsorted(starts, start_ns, side="right")) - 1
    j = int(np.searchsorted(starts, end_ns, side="right")) - 1
    return int(offsets[i]) if i == j else None


def local_hours(times: np.ndarray, zone: str) -> np.ndarray:
    """Local hour (0-23) of UTC-naive ``datetime64[ns]`` times in IANA ``zone`` (DST-correct).

    One offset-table lookup per time (:func:`zone_offset_table`): the same conversion as
    :func:`to_local_ns`, exact to the second within the table's years.
    """
    if times.size == 0:
        return np.array([], dtype=np.int64)
    ns = times.astype("datetime64[ns]").astype(np.int64)
    starts, offsets = zone_offset_table(zone)
    local = ns + offsets[np.searchsorted(starts, ns, side="right") - 1]
    return (local // NS_PER_HOUR) % 24
