"""The candidate-dependent features' computations: one implementation for every path.

A candidate-dependent feature depends on the decision and the candidate retry time ``t``. Each
one has exactly one computation here, declared in :mod:`features.registry` and called by both
the frame path (:func:`features.evaluate._candidate_features`: training examples, raw frames)
and the serving encoder (:meth:`features.encoder.CandidateEncoder.matrix`). A computation
writes its float64 values into ``out`` (a fresh array, or a column view of the model matrix),
reading one of three inputs, by how much of ``t`` it needs:

- ``calendar``: the local day of ``t`` only (:class:`~features.calendar.CalendarDays`);
  tabulated per day and gathered.
- ``day``: the decision and the local day of ``t`` (:class:`DayRows`); the encoder evaluates
  them once per (decision, day).
- ``time``: the decision and ``t`` itself (:class:`CandidateRows`).

Padding rows (``t`` = NaT) are evaluated at ``now`` and set to NaN by the callers.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from retryopt.features.calendar import TWO_PI, CalendarDays
from retryopt.features.decision_state import _State
from retryopt.features.history import _Log
from retryopt.features.localtime import NAT_INT, NS_PER_DAY, NS_PER_HOUR, to_local_ns
from retryopt.features.pit import _CardCounter, _pit_counts

__all__ = [
    "WINDOW_24H_NS",
    "WINDOW_30D_NS",
    "CandidateRows",
    "DayRows",
]

# Windows of the per-card attempt counters, after the network limits they mirror:
# Mastercard allows at most 10 declines per card per merchant in 24 h and 35 in 30 days; Visa at
# most 20 reattempts in 30 days (Visa Core Rules, April 2026; see shared/domain-facts.md).
WINDOW_24H_NS: Final = 24 * NS_PER_HOUR
WINDOW_30D_NS: Final = 30 * NS_PER_DAY

_HOUR: Final = float(NS_PER_HOUR)
_DAY: Final = float(NS_PER_DAY)


class CandidateRows:
    """Inputs of the ``time`` features for the rows ``(dec[r], t[r])``.

    The local time and day of ``t`` are computed at construction (every path needs them); the
    card counts on first use (:meth:`card_counts`), once for both windows.

    Parameters
    ----------
    log, st
        The attempt log and the decisions' state.
    dec
        Decision of each row (index into ``st``).
    t
        int64 UTC ns candidate time of each row (padding rows: ``now``).
    now
        ``st.now[dec]``.
    counter
        The batch's card counter (the encoder's); None counts with :func:`_pit_counts`.

    Attributes
    ----------
    local
        Local civil time of ``t`` in the customer's zone (int64 ns; DST-correct offsets).
    days
        Local day of ``t`` (int64 days since 1970-01-01).
    exp_end
        UTC ns of the end of the card's expiry month.
    scratch
        An int64 work array, one value per row (any computation may overwrite it).
    """

    def __init__(
        self,
        log: _Log,
        st: _State,
        dec: np.ndarray,
        t: np.ndarray,
        now: np.ndarray,
        *,
        counter: _CardCounter | None = None,
    ) -> None:
        self.log = log
        self.st = st
        self.dec = dec
        self.t = t
        self.now = now
        self.counter = counter
        self.local = to_local_ns(t, st.zone[dec], log.zone.uniques)
        self.days = np.floor_divide(self.local, NS_PER_DAY)
        self.exp_end = st.exp_end[dec]
        self.scratch = np.empty(t.size, dtype=np.int64)
        self._cards: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def card_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Card attempt counts (computed on first call).

        Returns
        -------
        tuple
            Known attempts of the card before ``min(t - 24 h, now)`` and before
            ``min(t - 30 d, now)``, known attempts before ``now``, the charge's own attempts of
            the card at exactly ``now``.
        """
        if self._cards is None:
            lo24 = np.minimum(self.t - WINDOW_24H_NS, self.now)
            lo30 = np.minimum(self.t - WINDOW_30D_NS, self.now)
            st, dec = self.st, self.dec
            if self.counter is not None:
                c24, c30 = self.counter.counts_many(dec, (lo24, lo30))
            else:
                n = self.t.size
                key = st.card_key[dec]
                counts = _pit_counts(
                    self.log.card_key,
                    self.log.t,
                    np.concatenate([key, key]),
                    np.concatenate([lo24, lo30]),
                )
                c24, c30 = counts[:n], counts[n:]
            self._cards = (c24, c30, st.card_known_now[dec], st.card_at_now[dec])
        return self._cards


