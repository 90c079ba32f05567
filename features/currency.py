"""Currency minor units and reference exchange rates, for reporting amounts in one currency.

Amounts in the data contract are integers in the currency's minor unit (``2500`` ``usd`` is
$25.00, ``3000`` ``jpy`` is ¥3,000). Summing them across currencies is meaningless: 75,600 paise
(INR 756, about $9) would outweigh 900 cents ($9) eighty-fold. Backtests therefore report amounts
in one reporting currency (US dollars, major units, by default) through :class:`FxRates`.

Minor-unit exponents follow Stripe's API (docs.stripe.com/currencies): zero-decimal currencies
are whole units, five currencies use thousandths, every other currency hundredths (Stripe also
expresses ISK, HUF and TWD with two decimals in the API).

The reference rates are approximate 2025 averages (units of the currency per US dollar), the
same figures the synthetic world uses. They serve to compare policies, not for accounting: a
policy's uplift hardly moves with a few percent of FX, but a user with real money in other
currencies should pass their own table (:func:`load_fx_rates`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

# docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL_CURRENCIES: Final[frozenset[str]] = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)
# docs.stripe.com/currencies#three-decimal
THREE_DECIMAL_CURRENCIES: Final[frozenset[str]] = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})

# Units of each currency per US dollar, approximate 2025 averages (the synthetic world's rates
# for the currencies it simulates; pegged currencies at their peg).
REFERENCE_UNITS_PER_USD: Final[Mapping[str, float]] = {
    "usd": 1.0,
    "eur": 0.92,
    "gbp": 0.79,
    "cad": 1.37,
    "mxn": 18.5,
    "brl": 5.5,
    "pln": 3.95,
    "sek": 10.5,
    "nok": 10.8,
    "dkk": 6.86,  # pegged to the euro (ERM II, 7.46 DKK per EUR)
    "chf": 0.85,
    "czk": 23.0,
    "huf": 365.0,
    "ron": 4.6,
    "aud": 1.52,
    "nzd": 1.68,
    "jpy": 150.0,
    "krw": 1400.0,
    "cny": 7.2,
    "hkd": 7.8,  # pegged band 7.75-7.85
    "sgd": 1.33,
    "inr": 84.0,
    "idr": 16200.0,
    "myr": 4.4,
    "thb": 34.0,
    "php": 57.0,
    "zar": 18.2,
    "aed": 3.6725,  # pegged
    "sar": 3.75,  # pegged
    "ils": 3.65,
    "try": 38.0,
    "clp": 940.0,
    "cop": 4100.0,
}


def currency_exponent(currency: str) -> int:
    """Number of minor-unit digits of ``currency`` (0, 2 or 3), as Stripe's API uses them."""
    code = currency.lower()
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


@dataclass(frozen=True, kw_only=True)
class FxRates:
    """Exchange rates into a reporting currency.

    Parameters
    ----------
    units_per_usd
        Units of each (lower-case ISO 4217) currency per US dollar.
    reporting
        The reporting currency (must be in ``units_per_usd``); amounts come out in its major
        units (dollars, euros, yen).
    source
        Where the rates come from (shown in reports).
    """

    units_per_usd: Mapping[str, float] = field(
        default_factory=lambda: dict(REFERENCE_UNITS_PER_USD)
    )
    reporting: str = "usd"
    source: str = "retryopt reference rates (approximate 2025 averages)"

    def __post_init__(self) -> None:
        for code, rate in self.units_per_usd.items():
            if not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
                raise ValueError(f"FX rate of {code!r} must be a positive number, got {rate!r}")
        if self.reporting not in self.units_per_usd:
            raise ValueError(f"reporting currency {self.reporting!r} has no rate")

    def __hash__(self) -> int:
        """Hash of the rates' contents (constraints holding rates key groups of requests)."""
        return hash((tuple(sorted(self.units_per_usd.items())), self.reporting, self.source))

    def to_reporting(self, amount_minor: np.ndarray, currency: np.ndarray) -> np.ndarray:
        """Convert minor-unit amounts of each row's currency to the reporting currency.

        Raises
        ------
        ValueError
            Naming every currency without a rate and how many rows carry it.
        """
        amount = np.asarray(amount_minor, dtype=np.float64)
        codes = pd.Series(np.asarray(currency, dtype=object)).astype(str).str.lower()
        uniques = pd.unique(codes)
        missing = [u for u in uniques if u not in self.units_per_usd]
        if missing:
            counts = codes[codes.isin(missing)].value_counts()
            listed = ", ".join(f"{k!r} ({int(v)} rows)" for k, v in counts.items())
            raise ValueError(
                f"no exchange rate for currency {listed}; pass a rates file (--fx-rates) "
                "mapping each currency to its units per USD"
            )
        factor_of = {
            u: self.units_per_usd[self.reporting]
            / (self.units_per_usd[u] * 10.0 ** currency_exponent(u))
            for u in uniques
        }
        factor = codes.map(factor_of).to_numpy(dtype=np.float64)
        return amount * factor


def load_fx_rates(path: str | Path, *, reporting: str = "usd") -> FxRates:
    """Read exchange rates from a JSON object ``{"eur": 0.92, ...}`` (units per US dollar).

    The reference rates fill currencies the file does not name; ``usd`` is always 1.
    """
    file = Path(path)
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: cannot read FX rates ({exc})") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"{file}: FX rates must be a JSON object of currency -> units per USD")
    rates = dict(REFERENCE_UNITS_PER_USD)
    for key, value in payload.items():
        code = str(key).lower()
        if len(code) != 3 or not code.isalpha():
            raise ValueError(f"{file}: {key!r} is not an ISO 4217 currency code")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{file}: rate of {key!r} must be a number, got {value!r}")
        rates[code] = float(value)
    if rates.get("usd") != 1.0:
        raise ValueError(f"{file}: the rate of 'usd' must be 1 (rates are units per US dollar)")
    return FxRates(units_per_usd=rates, reporting=reporting.lower(), source=str(file))
