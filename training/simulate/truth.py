"""Ground truth of the synthetic world: the true success probability of an attempt.

Everything here is a pure, vectorised function of

- the world's fixed tables (time-zone offsets per hour, issuer outage episodes, payday calendars),
- a charge's hidden state (:class:`ChargeState`: customer, card, latent draws),
- the attempts of the charge so far (all failed), and
- candidate attempt times,

returning, per mechanism, the probability that the mechanism makes the attempt fail. Mechanisms
are independent given the hidden state, so ``P(success) = prod_m (1 - p_m)``. The hidden state
contains the persistent per-charge draws (``latent_funds``, ``latent_risk``), so two attempts of
one charge a minute apart are strongly correlated in the data while the ground truth is a
deterministic function of state and time.

Times are float hours since the world's epoch (``population.start_date`` 00:00 UTC); the world
object (:class:`training.simulate.world.SimulatedWorld`) converts from and to timestamps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from retryopt.training.simulate.config import CODE_INDEX, CODE_NAMES, WorldConfig

__all__ = [
    "ADVICE_NAMES",
    "CODE_NAMES",
    "MECHANISMS",
    "ChargeState",
    "HistoryFeatures",
    "Tables",
    "choose_declines",
    "crn_uniforms",
    "dunning_cancel_hours",
    "failure_probabilities",
    "history_features",
    "local_hours",
    "pay_cycle_position",
    "success_from_failures",
]

MECHANISMS: tuple[str, ...] = (
    "funds",
    "issuer_risk",
    "outage",
    "maintenance",
    "expired_card",
    "hard_decline",
    "authentication",
    "velocity",
)
M_FUNDS, M_RISK, M_OUTAGE, M_MAINT, M_EXPIRED, M_HARD, M_AUTH, M_VELOCITY = range(len(MECHANISMS))


# Mastercard merchant advice codes the world emits (index = id; -1 = none). 03/21: do not try
# again; 24-30: retry after 1 h, 24 h, 2, 4, 6, 8, 10 days (domain-facts.md, Mastercard MAC).
ADVICE_NAMES: tuple[str, ...] = ("03", "21", "24", "25", "26", "27", "28", "29", "30")
ADVICE_INDEX: dict[str, int] = {c: i for i, c in enumerate(ADVICE_NAMES)}
_RETRY_AFTER_HOURS = np.array([1.0, 24.0, 48.0, 96.0, 144.0, 192.0, 240.0])
_RETRY_AFTER_CODES = np.array([ADVICE_INDEX[c] for c in ("24", "25", "26", "27", "28", "29", "30")])

FUNDING_NAMES: tuple[str, ...] = ("credit", "debit", "prepaid")
F_PREPAID = 2


@dataclass(frozen=True, kw_only=True)
class Tables:
    """Fixed, time-indexed tables of a world (hourly and daily grids from the epoch).

    Parameters
    ----------
    hour0
        Hour index (hours since epoch) of column 0 of the hourly tables.
    zone_offset_hours
        ``(n_zones, n_hours)`` UTC offset of each zone at each UTC hour (DST included).
    outage
        ``(n_issuers, n_hours)`` whether the issuer is in an outage episode during that hour.
    day0
        Day index (days since epoch) of column 0 of the calendars.
    calendar_last, calendar_next
        ``(n_calendars, n_days)`` for each calendar pay-cycle kind, the day index of the last
        payday on or before the day and of the next payday after it.
    issuer_strictness, issuer_maint_start, issuer_maint_hours
        Per issuer: risk logit offset, local start hour and length of the nightly maintenance.
    """

    hour0: int
    zone_offset_hours: np.ndarray
    outage: np.ndarray
    day0: int
    calendar_last: np.ndarray
    calendar_next: np.ndarray
    issuer_strictness: np.ndarray
    issuer_maint_start: np.ndarray
    issuer_maint_hours: np.ndarray


@dataclass(frozen=True, kw_only=True)
class ChargeState:
    """Hidden state of charges (struct of arrays, one entry per charge).

    Customer and card attributes are copied onto each charge so that any subset of charges is
    self-contained (:meth:`take`). Times are hours since the epoch; ``replace_h`` is ``inf``
    when the account updater never replaces the card.
    """

    zone: np.ndarray  # int: index into the world's zone names
    issuer: np.ndarray  # int: index into the world's issuers
    funding: np.ndarray  # int: index into FUNDING_NAMES
    is_mastercard: np.ndarray  # bool
    fragility: np.ndarray  # customer financial fragility (sd units)
    log_amount_rel: np.ndarray  # log(amount / (1 % of the customer's monthly income))
    latent_funds: np.ndarray  # per-charge shortfall draw N(0, 1), persistent over retries
    latent_risk: np.ndarray  # per-charge issuer-risk draw N(0, 1), persistent over retries
    cycle_period: np.ndarray  # int days for periodic pay cycles, 0 for calendar ones
    cycle_phase: np.ndarray  # int day index of one payday (periodic cycles)
    cycle_calendar: np.ndarray  # int calendar index (calendar cycles), -1 otherwise
    bank_hour: np.ndarray  # local hour at which pay is posted
    hard_code: np.ndarray  # int code id of the hard-decline state, -1 = none
    auth_required: np.ndarray  # bool: issuer demands authentication (EEA/GB)
    card_added_h: np.ndarray  # when the charge's original card was added
    exp_end_h: np.ndarray  # end of the original card's expiry month
    replace_h: np.ndarray  # when the account updater replaces the card (inf = never)
    first_h: np.ndarray  # the charge's first attempt
    cancel_h: np.ndarray  # when the customer revokes the recurring payment (inf = never)

    def take(self, idx: np.ndarray) -> ChargeState:
        """The state of the charges at positions ``idx``."""
        return ChargeState(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    def __len__(self) -> int:
        return int(self.zone.shape[0])


@dataclass(frozen=True, kw_only=True)
class HistoryFeatures:
    """What the truth needs from a charge's earlier attempts, per (charge, candidate time).

    ``n_failed``: failed attempts so far; ``gap_hours``: time since the last attempt (``inf``
    if none); ``recent_24h``: attempts in the 24 hours before the candidate time.
    """

    n_failed: np.ndarray
    gap_hours: np.ndarray
    recent_24h: np.ndarray


def history_features(prev_times: np.ndarray, times: np.ndarray) -> HistoryFeatures:
    """History features from earlier attempt times.

    Parameters
    ----------
    prev_times
        ``(n, k)`` hours of the charge's earlier (failed) attempts, NaN-padded.
    times
        ``(n, m)`` candidate hours.
    """
    prev = np.asarray(prev_times, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if prev.ndim != 2 or t.ndim != 2 or prev.shape[0] != t.shape[0]:
        raise ValueError(f"prev_times {prev.shape} and times {t.shape} must be (n, k) and (n, m)")
    valid = ~np.isnan(prev)
    n_failed = valid.sum(axis=1)[:, None] * np.ones_like(t)
    if prev.shape[1] == 0:
        return HistoryFeatures(
            n_failed=n_failed, gap_hours=np.full_like(t, np.inf), recent_24h=np.zeros_like(t)
        )
    last = np.where(valid, prev, -np.inf).max(axis=1)
    gap = t - last[:, None]
    gap = np.where(np.isfinite(gap), gap, np.inf)
    recent = np.zeros_like(t)
    for j in range(prev.shape[1]):
        pj = prev[:, j : j + 1]
        recent += (pj > t - 24.0) & (pj <= t)
    return HistoryFeatures(n_failed=n_failed, gap_hours=np.maximum(gap, 0.0), recent_24h=recent)


def local_hours(tables: Tables, zone: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Local wall-clock hours since the epoch's midnight (DST-aware), shape of ``times``."""
    n_hours = tables.zone_offset_hours.shape[1]
    col = np.clip(_floor_int(times) - tables.hour0, 0, n_hours - 1)
    z = np.broadcast_to(zone.reshape(-1, *([1] * (times.ndim - 1))), times.shape)
    return times + tables.zone_offset_hours[z, col]


