"""The payment-attempt data contract: column names, roles and canonical dtypes.

One row per authorization attempt. Every pipeline stage (validation, features, training,
simulation, backtests, serving) reads and writes frames in this shape, so the names here are the
single source of truth. Validation lives in :mod:`features.validation`; reading and atomic writing
in :mod:`features.io`.

After :func:`features.validation.validate_attempts` a *canonical* frame has every column below
(optional ones filled with missing values) with these dtypes:

- timestamps (``attempted_at``, ``card_added_at``): ``datetime64[ns, UTC]``
- integers (``amount``, ``card_exp_month``, ``card_exp_year``): ``int64``
- ``retry_propensity``: ``float64`` (NaN when absent)
- every other column: strings in pandas' default string dtype, missing values NA (use ``pd.isna``)
"""

from __future__ import annotations

from typing import Final

ATTEMPT_ID: Final = "attempt_id"
CHARGE_ID: Final = "charge_id"
CUSTOMER_ID: Final = "customer_id"
ATTEMPTED_AT: Final = "attempted_at"
AMOUNT: Final = "amount"
CURRENCY: Final = "currency"
OUTCOME: Final = "outcome"
DECLINE_CODE: Final = "decline_code"
NETWORK_ADVICE_CODE: Final = "network_advice_code"
CARD_BRAND: Final = "card_brand"
CARD_FUNDING: Final = "card_funding"
CARD_COUNTRY: Final = "card_country"
CARD_ADDED_AT: Final = "card_added_at"
CARD_EXP_MONTH: Final = "card_exp_month"
CARD_EXP_YEAR: Final = "card_exp_year"
CARD_ID: Final = "card_id"
ISSUER: Final = "issuer"
CUSTOMER_TIMEZONE: Final = "customer_timezone"
RETRY_PROPENSITY: Final = "retry_propensity"

REQUIRED_COLUMNS: Final[tuple[str, ...]] = (
    ATTEMPT_ID,
    CHARGE_ID,
    CUSTOMER_ID,
    ATTEMPTED_AT,
    AMOUNT,
    CURRENCY,
    OUTCOME,
    DECLINE_CODE,  # required as a column; its value is required only when outcome == failed
    CARD_BRAND,
    CARD_FUNDING,
    CARD_COUNTRY,
    CARD_ADDED_AT,
    CARD_EXP_MONTH,
    CARD_EXP_YEAR,
)
OPTIONAL_COLUMNS: Final[tuple[str, ...]] = (
    NETWORK_ADVICE_CODE,
    CARD_ID,
    ISSUER,
    CUSTOMER_TIMEZONE,
    RETRY_PROPENSITY,
)
ALL_COLUMNS: Final[tuple[str, ...]] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

TIMESTAMP_COLUMNS: Final[tuple[str, ...]] = (ATTEMPTED_AT, CARD_ADDED_AT)
INTEGER_COLUMNS: Final[tuple[str, ...]] = (AMOUNT, CARD_EXP_MONTH, CARD_EXP_YEAR)
FLOAT_COLUMNS: Final[tuple[str, ...]] = (RETRY_PROPENSITY,)
STRING_COLUMNS: Final[tuple[str, ...]] = tuple(
    c for c in ALL_COLUMNS if c not in TIMESTAMP_COLUMNS + INTEGER_COLUMNS + FLOAT_COLUMNS
)

SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
OUTCOMES: Final[frozenset[str]] = frozenset({SUCCEEDED, FAILED})

CARD_FUNDINGS: Final[frozenset[str]] = frozenset({"credit", "debit", "prepaid", "unknown"})
KNOWN_CARD_BRANDS: Final[frozenset[str]] = frozenset(
    {
        "visa",
        "mastercard",
        "amex",
        "discover",
        "jcb",
        "diners",
        "unionpay",
        "cartes_bancaires",
        "eftpos_au",
        "interac",
        "unknown",
    }
)
