"""Generation of the synthetic world and the :class:`SimulatedWorld` ground-truth object.

Generation is vectorised per month: every active customer's renewal is attempted on its anchor
day (a UTC instant, as Stripe anchors subscriptions), failures are retried by the logging policy
(:mod:`training.simulate.logging_policy`) within its window, and every attempt's outcome is drawn
from the ground truth (:mod:`training.simulate.truth`) with counter-based uniforms keyed by
(seed, charge, attempt), so the world is deterministic for a seed. An unrecovered charge ends the
subscription (involuntary churn); customers also churn voluntarily each month.
"""

from __future__ import annotations

import time as _time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as C  # noqa: N812
from retryopt.features.localtime import NS_PER_HOUR, utc_offset_hours
from retryopt.training.progress import Progress
from retryopt.training.simulate.config import PAY_CYCLE_KINDS, WorldConfig
from retryopt.training.simulate.logging_policy import logging_retry_offsets, stops_after
from retryopt.training.simulate.truth import (
    ADVICE_NAMES,
    CODE_INDEX,
    CODE_NAMES,
    FUNDING_NAMES,
    MECHANISMS,
    ChargeState,
    Tables,
    choose_declines,
    crn_uniforms,
    dunning_cancel_hours,
    failure_probabilities,
    history_features,
    local_hours,
    pay_cycle_position,
    success_from_failures,
)

__all__ = ["Outcome", "SimulatedWorld", "simulate_world"]

CALENDAR_KINDS: tuple[str, ...] = ("semimonthly", "month_end", "first_of_month", "day_25")
TABLE_MARGIN_HOURS = 24 * 120  # hourly tables extend this far past the last month (play windows)


@dataclass(frozen=True)
class Outcome:
    """A sampled attempt outcome."""

    succeeded: bool
    decline_code: str | None
    network_advice_code: str | None
    probability: float


# ----------------------------------------------------------------------------------------------
# Fixed tables