def pay_cycle_position(
    tables: Tables, state: ChargeState, local: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position in the pay cycle at local hours ``local`` (``(n, m)``).

    Returns
    -------
    hours_since_payday, hours_to_next_payday, fraction_of_cycle_elapsed
    """
    shape = local.shape
    lb = local - state.bank_hour[:, None]
    day = _floor_int(lb / 24.0)
    period = state.cycle_period[:, None]
    periodic = period > 0
    safe_period = np.where(periodic, period, 1)
    last_periodic = day - np.mod(day - state.cycle_phase[:, None], safe_period)
    cal = np.broadcast_to(np.maximum(state.cycle_calendar, 0)[:, None], shape)
    n_days = tables.calendar_last.shape[1]
    col = np.clip(day - tables.day0, 0, n_days - 1)
    last = np.where(periodic, last_periodic, tables.calendar_last[cal, col])
    nxt = np.where(periodic, last_periodic + safe_period, tables.calendar_next[cal, col])
    since = lb - 24.0 * last
    length = 24.0 * np.maximum(nxt - last, 1)
    return since, length - since, np.clip(since / length, 0.0, 1.0)


def _floor_int(values: np.ndarray) -> np.ndarray:
    """Floor as int64, with NaN/inf mapped to 0 (callers mask those entries)."""
    v = np.asarray(values, dtype=np.float64)
    return np.floor(np.where(np.isfinite(v), v, 0.0)).astype(np.int64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def failure_probabilities(
    config: WorldConfig,
    tables: Tables,
    state: ChargeState,
    times: np.ndarray,
    history: HistoryFeatures,
) -> np.ndarray:
    """Per-mechanism probability that an attempt at ``times`` fails.

    Parameters
    ----------
    config, tables
        The world's config and fixed tables.
    state
        Hidden state of ``n`` charges.
    times
        ``(n, m)`` candidate attempt times (hours since epoch).
    history
        Earlier attempts, see :func:`history_features`.

    Returns
    -------
    ``(len(MECHANISMS), n, m)`` float64 probabilities; disabled mechanisms are 0.
    """
    t = np.asarray(times, dtype=np.float64)
    n, m = t.shape
    if len(state) != n:
        raise ValueError(f"state has {len(state)} charges but times has {n} rows")
    out = np.zeros((len(MECHANISMS), n, m))
    local = local_hours(tables, state.zone, t)
    hod = np.mod(local, 24.0)
    col = lambda a: a[:, None]  # noqa: E731

    fu = config.funds
    if fu.enabled:
        offsets = np.array([fu.funding_offsets.get(f, 0.0) for f in FUNDING_NAMES])
        z = (
            fu.base_logit
            + fu.fragility * col(state.fragility)
            + fu.amount * col(state.log_amount_rel)
            + fu.latent * col(state.latent_funds)
            + col(offsets[state.funding])
        )
        pc = config.pay_cycle
        if pc.enabled:
            since, _, frac = pay_cycle_position(tables, state, local)
            z = (
                z
                + pc.cycle_slope * (frac - 0.5)
                - pc.payday_boost * np.exp(-np.maximum(since, 0.0) / pc.payday_decay_hours)
            )
        if config.dunning.enabled:  # balances spent elsewhere while the charge is unpaid
            days = np.maximum(t - col(state.first_h), 0.0) / 24.0
            z = z + config.dunning.spend_down_per_day * days
        out[M_FUNDS] = _sigmoid(np.broadcast_to(z, (n, m)))

    card_new = t >= col(state.replace_h)
    ri = config.issuer_risk
    if ri.enabled:
        added = np.where(card_new, col(state.replace_h), col(state.card_added_h))
        age_days = np.maximum(t - added, 0.0) / 24.0
        lo, hi = ri.night_hours
        night = np.mod(hod - lo, 24.0) < np.mod(hi - lo, 24.0)
        z = (
            ri.base_logit
            + col(tables.issuer_strictness[state.issuer])
            + ri.latent * col(state.latent_risk)
            + ri.per_failed_attempt * history.n_failed
            + ri.short_gap * np.exp(-history.gap_hours / ri.gap_tau_hours)
            + ri.night * night
            + ri.new_card * np.exp(-age_days / ri.new_card_tau_days)
            + ri.prepaid * col(state.funding == F_PREPAID)
        )
        out[M_RISK] = _sigmoid(z)

    ou = config.outage
    if ou.enabled:
        n_hours = tables.outage.shape[1]
        hcol = np.clip(_floor_int(t) - tables.hour0, 0, n_hours - 1)
        in_outage = tables.outage[np.broadcast_to(col(state.issuer), (n, m)), hcol]
        out[M_OUTAGE] = np.where(in_outage, ou.fail_probability, ou.baseline_error)

    ma = config.maintenance
    if ma.enabled:
        start = col(tables.issuer_maint_start[state.issuer])
        length = col(tables.issuer_maint_hours[state.issuer])
        in_window = np.mod(hod - start, 24.0) < length
        out[M_MAINT] = np.where(in_window, ma.fail_probability, 0.0)

    if config.expiry.enabled:
        expired = (t >= col(state.exp_end_h)) & ~card_new
        out[M_EXPIRED] = expired

    if config.hard_decline.enabled:
        out[M_HARD] = np.broadcast_to(col(state.hard_code >= 0), (n, m))
    if config.dunning.enabled:  # the customer revoked the recurring payment
        out[M_HARD] = np.maximum(out[M_HARD], t >= col(state.cancel_h))

    if config.authentication.enabled:
        out[M_AUTH] = np.broadcast_to(col(state.auth_required), (n, m))

    ve = config.velocity
    if ve.enabled:
        out[M_VELOCITY] = np.where(
            history.recent_24h >= ve.max_attempts_24h, ve.block_probability, 0.0
        )
    return out


def dunning_cancel_hours(config: WorldConfig, seed: int, month: int, n: int) -> np.ndarray:
    """Hours from a month's first attempts until each customer revokes the payment (inf = never).

    A generator of its own, so worlds without dunning draw exactly as before.
    """
    hazard = config.dunning.cancel_hazard_per_day
    if not config.dunning.enabled or hazard <= 0.0:
        return np.full(n, np.inf)
    rng = np.random.default_rng([seed, 0xD0, month])
    return 24.0 * rng.exponential(-1.0 / np.log1p(-hazard), size=n)


def success_from_failures(failures: np.ndarray) -> np.ndarray:
    """``P(success) = prod_m (1 - p_m)`` over the first axis."""
    return np.prod(1.0 - failures, axis=0)


def crn_uniforms(seed: int, charge: np.ndarray, attempt: np.ndarray, streams: int) -> np.ndarray:
    """Common random numbers: uniforms in [0, 1) keyed by (seed, charge, attempt, stream).

    A counter-based generator (SplitMix64 finaliser over a hash of the key), so the draw of a
    given charge's k-th attempt does not depend on which other charges are simulated or in what
    order: two policies played with the same seed see the same luck.

    Returns
    -------
    ``(n, streams)`` float64.
    """
    c = np.asarray(charge, dtype=np.uint64)[:, None]
    a = np.asarray(attempt, dtype=np.uint64)[:, None]
    s = np.arange(streams, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        key = np.full(c.shape, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
        x: np.ndarray = key * np.uint64(0x9E3779B97F4A7C15)
        x = x ^ (c * np.uint64(0xBF58476D1CE4E5B9))
        x = _mix(x)
        x = x ^ (a * np.uint64(0x94D049BB133111EB) + s * np.uint64(0xD6E8FEB86659FD93))
        x = _mix(_mix(x))
    out: np.ndarray = (x >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return out


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _pick(weights: dict[str, float], u: np.ndarray) -> np.ndarray:
    """Code ids drawn from ``weights`` by inverse CDF of uniforms ``u``."""
    names = list(weights)
    w = np.array([weights[k] for k in names], dtype=np.float64)
    cdf = np.cumsum(w / w.sum())
    ids = np.array([CODE_INDEX[k] for k in names])
    return ids[np.minimum(np.searchsorted(cdf, u, side="right"), len(ids) - 1)]


def choose_declines(
    config: WorldConfig,
    tables: Tables,
    state: ChargeState,
    times: np.ndarray,
    failures: np.ndarray,
    uniforms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Decline code and Mastercard advice code of failed attempts.

    Certain failures win in the order hard decline, authentication, expired card; otherwise
    the failing mechanism is drawn in proportion to its hazard ``-log(1 - p_m)`` (the chance it
    "fired first"), then the code within the mechanism from its configured mix.

    Parameters
    ----------
    times
        ``(n,)`` attempt hours.
    failures
        ``(len(MECHANISMS), n)`` failure probabilities at ``times``.
    uniforms
        ``(n, 3)`` uniforms: mechanism, code within mechanism, advice code.

    Returns
    -------
    code ids ``(n,)`` (indices into :data:`CODE_NAMES`) and advice ids ``(n,)`` (indices into
    :data:`ADVICE_NAMES`, -1 = none).
    """
    n = failures.shape[1]
    p = np.clip(failures, 0.0, 1.0 - 1e-12)
    hazard = -np.log1p(-p)
    total = hazard.sum(axis=0)
    cdf = np.cumsum(hazard, axis=0) / np.where(total > 0, total, 1.0)
    mech = np.minimum((cdf < uniforms[:, 0][None, :]).sum(axis=0), len(MECHANISMS) - 1)
    mech = np.where(total > 0, mech, M_RISK)
    for m in (M_EXPIRED, M_AUTH, M_HARD):  # lowest priority first, so hard wins
        mech = np.where(failures[m] >= 1.0, m, mech)
    u1 = uniforms[:, 1]
    code = np.full(n, CODE_INDEX["generic_decline"])
    code = np.where(mech == M_FUNDS, CODE_INDEX["insufficient_funds"], code)
    code = np.where(mech == M_RISK, _pick(config.issuer_risk.codes, u1), code)
    code = np.where(mech == M_OUTAGE, _pick(config.outage.codes, u1), code)
    code = np.where(mech == M_MAINT, _pick(config.maintenance.codes, u1), code)
    code = np.where(mech == M_EXPIRED, CODE_INDEX["expired_card"], code)
    revoked = (mech == M_HARD) & (state.hard_code < 0)  # dunning cancellation
    code = np.where(mech == M_HARD, state.hard_code, code)
    code = np.where(revoked, CODE_INDEX["stop_payment_order"], code)
    code = np.where(mech == M_AUTH, CODE_INDEX["authentication_required"], code)
    code = np.where(mech == M_VELOCITY, CODE_INDEX["card_velocity_exceeded"], code)

    advice = np.full(n, -1)
    mc = state.is_mastercard
    u2 = uniforms[:, 2]
    hard = mech == M_HARD
    hs = config.hard_decline.mastercard_advice_share
    # Mastercard MAC 03 (do not try again) / 21 (payment cancelled) on hard declines.
    advice = np.where(
        mc & hard & (u2 < hs),
        np.where(u2 < 0.8 * hs, ADVICE_INDEX["03"], ADVICE_INDEX["21"]),
        advice,
    )
    ac = config.advice_codes
    if ac.enabled:
        soft = mc & ~hard & (u2 < ac.soft_share)
        # Retry-after advice (MAC 24-30) that is truthful about the mechanism: time to the
        # next payday for insufficient funds, 1 h for outages/maintenance, 24 h for velocity.
        local = local_hours(tables, state.zone, np.asarray(times, dtype=np.float64)[:, None])
        _, to_payday, _ = pay_cycle_position(tables, state, local)
        bucket = np.searchsorted(_RETRY_AFTER_HOURS, to_payday[:, 0], side="left")
        funds_mac = _RETRY_AFTER_CODES[np.minimum(bucket, len(_RETRY_AFTER_CODES) - 1)]
        soft_mac = np.select(
            [mech == M_FUNDS, (mech == M_OUTAGE) | (mech == M_MAINT), mech == M_VELOCITY],
            [funds_mac, ADVICE_INDEX["24"], ADVICE_INDEX["25"]],
            -1,
        )
        advice = np.where(soft, soft_mac, advice)
    # Mastercard MAC 21 (payment cancelled) when the customer revoked the recurring payment.
    advice = np.where(revoked & mc, ADVICE_INDEX["21"], advice)
    return code, advice