class DayRows:
    """Inputs of the ``day`` features for rows (decision ``dec[r]``, a local day).

    Parameters
    ----------
    st
        The decisions' state.
    dec
        Decision of each row (index into ``st``).
    a_dom, a_wd, dim
        The day's helper columns (:data:`features.calendar.HELPER_COLUMNS`): day-of-month and
        weekday angles, days of the month.
    """

    def __init__(
        self, st: _State, dec: np.ndarray, a_dom: np.ndarray, a_wd: np.ndarray, dim: np.ndarray
    ) -> None:
        self.st = st
        self.dec = dec
        self.a_dom = a_dom
        self.a_wd = a_wd
        self.dim = dim


def _card_attempts(rows: CandidateRows, window: int, out: np.ndarray) -> None:
    # Known attempts of the card in [t - W, t): other rows strictly before now, plus the
    # charge's own attempts at exactly now (the previous attempt). Integer counts: exact in
    # any order, converted to float64 on assignment.
    c24, c30, known_now, at_now = rows.card_counts()
    before = c24 if window == WINDOW_24H_NS else c30
    out[:] = known_now - before + np.where(rows.t - window <= rows.now, at_now, 0)


def _circular_distance(
    angle: np.ndarray, mean: np.ndarray, period: np.ndarray | float, out: np.ndarray
) -> None:
    diff = np.abs(np.mod(angle - mean + math.pi, TWO_PI) - math.pi)
    np.multiply(diff, period, out=out)
    np.divide(out, TWO_PI, out=out)


# ---- time features: the decision and the candidate time ----


def hours_since_first_failure(rows: CandidateRows, out: np.ndarray) -> None:
    """``t`` - the charge's first attempt, in hours."""
    np.subtract(rows.t, rows.st.first_t[rows.dec], out=rows.scratch)
    np.divide(rows.scratch, _HOUR, out=out)


def hours_since_prev_attempt(rows: CandidateRows, out: np.ndarray) -> None:
    """``t`` - the charge's latest attempt, in hours."""
    np.subtract(rows.t, rows.st.last_t[rows.dec], out=rows.scratch)
    np.divide(rows.scratch, _HOUR, out=out)


def hours_from_now(rows: CandidateRows, out: np.ndarray) -> None:
    """``t`` - ``now``, in hours."""
    np.subtract(rows.t, rows.now, out=rows.scratch)
    np.divide(rows.scratch, _HOUR, out=out)


def card_attempts_24h(rows: CandidateRows, out: np.ndarray) -> None:
    """Known attempts of the card in ``[t - 24 h, t)``."""
    _card_attempts(rows, WINDOW_24H_NS, out)


def card_attempts_30d(rows: CandidateRows, out: np.ndarray) -> None:
    """Known attempts of the card in ``[t - 30 d, t)``."""
    _card_attempts(rows, WINDOW_30D_NS, out)


def local_hour(rows: CandidateRows, out: np.ndarray) -> None:
    """Fractional hour of ``t`` in the customer's zone."""
    tmp = rows.scratch
    np.multiply(rows.days, NS_PER_DAY, out=tmp)
    np.subtract(rows.local, tmp, out=tmp)
    np.divide(tmp, _HOUR, out=out)