def _month_end_adjust(dates: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """Move weekend dates back to the previous Friday (previous business day)."""
    wd = dates.weekday
    shift = np.where(wd == 5, 1, np.where(wd == 6, 2, 0))
    return dates - pd.to_timedelta(shift, unit="D")


def _calendars(epoch: pd.Timestamp, day0: int, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    days = np.arange(day0, day0 + n_days)
    first = (epoch + pd.Timedelta(days=int(day0))).to_period("M").to_timestamp() - pd.DateOffset(
        months=1
    )
    month_starts = pd.date_range(first, periods=n_days // 28 + 4, freq="MS")
    month_ends = month_starts + pd.offsets.MonthEnd(0)
    targets = {
        "semimonthly": month_starts.append(month_starts + pd.Timedelta(days=14)),
        "month_end": month_ends,
        "first_of_month": month_starts,
        "day_25": month_starts + pd.Timedelta(days=24),
    }
    last = np.empty((len(CALENDAR_KINDS), n_days), dtype=np.int64)
    nxt = np.empty((len(CALENDAR_KINDS), n_days), dtype=np.int64)
    for i, kind in enumerate(CALENDAR_KINDS):
        paydays = _month_end_adjust(pd.DatetimeIndex(targets[kind]))
        idx = np.asarray((paydays - epoch).days, dtype=np.int64) - day0
        flag = np.zeros(n_days, dtype=bool)
        flag[idx[(idx >= 0) & (idx < n_days)]] = True
        pos = np.where(flag, np.arange(n_days), -(10**9))
        last_pos = np.maximum.accumulate(pos)
        last[i] = np.where(last_pos >= 0, last_pos + day0, days - 31)
        rev = np.where(flag, np.arange(n_days), 10**9)[::-1]
        next_incl = np.minimum.accumulate(rev)[::-1]  # first payday >= d
        shifted = np.append(next_incl[1:], 10**9)  # first payday > d
        nxt[i] = np.where(shifted < 10**9, shifted + day0, days + 31)
    return last, nxt


def _zone_offsets(
    epoch: pd.Timestamp, hour0: int, n_hours: int, zones: Sequence[str]
) -> np.ndarray:
    """UTC offset in hours (DST-correct) of each zone at each simulated hour, ``(zones, hours)``."""
    start = int((epoch + pd.Timedelta(hours=hour0)).value)
    utc_ns = start + np.arange(n_hours, dtype=np.int64) * NS_PER_HOUR
    out = np.empty((len(zones), n_hours), dtype=np.float64)
    for i, zone in enumerate(zones):
        out[i] = utc_offset_hours(zone, utc_ns)
    return out


def _outages(
    rng: np.random.Generator, n_issuers: int, n_hours: int, rate_per_month: float, mean_h: float
) -> np.ndarray:
    counts = rng.poisson(rate_per_month * n_hours / 730.0, size=n_issuers)
    issuer = np.repeat(np.arange(n_issuers), counts)
    start = rng.integers(0, n_hours, size=issuer.size)
    dur = np.maximum(1, np.round(rng.exponential(mean_h, size=issuer.size))).astype(np.int64)
    diff = np.zeros((n_issuers, n_hours + 1), dtype=np.int32)
    np.add.at(diff, (issuer, start), 1)
    np.add.at(diff, (issuer, np.minimum(start + dur, n_hours)), -1)
    return np.cumsum(diff, axis=1)[:, :n_hours] > 0


# ----------------------------------------------------------------------------------------------
# Population


@dataclass
class _Customers:
    country: np.ndarray
    zone: np.ndarray
    brand: np.ndarray
    funding: np.ndarray
    issuer: np.ndarray
    fragility: np.ndarray
    income_usd: np.ndarray
    amount_minor: np.ndarray
    amount_usd: np.ndarray
    cycle_kind: np.ndarray
    cycle_period: np.ndarray
    cycle_phase: np.ndarray
    cycle_calendar: np.ndarray
    bank_hour: np.ndarray
    first_month: np.ndarray
    anchor_day: np.ndarray
    anchor_utc_hour: np.ndarray
    card_added_h: np.ndarray
    exp_end_h: np.ndarray
    exp_month: np.ndarray
    exp_year: np.ndarray
    replace_h: np.ndarray
    new_exp_month: np.ndarray
    new_exp_year: np.ndarray
    tz_missing: np.ndarray


def _choice_by_group(
    rng: np.random.Generator, group: np.ndarray, options: list[list[tuple[int, float]]]
) -> np.ndarray:
    """For each row, draw one option of its group; ``options[g]`` = [(value, weight), ...]."""
    out = np.empty(group.shape[0], dtype=np.int64)
    for g, opts in enumerate(options):
        rows = np.flatnonzero(group == g)
        if rows.size == 0:
            continue
        values = np.array([v for v, _ in opts])
        w = np.array([w for _, w in opts], dtype=np.float64)
        out[rows] = values[rng.choice(len(values), size=rows.size, p=w / w.sum())]
    return out


def _month_index_hours(epoch: pd.Timestamp, year: np.ndarray, month: np.ndarray) -> np.ndarray:
    """Hours since epoch of the first instant after the end of (year, month), UTC."""
    months = (year - 1970) * 12 + (month - 1) + 1
    starts = months.astype("datetime64[M]").astype("datetime64[ns]")
    return (starts - epoch.to_datetime64()).astype(np.int64) / NS_PER_HOUR


@dataclass(frozen=True)
class _Names:
    countries: tuple[str, ...]
    zones: tuple[str, ...]
    brands: tuple[str, ...]
    issuers: tuple[str, ...]
    issuer_country: np.ndarray
    currencies: tuple[str, ...]
    country_currency: np.ndarray
    cycle_kinds: tuple[str, ...]


def _names(config: WorldConfig) -> _Names:
    countries = tuple(config.population.countries)
    zones = tuple(dict.fromkeys(z for c in config.population.countries.values() for z in c.zones))
    brands = tuple(dict.fromkeys(b for c in config.population.countries.values() for b in c.brands))
    k = config.issuers.per_country
    issuers = tuple(f"{cc.lower()}_bank_{i + 1:02d}" for cc in countries for i in range(k))
    # The contract stores ISO 4217 codes in lower case (as Stripe does).
    currencies = tuple(
        dict.fromkeys(c.currency.lower() for c in config.population.countries.values())
    )
    country_currency = np.array(
        [currencies.index(c.currency.lower()) for c in config.population.countries.values()]
    )

    return _Names(
        countries=countries,
        zones=zones,
        brands=brands,
        issuers=issuers,
        issuer_country=np.repeat(np.arange(len(countries)), k),
        currencies=currencies,
        country_currency=country_currency,
        cycle_kinds=PAY_CYCLE_KINDS,
    )


def _customers(
    config: WorldConfig,
    names: _Names,
    rng: np.random.Generator,
    n: int,
    months: int,
    epoch: pd.Timestamp,
    zone_offset_at_epoch: np.ndarray,
) -> _Customers:
    pop = config.population
    cfgs = list(pop.countries.values())
    cw = np.array([c.weight for c in cfgs], dtype=np.float64)
    country = rng.choice(len(cfgs), size=n, p=cw / cw.sum())
    zone = _choice_by_group(
        rng, country, [[(names.zones.index(z), w) for z, w in c.zones.items()] for c in cfgs]
    )
    brand = _choice_by_group(
        rng, country, [[(names.brands.index(b), w) for b, w in c.brands.items()] for c in cfgs]
    )
    fw = np.array([pop.funding.get(f, 0.0) for f in FUNDING_NAMES], dtype=np.float64)
    funding = rng.choice(len(FUNDING_NAMES), size=n, p=fw / fw.sum())
    k = config.issuers.per_country
    zipf = 1.0 / np.arange(1, k + 1) ** config.issuers.zipf_exponent
    issuer = country * k + rng.choice(k, size=n, p=zipf / zipf.sum())

    fragility = rng.normal(0.0, pop.fragility_sd, size=n)
    income_median = np.array([c.income_usd_median for c in cfgs])[country]
    income_usd = income_median * np.exp(rng.normal(0.0, pop.income_sigma, size=n))
    plans = list(pop.plans.values())
    pw = np.array([p.weight for p in plans], dtype=np.float64)
    plan = rng.choice(len(plans), size=n, p=pw / pw.sum())
    price_usd = np.array([p.median_usd for p in plans])[plan] * np.exp(
        rng.normal(0.0, 1.0, size=n) * np.array([p.sigma for p in plans])[plan]
    )
    rate = np.array([c.usd_rate for c in cfgs])[country]
    decimals = np.array([c.currency_decimals for c in cfgs])[country]
    major = price_usd * rate
    # Price points: x.99 for two-decimal currencies, multiples of 10 for zero-decimal ones.
    amount_minor = np.where(
        decimals == 0,
        np.maximum(10, np.round(major / 10.0) * 10),
        np.maximum(1, np.ceil(major)) * 10.0**decimals - 1,
    ).astype(np.int64)
    amount_usd = amount_minor / 10.0**decimals / rate

    kinds = names.cycle_kinds
    cycle_kind = _choice_by_group(
        rng, country, [[(kinds.index(p), w) for p, w in c.pay_cycles.items()] for c in cfgs]
    )
    friday0 = (4 - epoch.weekday()) % 7
    lo_p, hi_p = config.pay_cycle.irregular_period_days
    irregular_period = rng.integers(lo_p, hi_p + 1, size=n)
    kind_name = np.array(kinds)[cycle_kind]
    cycle_period = np.select(
        [kind_name == "weekly", kind_name == "biweekly", kind_name == "irregular"],
        [7, 14, irregular_period],
        0,
    ).astype(np.int64)
    cycle_phase = np.select(
        [kind_name == "weekly", kind_name == "biweekly", kind_name == "irregular"],
        [
            np.full(n, friday0),
            friday0 + 7 * rng.integers(0, 2, size=n),
            rng.integers(0, 10**6, size=n) % np.maximum(irregular_period, 1),
        ],
        0,
    ).astype(np.int64)
    cal_lookup = {k2: i for i, k2 in enumerate(CALENDAR_KINDS)}
    cycle_calendar = np.array([cal_lookup.get(k2, -1) for k2 in kinds])[cycle_kind]
    b_lo, b_hi = config.pay_cycle.bank_post_hours
    bank_hour = rng.integers(b_lo, b_hi, size=n).astype(np.float64)

    joiner = (rng.random(n) < pop.join_during_share) & (months > 1)
    join_month = rng.integers(0, max(months - 1, 1), size=n)
    first_month = np.where(joiner, join_month + 1, 0)
    anchor_day = rng.integers(1, 32, size=n)
    s_lo, s_hi = pop.signup_local_hours
    local_anchor = rng.uniform(s_lo, s_hi, size=n)
    anchor_utc_hour = np.mod(local_anchor - zone_offset_at_epoch[zone], 24.0)

    # Cards. Existing customers: expiry month uniform over the coming validity period; joiners:
    # a card added at sign-up, valid 3-5 years.
    v_lo, v_hi = config.expiry.validity_years
    validity_months = 12 * rng.integers(v_lo, v_hi + 1, size=n)
    start_year, start_month = epoch.year, epoch.month
    base_months = start_year * 12 + (start_month - 1)
    existing_exp = base_months + (rng.random(n) * validity_months).astype(np.int64)
    joiner_exp = base_months + join_month + validity_months
    exp_abs = np.where(joiner, joiner_exp, existing_exp)
    exp_year = exp_abs // 12
    exp_month = exp_abs % 12 + 1
    exp_end_h = _month_index_hours(epoch, exp_year, exp_month)
    month_start_days = np.array(
        [(pd.Timestamp(epoch) + pd.DateOffset(months=int(m)) - epoch).days for m in range(months)]
    )
    signup_h = (
        month_start_days[np.minimum(join_month, months - 1)] * 24.0
        + (np.minimum(anchor_day, 28) - 1) * 24.0
        + anchor_utc_hour
    )
    existing_added = -24.0 * rng.uniform(30.0, pop.existing_card_age_days_max, size=n)
    card_added_h = np.where(joiner, signup_h - rng.uniform(0.05, 0.5, size=n), existing_added)

    ex = config.expiry
    covered = rng.random(n) < ex.updater_coverage
    delay_h = 24.0 * rng.normal(ex.updater_delay_mean_days, ex.updater_delay_sd_days, size=n)
    replace_h = np.where(covered, exp_end_h + delay_h, np.inf)
    replace_h = np.maximum(replace_h, card_added_h + 24.0)
    new_validity = 12 * rng.integers(v_lo, v_hi + 1, size=n)
    new_abs = exp_abs + new_validity
    return _Customers(
        country=country,
        zone=zone,
        brand=brand,
        funding=funding,
        issuer=issuer,
        fragility=fragility,
        income_usd=income_usd,
        amount_minor=amount_minor,
        amount_usd=amount_usd,
        cycle_kind=cycle_kind,
        cycle_period=cycle_period,
        cycle_phase=cycle_phase,
        cycle_calendar=cycle_calendar,
        bank_hour=bank_hour,
        first_month=first_month,
        anchor_day=anchor_day,
        anchor_utc_hour=anchor_utc_hour,
        card_added_h=card_added_h,
        exp_end_h=exp_end_h,
        exp_month=exp_month,
        exp_year=exp_year,
        replace_h=replace_h,
        new_exp_month=new_abs % 12 + 1,
        new_exp_year=new_abs // 12,
        tz_missing=rng.random(n) < pop.timezone_missing_share,
    )


# ----------------------------------------------------------------------------------------------
# The world object


class SimulatedWorld:
    """A generated world: its attempts (data contract), hidden per-charge truth and oracle API.

    Attributes
    ----------
    attempts
        Every attempt of the simulated history as a canonical contract frame.
    truth
        One row per charge with its hidden state (latent draws, pay cycle, card timeline) and
        what happened under the logging policy.
    config
        The :class:`WorldConfig` the world was generated with.
    seed
        The generation seed.
    """

    def __init__(
        self,
        *,
        config: WorldConfig,
        seed: int,
        epoch: pd.Timestamp,
        tables: Tables,
        names: _Names,
        customers: _Customers,
        state: ChargeState,
        charge_customer: np.ndarray,
        charge_first_h: np.ndarray,
        attempt_log: dict[str, np.ndarray],
        charge_outcome: dict[str, np.ndarray],
        crn_seed: int,
    ) -> None:
        self.config = config
        self.crn_seed = crn_seed
        self.seed = seed
        self.epoch = epoch
        self.tables = tables
        self.names = names
        self.customers = customers
        self.state = state
        self.charge_customer = charge_customer
        self.charge_first_h = charge_first_h
        n = charge_customer.shape[0]
        self.charge_ids: np.ndarray = np.array([f"ch_{i:08d}" for i in range(n)], dtype=object)
        self.customer_ids: np.ndarray = np.array(
            [f"cus_{i:07d}" for i in range(customers.country.shape[0])], dtype=object
        )
        self._charge_index = pd.Index(self.charge_ids)
        self.attempt_log = attempt_log
        self.charge_outcome = charge_outcome
        self.attempts: pd.DataFrame = self.contract_rows(
            attempt_log["charge"],
            attempt_log["attempt"],
            attempt_log["t"],
            attempt_log["success"],
            attempt_log["code"],
            attempt_log["advice"],
            attempt_log["propensity"],
            prefix="a",
        )
        self.truth: pd.DataFrame = self._truth_frame()

    # -- conversions ---------------------------------------------------------------------------
    def to_hours(self, times: Any) -> np.ndarray:
        """Hours since the epoch of timestamps (tz-aware or naive UTC; scalar or array-like).

        The result keeps the input's shape; NaT becomes NaN.
        """
        if isinstance(times, pd.Series | pd.Index):
            idx = pd.DatetimeIndex(times)
            if idx.tz is not None:
                idx = idx.tz_convert("UTC").tz_localize(None)
            arr: np.ndarray = idx.to_numpy(dtype="datetime64[ns]")
        else:
            raw: np.ndarray = np.asarray(times)
            if raw.dtype.kind == "M":
                arr = raw.astype("datetime64[ns]")
            else:
                flat = pd.to_datetime(pd.Series(raw.ravel(), dtype=object), utc=True)
                arr = flat.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").reshape(raw.shape)
        delta = arr - self.epoch.to_datetime64().astype("datetime64[ns]")
        out = delta.astype(np.int64) / NS_PER_HOUR
        return np.where(np.isnat(delta), np.nan, out)

    def from_hours(self, hours: np.ndarray) -> np.ndarray:
        """``datetime64[ns]`` (naive UTC) of hours since the epoch (NaN -> NaT), to the second."""
        h = np.asarray(hours, dtype=np.float64)
        sec = np.round(np.where(np.isfinite(h), h, 0.0) * 3600.0).astype(np.int64)
        out = self.epoch.to_datetime64().astype("datetime64[ns]") + sec.astype("timedelta64[s]")
        return np.where(np.isfinite(h), out, np.datetime64("NaT", "ns"))

    def positions(self, charge_ids: Any) -> np.ndarray:
        """Positions of charge ids in the world's charge arrays (error naming unknown ids)."""
        ids = np.atleast_1d(np.asarray(charge_ids, dtype=object))
        pos = self._charge_index.get_indexer(ids)
        if (pos < 0).any():
            bad = ids[pos < 0][:5].tolist()
            raise KeyError(f"unknown charge_id(s) {bad} ({int((pos < 0).sum())} in all)")
        return pos

    def _prev_hours(self, attempts_so_far: Any) -> np.ndarray:
        if attempts_so_far is None:
            return np.empty(0)
        if isinstance(attempts_so_far, pd.DataFrame):
            if C.ATTEMPTED_AT not in attempts_so_far.columns:
                raise ValueError(f"attempts_so_far needs a {C.ATTEMPTED_AT!r} column")
            return self.to_hours(attempts_so_far[C.ATTEMPTED_AT])
        return np.atleast_1d(self.to_hours(attempts_so_far))

    # -- ground truth --------------------------------------------------------------------------
    def failure_probabilities_hours(
        self, pos: np.ndarray, prev_h: np.ndarray, times_h: np.ndarray
    ) -> np.ndarray:
        """Per-mechanism failure probabilities ``(n_mech, n, m)`` (hours in, batch form)."""
        state = self.state.take(pos)
        hist = history_features(prev_h, times_h)
        return failure_probabilities(self.config, self.tables, state, times_h, hist)

    def success_probability_hours(
        self, pos: np.ndarray, prev_h: np.ndarray, times_h: np.ndarray
    ) -> np.ndarray:
        """True P(success) ``(n, m)`` for charges at ``pos`` (hours in, batch form)."""
        return success_from_failures(self.failure_probabilities_hours(pos, prev_h, times_h))

    def success_probability(self, charge_id: str, attempts_so_far: Any, times: Any) -> np.ndarray:
        """True probability that an attempt of ``charge_id`` at each of ``times`` succeeds.

        Parameters
        ----------
        charge_id
            A charge of the world.
        attempts_so_far
            The charge's earlier (failed) attempts: a contract frame (``attempted_at`` is used),
            an array of timestamps, or ``None`` for the first attempt.
        times
            Candidate attempt times (timestamps, tz-aware or naive UTC).

        Returns
        -------
        ``float64`` array, one probability per time.
        """
        pos = self.positions([charge_id])
        prev = self._prev_hours(attempts_so_far)[None, :]
        t = np.atleast_1d(self.to_hours(times)).astype(np.float64)[None, :]
        return self.success_probability_hours(pos, prev, t)[0]

    def success_probability_batch(
        self, charge_ids: Any, attempt_times: np.ndarray, times: np.ndarray
    ) -> np.ndarray:
        """Batch form: ``attempt_times`` ``(n, k)`` NaT-padded and ``times`` ``(n, m)``."""
        pos = self.positions(charge_ids)
        prev = self.to_hours(np.asarray(attempt_times)).reshape(len(pos), -1)
        t = self.to_hours(np.asarray(times)).reshape(len(pos), -1)
        return self.success_probability_hours(pos, prev, t)

    def mechanism_probabilities(
        self, charge_id: str, attempts_so_far: Any, times: Any
    ) -> pd.DataFrame:
        """Per-mechanism failure probabilities of one charge (columns = mechanisms)."""
        pos = self.positions([charge_id])
        prev = self._prev_hours(attempts_so_far)[None, :]
        t = np.atleast_1d(self.to_hours(times)).astype(np.float64)[None, :]
        p = self.failure_probabilities_hours(pos, prev, t)[:, 0, :]
        return pd.DataFrame({m: p[i] for i, m in enumerate(MECHANISMS)})

    def sample_hours(
        self,
        pos: np.ndarray,
        prev_h: np.ndarray,
        t_h: np.ndarray,
        uniforms: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sample outcomes of attempts at ``t_h`` ``(n,)`` with uniforms ``(n, 4)``.

        Returns success ``(n,)`` bool, decline code ids, advice ids (-1 = none) and P(success).
        """
        state = self.state.take(pos)
        hist = history_features(prev_h, t_h[:, None])
        fail = failure_probabilities(self.config, self.tables, state, t_h[:, None], hist)[:, :, 0]
        p = success_from_failures(fail)
        success = uniforms[:, 0] < p
        code, advice = choose_declines(self.config, self.tables, state, t_h, fail, uniforms[:, 1:])
        return success, np.where(success, -1, code), np.where(success, -1, advice), p

    def sample_outcome(
        self,
        charge_id: str,
        attempts_so_far: Any,
        time: Any,
        *,
        seed: int,
        attempt_number: int | None = None,
    ) -> Outcome:
        """Sample the outcome (and decline code) of one attempt.

        The draw uses the common random numbers of (``seed``, charge, ``attempt_number``);
        ``attempt_number`` defaults to the number of attempts so far.
        """
        pos = self.positions([charge_id])
        prev = self._prev_hours(attempts_so_far)
        k = prev.size if attempt_number is None else attempt_number
        t = np.atleast_1d(self.to_hours(time)).astype(np.float64)[:1]
        u = crn_uniforms(seed, pos, np.array([k]), 4)
        success, code, advice, p = self.sample_hours(pos, prev[None, :], t, u)
        return Outcome(
            succeeded=bool(success[0]),
            decline_code=None if code[0] < 0 else CODE_NAMES[code[0]],
            network_advice_code=None if advice[0] < 0 else ADVICE_NAMES[advice[0]],
            probability=float(p[0]),
        )

    def failed_charges(self, start: Any = None, end: Any = None) -> np.ndarray:
        """Ids of charges whose first attempt failed, first attempted in ``[start, end)``."""
        mask = self.charge_outcome["first_failed"].copy()
        if start is not None:
            mask &= self.charge_first_h >= float(self.to_hours(pd.Timestamp(start)))
        if end is not None:
            mask &= self.charge_first_h < float(self.to_hours(pd.Timestamp(end)))
        return self.charge_ids[mask].astype(str)

    def local_hour_of_day(self, pos: np.ndarray, times_h: np.ndarray) -> np.ndarray:
        """Customer-local hour of day (0-24) of hours ``times_h`` ``(n, m)``."""
        return np.mod(local_hours(self.tables, self.state.zone[pos], times_h), 24.0)

    def hours_to_next_payday(self, pos: np.ndarray, times_h: np.ndarray) -> np.ndarray:
        """Hours from ``times_h`` ``(n, m)`` to each charge's next payday (truth, diagnostics)."""
        state = self.state.take(pos)
        local = local_hours(self.tables, state.zone, times_h)
        return pay_cycle_position(self.tables, state, local)[1]

    # -- frames --------------------------------------------------------------------------------
    def contract_rows(
        self,
        pos: np.ndarray,
        attempt_no: np.ndarray,
        t_h: np.ndarray,
        success: np.ndarray,
        code: np.ndarray,
        advice: np.ndarray,
        propensity: np.ndarray,
        *,
        prefix: str,
    ) -> pd.DataFrame:
        """Contract rows (canonical dtypes) for attempts of charges at ``pos``.

        ``attempt_id`` is ``at_<charge number>_<prefix><attempt number>``.
        """
        order = np.lexsort((attempt_no, pos, t_h))
        pos, attempt_no, t_h = pos[order], attempt_no[order], t_h[order]
        success, code, advice, propensity = (
            success[order],
            code[order],
            advice[order],
            propensity[order],
        )
        cust = self.charge_customer[pos]
        cs = self.customers
        new_card = t_h >= cs.replace_h[cust]
        charge_ids = pd.Series(self.charge_ids[pos], dtype="str")
        attempt_ids = (
            "at_"
            + charge_ids.str.slice(3)
            + f"_{prefix}"
            + pd.Series(attempt_no, dtype="int64").astype("str")
        )
        card_ids = (
            "card_"
            + pd.Series(cust, dtype="int64").astype("str")
            + pd.Series(np.where(new_card, "b", "a"), dtype="str")
        )
        attempted = pd.DatetimeIndex(self.from_hours(t_h)).tz_localize("UTC")
        added_h = np.where(new_card, cs.replace_h[cust], cs.card_added_h[cust])
        added = pd.DatetimeIndex(self.from_hours(added_h)).tz_localize("UTC")
        names = self.names
        frame = pd.DataFrame(
            {
                C.ATTEMPT_ID: attempt_ids.to_numpy(),
                C.CHARGE_ID: charge_ids.to_numpy(),
                C.CUSTOMER_ID: _strs(self.customer_ids, cust),
                C.ATTEMPTED_AT: attempted,
                C.AMOUNT: cs.amount_minor[cust].astype(np.int64),
                C.CURRENCY: _cat(names.currencies, names.country_currency[cs.country[cust]]),
                C.OUTCOME: _cat((C.FAILED, C.SUCCEEDED), success.astype(np.int64)),
                C.DECLINE_CODE: _cat(CODE_NAMES, code),
                C.NETWORK_ADVICE_CODE: _cat(ADVICE_NAMES, advice),
                C.CARD_BRAND: _cat(names.brands, cs.brand[cust]),
                C.CARD_FUNDING: _cat(FUNDING_NAMES, cs.funding[cust]),
                C.CARD_COUNTRY: _cat(names.countries, cs.country[cust]),
                C.CARD_ADDED_AT: added,
                C.CARD_EXP_MONTH: np.where(
                    new_card, cs.new_exp_month[cust], cs.exp_month[cust]
                ).astype(np.int64),
                C.CARD_EXP_YEAR: np.where(
                    new_card, cs.new_exp_year[cust], cs.exp_year[cust]
                ).astype(np.int64),
                C.CARD_ID: card_ids.to_numpy(),
                C.ISSUER: _cat(names.issuers, cs.issuer[cust]),
                C.CUSTOMER_TIMEZONE: _cat(
                    names.zones, np.where(cs.tz_missing[cust], -1, cs.zone[cust])
                ),
                C.RETRY_PROPENSITY: np.asarray(propensity, dtype=np.float64),
            }
        )
        for col in C.STRING_COLUMNS:
            frame[col] = frame[col].astype("str")
        return frame[list(C.ALL_COLUMNS)].reset_index(drop=True)

    def _truth_frame(self) -> pd.DataFrame:
        cs, st, names = self.customers, self.state, self.names
        cust = self.charge_customer
        out = self.charge_outcome
        to_ts = lambda h: pd.DatetimeIndex(self.from_hours(h)).tz_localize("UTC")  # noqa: E731
        return pd.DataFrame(
            {
                "charge_id": pd.array(self.charge_ids, dtype="str"),
                "customer_id": pd.array(self.customer_ids[cust], dtype="str"),
                "month": out["month"].astype(np.int64),
                "first_attempt_at": to_ts(self.charge_first_h),
                "country": _cat(names.countries, cs.country[cust]).astype("str"),
                "timezone": _cat(names.zones, cs.zone[cust]).astype("str"),
                "issuer": _cat(names.issuers, cs.issuer[cust]).astype("str"),
                "card_brand": _cat(names.brands, cs.brand[cust]).astype("str"),
                "card_funding": _cat(FUNDING_NAMES, cs.funding[cust]).astype("str"),
                "amount": cs.amount_minor[cust].astype(np.int64),
                "currency": _cat(names.currencies, names.country_currency[cs.country[cust]]).astype(
                    "str"
                ),
                "amount_usd": cs.amount_usd[cust],
                "income_usd": cs.income_usd[cust],
                "fragility": st.fragility,
                "latent_funds": st.latent_funds,
                "latent_risk": st.latent_risk,
                "pay_cycle": _cat(names.cycle_kinds, cs.cycle_kind[cust]).astype("str"),
                "bank_hour": st.bank_hour.astype(np.int64),
                "hard_decline_code": _cat(CODE_NAMES, st.hard_code).astype("str"),
                "auth_required": st.auth_required,
                "card_expires_at": to_ts(st.exp_end_h),
                "updater_at": to_ts(np.where(np.isfinite(st.replace_h), st.replace_h, np.nan)),
                "first_failed": out["first_failed"],
                "first_decline_code": _cat(CODE_NAMES, out["first_code"]).astype("str"),
                "logged_retries": out["retries"].astype(np.int64),
                "recovered": out["recovered"],
                "recovered_at": to_ts(out["recovered_h"]),
            }
        )


def _cat(categories: Sequence[str], codes: np.ndarray) -> Any:
    return pd.Categorical.from_codes(
        np.asarray(codes, dtype=np.int64), categories=pd.Index(list(categories))
    )


def _strs(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.asarray(values[idx])


# ----------------------------------------------------------------------------------------------
# Simulation


def simulate_world(
    config: WorldConfig,
    *,
    customers: int,
    months: int,
    seed: int,
    progress: Progress | None = None,
) -> SimulatedWorld:
    """Generate a world: customers, their monthly renewals and the logging policy's retries.

    Parameters
    ----------
    config
        The world's mechanisms and logging policy.
    customers
        Number of customers (all of them are billed monthly while subscribed).
    months
        Number of monthly billing cycles, starting at ``config.population.start_date``.
    seed
        Seed; the world is a deterministic function of (config, customers, months, seed).
    progress
        Optional callback receiving one line per simulated month.

    Returns
    -------
    SimulatedWorld
    """
    if customers < 1:
        raise ValueError(f"customers must be >= 1, got {customers}")
    if months < 1:
        raise ValueError(f"months must be >= 1, got {months}")
    started = _time.perf_counter()
    epoch = pd.Timestamp(config.population.start_date)
    if epoch.tz is not None:
        epoch = epoch.tz_convert("UTC").tz_localize(None)
    epoch = epoch.normalize()
    seq = np.random.SeedSequence(seed)
    rng_pop, rng_tab, rng_month = (np.random.default_rng(s) for s in seq.spawn(3))
    names = _names(config)

    month_starts = pd.date_range(epoch, periods=months + 1, freq="MS")
    if month_starts[0] != epoch:
        month_starts = pd.DatetimeIndex([epoch, *month_starts[:months]])
    month_start_h = np.asarray((month_starts - epoch).total_seconds()) / 3600.0
    days_in_month = np.asarray(month_starts[:months].days_in_month)
    hour0 = -24 * 40
    n_hours = int(month_start_h[months]) - hour0 + int(config.logging_policy.window_hours)
    n_hours += TABLE_MARGIN_HOURS
    zone_offsets = _zone_offsets(epoch, hour0, n_hours, names.zones)
    n_issuers = len(names.issuers)
    ma = config.maintenance
    day0 = hour0 // 24 - 2
    n_days = n_hours // 24 + 4
    cal_last, cal_next = _calendars(epoch, day0, n_days)
    tables = Tables(
        hour0=hour0,
        zone_offset_hours=zone_offsets,
        outage=_outages(
            rng_tab,
            n_issuers,
            n_hours,
            config.outage.episodes_per_month,
            config.outage.mean_duration_hours,
        ),
        day0=day0,
        calendar_last=cal_last,
        calendar_next=cal_next,
        issuer_strictness=rng_tab.normal(0.0, config.issuers.strictness_sd, size=n_issuers),
        issuer_maint_start=rng_tab.integers(
            ma.start_hours[0], ma.start_hours[1], size=n_issuers
        ).astype(np.float64),
        issuer_maint_hours=rng_tab.integers(
            ma.duration_hours[0], ma.duration_hours[1] + 1, size=n_issuers
        ).astype(np.float64),
    )
    cs = _customers(config, names, rng_pop, customers, months, epoch, zone_offsets[:, -hour0])
    is_mc = np.array([b == "mastercard" for b in names.brands])[cs.brand]
    eea = np.array([c.eea for c in config.population.countries.values()])[cs.country]
    crn_seed = int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1, np.uint64)[0])
    lp = config.logging_policy

    states: list[ChargeState] = []
    charge_customer: list[np.ndarray] = []
    charge_first: list[np.ndarray] = []
    outcome_parts: dict[str, list[np.ndarray]] = {
        k: []
        for k in (
            "month",
            "first_failed",
            "first_code",
            "first_advice",
            "retries",
            "recovered",
            "recovered_h",
        )
    }
    log: dict[str, list[np.ndarray]] = {
        k: [] for k in ("charge", "attempt", "t", "success", "code", "advice", "propensity")
    }
    alive = np.ones(customers, dtype=bool)
    next_charge = 0
    hard_names = list(config.hard_decline.codes)
    hard_w = np.array([config.hard_decline.codes[k] for k in hard_names], dtype=np.float64)
    hard_ids = np.array([CODE_INDEX[k] for k in hard_names])
    for m in range(months):
        cust = np.flatnonzero(alive & (cs.first_month <= m))
        n = cust.size
        gidx = np.arange(next_charge, next_charge + n)
        next_charge += n
        day = np.minimum(cs.anchor_day[cust], days_in_month[m]) - 1
        jitter = rng_month.uniform(0.0, config.billing.jitter_minutes / 60.0, size=n)
        t0 = month_start_h[m] + 24.0 * day + cs.anchor_utc_hour[cust] + jitter
        t0 = np.round(t0 * 3600.0) / 3600.0
        hard = np.where(
            rng_month.random(n) < config.hard_decline.rate,
            hard_ids[rng_month.choice(len(hard_ids), size=n, p=hard_w / hard_w.sum())],
            -1,
        )
        state = ChargeState(
            zone=cs.zone[cust],
            issuer=cs.issuer[cust],
            funding=cs.funding[cust],
            is_mastercard=is_mc[cust],
            fragility=cs.fragility[cust],
            log_amount_rel=np.log(cs.amount_usd[cust] / (0.01 * cs.income_usd[cust])),
            latent_funds=rng_month.normal(size=n),
            latent_risk=rng_month.normal(size=n),
            cycle_period=cs.cycle_period[cust],
            cycle_phase=cs.cycle_phase[cust],
            cycle_calendar=cs.cycle_calendar[cust],
            bank_hour=cs.bank_hour[cust],
            hard_code=hard,
            auth_required=eea[cust] & (rng_month.random(n) < config.authentication.eea_rate),
            card_added_h=cs.card_added_h[cust],
            exp_end_h=cs.exp_end_h[cust],
            replace_h=cs.replace_h[cust],
            first_h=t0,
            cancel_h=t0 + dunning_cancel_hours(config, seed, m, n),
        )
        u_explore = rng_month.random((n, len(lp.schedule_hours) + 1))
        u_pick = rng_month.random((n, len(lp.schedule_hours) + 1))
        states.append(state)
        charge_customer.append(cust)
        charge_first.append(t0)

        # First attempt.
        k_max = len(lp.schedule_hours)
        prev = np.full((n, k_max + 1), np.nan)
        u = crn_uniforms(crn_seed, gidx, np.zeros(n, dtype=np.int64), 4)
        fail = failure_probabilities(
            config, tables, state, t0[:, None], history_features(prev[:, :0], t0[:, None])
        )[:, :, 0]
        success = u[:, 0] < success_from_failures(fail)
        code, advice = choose_declines(config, tables, state, t0, fail, u[:, 1:])
        code = np.where(success, -1, code)
        advice = np.where(success, -1, advice)
        _append(log, gidx, np.zeros(n, np.int64), t0, success, code, advice, np.full(n, np.nan))
        first_failed = ~success
        first_code = code.copy()
        prev[:, 0] = t0
        active = first_failed & ~stops_after(lp, code, advice)
        recovered = np.zeros(n, dtype=bool)
        recovered_h = np.full(n, np.nan)
        retries = np.zeros(n, dtype=np.int64)
        last_offset = np.zeros(n)
        for k in range(1, k_max + 1):
            rows = np.flatnonzero(active)
            if rows.size == 0:
                break
            offset, prop = logging_retry_offsets(
                lp, k, last_offset[rows], u_explore[rows, k], u_pick[rows, k]
            )
            go = ~np.isnan(offset)
            rows, offset, prop = rows[go], offset[go], prop[go]
            active[:] = False
            if rows.size == 0:
                break
            t = t0[rows] + offset
            sub = state.take(rows)
            fail = failure_probabilities(
                config, tables, sub, t[:, None], history_features(prev[rows, :k], t[:, None])
            )[:, :, 0]
            u = crn_uniforms(crn_seed, gidx[rows], np.full(rows.size, k), 4)
            ok = u[:, 0] < success_from_failures(fail)
            c, a = choose_declines(config, tables, sub, t, fail, u[:, 1:])
            c = np.where(ok, -1, c)
            a = np.where(ok, -1, a)
            _append(log, gidx[rows], np.full(rows.size, k), t, ok, c, a, prop)
            retries[rows] = k
            prev[rows, k] = t
            last_offset[rows] = offset
            recovered[rows[ok]] = True
            recovered_h[rows[ok]] = t[ok]
            cont = rows[~ok & ~stops_after(lp, c, a)]
            active[cont] = True
        unrecovered = first_failed & ~recovered
        churn_inv = unrecovered & (
            rng_month.random(n) < config.population.involuntary_churn_after_unrecovered
        )
        churn_vol = rng_month.random(n) < config.population.voluntary_churn_monthly
        alive[cust[churn_inv | churn_vol]] = False
        for key, value in (
            ("month", np.full(n, m)),
            ("first_failed", first_failed),
            ("first_code", first_code),
            ("first_advice", advice),
            ("retries", retries),
            ("recovered", recovered),
            ("recovered_h", recovered_h),
        ):
            outcome_parts[key].append(value)
        if progress is not None:
            rate = float(first_failed.mean()) if n else 0.0
            rec = float(recovered[first_failed].mean()) if first_failed.any() else 0.0
            progress(
                f"month {m + 1:>3}/{months}: {n:>9,} charges, first-attempt failure "
                f"{rate:6.2%}, recovered {rec:6.2%} ({_time.perf_counter() - started:6.1f} s)"
            )

    all_state = _concat_states(states)
    attempt_log = {k: np.concatenate(v) for k, v in log.items()}
    charge_outcome = {k: np.concatenate(v) for k, v in outcome_parts.items()}
    world = SimulatedWorld(
        config=config,
        seed=seed,
        epoch=epoch,
        tables=tables,
        names=names,
        customers=cs,
        state=all_state,
        charge_customer=np.concatenate(charge_customer),
        charge_first_h=np.concatenate(charge_first),
        attempt_log=attempt_log,
        charge_outcome=charge_outcome,
        crn_seed=crn_seed,
    )
    return world


def _append(
    log: dict[str, list[np.ndarray]],
    charge: np.ndarray,
    attempt: np.ndarray,
    t: np.ndarray,
    success: np.ndarray,
    code: np.ndarray,
    advice: np.ndarray,
    propensity: np.ndarray,
) -> None:
    for key, value in (
        ("charge", charge),
        ("attempt", attempt),
        ("t", t),
        ("success", success),
        ("code", code),
        ("advice", advice),
        ("propensity", propensity),
    ):
        log[key].append(np.asarray(value))


def _concat_states(states: list[ChargeState]) -> ChargeState:
    import dataclasses

    return ChargeState(
        **{
            f.name: np.concatenate([getattr(s, f.name) for s in states])
            for f in dataclasses.fields(ChargeState)
        }
    )
