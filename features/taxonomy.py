"""Decline-code taxonomy and card-network retry rules.

Maps every Stripe card ``decline_code`` and every ISO 8583 response code used by Visa's decline
categories to a :class:`DeclineFamily`, hard vs soft, and the :class:`RetryRule` that applies,
and encodes the network retry limits. Every rule is cited where it is encoded; the full mapping
tables with their sources are in ``docs/taxonomy.md``.

Sources
-------
- Stripe decline codes: https://docs.stripe.com/declines/codes
- Stripe Smart Retries (codes never retried until the payment method changes):
  https://docs.stripe.com/billing/revenue-recovery/smart-retries
- Stripe advice codes (``outcome.advice_code``): https://docs.stripe.com/declines/card
- Visa Core Rules, April 2026, ID# 0030640, Table 7-2 "Decline Response Code Use" (decline
  categories 1-4 and the reattempt limit), summarised in IanFoxDev/decline-codes data/visa.json.
- ISO 8583:1987 field 39 response-code meanings (https://en.wikipedia.org/wiki/ISO_8583).
- Mastercard merchant advice codes and excessive-attempt limits, from processors' documentation
  (TabaPay "Merchant Advice Code (MAC)", Adyen raw acquirer responses, Braintree "Mastercard
  Spring 2024 network updates", Paya "Mastercard Excessive Authorization Attempts"); Mastercard's
  own rules are not publicly readable.

Conventions
-----------
``hard`` is exactly ``rule != RetryRule.RETRY``: a hard decline is one where retrying the same
card, unchanged and without customer action, is pointless or forbidden.

Rules, from most to least strict:

- ``NEVER``: never retry this charge on this card, even if its details are updated.
- ``NEVER_UNLESS_CARD_CHANGED``: no retry unless the card details changed since the decline
  (Stripe Smart Retries semantics: a new payment method, or an updated number/expiry).
- ``UPDATE_PAYMENT_METHOD``: ask the customer for a new or corrected card; retry once it changed.
- ``CUSTOMER_AUTHENTICATION``: no off-session retry; the customer must authenticate on-session.
- ``RETRY``: may be retried, within the network limits (:func:`network_retry_limits`) and
  after any Mastercard advice wait (:attr:`AdviceInfo.min_wait_hours`).

ISO 8583 codes mean different things per network (76-89 are private use); families here follow
the Visa / ISO meaning. A Mastercard merchant advice code, when present, takes precedence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "ISO_RESPONSE_CODES",
    "MASTERCARD_ADVICE_CODES",
    "MASTERCARD_MAX_DECLINES_24H",
    "MASTERCARD_MAX_DECLINES_30D",
    "STRIPE_ADVICE_CODES",
    "STRIPE_DECLINE_CODES",
    "STRIPE_EXTRA_CODES",
    "STRIPE_NEVER_RETRY_CODES",
    "VISA_CATEGORY_1_CODES",
    "VISA_CATEGORY_2_CODES",
    "VISA_CATEGORY_3_CODES",
    "VISA_CATEGORY_3_EUROPE_ONLY_CODES",
    "VISA_CATEGORY_4_CODES",
    "VISA_MAX_REATTEMPTS_30D",
    "VISA_MAX_REATTEMPTS_30D_BEFORE_2026",
    "AdviceInfo",
    "DeclineFamily",
    "DeclineInfo",
    "RetryLimit",
    "RetryRule",
    "advice_info",
    "classify_codes",
    "classify_decline",
    "is_retry_allowed",
    "mastercard_advice",
    "network_retry_limits",
    "normalize_advice_code",
    "normalize_code",
    "rule_strictness",
    "visa_category",
]


class DeclineFamily(StrEnum):
    """What a decline means, grouped by how retries behave."""

    FUNDS = "funds"
    ISSUER_UNAVAILABLE = "issuer_unavailable"
    ISSUER_RISK = "issuer_risk"
    CARD_DATA = "card_data"
    AUTHENTICATION = "authentication"
    VELOCITY = "velocity"
    LOST_STOLEN_FRAUD = "lost_stolen_fraud"
    ACCOUNT_CLOSED = "account_closed"
    GENERIC = "generic"
    PROCESSING = "processing"
    UNKNOWN = "unknown"


class RetryRule(StrEnum):
    """The retry rule that applies after a decline (see the module docstring)."""

    RETRY = "retry"
    NEVER = "never"
    NEVER_UNLESS_CARD_CHANGED = "never_unless_card_changed"
    UPDATE_PAYMENT_METHOD = "update_payment_method"
    CUSTOMER_AUTHENTICATION = "customer_authentication"


# Higher = stricter. Used when an advice code combines with a decline code's rule.
_STRICTNESS: Final[Mapping[RetryRule, int]] = MappingProxyType(
    {
        RetryRule.RETRY: 0,
        RetryRule.CUSTOMER_AUTHENTICATION: 1,
        RetryRule.UPDATE_PAYMENT_METHOD: 2,
        RetryRule.NEVER_UNLESS_CARD_CHANGED: 3,
        RetryRule.NEVER: 4,
    }
)

# Actions a decline asks for (``DeclineInfo.action_required``); None = just retry later.
ACTION_UPDATE_PAYMENT_METHOD: Final = "update_payment_method"
ACTION_CUSTOMER_AUTHENTICATION: Final = "customer_authentication"
ACTION_CONTACT_ISSUER: Final = "contact_issuer"  # customer should call the issuer; retries may work
ACTION_CONTACT_CUSTOMER: Final = "contact_customer"  # cardholder stopped/revoked the payments
ACTION_MERCHANT_REVIEW: Final = "merchant_review"  # merchant-side block or configuration

SOURCE_STRIPE: Final = "Stripe decline codes (docs.stripe.com/declines/codes)"
SOURCE_STRIPE_SMART_RETRIES: Final = (
    "Stripe Smart Retries never-retry list (docs.stripe.com/billing/revenue-recovery/smart-retries)"
)
SOURCE_STRIPE_ADVICE: Final = "Stripe advice codes (docs.stripe.com/declines/card)"
SOURCE_VISA: Final = "Visa Core Rules, April 2026 (decline categories)"
SOURCE_ISO: Final = "ISO 8583 response codes (field 39)"
SOURCE_MASTERCARD_MAC: Final = (
    "Mastercard merchant advice codes (TabaPay MAC docs; Adyen raw acquirer responses)"
)


@dataclass(frozen=True)
class DeclineInfo:
    """Classification of one decline.

    Attributes
    ----------
    code
        The normalised decline code ("" when none was given).
    family
        The decline family.
    hard
        True when retrying the unchanged card without customer action is pointless or
        forbidden (exactly ``rule != RetryRule.RETRY``).
    rule
        The retry rule, after applying the advice code if one was given.
    action_required
        What has to happen before a retry can succeed (``"update_payment_method"``,
        ``"customer_authentication"``, ``"contact_issuer"``, ``"contact_customer"``,
        ``"merchant_review"``) or None.
    visa_category
        Visa decline category 1-4 for ISO 8583 codes, None for Stripe names.
    known
        False when the code is empty or not in the taxonomy.
    source
        Where the classification comes from.
    meaning
        Short description of the code (added to the agreed API).
    """

    code: str
    family: DeclineFamily
    hard: bool
    rule: RetryRule
    action_required: str | None
    visa_category: int | None
    known: bool
    source: str
    meaning: str = ""


@dataclass(frozen=True)
class AdviceInfo:
    """A network or Stripe advice code.

    Attributes
    ----------
    code
        The normalised advice code.
    never_retry
        True when the advice forbids any retry of the transaction.
    min_wait_hours
        Earliest retry after the decline, in hours, or None.
    meaning
        What the advice code says.
    """

    code: str
    never_retry: bool
    min_wait_hours: float | None
    meaning: str


@dataclass(frozen=True)
class RetryLimit:
    """A network cap on attempts per card.

    Attributes
    ----------
    window_hours
        Length of the rolling window.
    max_count
        Maximum number counted within the window.
    counts
        ``"reattempts"`` (retries of a declined transaction) or ``"declines"`` (declined
        authorisations of the card at the merchant).
    source
        Citation of the rule.
    """

    window_hours: float
    max_count: int
    counts: str
    source: str


# ---------------------------------------------------------------------------------------------
# Network limits
# ---------------------------------------------------------------------------------------------

# Visa Core Rules, 18 April 2026, ID# 0030640: categories 2-4 allow at most 20 reattempts in 30
# days (customer- and merchant-initiated counted separately). From April 2021 to April 2026 the
# limit was 15, and many sources still say 15. Category 1 allows none.
VISA_MAX_REATTEMPTS_30D: Final = 20
VISA_MAX_REATTEMPTS_30D_BEFORE_2026: Final = 15
# Mastercard excessive authorization attempts: at most 10 declines per card per merchant in
# 24 hours (20 before 1 October 2022) and 35 in 30 days (Paya; Braintree mc-s24, 2024).
MASTERCARD_MAX_DECLINES_24H: Final = 10
MASTERCARD_MAX_DECLINES_30D: Final = 35

_VISA_LIMITS: Final[tuple[RetryLimit, ...]] = (
    RetryLimit(
        window_hours=30 * 24.0,
        max_count=VISA_MAX_REATTEMPTS_30D,
        counts="reattempts",
        source=f"{SOURCE_VISA}: categories 2-4, at most 20 reattempts in 30 days (15 before "
        "April 2026); category 1 never",
    ),
)
_MASTERCARD_LIMITS: Final[tuple[RetryLimit, ...]] = (
    RetryLimit(
        window_hours=24.0,
        max_count=MASTERCARD_MAX_DECLINES_24H,
        counts="declines",
        source="Mastercard excessive authorization attempts: 10 declines per card per merchant "
        "in 24 hours (Paya; Braintree mc-s24)",
    ),
    RetryLimit(
        window_hours=30 * 24.0,
        max_count=MASTERCARD_MAX_DECLINES_30D,
        counts="declines",
        source="Mastercard excessive authorization attempts: 35 declines per card per merchant "
        "in 30 days (Braintree mc-s24, 2024)",
    ),
)


def network_retry_limits(card_brand: str | None) -> tuple[RetryLimit, ...]:
    """Return the network caps on attempts for a card brand.

    Parameters
    ----------
    card_brand
        Contract ``card_brand`` (case-insensitive): ``"visa"`` and ``"mastercard"`` have caps;
        other brands (and None) return an empty tuple.

    Returns
    -------
    tuple of RetryLimit
        Every cap that applies; a retry must satisfy all of them.
    """
    brand = (card_brand or "").strip().lower()
    if brand == "visa":
        return _VISA_LIMITS
    if brand == "mastercard":
        return _MASTERCARD_LIMITS
    return ()


# ---------------------------------------------------------------------------------------------
# Stripe decline codes
# ---------------------------------------------------------------------------------------------

_F = DeclineFamily
_R = RetryRule
_UPM = ACTION_UPDATE_PAYMENT_METHOD
_AUTH = ACTION_CUSTOMER_AUTHENTICATION
_ISSUER = ACTION_CONTACT_ISSUER
_CUSTOMER = ACTION_CONTACT_CUSTOMER
_MERCHANT = ACTION_MERCHANT_REVIEW

# (code, family, rule, action_required, meaning). Documented card decline codes,
# docs.stripe.com/declines/codes; the mapping choices are explained in docs/taxonomy.md.
_STRIPE_ROWS: Final[tuple[tuple[str, DeclineFamily, RetryRule, str | None, str], ...]] = (
    # On Stripe's never-retry list too; the authentication action wins (docs/taxonomy.md).
    ("authentication_required", _F.AUTHENTICATION, _R.CUSTOMER_AUTHENTICATION, _AUTH,
     "The card was declined because the transaction requires authentication"),
    ("approve_with_id", _F.GENERIC, _R.RETRY, None, "The payment can't be authorized"),
    ("call_issuer", _F.GENERIC, _R.RETRY, _ISSUER, "The card was declined for an unknown reason"),
    ("card_not_supported", _F.ISSUER_RISK, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The card doesn't support this type of purchase"),
    ("card_velocity_exceeded", _F.VELOCITY, _R.RETRY, None,
     "The customer exceeded the balance, credit limit or transaction amount limit"),
    ("currency_not_supported", _F.ISSUER_RISK, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The card doesn't support the specified currency"),
    ("do_not_honor", _F.ISSUER_RISK, _R.RETRY, None, "The card was declined for an unknown reason"),
    ("do_not_try_again", _F.ISSUER_RISK, _R.NEVER, None,
     "The card was declined for an unknown reason (deprecated code)"),
    ("duplicate_transaction", _F.PROCESSING, _R.RETRY, _MERCHANT,
     "A transaction with identical amount and card was submitted very recently"),
    ("expired_card", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM, "The card has expired"),
    # Radar/issuer fraud: not on Stripe's list, but Visa puts the fraud pick-up code 07 in
    # category 1; we do not retry the same card.
    ("fraudulent", _F.LOST_STOLEN_FRAUD, _R.NEVER_UNLESS_CARD_CHANGED, _UPM,
     "The payment was declined because it was suspected to be fraudulent"),
    ("generic_decline", _F.GENERIC, _R.RETRY, None, "The card was declined for an unknown reason"),
    ("incorrect_number", _F.CARD_DATA, _R.NEVER_UNLESS_CARD_CHANGED, _UPM,
     "The card number is incorrect"),
    ("incorrect_cvc", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM, "The CVC number is incorrect"),
    ("incorrect_pin", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The PIN entered is incorrect (card-present only)"),
    ("incorrect_zip", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The postal code is incorrect"),
    ("insufficient_funds", _F.FUNDS, _R.RETRY, None,
     "The card has insufficient funds to complete the purchase"),
    ("invalid_account", _F.ACCOUNT_CLOSED, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The card, or account the card is connected to, is invalid"),
    ("invalid_amount", _F.VELOCITY, _R.RETRY, _ISSUER,
     "The payment amount is invalid, or exceeds the amount that's allowed"),
    ("invalid_cvc", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM, "The CVC number is incorrect"),
    ("invalid_expiry_month", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The expiration month is invalid"),
    ("invalid_expiry_year", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The expiration year is invalid"),
    ("invalid_number", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The card number is incorrect"),
    ("invalid_pin", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The PIN entered is incorrect (card-present only)"),
    ("issuer_not_available", _F.ISSUER_UNAVAILABLE, _R.RETRY, None,
     "The card issuer couldn't be reached"),
    ("lost_card", _F.LOST_STOLEN_FRAUD, _R.NEVER_UNLESS_CARD_CHANGED, _UPM,
     "The card was reported lost"),
    ("merchant_blacklist", _F.LOST_STOLEN_FRAUD, _R.NEVER, _MERCHANT,
     "The payment matches a value on the merchant's Radar block list"),
    ("new_account_information_available", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The card, or account the card is connected to, is invalid; new details exist"),
    ("no_action_taken", _F.GENERIC, _R.RETRY, _ISSUER,
     "The card was declined for an unknown reason"),
    ("not_permitted", _F.ISSUER_RISK, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The payment isn't permitted"),
    ("offline_pin_required", _F.AUTHENTICATION, _R.CUSTOMER_AUTHENTICATION, _AUTH,
     "The card was declined because it requires a PIN"),
    ("online_or_offline_pin_required", _F.AUTHENTICATION, _R.CUSTOMER_AUTHENTICATION, _AUTH,
     "The card was declined because it requires a PIN"),
    ("pickup_card", _F.LOST_STOLEN_FRAUD, _R.NEVER_UNLESS_CARD_CHANGED, _UPM,
     "The card can't be used (it may have been reported lost or stolen)"),
    ("pin_try_exceeded", _F.AUTHENTICATION, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The allowable number of PIN tries was exceeded"),
    ("processing_error", _F.PROCESSING, _R.RETRY, None,
     "An error occurred while processing the card"),
    ("reenter_transaction", _F.ISSUER_UNAVAILABLE, _R.RETRY, None,
     "The issuer couldn't process the payment for an unknown reason"),
    ("restricted_card", _F.ISSUER_RISK, _R.RETRY, _ISSUER,
     "The card can't be used for this payment (restricted; Visa 62 is category 2)"),
    ("revocation_of_all_authorizations", _F.ACCOUNT_CLOSED, _R.NEVER_UNLESS_CARD_CHANGED, _CUSTOMER,
     "The cardholder revoked all authorizations for this merchant"),
    ("revocation_of_authorization", _F.ACCOUNT_CLOSED, _R.NEVER_UNLESS_CARD_CHANGED, _CUSTOMER,
     "The cardholder revoked the authorization for this recurring payment"),
    ("security_violation", _F.ISSUER_RISK, _R.RETRY, _ISSUER,
     "The card was declined for an unknown reason (security)"),
    ("service_not_allowed", _F.ISSUER_RISK, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The card was declined for an unknown reason (service not allowed)"),
    ("stolen_card", _F.LOST_STOLEN_FRAUD, _R.NEVER_UNLESS_CARD_CHANGED, _UPM,
     "The card was reported stolen"),
    # Visa R0 (stop payment order) is category 1: never.
    ("stop_payment_order", _F.ACCOUNT_CLOSED, _R.NEVER, _CUSTOMER,
     "The cardholder asked the issuer to stop this payment"),
    ("testmode_decline", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "A Stripe test card number was used in live mode"),
    ("transaction_not_allowed", _F.ISSUER_RISK, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The card was declined for an unknown reason (transaction not allowed)"),
    ("try_again_later", _F.ISSUER_UNAVAILABLE, _R.RETRY, None,
     "The card was declined for an unknown reason (deprecated code)"),
    ("withdrawal_count_limit_exceeded", _F.VELOCITY, _R.RETRY, None,
     "The customer exceeded the balance, credit or transaction count limit"),
)  # fmt: skip

# Codes Stripe's payment flows report besides the documented decline_code list: the Radar
# outcome.reason ``highest_risk_level`` (on the Smart Retries never-retry list), the generic
# ``card_declined`` error code used as failure_code, and codes seen on newer API versions.
_STRIPE_EXTRA_ROWS: Final[tuple[tuple[str, DeclineFamily, RetryRule, str | None, str], ...]] = (
    ("highest_risk_level", _F.LOST_STOLEN_FRAUD, _R.NEVER_UNLESS_CARD_CHANGED, _UPM,
     "Stripe Radar blocked the payment as highest risk"),
    ("card_declined", _F.GENERIC, _R.RETRY, None,
     "Generic Stripe error code for a declined card (no decline_code given)"),
    ("incorrect_address", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "The address is incorrect"),
    ("authentication_not_handled", _F.AUTHENTICATION, _R.CUSTOMER_AUTHENTICATION, _AUTH,
     "Authentication was required but not handled"),
    ("mobile_device_authentication_required", _F.AUTHENTICATION, _R.CUSTOMER_AUTHENTICATION, _AUTH,
     "The issuer requires authentication on the mobile device"),
)  # fmt: skip

STRIPE_DECLINE_CODES: Final[frozenset[str]] = frozenset(r[0] for r in _STRIPE_ROWS)
STRIPE_EXTRA_CODES: Final[frozenset[str]] = frozenset(r[0] for r in _STRIPE_EXTRA_ROWS)
# docs.stripe.com/billing/revenue-recovery/smart-retries: never retried until a new payment
# method is attached. Honoured as NEVER_UNLESS_CARD_CHANGED, except authentication_required,
# whose CUSTOMER_AUTHENTICATION rule also forbids an off-session retry of the unchanged card.
STRIPE_NEVER_RETRY_CODES: Final[frozenset[str]] = frozenset(
    {
        "incorrect_number",
        "lost_card",
        "pickup_card",
        "stolen_card",
        "revocation_of_authorization",
        "revocation_of_all_authorizations",
        "authentication_required",
        "highest_risk_level",
    }
)

# ---------------------------------------------------------------------------------------------
# ISO 8583 response codes and Visa decline categories
# ---------------------------------------------------------------------------------------------

# Visa Core Rules, April 2026, ID# 0030640, Table 7-2 (decline categories).
# Category 1, issuer will never approve: never retried (a retry is charged a fee).
VISA_CATEGORY_1_CODES: Final[frozenset[str]] = frozenset(
    {"04", "07", "12", "14", "15", "41", "43", "46", "57", "R0", "R1", "R3"}
)
# Category 2, issuer cannot approve at this time: reattempts allowed (03, 62, 78 and 93 moved
# here from category 1 in April 2021; 83 joins from 25 July 2026).
VISA_CATEGORY_2_CODES: Final[frozenset[str]] = frozenset(
    {"03", "19", "39", "51", "52", "53", "59", "61", "62", "65", "75", "78", "83", "86", "91",
     "93", "96", "5C", "9G", "N3", "N4", "Z5"}
)  # fmt: skip
# Category 3, data quality: revalidate the payment data before retrying. 70 and 1A are
# category 3 in Europe and CEMEA and category 4 elsewhere; we file them under 3 (both
# categories allow reattempts under the same cap; our rule for them is customer
# authentication in any case).
VISA_CATEGORY_3_CODES: Final[frozenset[str]] = frozenset({"54", "55", "82", "6P", "N7", "70", "1A"})
VISA_CATEGORY_3_EUROPE_ONLY_CODES: Final[frozenset[str]] = frozenset({"70", "1A"})

# (code, family, rule, action_required, meaning). Meanings: Visa Core Rules Table 7-2 and
# ISO 8583 field 39. Rules: category 1 -> NEVER; categories 2-4 -> RETRY unless the meaning
# requires new card data or customer authentication.
_ISO_ROWS: Final[tuple[tuple[str, DeclineFamily, RetryRule, str | None, str], ...]] = (
    # Category 1
    ("04", _F.LOST_STOLEN_FRAUD, _R.NEVER, _UPM, "Pick up card (no fraud)"),
    ("07", _F.LOST_STOLEN_FRAUD, _R.NEVER, _UPM, "Pick up card, special condition (fraud account)"),
    ("12", _F.ISSUER_RISK, _R.NEVER, _UPM, "Invalid transaction"),
    ("14", _F.CARD_DATA, _R.NEVER, _UPM, "Invalid account number (no such number)"),
    ("15", _F.CARD_DATA, _R.NEVER, _UPM, "No such issuer"),
    ("41", _F.LOST_STOLEN_FRAUD, _R.NEVER, _UPM, "Lost card, pick up"),
    ("43", _F.LOST_STOLEN_FRAUD, _R.NEVER, _UPM, "Stolen card, pick up"),
    ("46", _F.ACCOUNT_CLOSED, _R.NEVER, _UPM, "Closed account"),
    ("57", _F.ISSUER_RISK, _R.NEVER, _UPM, "Transaction not permitted to cardholder"),
    ("R0", _F.ACCOUNT_CLOSED, _R.NEVER, _CUSTOMER, "Stop payment order"),
    ("R1", _F.ACCOUNT_CLOSED, _R.NEVER, _CUSTOMER, "Revocation of authorization order"),
    ("R3", _F.ACCOUNT_CLOSED, _R.NEVER, _CUSTOMER, "Revocation of all authorizations order"),
    # Category 2
    ("03", _F.PROCESSING, _R.RETRY, _MERCHANT, "Invalid merchant"),
    ("19", _F.ISSUER_UNAVAILABLE, _R.RETRY, None, "Re-enter transaction"),
    ("39", _F.ACCOUNT_CLOSED, _R.RETRY, _ISSUER, "No credit account"),
    ("51", _F.FUNDS, _R.RETRY, None, "Not sufficient funds"),
    ("52", _F.ACCOUNT_CLOSED, _R.RETRY, _ISSUER, "No checking account"),
    ("53", _F.ACCOUNT_CLOSED, _R.RETRY, _ISSUER, "No savings account"),
    ("59", _F.LOST_STOLEN_FRAUD, _R.RETRY, _ISSUER, "Suspected fraud"),
    ("61", _F.VELOCITY, _R.RETRY, None, "Exceeds approval amount limit"),
    ("62", _F.ISSUER_RISK, _R.RETRY, _ISSUER, "Restricted card (invalid in region or country)"),
    ("65", _F.VELOCITY, _R.RETRY, None, "Exceeds withdrawal frequency limit"),
    ("75", _F.AUTHENTICATION, _R.RETRY, None, "Allowable number of PIN-entry tries exceeded"),
    ("78", _F.ISSUER_RISK, _R.RETRY, _ISSUER, "Blocked, first used or special condition"),
    ("83", _F.LOST_STOLEN_FRAUD, _R.RETRY, None, "Fraud/security (Visa use only)"),
    ("86", _F.AUTHENTICATION, _R.RETRY, None, "Cannot verify PIN"),
    ("91", _F.ISSUER_UNAVAILABLE, _R.RETRY, None, "Issuer or switch inoperative"),
    ("93", _F.ISSUER_RISK, _R.RETRY, _ISSUER, "Transaction cannot be completed, violation of law"),
    ("96", _F.PROCESSING, _R.RETRY, None, "System malfunction"),
    ("5C", _F.ISSUER_RISK, _R.RETRY, _ISSUER, "Transaction not supported or blocked by issuer"),
    ("9G", _F.ISSUER_RISK, _R.RETRY, _CUSTOMER, "Blocked by cardholder, contact cardholder"),
    ("N3", _F.ISSUER_RISK, _R.RETRY, None, "Cash service not available"),
    ("N4", _F.VELOCITY, _R.RETRY, None, "Cash request exceeds issuer or approved limit"),
    ("Z5", _F.VELOCITY, _R.RETRY, _ISSUER, "Valid account but amount not supported"),
    # Category 3
    ("54", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM, "Expired card or expiration date missing"),
    ("55", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM, "PIN incorrect or missing"),
    ("82", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "Negative online CAM, dCVV, iCVV or CVV results"),
    ("6P", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM,
     "Verification failed (cardholder data does not match issuer records)"),
    ("N7", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM, "Decline for CVV2 failure"),
    ("70", _F.AUTHENTICATION, _R.CUSTOMER_AUTHENTICATION, _AUTH, "PIN data required"),
    ("1A", _F.AUTHENTICATION, _R.CUSTOMER_AUTHENTICATION, _AUTH,
     "Additional customer authentication required"),
    # Category 4 (all other codes); meanings from ISO 8583 field 39
    ("01", _F.GENERIC, _R.RETRY, _ISSUER, "Refer to card issuer"),
    ("02", _F.GENERIC, _R.RETRY, _ISSUER, "Refer to card issuer's special conditions"),
    ("05", _F.ISSUER_RISK, _R.RETRY, None, "Do not honor"),
    ("06", _F.PROCESSING, _R.RETRY, None, "Error"),
    ("13", _F.VELOCITY, _R.RETRY, _ISSUER, "Invalid amount"),
    ("21", _F.GENERIC, _R.RETRY, None, "No action taken"),
    ("22", _F.PROCESSING, _R.RETRY, None, "Suspected malfunction"),
    ("30", _F.PROCESSING, _R.RETRY, _MERCHANT, "Format error"),
    ("31", _F.ISSUER_UNAVAILABLE, _R.RETRY, None, "Bank not supported by switch"),
    ("33", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM, "Expired card, pick up"),
    ("34", _F.LOST_STOLEN_FRAUD, _R.RETRY, _ISSUER, "Suspected fraud, pick up"),
    ("36", _F.ISSUER_RISK, _R.RETRY, _ISSUER, "Restricted card, pick up"),
    ("38", _F.AUTHENTICATION, _R.RETRY, None, "Allowable PIN tries exceeded"),
    ("40", _F.ISSUER_RISK, _R.RETRY, _MERCHANT, "Requested function not supported"),
    ("42", _F.ACCOUNT_CLOSED, _R.RETRY, _ISSUER, "No universal account"),
    ("44", _F.ACCOUNT_CLOSED, _R.RETRY, _ISSUER, "No investment account"),
    ("56", _F.CARD_DATA, _R.UPDATE_PAYMENT_METHOD, _UPM, "No card record"),
    ("58", _F.ISSUER_RISK, _R.RETRY, _MERCHANT, "Transaction not permitted to terminal"),
    ("63", _F.ISSUER_RISK, _R.RETRY, _ISSUER, "Security violation"),
    ("92", _F.ISSUER_UNAVAILABLE, _R.RETRY, None,
     "Financial institution or network facility cannot be found for routing"),
    ("94", _F.PROCESSING, _R.RETRY, _MERCHANT, "Duplicate transmission"),
)  # fmt: skip

ISO_RESPONSE_CODES: Final[frozenset[str]] = frozenset(r[0] for r in _ISO_ROWS)
VISA_CATEGORY_4_CODES: Final[frozenset[str]] = ISO_RESPONSE_CODES - (
    VISA_CATEGORY_1_CODES | VISA_CATEGORY_2_CODES | VISA_CATEGORY_3_CODES
)


def visa_category(code: str | None) -> int | None:
    """Return the Visa decline category (1-4) of an ISO 8583 response code.

    Parameters
    ----------
    code
        A response code; normalised with :func:`normalize_code`.

    Returns
    -------
    int or None
        1-3 for the listed codes, 4 for every other two-character alphanumeric code (Visa:
        "all other decline response codes"), None for anything else (e.g. Stripe names).
    """
    norm = normalize_code(code)
    if norm in VISA_CATEGORY_1_CODES:
        return 1
    if norm in VISA_CATEGORY_2_CODES:
        return 2
    if norm in VISA_CATEGORY_3_CODES:
        return 3
    if _is_iso_shape(norm):
        return 4
    return None


# ---------------------------------------------------------------------------------------------
# Advice codes
# ---------------------------------------------------------------------------------------------

# Mastercard merchant advice codes (MAC), DE 48 SE 84 (TabaPay MAC docs; Adyen). 03 and 21:
# never retry (retries within 30 days are charged per item); 24-30: retry no earlier than the
# given wait.
MASTERCARD_ADVICE_CODES: Final[Mapping[str, AdviceInfo]] = MappingProxyType(
    {
        a.code: a
        for a in (
            AdviceInfo("01", False, None, "New account information available"),
            AdviceInfo("02", False, None, "Cannot approve at this time, try again later"),
            AdviceInfo("03", True, None, "Do not try again"),
            AdviceInfo("04", False, None, "Token requirements not fulfilled for this token type"),
            AdviceInfo("21", True, None, "Payment cancellation (stop recurring payment)"),
            AdviceInfo("24", False, 1.0, "Retry after 1 hour"),
            AdviceInfo("25", False, 24.0, "Retry after 24 hours"),
            AdviceInfo("26", False, 48.0, "Retry after 2 days"),
            AdviceInfo("27", False, 96.0, "Retry after 4 days"),
            AdviceInfo("28", False, 144.0, "Retry after 6 days"),
            AdviceInfo("29", False, 192.0, "Retry after 8 days"),
            AdviceInfo("30", False, 240.0, "Retry after 10 days"),
        )
    }
)

# Stripe ``outcome.advice_code`` values (docs.stripe.com/declines/card).
STRIPE_ADVICE_CODES: Final[Mapping[str, AdviceInfo]] = MappingProxyType(
    {
        a.code: a
        for a in (
            AdviceInfo("do_not_try_again", True, None, "Do not try the card again"),
            AdviceInfo("try_again_later", False, None, "The issuer declined; retry later"),
            AdviceInfo("confirm_card_data", False, None, "Some of the card information is wrong"),
        )
    }
)


def normalize_advice_code(code: object) -> str:
    """Normalise an advice code: strip, lower-case names, zero-pad a single digit ("3" -> "03").

    Returns "" for None, NA and blank values.
    """
    return normalize_code(code)


def mastercard_advice(code: str | None) -> AdviceInfo | None:
    """Look up a Mastercard merchant advice code.

    Parameters
    ----------
    code
        The MAC (``"03"``, ``"24"``, ...); whitespace and a missing leading zero are tolerated.

    Returns
    -------
    AdviceInfo or None
        None for empty or unrecognised codes.
    """
    return MASTERCARD_ADVICE_CODES.get(normalize_advice_code(code))


def advice_info(code: str | None) -> AdviceInfo | None:
    """Look up a Mastercard merchant advice code or a Stripe advice code.

    Returns
    -------
    AdviceInfo or None
        None for empty or unrecognised codes.
    """
    norm = normalize_advice_code(code)
    return MASTERCARD_ADVICE_CODES.get(norm) or STRIPE_ADVICE_CODES.get(norm)


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------


def _is_missing(value: object) -> bool:
    try:
        return bool(pd.isna(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False


def _is_iso_shape(code: str) -> bool:
    return len(code) == 2 and code.isascii() and code.isalnum()


def normalize_code(code: object) -> str:
    """Normalise a decline code.

    Strips whitespace; two-character codes (ISO 8583) are upper-cased ("r0" -> "R0") and a
    single digit is zero-padded ("5" -> "05"); longer codes (Stripe names) are lower-cased.
    None, NA and blank values give "".
    """
    if code is None or not isinstance(code, str):
        if code is None or _is_missing(code):
            return ""
        code = str(code)
    text = code.strip()
    if len(text) == 1 and text.isdigit():
        return "0" + text
    if len(text) <= 2:
        return text.upper()
    return text.lower()


def _build_table() -> dict[str, DeclineInfo]:
    table: dict[str, DeclineInfo] = {}
    for rows, source in (
        (_STRIPE_ROWS, SOURCE_STRIPE),
        (_STRIPE_EXTRA_ROWS, SOURCE_STRIPE),
        (_ISO_ROWS, SOURCE_VISA),
    ):
        for code, family, rule, action, meaning in rows:
            if code in table:
                raise AssertionError(f"decline code {code!r} listed twice")
            src = source
            if code in STRIPE_NEVER_RETRY_CODES:
                src = f"{source}; {SOURCE_STRIPE_SMART_RETRIES}"
            elif source == SOURCE_VISA and code in VISA_CATEGORY_4_CODES:
                src = f"{SOURCE_VISA}; meaning: {SOURCE_ISO}"
            table[code] = DeclineInfo(
                code=code,
                family=family,
                hard=rule is not RetryRule.RETRY,
                rule=rule,
                action_required=action,
                visa_category=visa_category(code) if source == SOURCE_VISA else None,
                known=True,
                source=src,
                meaning=meaning,
            )
    return table


_TABLE: Final[Mapping[str, DeclineInfo]] = MappingProxyType(_build_table())


def _unknown(code: str) -> DeclineInfo:
    cat = visa_category(code) if code else None
    return DeclineInfo(
        code=code,
        family=DeclineFamily.UNKNOWN,
        hard=False,
        rule=RetryRule.RETRY,
        action_required=None,
        visa_category=cat,
        known=False,
        source=f"{SOURCE_VISA} (category 4: all other codes)" if cat == 4 else "not in taxonomy",
        meaning="" if code else "no decline code",
    )


def rule_strictness(rule: RetryRule) -> int:
    """Return the strictness rank of a rule (0 = RETRY ... 4 = NEVER)."""
    return _STRICTNESS[rule]


def _apply_advice(info: DeclineInfo, advice: str) -> DeclineInfo:
    rule = info.rule
    family = info.family
    action = info.action_required
    if advice in MASTERCARD_ADVICE_CODES:
        mac = MASTERCARD_ADVICE_CODES[advice]
        source = f"{SOURCE_MASTERCARD_MAC}: {advice} {mac.meaning}"
        if mac.never_retry:
            # MAC 03 / 21: never retry, whatever the decline code said.
            rule = RetryRule.NEVER
            if advice == "21":
                action = ACTION_CONTACT_CUSTOMER
        elif advice == "01" and rule is RetryRule.RETRY:
            # New account information available: fetch it (account updater / customer).
            rule = RetryRule.UPDATE_PAYMENT_METHOD
            action = ACTION_UPDATE_PAYMENT_METHOD
        # 02, 04 and 24-30 keep the code's rule; the wait is applied by the policy.
    elif advice in STRIPE_ADVICE_CODES:
        source = f"{SOURCE_STRIPE_ADVICE}: {advice}"
        if advice == "do_not_try_again":
            rule = RetryRule.NEVER
        elif advice == "confirm_card_data":
            family = DeclineFamily.CARD_DATA
            if _STRICTNESS[rule] < _STRICTNESS[RetryRule.UPDATE_PAYMENT_METHOD]:
                rule = RetryRule.UPDATE_PAYMENT_METHOD
                action = ACTION_UPDATE_PAYMENT_METHOD
        # try_again_later keeps the code's rule.
    else:
        return info  # unrecognised advice codes are ignored
    if rule is info.rule and family is info.family and action == info.action_required:
        return DeclineInfo(**{**info.__dict__, "source": f"{info.source}; {source}"})
    return DeclineInfo(
        code=info.code,
        family=family,
        hard=rule is not RetryRule.RETRY,
        rule=rule,
        action_required=action,
        visa_category=info.visa_category,
        known=info.known,
        source=f"{info.source}; {source}",
        meaning=info.meaning,
    )


@lru_cache(maxsize=4096)
def _classify_normalized(code: str, advice: str) -> DeclineInfo:
    info = _TABLE.get(code) or _unknown(code)
    return _apply_advice(info, advice) if advice else info


def classify_decline(code: str | None, *, network_advice_code: str | None = None) -> DeclineInfo:
    """Classify one decline.

    Parameters
    ----------
    code
        Stripe ``decline_code`` or ISO 8583 response code; normalised with
        :func:`normalize_code`. Empty, None or unrecognised codes never raise: they give family
        UNKNOWN, soft, rule RETRY, ``known=False`` (an unrecognised two-character code still
        gets Visa category 4).
    network_advice_code
        Optional Mastercard merchant advice code or Stripe advice code. ``03``, ``21`` and
        ``do_not_try_again`` force rule NEVER (hard) whatever the decline code; ``01`` and
        ``confirm_card_data`` raise a RETRY rule to UPDATE_PAYMENT_METHOD; ``24``-``30`` keep
        the code's rule (the wait, :attr:`AdviceInfo.min_wait_hours`, is applied by the
        policy). Unrecognised advice codes are ignored.

    Returns
    -------
    DeclineInfo
    """
    return _classify_normalized(normalize_code(code), normalize_advice_code(network_advice_code))


def is_retry_allowed(rule: RetryRule | str, *, card_changed: bool) -> bool:
    """Return whether a retry of the charge may be attempted under ``rule``.

    Parameters
    ----------
    rule
        The rule of the last decline.
    card_changed
        True when the card details (card, number or expiry) changed since that decline.

    Returns
    -------
    bool
        RETRY: always; NEVER: never; the other rules: only when the card changed.
    """
    r = RetryRule(rule)
    if r is RetryRule.RETRY:
        return True
    if r is RetryRule.NEVER:
        return False
    return card_changed


def _factorize(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Factorise raw values, then normalise the (few) uniques; NA -> "" (int32 codes)."""
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        # Arrow-backed strings (pandas' default ``str``): hash in Arrow, no Python objects.
        encoded = pa.chunked_array(pa.array(values.array)).dictionary_encode().combine_chunks()
        uniques: list[object] = encoded.dictionary.to_pylist()
        indices = encoded.indices.fill_null(len(uniques))
        idx = indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        normalized = [normalize_code(u) for u in uniques]
        normalized.append("")
        return idx, normalized
    codes, raw_uniques = pd.factorize(values, use_na_sentinel=True)
    normalized = [normalize_code(u) for u in raw_uniques]
    normalized.append("")
    idx = np.where(codes < 0, len(normalized) - 1, codes).astype(np.int32, copy=False)
    return idx, normalized