def card_age_days(rows: CandidateRows, out: np.ndarray) -> None:
    """``t`` - ``card_added_at``, in days (NaN when missing)."""
    added = rows.st.card_added[rows.dec]
    np.subtract(rows.t, added, out=rows.scratch)
    np.divide(rows.scratch, _DAY, out=out)
    if rows.st.card_added_missing:
        out[added == NAT_INT] = np.nan


def days_to_expiry(rows: CandidateRows, out: np.ndarray) -> None:
    """Days from ``t`` to the end of the card's expiry month."""
    np.subtract(rows.exp_end, rows.t, out=rows.scratch)
    np.divide(rows.scratch, _DAY, out=out)


def card_expired(rows: CandidateRows, out: np.ndarray) -> None:
    """1.0 when ``t`` is at or after the end of the expiry month."""
    out[:] = rows.t >= rows.exp_end


def tenure_days(rows: CandidateRows, out: np.ndarray) -> None:
    """``t`` - the customer's first attempt, in days."""
    np.subtract(rows.t, rows.st.tenure_start[rows.dec], out=rows.scratch)
    np.divide(rows.scratch, _DAY, out=out)


# ---- day features: the decision and the candidate's local day ----


def success_dom_distance(rows: DayRows, out: np.ndarray) -> None:
    """Circular distance (days) to the mean local day of month of past successes."""
    _circular_distance(rows.a_dom, rows.st.dom_mean[rows.dec], rows.dim, out)


def success_weekday_distance(rows: DayRows, out: np.ndarray) -> None:
    """Circular distance (days) to the mean weekday of past successes."""
    _circular_distance(rows.a_wd, rows.st.wd_mean[rows.dec], 7.0, out)


# ---- calendar features: the candidate's local day only ----


def local_weekday(cal: CalendarDays, out: np.ndarray) -> None:
    """Weekday, Monday = 0."""
    out[:] = cal.weekday


def local_day_of_month(cal: CalendarDays, out: np.ndarray) -> None:
    """Day of the month."""
    out[:] = cal.day


def days_to_month_end(cal: CalendarDays, out: np.ndarray) -> None:
    """Days to the last day of the month."""
    out[:] = cal.days_in_month - cal.day


def is_business_day(cal: CalendarDays, out: np.ndarray) -> None:
    """1.0 on Monday-Friday."""
    out[:] = cal.weekday < 5


def days_since_1st(cal: CalendarDays, out: np.ndarray) -> None:
    """Days since the last 1st of a month."""
    out[:] = cal.day - 1


def days_until_1st(cal: CalendarDays, out: np.ndarray) -> None:
    """Days until the next 1st of a month."""
    out[:] = cal.days_in_month - cal.day + 1


def days_since_15th(cal: CalendarDays, out: np.ndarray) -> None:
    """Days since the last 15th."""
    d = cal.day
    out[:] = np.where(d >= 15, d - 15, d + cal.days_in_prev_month - 15)


def days_until_15th(cal: CalendarDays, out: np.ndarray) -> None:
    """Days until the next 15th."""
    d = cal.day
    out[:] = np.where(d <= 15, 15 - d, cal.days_in_month - d + 15)


def days_since_last_business_day(cal: CalendarDays, out: np.ndarray) -> None:
    """Days since the last last-business-day of a month."""
    d = cal.day
    lbd = cal.last_business_day
    out[:] = np.where(d >= lbd, d - lbd, d + cal.days_in_prev_month - cal.prev_last_business_day)


def days_until_last_business_day(cal: CalendarDays, out: np.ndarray) -> None:
    """Days until the next last-business-day of a month."""
    d = cal.day
    lbd = cal.last_business_day
    out[:] = np.where(d <= lbd, lbd - d, cal.days_in_month - d + cal.next_last_business_day)


def days_since_friday(cal: CalendarDays, out: np.ndarray) -> None:
    """Days since a Friday (0 on Fridays)."""
    out[:] = (cal.weekday - 4) % 7


def days_until_friday(cal: CalendarDays, out: np.ndarray) -> None:
    """Days until a Friday (0 on Fridays)."""
    out[:] = (4 - cal.weekday) % 7
