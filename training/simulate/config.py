"""Configuration of the synthetic payment world: one dataclass per mechanism.

Every mechanism has an ``enabled`` switch and its parameters, with realistic defaults. The
defaults are documented (with sources) in ``training/simulate/default_world.toml`` and
``docs/synthetic-world.md``; :meth:`WorldConfig.from_file` reads a TOML or JSON file that
overrides any subset of them (unknown keys are an error naming the key).

Sources for the defaults (see ``/work/shared/domain-facts.md``):

- Recurly, "State of subscriptions" / decline benchmarks: 5-14 % (B2B) and 6-18 % (B2C) of
  recurring transactions decline; decline reasons by funding (credit: generic 51.7 %, temporary
  hold 25.5 %, insufficient funds 6.9 %, fraud/stolen 5.2 %; debit: generic 37.8 %, insufficient
  funds 29.0 %); about 61 % credit / 39 % debit; most recoveries 2-12 days after the decline.
- Adyen: 72 % of declines are insufficient funds or do-not-honor.
- Stripe: older Smart Retries default of 4 tries over 21 days (logging-policy default).
- US Bureau of Labor Statistics, "Length of pay periods in the Current Employment Statistics
  survey" (2019): biweekly 43 %, weekly 33 %, semimonthly 20 %, monthly 5 % of US private
  employees (US pay-cycle mix).
- Gelman et al., Science 2014: spending rises ~70 % above average on payday (payday effect).
- Mastercard merchant advice codes 03/21 (do not try again) and 24-30 (retry after 1 h ... 10 d);
  Mastercard excessive-attempt rules (at most 10 declines per card in 24 h).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retryopt.features.taxonomy import classify_decline

__all__ = [
    "PAY_CYCLE_KINDS",
    "AdviceCodeConfig",
    "AuthenticationConfig",
    "BillingConfig",
    "CountryConfig",
    "DunningConfig",
    "ExpiryConfig",
    "FundsConfig",
    "HardDeclineConfig",
    "IssuerConfig",
    "IssuerRiskConfig",
    "LoggingPolicyConfig",
    "MaintenanceConfig",
    "OutageConfig",
    "PayCycleConfig",
    "PlanConfig",
    "PopulationConfig",
    "VelocityConfig",
    "WorldConfig",
]

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_world.toml")

# Pay-cycle kinds (see :mod:`training.simulate.world` for how paydays are placed).
PAY_CYCLE_KINDS: tuple[str, ...] = (
    "weekly",  # every Friday
    "biweekly",  # every other Friday
    "semimonthly",  # 1st and 15th (previous business day when on a weekend)
    "month_end",  # last business day of the month
    "first_of_month",  # 1st (previous business day when on a weekend)
    "day_25",  # 25th (previous business day): JP, SE, NL style monthly salary
    "irregular",  # a customer-specific period of 8-20 days, not aligned to the calendar
)


@dataclass(kw_only=True)
class CountryConfig:
    """One issuing country: share of customers, zones, currency, card brands, pay cycles."""

    weight: float
    currency: str
    currency_decimals: int = 2
    usd_rate: float = 1.0  # units of the currency per USD (fixed, approximate 2025 rates)
    zones: dict[str, float] = field(default_factory=dict)
    brands: dict[str, float] = field(default_factory=dict)
    pay_cycles: dict[str, float] = field(default_factory=dict)
    income_usd_median: float = 3000.0  # median monthly net income, USD
    eea: bool = False  # EEA or GB: PSD2 strong customer authentication applies


def _c(
    weight: float,
    currency: str,
    usd_rate: float,
    zones: dict[str, float],
    brands: dict[str, float],
    cycles: dict[str, float],
    income: float,
    *,
    eea: bool = False,
    decimals: int = 2,
) -> CountryConfig:
    return CountryConfig(
        weight=weight,
        currency=currency,
        currency_decimals=decimals,
        usd_rate=usd_rate,
        zones=zones,
        brands=brands,
        pay_cycles=cycles,
        income_usd_median=income,
        eea=eea,
    )


_VM = {"visa": 0.6, "mastercard": 0.4}
_EU_MONTHLY = {"month_end": 0.8, "weekly": 0.05, "irregular": 0.15}


def _default_countries() -> dict[str, CountryConfig]:
    return {
        # US pay-cycle mix: BLS CES 2019 (biweekly 43 %, weekly 33 %, semimonthly 20 %, monthly 5 %)
        "US": _c(
            0.35,
            "USD",
            1.0,
            {
                "America/New_York": 0.47,
                "America/Chicago": 0.29,
                "America/Denver": 0.07,
                "America/Phoenix": 0.03,
                "America/Los_Angeles": 0.14,
            },
            {"visa": 0.55, "mastercard": 0.27, "amex": 0.12, "discover": 0.06},
            {
                "biweekly": 0.40,
                "weekly": 0.30,
                "semimonthly": 0.18,
                "month_end": 0.05,
                "irregular": 0.07,
            },
            4200.0,
        ),
        "CA": _c(
            0.05,
            "CAD",
            1.37,
            {"America/Toronto": 0.6, "America/Vancouver": 0.25, "America/Edmonton": 0.15},
            {"visa": 0.55, "mastercard": 0.35, "amex": 0.10},
            {"biweekly": 0.55, "weekly": 0.15, "semimonthly": 0.2, "irregular": 0.1},
            3600.0,
        ),
        "MX": _c(
            0.03,
            "MXN",
            18.5,
            {"America/Mexico_City": 0.8, "America/Tijuana": 0.2},
            _VM,
            {"semimonthly": 0.65, "weekly": 0.25, "irregular": 0.1},
            900.0,
        ),
        "BR": _c(
            0.04,
            "BRL",
            5.5,
            {"America/Sao_Paulo": 1.0},
            {"visa": 0.45, "mastercard": 0.55},
            {"first_of_month": 0.55, "semimonthly": 0.3, "irregular": 0.15},
            800.0,
        ),
        "GB": _c(
            0.10,
            "GBP",
            0.79,
            {"Europe/London": 1.0},
            {"visa": 0.68, "mastercard": 0.27, "amex": 0.05},
            {"month_end": 0.7, "weekly": 0.18, "irregular": 0.12},
            2900.0,
            eea=True,
        ),
        "DE": _c(0.07, "EUR", 0.92, {"Europe/Berlin": 1.0}, _VM, _EU_MONTHLY, 2800.0, eea=True),
        "FR": _c(0.05, "EUR", 0.92, {"Europe/Paris": 1.0}, _VM, _EU_MONTHLY, 2500.0, eea=True),
        "ES": _c(0.03, "EUR", 0.92, {"Europe/Madrid": 1.0}, _VM, _EU_MONTHLY, 1900.0, eea=True),
        "IT": _c(0.03, "EUR", 0.92, {"Europe/Rome": 1.0}, _VM, _EU_MONTHLY, 2000.0, eea=True),
        "NL": _c(
            0.03,
            "EUR",
            0.92,
            {"Europe/Amsterdam": 1.0},
            _VM,
            {"day_25": 0.6, "month_end": 0.3, "irregular": 0.1},
            3000.0,
            eea=True,
        ),
        "PL": _c(
            0.02,
            "PLN",
            3.95,
            {"Europe/Warsaw": 1.0},
            _VM,
            {"month_end": 0.5, "first_of_month": 0.4, "irregular": 0.1},
            1500.0,
            eea=True,
        ),
        "SE": _c(
            0.02,
            "SEK",
            10.5,
            {"Europe/Stockholm": 1.0},
            _VM,
            {"day_25": 0.85, "irregular": 0.15},
            3100.0,
            eea=True,
        ),
        "AU": _c(
            0.05,
            "AUD",
            1.52,
            {
                "Australia/Sydney": 0.55,
                "Australia/Brisbane": 0.2,
                "Australia/Melbourne": 0.15,
                "Australia/Perth": 0.1,
            },
            {"visa": 0.55, "mastercard": 0.35, "amex": 0.10},
            {"biweekly": 0.55, "weekly": 0.25, "first_of_month": 0.1, "irregular": 0.1},
            3700.0,
        ),
        "JP": _c(
            0.04,
            "JPY",
            150.0,
            {"Asia/Tokyo": 1.0},
            {"visa": 0.5, "mastercard": 0.2, "jcb": 0.3},
            {"day_25": 0.85, "irregular": 0.15},
            2600.0,
            decimals=0,
        ),
        "IN": _c(
            0.04,
            "INR",
            84.0,
            {"Asia/Kolkata": 1.0},
            {"visa": 0.45, "mastercard": 0.45, "unionpay": 0.10},
            {"first_of_month": 0.6, "month_end": 0.25, "irregular": 0.15},
            700.0,
        ),
        "NZ": _c(
            0.01,
            "NZD",
            1.68,
            {"Pacific/Auckland": 1.0},
            _VM,
            {"biweekly": 0.5, "weekly": 0.4, "irregular": 0.1},
            3200.0,
        ),
    }


@dataclass(kw_only=True)
class PlanConfig:
    """A subscription plan: share of customers and log-normal monthly price in USD."""

    weight: float
    median_usd: float
    sigma: float = 0.25


def _default_plans() -> dict[str, PlanConfig]:
    return {
        "basic": PlanConfig(weight=0.5, median_usd=9.0, sigma=0.2),
        "standard": PlanConfig(weight=0.35, median_usd=19.0, sigma=0.25),
        "premium": PlanConfig(weight=0.15, median_usd=49.0, sigma=0.35),
    }


@dataclass(kw_only=True)
class PopulationConfig:
    """Customers: joining, churn, cards and the share of rows without a time zone."""

    start_date: str = "2025-01-01"  # first day of the first simulated month (UTC)
    join_during_share: float = 0.3  # share of customers who sign up during the simulation
    existing_card_age_days_max: float = 1100.0  # card added up to ~3 years before the start
    voluntary_churn_monthly: float = 0.02
    involuntary_churn_after_unrecovered: float = 1.0  # an unrecovered charge ends the subscription
    funding: dict[str, float] = field(
        # Recurly: ~61 % credit / 39 % debit; prepaid is split off the debit share.
        default_factory=lambda: {"credit": 0.61, "debit": 0.35, "prepaid": 0.04}
    )
    fragility_sd: float = 1.0  # customer financial fragility ~ N(0, sd)
    income_sigma: float = 0.6  # log-normal spread of monthly income around the country median
    timezone_missing_share: float = 0.10  # rows with customer_timezone missing
    signup_local_hours: tuple[int, int] = (7, 23)  # sign-ups (renewal anchors) at local daytime
    plans: dict[str, PlanConfig] = field(default_factory=_default_plans)
    countries: dict[str, CountryConfig] = field(default_factory=_default_countries)


@dataclass(kw_only=True)
class IssuerConfig:
    """Issuers per country (Zipf-like market shares) and their per-issuer properties."""

    per_country: int = 8
    zipf_exponent: float = 1.1
    strictness_sd: float = 0.5  # issuer risk appetite: logit offset ~ N(0, sd)


@dataclass(kw_only=True)
class FundsConfig:
    """Insufficient funds: customer fragility, amount vs income and the per-charge shortfall."""

    enabled: bool = True
    base_logit: float = -10.0
    fragility: float = 0.9  # logit per sd of customer fragility
    amount: float = 0.5  # logit per log(amount / (1 % of monthly income))
    # Logit per sd of the per-charge shortfall, shared by every attempt of the charge. Large,
    # so that a failed charge is likely to fail again (recovery by retries ~40-60 %).
    latent: float = 6.0
    funding_offsets: dict[str, float] = field(
        # Recurly: insufficient funds is 6.9 % of credit-card but 29 % of debit-card declines.
        default_factory=lambda: {"credit": -1.4, "debit": 0.0, "prepaid": 0.6, "unknown": 0.0}
    )


@dataclass(kw_only=True)
class PayCycleConfig:
    """Balance position in the pay cycle: funds run low late in the cycle, recover on payday."""

    enabled: bool = True
    cycle_slope: float = 2.2  # logit from the start (0) to the end (1) of the pay cycle
    payday_boost: float = 1.6  # logit drop right after the money is posted ...
    payday_decay_hours: float = 48.0  # ... decaying with this time constant
    bank_post_hours: tuple[int, int] = (0, 6)  # money posted at a local hour in [start, end)
    irregular_period_days: tuple[int, int] = (8, 20)


@dataclass(kw_only=True)
class IssuerRiskConfig:
    """Issuer risk declines (do_not_honor / generic_decline)."""

    enabled: bool = True
    base_logit: float = -11.2
    latent: float = 6.0  # logit per sd of the per-charge risk score (persistent over retries)
    per_failed_attempt: float = 0.4  # logit per failed attempt of the charge so far
    short_gap: float = 1.5  # logit added at gap 0, decaying with gap_tau_hours
    gap_tau_hours: float = 6.0
    night: float = 0.6  # logit added during local night hours
    night_hours: tuple[int, int] = (0, 6)
    new_card: float = 1.0  # logit added for a just-added card, decaying with new_card_tau_days
    new_card_tau_days: float = 30.0
    prepaid: float = 0.6
    codes: dict[str, float] = field(
        default_factory=lambda: {"do_not_honor": 0.55, "generic_decline": 0.45}
    )


@dataclass(kw_only=True)
class OutageConfig:
    """Issuer outage episodes: transient declines that clear within hours."""

    enabled: bool = True
    episodes_per_month: float = 1.5  # per issuer
    mean_duration_hours: float = 3.0
    fail_probability: float = 0.85  # during an outage
    baseline_error: float = 0.002  # outside outages (processing glitches)
    codes: dict[str, float] = field(
        default_factory=lambda: {
            "issuer_not_available": 0.5,
            "processing_error": 0.3,
            "try_again_later": 0.2,
        }
    )


@dataclass(kw_only=True)
class MaintenanceConfig:
    """Issuer nightly maintenance windows at local night hours."""

    enabled: bool = True
    start_hours: tuple[int, int] = (0, 4)  # window start, local hour in [start, end)
    duration_hours: tuple[int, int] = (1, 3)  # window length in hours, in [min, max]
    fail_probability: float = 0.6
    codes: dict[str, float] = field(
        default_factory=lambda: {"issuer_not_available": 0.7, "processing_error": 0.3}
    )


@dataclass(kw_only=True)
class ExpiryConfig:
    """Card expiry and the account updater that replaces expired cards after a delay."""

    enabled: bool = True
    validity_years: tuple[int, int] = (3, 5)  # validity of a newly issued card
    updater_coverage: float = 0.88  # share of cards the account updater (VAU / ABU) refreshes
    updater_delay_mean_days: float = -8.0  # days after the end of the expiry month (< 0: before)
    updater_delay_sd_days: float = 12.0


# Every decline code the world emits (index = code id used in arrays; -1 = no decline).
CODE_NAMES: tuple[str, ...] = (
    "insufficient_funds",
    "do_not_honor",
    "generic_decline",
    "issuer_not_available",
    "processing_error",
    "try_again_later",
    "expired_card",
    "lost_card",
    "stolen_card",
    "fraudulent",
    "pickup_card",
    "invalid_account",
    "stop_payment_order",
    "authentication_required",
    "card_velocity_exceeded",
)
CODE_INDEX: dict[str, int] = {c: i for i, c in enumerate(CODE_NAMES)}

# The world's decline codes that no retry can turn into a success: the taxonomy's hard declines
# except ``expired_card``, which the world's account updater refreshes (ExpiryConfig). The
# logging policy never retries them and the summary counts them as hard declines.
NEVER_RETRIED_CODES: tuple[str, ...] = tuple(
    code for code in CODE_NAMES if classify_decline(code).hard and code != "expired_card"
)


@dataclass(kw_only=True)
class HardDeclineConfig:
    """Hard declines (lost, stolen, fraud, pickup, closed account) that never succeed."""

    enabled: bool = True
    rate: float = 0.0035  # share of charges whose card is in a hard-declined state
    codes: dict[str, float] = field(
        default_factory=lambda: {
            "lost_card": 0.2,
            "stolen_card": 0.15,
            "fraudulent": 0.2,
            "pickup_card": 0.1,
            "invalid_account": 0.2,  # closed account (ISO 14 / Visa category 1)
            "stop_payment_order": 0.15,  # the customer revoked the recurring payment
        }
    )
    mastercard_advice_share: float = 0.7  # Mastercard hard declines carrying MAC 03 or 21


@dataclass(kw_only=True)
class AuthenticationConfig:
    """``authentication_required`` on EEA/GB cards (PSD2 SCA); never succeeds off-session."""

    enabled: bool = True
    eea_rate: float = 0.004


@dataclass(kw_only=True)
class VelocityConfig:
    """Velocity block when a card is tried too often within 24 hours."""

    enabled: bool = True
    max_attempts_24h: int = 3  # attempts of the charge in the previous 24 h before blocking
    block_probability: float = 0.9


@dataclass(kw_only=True)
class AdviceCodeConfig:
    """Mastercard merchant advice codes on soft declines (24-30: retry after 1 h ... 10 d)."""

    enabled: bool = True
    soft_share: float = 0.35  # Mastercard soft declines carrying a retry-after advice code


@dataclass(kw_only=True)
class DunningConfig:
    """Customers during dunning: money spent elsewhere and recurring payments revoked.

    Off by default. When on, waiting lowers success: the insufficient-funds logit rises by
    ``spend_down_per_day`` per day since the charge's first failure (the customer's balance goes
    to other bills first), and each charge has a time at which the customer revokes the
    recurring payment with a daily hazard ``cancel_hazard_per_day``; from then on every attempt
    is a hard ``stop_payment_order`` decline (Mastercard advice code 21 on Mastercard cards).
    """

    enabled: bool = False
    spend_down_per_day: float = 0.0  # funds logit per day since the first failure
    cancel_hazard_per_day: float = 0.0  # daily probability of revoking the recurring payment


@dataclass(kw_only=True)
class BillingConfig:
    """When the merchant attempts the monthly renewal."""

    jitter_minutes: int = 20  # billing run delay after the anchor time, uniform in [0, jitter]


@dataclass(kw_only=True)
class LoggingPolicyConfig:
    """The policy that produced the history's retries.

    ``mixed``: with probability ``1 - exploration`` the fixed schedule's time, else a uniformly
    random hour on the grid of allowed retry hours; ``fixed``: the schedule only (propensity 1).
    """

    mode: str = "mixed"
    schedule_hours: tuple[float, ...] = (72.0, 168.0, 336.0, 480.0)  # Stripe's older 4 in 21 days
    exploration: float = 0.3
    window_hours: float = 504.0
    min_gap_hours: float = 1.0
    retry_hard_declines: bool = False
    hard_codes: tuple[str, ...] = NEVER_RETRIED_CODES


@dataclass(kw_only=True)
class WorldConfig:
    """The whole world: population, issuers and every mechanism, plus the logging policy."""

    population: PopulationConfig = field(default_factory=PopulationConfig)
    issuers: IssuerConfig = field(default_factory=IssuerConfig)
    billing: BillingConfig = field(default_factory=BillingConfig)
    funds: FundsConfig = field(default_factory=FundsConfig)
    pay_cycle: PayCycleConfig = field(default_factory=PayCycleConfig)
    issuer_risk: IssuerRiskConfig = field(default_factory=IssuerRiskConfig)
    outage: OutageConfig = field(default_factory=OutageConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    expiry: ExpiryConfig = field(default_factory=ExpiryConfig)
    hard_decline: HardDeclineConfig = field(default_factory=HardDeclineConfig)
    authentication: AuthenticationConfig = field(default_factory=AuthenticationConfig)
    velocity: VelocityConfig = field(default_factory=VelocityConfig)
    advice_codes: AdviceCodeConfig = field(default_factory=AdviceCodeConfig)
    dunning: DunningConfig = field(default_factory=DunningConfig)
    logging_policy: LoggingPolicyConfig = field(default_factory=LoggingPolicyConfig)

    def __post_init__(self) -> None:
        validate_config(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        """Build a config from a (partial) nested dict; missing keys keep their defaults."""
        config = _build(cls, data, "")
        assert isinstance(config, WorldConfig)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> WorldConfig:
        """Read a TOML (``.toml``) or JSON (``.json``) file overriding any defaults.

        Raises
        ------
        ValueError
            For an unknown suffix, unknown keys or invalid values (the message names the key).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".toml":
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise ValueError(f"world config {path}: expected a .toml or .json file")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"world config {path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The full config as plain JSON-serialisable data (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    def replace(self, **sections: Any) -> WorldConfig:
        """A copy with whole sections or ``section={"key": value}`` overrides applied."""
        data = self.to_dict()
        for name, value in sections.items():
            if name not in data:
                raise ValueError(f"unknown config section {name!r}")
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                data[name] = _plain(dataclasses.asdict(value))
            elif isinstance(value, dict):
                data[name] = {**data[name], **value}
            else:
                raise TypeError(f"section {name!r}: expected a dict or a config dataclass")
        return WorldConfig.from_dict(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _build(tp: Any, data: Any, where: str) -> Any:
    """Recursively build ``tp`` from plain data, naming the offending key on errors."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(data, dict):
            raise ValueError(f"{where or 'config'}: expected a table, got {data!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where or 'config'}: unknown key(s) {unknown}")
        kwargs = {k: _build(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise ValueError(f"{where or 'config'}: {exc}") from exc
    if origin is dict:
        _key_tp, val_tp = typing.get_args(tp)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a table, got {data!r}")
        return {str(k): _build(val_tp, v, f"{where}.{k}") for k, v in data.items()}
    if origin is tuple:
        if not isinstance(data, list | tuple):
            raise ValueError(f"{where}: expected a list, got {data!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, where) for v in data)
        if len(args) != len(data):
            raise ValueError(f"{where}: expected {len(args)} values, got {list(data)}")
        return tuple(_build(a, v, where) for a, v in zip(args, data, strict=True))
    if origin in (typing.Union, types.UnionType):
        return data
    if tp is bool:
        if not isinstance(data, bool):
            raise ValueError(f"{where}: expected true/false, got {data!r}")
        return data
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ValueError(f"{where}: expected an integer, got {data!r}")
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise ValueError(f"{where}: expected a number, got {data!r}")
        return float(data)
    if tp is str:
        if not isinstance(data, str):
            raise ValueError(f"{where}: expected a string, got {data!r}")
        return data
    return data


def _check_prob(value: float, where: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where} must be a probability in [0, 1], got {value}")


def _check_weights(weights: dict[str, float], where: str) -> None:
    if not weights:
        raise ValueError(f"{where} must not be empty")
    bad = {k: v for k, v in weights.items() if v < 0}
    if bad or sum(weights.values()) <= 0:
        raise ValueError(f"{where} weights must be >= 0 with a positive sum, got {weights}")


def validate_config(config: WorldConfig) -> None:
    """Check value ranges; raise ``ValueError`` naming the offending key."""
    pop = config.population
    _check_prob(pop.join_during_share, "population.join_during_share")
    _check_prob(pop.voluntary_churn_monthly, "population.voluntary_churn_monthly")
    _check_prob(
        pop.involuntary_churn_after_unrecovered, "population.involuntary_churn_after_unrecovered"
    )
    _check_prob(pop.timezone_missing_share, "population.timezone_missing_share")
    _check_weights(pop.funding, "population.funding")
    unknown_funding = set(pop.funding) - {"credit", "debit", "prepaid"}
    if unknown_funding:
        raise ValueError(f"population.funding: unknown funding {sorted(unknown_funding)}")
    _check_weights({k: p.weight for k, p in pop.plans.items()}, "population.plans")
    _check_weights({k: c.weight for k, c in pop.countries.items()}, "population.countries")
    for code, country in pop.countries.items():
        where = f"population.countries.{code}"
        if len(code) != 2 or not code.isupper():
            raise ValueError(f"{where}: country must be an ISO 3166-1 alpha-2 code")
        _check_weights(country.zones, f"{where}.zones")
        _check_weights(country.brands, f"{where}.brands")
        _check_weights(country.pay_cycles, f"{where}.pay_cycles")
        bad = set(country.pay_cycles) - set(PAY_CYCLE_KINDS)
        if bad:
            raise ValueError(
                f"{where}.pay_cycles: unknown kind(s) {sorted(bad)}; known: {PAY_CYCLE_KINDS}"
            )
    lo, hi = config.pay_cycle.bank_post_hours
    if not 0 <= lo < hi <= 24:
        raise ValueError(
            f"pay_cycle.bank_post_hours must satisfy 0 <= start < end <= 24, got {lo, hi}"
        )
    if config.issuers.per_country < 1:
        raise ValueError(f"issuers.per_country must be >= 1, got {config.issuers.per_country}")
    for name in ("fail_probability", "baseline_error"):
        _check_prob(getattr(config.outage, name), f"outage.{name}")
    _check_prob(config.maintenance.fail_probability, "maintenance.fail_probability")
    _check_prob(config.expiry.updater_coverage, "expiry.updater_coverage")
    _check_prob(config.hard_decline.rate, "hard_decline.rate")
    _check_prob(config.authentication.eea_rate, "authentication.eea_rate")
    _check_prob(config.velocity.block_probability, "velocity.block_probability")
    _check_prob(config.advice_codes.soft_share, "advice_codes.soft_share")
    if config.dunning.spend_down_per_day < 0:
        raise ValueError(
            f"dunning.spend_down_per_day must be >= 0, got {config.dunning.spend_down_per_day}"
        )
    if not 0.0 <= config.dunning.cancel_hazard_per_day < 1.0:
        raise ValueError(
            "dunning.cancel_hazard_per_day must be in [0, 1), got "
            f"{config.dunning.cancel_hazard_per_day}"
        )
    _check_weights(config.issuer_risk.codes, "issuer_risk.codes")
    _check_weights(config.outage.codes, "outage.codes")
    _check_weights(config.maintenance.codes, "maintenance.codes")
    _check_weights(config.hard_decline.codes, "hard_decline.codes")
    lp = config.logging_policy
    if lp.mode not in ("mixed", "fixed"):
        raise ValueError(f"logging_policy.mode must be 'mixed' or 'fixed', got {lp.mode!r}")
    _check_prob(lp.exploration, "logging_policy.exploration")
    if lp.window_hours <= 0 or lp.min_gap_hours < 0:
        raise ValueError("logging_policy.window_hours must be > 0 and min_gap_hours >= 0")
    if list(lp.schedule_hours) != sorted(lp.schedule_hours) or any(
        h <= 0 or h > lp.window_hours for h in lp.schedule_hours
    ):
        raise ValueError(
            "logging_policy.schedule_hours must be increasing, > 0 and within window_hours, "
            f"got {lp.schedule_hours}"
        )