def _str_column(
    values: Iterable[str | None], index: np.ndarray
) -> pd.api.extensions.ExtensionArray:
    """Build a pandas ``str`` array by taking ``values`` at ``index`` (fast, in Arrow)."""
    taken = pa.array(list(values), type=pa.large_string()).take(pa.array(index))
    series = taken.to_pandas(types_mapper=lambda _t: pd.StringDtype("pyarrow", na_value=np.nan))
    return series.array


def classify_codes(codes: pd.Series, advice_codes: pd.Series | None = None) -> pd.DataFrame:
    """Classify a column of decline codes (vectorised over unique values).

    Parameters
    ----------
    codes
        Decline codes, any string-like dtype; NA/blank allowed (classified UNKNOWN).
    advice_codes
        Optional network advice codes aligned with ``codes`` (same length).

    Returns
    -------
    pandas.DataFrame
        Index of ``codes``; columns ``family`` (str), ``hard`` (bool), ``rule`` (str),
        ``known`` (bool), ``visa_category`` (float64, NaN for Stripe names/empty) and
        ``action_required`` (str, NA when none). Row ``i`` equals
        ``classify_decline(codes[i], network_advice_code=advice_codes[i])``.

    Raises
    ------
    ValueError
        If ``advice_codes`` does not have the same length as ``codes``.
    """
    code_idx, code_uniques = _factorize(codes)
    if advice_codes is not None:
        if len(advice_codes) != len(codes):
            raise ValueError(
                f"advice_codes has {len(advice_codes)} rows but codes has {len(codes)}"
            )
        adv_idx, adv_uniques = _factorize(advice_codes)
        adv_uniques = [normalize_advice_code(a) for a in adv_uniques]
        pair = code_idx.astype(np.int64) * len(adv_uniques) + adv_idx
        # Dense rank of the (code, advice) pairs: the pair space is small, so a lookup table
        # beats hashing 10 million integers.
        n_adv = len(adv_uniques)
        present = np.zeros(len(code_uniques) * n_adv, dtype=bool)
        present[pair] = True
        pair_uniques = np.flatnonzero(present)
        rank = np.zeros(present.size, dtype=np.int32)
        rank[pair_uniques] = np.arange(pair_uniques.size, dtype=np.int32)
        infos = [
            _classify_normalized(code_uniques[p // n_adv], adv_uniques[p % n_adv])
            for p in pair_uniques.tolist()
        ]
        idx = rank[pair]
    else:
        infos = [_classify_normalized(c, "") for c in code_uniques]
        idx = code_idx

    hard = np.array([i.hard for i in infos], dtype=bool)
    known = np.array([i.known for i in infos], dtype=bool)
    category = np.array(
        [math.nan if i.visa_category is None else float(i.visa_category) for i in infos],
        dtype=np.float64,
    )
    frame = pd.DataFrame(
        {
            "family": _str_column((str(i.family) for i in infos), idx),
            "hard": hard[idx],
            "rule": _str_column((str(i.rule) for i in infos), idx),
            "known": known[idx],
            "visa_category": category[idx],
            "action_required": _str_column((i.action_required for i in infos), idx),
        },
        index=codes.index,
        copy=False,
    )
    return frame
