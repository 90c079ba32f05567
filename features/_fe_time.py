"""Local civil time for feature building: per-zone UTC offset tables and a numpy calendar.

Both feature paths (batch training examples and online candidate scoring) convert UTC instants
to the customer's local time through the same precomputed offset table per IANA zone, so the
local hour, weekday and date are identical in both paths and daylight saving time is honoured.

The calendar arithmetic works on int64 "days since 1970-01-01" with Howard Hinnant's
``civil_from_days`` algorithm (proleptic Gregorian), vectorised with numpy.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import lru_cache
from typing import Final

import numpy as np
import pandas as pd

NS_PER_SECOND: Final = 1_000_000_000
NS_PER_HOUR: Final = 3600 * NS_PER_SECOND
NS_PER_DAY: Final = 24 * NS_PER_HOUR
NAT_INT: Final = np.iinfo(np.int64).min

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
