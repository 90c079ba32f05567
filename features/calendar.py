"""Local-date features: computed once per calendar day, cached as tables and blocks.

Every local-date feature (weekday, day of month, pay-cycle distances, ...) depends on the local day
only; :func:`_calendar_columns` computes them for an array of days, :func:`_calendar_table` and
:func:`_calendar_block` cache them for a span of days (gathered per row by the callers).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Final

import numpy as np

from retryopt.features._fe_time import (
    civil_from_days,
    days_in_month,
    last_business_day,
    shift_month,
    weekday_of_days,
)
from retryopt.features.history import _TWO_PI
from retryopt.features.registry import NUMERIC_FEATURES


def _circular_distance(angle: np.ndarray, mean: np.ndarray, period: np.ndarray) -> np.ndarray:
    diff = np.abs(np.mod(angle - mean + math.pi, _TWO_PI) - math.pi)
    return diff * period / _TWO_PI


# Calendar tables cover at most this many days (the batch path's full span stays vectorised).
_CALENDAR_SPAN_MAX: Final = 1 << 16


def _calendar_columns(days: np.ndarray) -> dict[str, np.ndarray]:
    """Local-date features of int64 local days since 1970-01-01 (plus ``_a_dom``, ``_a_wd``,
    ``_dim``: the day-of-month / weekday angles and the days of the month)."""
    out: dict[str, np.ndarray] = {}
    y, m, d = civil_from_days(days)
    wd = weekday_of_days(days)
    dim = days_in_month(y, m)
    out["local_weekday"] = wd.astype(np.float64)
    out["local_day_of_month"] = d.astype(np.float64)
    out["days_to_month_end"] = (dim - d).astype(np.float64)
    out["is_business_day"] = (wd < 5).astype(np.float64)

    # Pay-cycle signals (calendar days; public holidays are not modelled).
    py, pm = shift_month(y, m, -1)
    ny, nm = shift_month(y, m, 1)
    dim_prev = days_in_month(py, pm)
    lbd = last_business_day(y, m)
    lbd_prev = last_business_day(py, pm)
    lbd_next = last_business_day(ny, nm)
    out["days_since_1st"] = (d - 1).astype(np.float64)
    out["days_until_1st"] = (dim - d + 1).astype(np.float64)
    out["days_since_15th"] = np.where(d >= 15, d - 15, d + dim_prev - 15).astype(np.float64)
    out["days_until_15th"] = np.where(d <= 15, 15 - d, dim - d + 15).astype(np.float64)
    out["days_since_last_business_day"] = np.where(
        d >= lbd, d - lbd, d + dim_prev - lbd_prev
    ).astype(np.float64)
    out["days_until_last_business_day"] = np.where(d <= lbd, lbd - d, dim - d + lbd_next).astype(
        np.float64
    )
    out["days_since_friday"] = ((wd - 4) % 7).astype(np.float64)
    out["days_until_friday"] = ((4 - wd) % 7).astype(np.float64)
    out["_a_dom"] = _TWO_PI * (d - 1) / dim
    out["_a_wd"] = _TWO_PI * wd / 7.0
    out["_dim"] = dim
    return out


@lru_cache(maxsize=1024)
def _calendar_table(lo: int, span: int) -> dict[str, np.ndarray]:
    """:func:`_calendar_columns` of the days ``lo .. lo + span - 1`` (read-only arrays)."""
    table = _calendar_columns(np.arange(lo, lo + span, dtype=np.int64))
    for values in table.values():
        values.flags.writeable = False
    return table


# The day features of :func:`_calendar_columns` (local weekday .. days until Friday, listed
# together in NUMERIC_FEATURES), then its helper columns.
_CALENDAR_FEATURES: Final[tuple[str, ...]] = NUMERIC_FEATURES[
    NUMERIC_FEATURES.index("local_weekday") : NUMERIC_FEATURES.index("days_until_friday") + 1
]
_CALENDAR_BLOCK_COLUMNS: Final[tuple[str, ...]] = (*_CALENDAR_FEATURES, "_a_dom", "_a_wd", "_dim")
# Calendar blocks start and end on multiples of this many days (cache hits across requests).
_CALENDAR_ALIGN: Final = 64


@lru_cache(maxsize=64)
def _calendar_block(lo: int, span: int) -> np.ndarray:
    """:func:`_calendar_columns` of the days ``lo .. lo + span - 1`` as one read-only
    ``(span, 15)`` float64 row-major block, columns :data:`_CALENDAR_BLOCK_COLUMNS` (the month
    length ``_dim`` as float64: exact, and what it is promoted to where it is used)."""
    table = _calendar_columns(np.arange(lo, lo + span, dtype=np.int64))
    block = np.empty((span, len(_CALENDAR_BLOCK_COLUMNS)), dtype=np.float64)
    for c, name in enumerate(_CALENDAR_BLOCK_COLUMNS):
        block[:, c] = table[name]
    block.flags.writeable = False
    return block
