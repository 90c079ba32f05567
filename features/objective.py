"""What a retry decision is worth: one objective for the planner, the API and the backtests.

A failed charge's trajectory is valued in one reporting currency (major units) as::

    value = A * d(t_success) - sum over retries of c
    d(t)  = ((1 - h) * (1 + r) ** (-1 / 365)) ** days(t - first failure)

``A`` is the charge's amount converted at :class:`features.currency.FxRates`, ``c`` the cost of
one attempt, ``h`` the daily hazard that the customer cancels or churns during dunning (money not
collected by then is lost) and ``r`` the annual time value of cash. The planner maximises the
expected value of this sum (:mod:`serving.policies.planner`) and the backtest reports its mean
per failed charge beside the undiscounted recovered amount (``discounted_value``,
:mod:`training.backtest.estimators`), so both use the same numbers.

Defaults, with sources (none was chosen on a simulated world; ``docs/serving.md``):

- cost per attempt ``c`` = 0.12 USD: a payment gateway's per-transaction fee, charged on
  declines too (Authorize.net's published all-in gateway fee: 0.10 USD per transaction), plus
  the card network's authorization fee (Visa's acquirer processing fee: about 0.02 USD per
  authorization; Mastercard's Authorization Optimizer fee on a code-51 decline with advice
  codes 24-30: 0.02 USD, US, from October 2023). Excessive-retry fees (Mastercard's Transaction
  Processing Excellence fee, 0.50 USD per attempt beyond 10 declines in 24 h or 35 in 30 days
  since January 2025; Visa's fee on reattempts beyond 20 in 30 days or after a category 1
  decline) are never incurred: the rules in :mod:`serving.policies.rules` stop before them, so
  their expected cost per planned attempt is 0. Decline-ratio damage (issuers trusting a merchant
  with many declines less) has no published per-attempt figure: 0 by default, a merchant that
  knows its own adds it to ``cost_per_attempt``.
- daily cancellation hazard ``h`` = 0.005: Stripe reports that a recovered subscription lasts
  about 7 more months on average, i.e. a monthly cancellation hazard of 1/7, so
  ``1 - (6/7) ** (1/30.44) = 0.0051`` per day (rounded to 0.005).
- annual time value of cash ``r`` = 0.045: the US federal funds target range's upper bound
  through most of 2025 (4.25-4.50 %).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np

from retryopt.features.currency import FxRates, currency_exponent

DEFAULT_COST_PER_ATTEMPT: Final = 0.12
"""Gateway fee (0.10 USD) + network authorization fee (0.02 USD); see the module docstring."""
DEFAULT_DAILY_CANCEL_HAZARD: Final = 0.005
"""Daily hazard of the customer cancelling during dunning (Stripe: ~7 months' remaining life)."""
DEFAULT_ANNUAL_INTEREST_RATE: Final = 0.045
"""Annual time value of cash (US federal funds target, upper bound, 2025)."""
DAYS_PER_YEAR: Final = 365.0


@dataclass(frozen=True, kw_only=True)
class Objective:
    """The value of collecting a charge, in one reporting currency (see the module docstring).

    Parameters
    ----------
    cost_per_attempt
        Cost of one retry in the reporting currency's major units (fees + decline damage).
    daily_cancel_hazard
        Daily probability that the customer cancels or churns before paying, in [0, 1).
    annual_interest_rate
        Annual time value of cash, in [0, 1].
    fx
        Exchange rates into the reporting currency (``fx.reporting``); a merchant passes its own.
    """

    cost_per_attempt: float = DEFAULT_COST_PER_ATTEMPT
    daily_cancel_hazard: float = DEFAULT_DAILY_CANCEL_HAZARD
    annual_interest_rate: float = DEFAULT_ANNUAL_INTEREST_RATE
    fx: FxRates = field(default_factory=FxRates)

    def __post_init__(self) -> None:
        if not math.isfinite(self.cost_per_attempt) or self.cost_per_attempt < 0:
            raise ValueError(f"cost_per_attempt must be >= 0, got {self.cost_per_attempt}")
        if not 0 <= self.daily_cancel_hazard < 1:
            raise ValueError(
                f"daily_cancel_hazard must be in [0, 1), got {self.daily_cancel_hazard}"
            )
        if not 0 <= self.annual_interest_rate <= 1:
            raise ValueError(
                f"annual_interest_rate must be in [0, 1], got {self.annual_interest_rate}"
            )

    @property
    def reporting_currency(self) -> str:
        """The currency every value is expressed in (major units)."""
        return self.fx.reporting

    @property
    def daily_factor(self) -> float:
        """Value kept per day of waiting: ``(1 - h) * (1 + r) ** (-1 / 365)``."""
        return (1.0 - self.daily_cancel_hazard) * (1.0 + self.annual_interest_rate) ** (
            -1.0 / DAYS_PER_YEAR
        )

    def discount(self, days: np.ndarray) -> np.ndarray:
        """Discount factor of money collected ``days`` after the first failure (clipped at 0)."""
        factor = self.daily_factor
        d = np.clip(np.asarray(days, dtype=np.float64), 0.0, None)
        if factor == 1.0:
            return np.ones_like(d)
        return np.exp(d * math.log(factor))

    def amounts(self, amount_minor: Sequence[float], currency: Sequence[object]) -> np.ndarray:
        """Minor-unit amounts of each row's currency in the reporting currency's major units.

        A plain loop over a per-currency factor (serving converts one charge at a time).

        Raises
        ------
        ValueError
            Naming a currency without a rate.
        """
        factors: dict[str, float] = {}
        out = np.empty(len(amount_minor), dtype=np.float64)
        for i, (amount, code) in enumerate(zip(amount_minor, currency, strict=True)):
            key = str(code).lower()
            factor = factors.get(key)
            if factor is None:
                factor = factors[key] = self.factor(key)
            out[i] = amount * factor
        return out

    def in_own_currency(self, currency: str) -> Objective:
        """This objective for a charge whose ``currency`` has no exchange rate.

        Values come out in that currency's major units and, the cost per attempt being stated
        in the reporting currency, no attempt cost is charged (an unconvertible cost is not
        guessed); discounting is unchanged. Pass the merchant's rates to price attempts.
        """
        code = currency.lower()
        own = FxRates(units_per_usd={code: 1.0}, reporting=code, source="no rate: own currency")
        return replace(self, cost_per_attempt=0.0, fx=own)

    def factor(self, currency: str) -> float:
        """Reporting-currency major units per minor unit of ``currency``.

        Raises
        ------
        ValueError
            When ``currency`` has no rate.
        """
        code = currency.lower()
        rate = self.fx.units_per_usd.get(code)
        if rate is None:
            raise ValueError(
                f"no exchange rate for currency {code!r}: pass the merchant's rates "
                "(units per US dollar)"
            )
        return self.fx.units_per_usd[self.fx.reporting] / (rate * 10.0 ** currency_exponent(code))


FREE_OBJECTIVE: Final = Objective(
    cost_per_attempt=0.0, daily_cancel_hazard=0.0, annual_interest_rate=0.0
)
"""Money only: no cost per attempt and no discounting (the objective before issue 14)."""
