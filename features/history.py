"""The sorted attempt log (:class:`_Log`): contract rows sorted by charge and time.

Rows sorted by (charge, attempted_at, failed-before-succeeded, attempt_id), with per-row codes
(decline code, advice code and their taxonomy family, card fields, resolved time zone), the card
key, card expiry ends and the customer events that history aggregates sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Final

import numpy as np
import pandas as pd

from retryopt.features import contract as ct
from retryopt.features.calendar import TWO_PI
from retryopt.features.columns import _SMALL_ROWS, _Codes, _Columns, _Table, _unique_inverse
from retryopt.features.localtime import (
    NAT_INT,
    NS_PER_DAY,
    NS_PER_SECOND,
    civil_from_days,
    days_from_civil,
    days_in_month,
    resolve_timezones,
    shift_month,
    to_local_ns,
    weekday_of_days,
)
from retryopt.features.taxonomy import (
    classify_decline,
    mastercard_advice,
    normalize_advice_code,
    normalize_code,
)

# Quantisation of cos/sin sums (integers keep batch and online sums bit-identical).
_Q: Final = 1 << 20


@lru_cache(maxsize=65536)
def _decline_info(code: str, advice: str) -> tuple[str, bool, float, bool, float]:
    """(family, hard, visa category or NaN, advice never-retry, advice min wait hours or NaN)."""
    info = classify_decline(code or None, network_advice_code=advice or None)
    # Mastercard merchant advice codes (MAC): 03/21 never retry, 24-30 minimum waits
    # (shared/domain-facts.md, "Mastercard merchant advice codes").
    adv = mastercard_advice(advice) if advice else None
    return (
        str(info.family),
        bool(info.hard),
        math.nan if info.visa_category is None else float(info.visa_category),
        bool(adv is not None and adv.never_retry),
        math.nan if adv is None or adv.min_wait_hours is None else float(adv.min_wait_hours),
    )


_ZONE_CACHE: dict[tuple[str | None, str | None], str] = {}


def _resolve_zone_pairs(pairs: list[tuple[str | None, str | None]]) -> list[str]:
    missing = [p for p in pairs if p not in _ZONE_CACHE]
    if missing:
        tz = pd.Series([p[0] for p in missing], dtype="str")
        cc = pd.Series([p[1] for p in missing], dtype="str")
        resolved = resolve_timezones(tz, cc).tolist()
        for p, z in zip(missing, resolved, strict=True):
            _ZONE_CACHE[p] = str(z)
    return [_ZONE_CACHE[p] for p in pairs]


def _none_if_na(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return str(value)


def _normalized_codes(raw: _Codes, normalize: Any) -> _Codes:
    """Normalise the uniques of a code column ("" -> missing)."""
    norm = [normalize(u) for u in raw.uniques.tolist()]
    uniq = np.asarray([v if v else None for v in norm] + [None], dtype=object)
    codes = np.where(raw.codes < 0, len(uniq) - 1, raw.codes)
    return _Codes(codes.astype(raw.codes.dtype), uniq)


@dataclass
class _Log:
    """Contract rows sorted by (charge, attempted_at, failed-before-succeeded, attempt_id)."""

    n: int
    order: np.ndarray  # log row -> row of the source frame
    charge: np.ndarray
    charge_uniques: np.ndarray
    customer: np.ndarray
    t: np.ndarray
    succ: np.ndarray
    start: np.ndarray  # first log row of the row's charge
    run_start: np.ndarray  # first log row of the row's (charge, attempted_at) run
    tie_rank: np.ndarray  # earlier rows of the same (charge, attempted_at, card) group (int32)
    card_key: np.ndarray
    code: _Codes
    advice: _Codes
    family: _Codes  # codes = (decline code, advice code) pair index, uniques = families
    pair_hard: np.ndarray  # per pair: hard decline
    pair_visa: np.ndarray  # per pair: Visa category or NaN
    pair_never: np.ndarray  # per pair: advice forbids retries
    pair_wait: np.ndarray  # per pair: advice minimum wait hours or NaN
    brand: _Codes
    funding: _Codes
    country: _Codes
    issuer: _Codes
    currency: _Codes
    zone: _Codes
    amount: np.ndarray
    card_added: np.ndarray
    exp_end: np.ndarray
    propensity: np.ndarray

    @classmethod
    def from_frames(cls, frames: list[_Table], *, history_frames: int = 0) -> _Log:
        cols = _Columns(frames, history_frames=history_frames)
        n = cols.n
        t_raw = cols.timestamps(ct.ATTEMPTED_AT)
        if n and (t_raw == NAT_INT).any():
            rows = (np.flatnonzero(t_raw == NAT_INT)[:5] + 1).tolist()
            raise ValueError(f"column 'attempted_at' has missing timestamps (rows {rows})")
        charge_raw = cols.strings(ct.CHARGE_ID)
        if n and (charge_raw.codes < 0).any():
            rows = (np.flatnonzero(charge_raw.codes < 0)[:5] + 1).tolist()
            raise ValueError(f"column 'charge_id' has missing values (rows {rows})")
        outcome = cols.strings(ct.OUTCOME)
        succ_u = np.asarray([u == ct.SUCCEEDED for u in outcome.uniques.tolist()], dtype=bool)
        succ_raw = np.append(succ_u, False)[outcome.codes]

        order = np.lexsort((succ_raw, t_raw, charge_raw.codes))
        ch = charge_raw.codes[order].astype(np.int64)
        t = t_raw[order]
        succ = succ_raw[order]
        same_ct = np.zeros(n, dtype=bool)
        if n > 1:
            same_ct[1:] = (ch[1:] == ch[:-1]) & (t[1:] == t[:-1])
        if same_ct.any():
            # Simultaneous attempts of one charge: break ties by attempt_id (then stable).
            tied = np.zeros(n, dtype=bool)
            tied[1:] |= same_ct[1:]
            tied[:-1] |= same_ct[1:]
            ids = cols.objects(ct.ATTEMPT_ID)[order[tied]]
            rank = np.zeros(n, dtype=np.int64)
            rank[tied] = pd.Series(ids.astype(str)).rank(method="dense").to_numpy(np.int64)
            rank_raw = np.empty(n, dtype=np.int64)
            rank_raw[order] = rank
            order = np.lexsort((rank_raw, succ_raw, t_raw, charge_raw.codes))
            ch = charge_raw.codes[order].astype(np.int64)
            t = t_raw[order]
            succ = succ_raw[order]
        idx = np.arange(n, dtype=np.int64)
        new_charge = np.ones(n, dtype=bool)
        new_run = np.ones(n, dtype=bool)
        if n > 1:
            new_charge[1:] = ch[1:] != ch[:-1]
            new_run[1:] = new_charge[1:] | (t[1:] != t[:-1])
        start = np.maximum.accumulate(np.where(new_charge, idx, 0)) if n else idx
        run_start = np.maximum.accumulate(np.where(new_run, idx, 0)) if n else idx

        customer_raw = cols.strings(ct.CUSTOMER_ID)
        if n and (customer_raw.codes < 0).any():
            rows = (np.flatnonzero(customer_raw.codes < 0)[:5] + 1).tolist()
            raise ValueError(f"column 'customer_id' has missing values (rows {rows})")
        customer = customer_raw.codes[order].astype(np.int64)

        brand = cols.strings(ct.CARD_BRAND).take(order)
        exp_month = cols.ints(ct.CARD_EXP_MONTH)[order]
        exp_year = cols.ints(ct.CARD_EXP_YEAR)[order]
        bad = (exp_month < 1) | (exp_month > 12)
        if bad.any():
            rows = (np.sort(order[bad])[:5] + 1).tolist()
            raise ValueError(f"column 'card_exp_month' must be 1-12 (rows {rows})")
        # The card: card_id when given, else a surrogate (customer, brand, expiry). Always
        # scoped by the customer, so the online path (one customer's history) sees the same.
        card_id = cols.strings(ct.CARD_ID).codes[order].astype(np.int64)
        exp_key = exp_year * 13 + exp_month
        surrogate = (brand.codes.astype(np.int64) + 1) * 1_000_000 + exp_key
        card_part = np.where(card_id >= 0, card_id, -1 - surrogate)
        if n <= _SMALL_ROWS:
            card_part_codes = _unique_inverse(card_part)[1]
        else:
            card_part_codes = pd.factorize(card_part)[0].astype(np.int64)
        card_key = customer * (int(card_part_codes.max(initial=0)) + 1) + card_part_codes
        del card_id, exp_key, surrogate, card_part, card_part_codes

        tie_rank = np.zeros(n, dtype=np.int32)
        if same_ct.any():
            tied_rows = np.flatnonzero(~new_run | np.append(~new_run[1:], False))
            grp = pd.DataFrame({"r": run_start[tied_rows], "k": card_key[tied_rows]})
            tie_rank[tied_rows] = grp.groupby(["r", "k"], sort=False).cumcount().to_numpy()

        code = _normalized_codes(cols.strings(ct.DECLINE_CODE), _normalize_code).take(order)
        advice = _normalized_codes(cols.strings(ct.NETWORK_ADVICE_CODE), _normalize_advice)
        advice = advice.take(order)
        pair = code.codes.astype(np.int64) * (len(advice.uniques) + 1) + advice.codes
        pair_u, pair_inv = _unique_inverse(pair)
        del pair
        infos = [
            _decline_info(
                code.uniques[p // (len(advice.uniques) + 1)] or "",
                advice.uniques[p % (len(advice.uniques) + 1)] or "",
            )
            for p in pair_u.tolist()
        ]
        fam_u = np.asarray([i[0] for i in infos], dtype=object)
        family = _Codes(pair_inv.reshape(-1).astype(np.int32), fam_u)
        del pair_inv

        tz = cols.strings(ct.CUSTOMER_TIMEZONE)
        cc = cols.strings(ct.CARD_COUNTRY)
        zpair = (tz.codes.astype(np.int64) + 1) * (len(cc.uniques) + 1) + (cc.codes + 1)
        zp_u, zp_inv = _unique_inverse(zpair)
        del zpair
        tz_ext = np.asarray([*tz.uniques.tolist(), None], dtype=object)
        cc_ext = np.asarray([*cc.uniques.tolist(), None], dtype=object)
        pairs = [
            (
                _none_if_na(tz_ext[p // (len(cc.uniques) + 1) - 1]),
                _none_if_na(cc_ext[p % (len(cc.uniques) + 1) - 1]),
            )
            for p in zp_u.tolist()
        ]
        zones = np.asarray(_resolve_zone_pairs(pairs), dtype=object)
        zone = _Codes(zp_inv.reshape(-1).astype(np.int32), zones).take(order)

        amount = cols.ints(ct.AMOUNT)[order]
        card_added = cols.timestamps(ct.CARD_ADDED_AT)[order]
        if n <= _SMALL_ROWS:
            exp_end = np.asarray(
                [
                    _expiry_end_ns(y, m)
                    for y, m in zip(exp_year.tolist(), exp_month.tolist(), strict=True)
                ],
                dtype=np.int64,
            )
        else:
            exp_end = _expiry_end(exp_year, exp_month)
        propensity = cols.floats(ct.RETRY_PROPENSITY)[order]
        return cls(
            n=n,
            order=order,
            charge=ch,
            charge_uniques=charge_raw.uniques,
            customer=customer,
            t=t,
            succ=succ,
            start=start,
            run_start=run_start,
            tie_rank=tie_rank,
            card_key=card_key,
            code=code,
            advice=advice,
            family=family,
            pair_hard=np.asarray([i[1] for i in infos], dtype=bool),
            pair_visa=np.asarray([i[2] for i in infos], dtype=np.float64),
            pair_never=np.asarray([i[3] for i in infos], dtype=bool),
            pair_wait=np.asarray([i[4] for i in infos], dtype=np.float64),
            brand=brand,
            funding=cols.strings(ct.CARD_FUNDING).take(order),
            country=cc.take(order),
            issuer=cols.strings(ct.ISSUER).take(order),
            currency=cols.strings(ct.CURRENCY).take(order),
            zone=zone,
            amount=amount,
            card_added=card_added,
            exp_end=exp_end,
            propensity=propensity,
        )

    @property
    def pos(self) -> np.ndarray:
        """Position of each row within its charge (0 = first attempt)."""
        return np.arange(self.n, dtype=np.int64) - self.start

    def succ_before(self) -> np.ndarray:
        """Successful attempts of the row's charge strictly before the row."""
        cs = np.cumsum(self.succ, dtype=np.int64)
        excl = cs - self.succ
        return excl - excl[self.start]

    def customer_event(self, name: str) -> np.ndarray:
        """Integer event value per row for one customer aggregate (see _CUSTOMER_EVENTS).

        Events happen at the row's ``attempted_at``: a charge starts (its first attempt), a
        first attempt fails, a payment succeeds (with its local day-of-month and weekday as
        quantised unit-circle coordinates), a failed charge is recovered (with its duration).
        """
        if name == "charges":
            return (self.pos == 0).astype(np.int64)
        if name == "first_failures":
            return ((self.pos == 0) & ~self.succ).astype(np.int64)
        if name == "amount_sum":
            return np.where(self.pos == 0, self.amount, 0)
        if name == "successes":
            return self.succ.astype(np.int64)
        if name in ("recoveries", "recovery_seconds"):
            recovery = self.succ & (self.succ_before() == 0) & (self.pos > 0)
            if name == "recoveries":
                return recovery.astype(np.int64)
            return np.where(recovery, (self.t - self.t[self.start]) // NS_PER_SECOND, 0)
        rows, y, m, d, wd = self._success_calendar
        out = np.zeros(self.n, dtype=np.int64)
        if rows.size:
            if name.startswith("dom"):
                angle = TWO_PI * (d - 1) / days_in_month(y, m)
            else:
                angle = TWO_PI * wd / 7.0
            trig = np.cos(angle) if name.endswith("cos") else np.sin(angle)
            out[rows] = np.rint(trig * _Q).astype(np.int64)
        return out

    def customer_event_matrix(self) -> np.ndarray:
        """All :data:`_CUSTOMER_EVENTS` as one ``(len(_CUSTOMER_EVENTS), n)`` int64 array.

        Same values as :meth:`customer_event` per name (shared intermediates computed once);
        used for small logs (online scoring), where per-call overhead dominates.
        """
        pos = self.pos
        first = pos == 0
        succ = self.succ
        recovery = succ & (self.succ_before() == 0) & (pos > 0)
        out = np.zeros((len(_CUSTOMER_EVENTS), self.n), dtype=np.int64)
        out[0] = first
        out[1] = first & ~succ
        out[2] = np.where(first, self.amount, 0)
        out[3] = succ
        rows = np.flatnonzero(succ)
        if rows.size:
            local = to_local_ns(self.t[rows], self.zone.codes[rows], self.zone.uniques)
            days = np.floor_divide(local, NS_PER_DAY).tolist()
            out[4:8, rows] = np.asarray([_success_day_trig(day) for day in days]).T
        out[8] = recovery
        out[9] = np.where(recovery, (self.t - self.t[self.start]) // NS_PER_SECOND, 0)
        return out

    @cached_property
    def _success_calendar(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Successful rows and their local (year, month, day, weekday) in the row's zone."""
        rows = np.flatnonzero(self.succ)
        local = to_local_ns(self.t[rows], self.zone.codes[rows], self.zone.uniques)
        days = np.floor_divide(local, NS_PER_DAY)
        y, m, d = civil_from_days(days)
        wd = weekday_of_days(days)
        # Small integer types: this cache lives through the customer aggregates (memory).
        return rows, y.astype(np.int16), m.astype(np.int8), d.astype(np.int8), wd.astype(np.int8)


@lru_cache(maxsize=65536)
def _success_day_trig(day: int) -> tuple[int, int, int, int]:
    """Quantised (dom cos, dom sin, weekday cos, weekday sin) of a local day since 1970-01-01.

    The same expressions as :meth:`_Log.customer_event` (and :attr:`_Log._success_calendar`'s
    small integer types), on a one-element array: identical values, cached per day.
    """
    days = np.asarray([day], dtype=np.int64)
    y, m, d = civil_from_days(days)
    wd = weekday_of_days(days)
    y, m, d, wd = y.astype(np.int16), m.astype(np.int8), d.astype(np.int8), wd.astype(np.int8)
    a_dom = TWO_PI * (d - 1) / days_in_month(y, m)
    a_wd = TWO_PI * wd / 7.0
    q = [np.rint(f(a) * _Q).astype(np.int64)[0] for a in (a_dom, a_wd) for f in (np.cos, np.sin)]
    return int(q[0]), int(q[1]), int(q[2]), int(q[3])


def _expiry_end(exp_year: np.ndarray, exp_month: np.ndarray) -> np.ndarray:
    """UTC ns of the first day after the expiry month (int64 arrays in, int64 out)."""
    ny, nm = shift_month(exp_year, exp_month, 1)
    # A card is valid through the last day of its expiry month (UTC here).
    return days_from_civil(ny, nm, np.ones_like(nm)) * NS_PER_DAY


@lru_cache(maxsize=65536)
def _expiry_end_ns(exp_year: int, exp_month: int) -> int:
    """:func:`_expiry_end` of one card (exact integer arithmetic, cached)."""
    arr = _expiry_end(np.asarray([exp_year], dtype=np.int64), np.asarray([exp_month], np.int64))
    return int(arr[0])


_CUSTOMER_EVENTS: Final[tuple[str, ...]] = (
    "charges",
    "first_failures",
    "amount_sum",
    "successes",
    "dom_cos",
    "dom_sin",
    "wd_cos",
    "wd_sin",
    "recoveries",
    "recovery_seconds",
)


# Codes repeat a lot: cache the normalisation of string codes (non-strings, e.g. NA, go uncached).
_normalize_code_str = lru_cache(maxsize=65536)(normalize_code)
_normalize_advice_str = lru_cache(maxsize=65536)(normalize_advice_code)


def _normalize_code(code: object) -> str:
    return _normalize_code_str(code) if code.__class__ is str else normalize_code(code)


def _normalize_advice(code: object) -> str:
    return _normalize_advice_str(code) if code.__class__ is str else normalize_advice_code(code)
