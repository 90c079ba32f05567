"""The model features, in model-matrix order."""

from __future__ import annotations

from typing import Final

NUMERIC_FEATURES: Final[tuple[str, ...]] = (
    # attempt context
    "retry_number",
    "hours_since_first_failure",
    "hours_since_prev_attempt",
    "hours_from_now",
    "card_attempts_24h",
    "card_attempts_30d",
    # decline
    "last_decline_hard",
    "first_decline_hard",
    "last_visa_category",
    "advice_never_retry",
    "advice_min_wait_hours",
    "distinct_codes",
    # candidate time in the customer's zone
    "local_hour",
    "local_weekday",
    "local_day_of_month",
    "days_to_month_end",
    "is_business_day",
    # pay-cycle signals
    "days_since_1st",
    "days_until_1st",
    "days_since_15th",
    "days_until_15th",
    "days_since_last_business_day",
    "days_until_last_business_day",
    "days_since_friday",
    "days_until_friday",
    # the customer's own payment pattern
    "prior_successes",
    "success_dom_distance",
    "success_dom_concentration",
    "success_weekday_distance",
    "success_weekday_concentration",
    "prior_recoveries",
    "mean_recovery_hours",
    # card
    "card_age_days",
    "days_to_expiry",
    "card_expired",
    "card_changed",
    # amount
    "log_amount",
    "amount_vs_customer_mean",
    # customer history
    "prior_charges",
    "prior_first_failures",
    "prior_recovery_rate",
    "tenure_days",
)

CATEGORICAL_FEATURES: Final[tuple[str, ...]] = (
    "last_decline_code",
    "first_decline_code",
    "last_decline_family",
    "first_decline_family",
    "decline_sequence",
    "network_advice_code",
    "card_brand",
    "card_funding",
    "card_country",
    "issuer",
    "currency",
)
