"""Local-date features: civil fields of local days, tabulated once per calendar day.

A calendar feature (weekday, day of month, pay-cycle distances, ...) depends on the candidate's
local day only. Its computation (declared in :mod:`features.registry`) reads a
:class:`CalendarDays`; :func:`calendar_columns` evaluates a tuple of such computations for an
array of days, :func:`calendar_table` (columns) and :func:`calendar_block` (one row-major block)
cache them for a span of days, and callers gather rows by local day. Besides the features, the
columns hold :data:`HELPER_COLUMNS`, the inputs of the day features (success-day distances).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property, lru_cache
from typing import Final

import numpy as np

from retryopt.features.localtime import (
    civil_from_days,
    days_in_month,
    last_business_day,
    shift_month,
    weekday_of_days,
)

__all__ = [
    "A_DOM",
    "A_WD",
    "CALENDAR_ALIGN",
    "CALENDAR_SPAN_MAX",
    "DIM",
    "HELPER_COLUMNS",
    "TWO_PI",
    "CalendarCompute",
    "CalendarDays",
    "CalendarFeatures",
    "calendar_block",
    "calendar_columns",
    "calendar_table",
]

TWO_PI: Final = 2.0 * math.pi

# Helper columns after the features: day-of-month angle, weekday angle, days in the month.
A_DOM: Final = "_a_dom"
A_WD: Final = "_a_wd"
DIM: Final = "_dim"
HELPER_COLUMNS: Final[tuple[str, ...]] = (A_DOM, A_WD, DIM)

# Calendar tables cover at most this many days (the batch path's full span stays vectorised).
CALENDAR_SPAN_MAX: Final = 1 << 16
# Calendar blocks start and end on multiples of this many days (cache hits across requests).
CALENDAR_ALIGN: Final = 64


class CalendarDays:
    """Civil-calendar fields of int64 local days since 1970-01-01, each computed on first use.

    Parameters
    ----------
    days
        int64 local days since 1970-01-01.
    """

    def __init__(self, days: np.ndarray) -> None:
        self.days = days

    @cached_property
    def _ymd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y, m, d = civil_from_days(self.days)
        return y, m, d

    @property
    def year(self) -> np.ndarray:
        """Year of each day."""
        return self._ymd[0]

    @property
    def month(self) -> np.ndarray:
        """Month of each day (1-12)."""
        return self._ymd[1]

    @property
    def day(self) -> np.ndarray:
        """Day of the month (1-31)."""
        return self._ymd[2]

    @cached_property
    def weekday(self) -> np.ndarray:
        """Weekday, Monday = 0."""
        return weekday_of_days(self.days)

    @cached_property
    def days_in_month(self) -> np.ndarray:
        """Days of the day's month."""
        return days_in_month(self.year, self.month)

    @cached_property
    def _prev_month(self) -> tuple[np.ndarray, np.ndarray]:
        py, pm = shift_month(self.year, self.month, -1)
        return py, pm

    @cached_property
    def _next_month(self) -> tuple[np.ndarray, np.ndarray]:
        ny, nm = shift_month(self.year, self.month, 1)
        return ny, nm

    @cached_property
    def days_in_prev_month(self) -> np.ndarray:
        """Days of the previous month."""
        return days_in_month(*self._prev_month)

    @cached_property
    def last_business_day(self) -> np.ndarray:
        """Day of the month of the month's last Monday-Friday day."""
        return last_business_day(self.year, self.month)

    @cached_property
    def prev_last_business_day(self) -> np.ndarray:
        """:attr:`last_business_day` of the previous month."""
        return last_business_day(*self._prev_month)

    @cached_property
    def next_last_business_day(self) -> np.ndarray:
        """:attr:`last_business_day` of the next month."""
        return last_business_day(*self._next_month)

    def helper(self, name: str) -> np.ndarray:
        """The helper column ``name`` of :data:`HELPER_COLUMNS`."""
        if name == A_DOM:
            return TWO_PI * (self.day - 1) / self.days_in_month
        if name == A_WD:
            return TWO_PI * self.weekday / 7.0
        if name == DIM:
            return self.days_in_month
        raise KeyError(name)


CalendarCompute = Callable[[CalendarDays, np.ndarray], None]
"""A calendar feature's computation: writes its value for each day into ``out`` (float64)."""

CalendarFeatures = tuple[tuple[str, CalendarCompute], ...]


def calendar_columns(days: np.ndarray, features: CalendarFeatures) -> dict[str, np.ndarray]:
    """Calendar features of int64 local days, then the :data:`HELPER_COLUMNS`.

    Parameters
    ----------
    days
        int64 local days since 1970-01-01.
    features
        ``(name, computation)`` pairs, in column order.

    Returns
    -------
    dict
        Name -> array: the features (float64), then the helper columns (the angles float64,
        the month length int64).
    """
    cal = CalendarDays(days)
    out: dict[str, np.ndarray] = {}
    for name, compute in features:
        col = np.empty(days.size, dtype=np.float64)
        compute(cal, col)
        out[name] = col
    for name in HELPER_COLUMNS:
        out[name] = cal.helper(name)
    return out


@lru_cache(maxsize=1024)
def calendar_table(lo: int, span: int, features: CalendarFeatures) -> dict[str, np.ndarray]:
    """:func:`calendar_columns` of the days ``lo .. lo + span - 1`` (read-only arrays)."""
    table = calendar_columns(np.arange(lo, lo + span, dtype=np.int64), features)
    for values in table.values():
        values.flags.writeable = False
    return table


@lru_cache(maxsize=64)
def calendar_block(lo: int, span: int, features: CalendarFeatures) -> np.ndarray:
    """:func:`calendar_columns` of the days ``lo .. lo + span - 1`` as one read-only
    ``(span, len(features) + 3)`` float64 row-major block: the features, then the
    :data:`HELPER_COLUMNS` (the month length as float64: exact, and what it is promoted to
    where it is used)."""
    table = calendar_columns(np.arange(lo, lo + span, dtype=np.int64), features)
    block = np.empty((span, len(table)), dtype=np.float64)
    for c, values in enumerate(table.values()):
        block[:, c] = values
    block.flags.writeable = False
    return block
