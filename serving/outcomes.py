"""Reported attempt outcomes: the schema of ``POST /v1/attempt-outcomes`` and its checks.

Shapes are checked by pydantic (the card reuses the decision API's :class:`CardIn`); values by
the data contract's own rules (:func:`features.validation.validate_attempts`) on the contract
rows the outcomes become, so an outcome is accepted exactly when it makes a valid attempt row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from retryopt.features import contract as c
from retryopt.features.validation import validate_attempts
from retryopt.features.validation_report import RULES
from retryopt.serving.schemas import CardIn, Currency, FieldIssue, RequestError, Timestamp

# Contract column -> field of an outcome report (the JSON path reported in a 422).
COLUMN_FIELDS: Mapping[str, str] = {
    c.ATTEMPT_ID: "attempt_id",
    c.CHARGE_ID: "charge_id",
    c.CUSTOMER_ID: "customer_id",
    c.ATTEMPTED_AT: "attempted_at",
    c.AMOUNT: "amount",
    c.CURRENCY: "currency",
    c.OUTCOME: "outcome",
    c.DECLINE_CODE: "decline_code",
    c.NETWORK_ADVICE_CODE: "network_advice_code",
    c.CARD_BRAND: "card.brand",
    c.CARD_FUNDING: "card.funding",
    c.CARD_COUNTRY: "card.country",
    c.CARD_ADDED_AT: "card.added_at",
    c.CARD_EXP_MONTH: "card.exp_month",
    c.CARD_EXP_YEAR: "card.exp_year",
    c.CARD_ID: "card.card_id",
    c.ISSUER: "card.issuer",
    c.CUSTOMER_TIMEZONE: "customer_timezone",
}

# Valid stand-ins for contract values an outcome of an unknown charge cannot know, so the
# contract's rules still check every value that *was* reported (never stored or exported).
_PLACEHOLDERS: Mapping[str, Any] = {
    c.CUSTOMER_ID: "unknown",
    c.AMOUNT: 1,
    c.CURRENCY: "usd",
    c.CARD_BRAND: "visa",
    c.CARD_FUNDING: "unknown",
    c.CARD_COUNTRY: "US",
    c.CARD_ADDED_AT: "2000-01-01T00:00:00Z",
    c.CARD_EXP_MONTH: 1,
    c.CARD_EXP_YEAR: 2100,
}


class OutcomeIn(BaseModel):
    """One attempt the billing service made (and what happened)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, frozen=True)

    charge_id: str = Field(min_length=1, max_length=255)
    attempted_at: Timestamp
    outcome: Literal["failed", "succeeded"]
    decline_code: str | None = Field(default=None, max_length=64)
    network_advice_code: str | None = Field(default=None, max_length=32)
    attempt_id: str | None = Field(default=None, max_length=255)
    card: CardIn | None = Field(
        default=None, description="card used (default: the charge's card as last decided)"
    )
    decision_id: str | None = Field(
        default=None, max_length=64, description="the decision this attempt followed, if any"
    )
    # Charge facts: needed for a charge the service has not decided yet (its first failure).
    customer_id: str | None = Field(default=None, min_length=1, max_length=255)
    amount: StrictInt | None = Field(default=None, gt=0, le=10**12, description="minor units")
    currency: Currency | None = None
    customer_timezone: str | None = Field(default=None, max_length=64)

    def charge_facts(self) -> dict[str, Any] | None:
        """The charge as this report describes it (None without customer, amount, currency
        and card): registers a charge the service has not decided yet."""
        if None in (self.customer_id, self.amount, self.currency, self.card):
            return None
        return {
            "charge_id": self.charge_id,
            "customer_id": self.customer_id,
            "amount": self.amount,
            "currency": self.currency,
            "customer_timezone": self.customer_timezone,
            "card": None if self.card is None else self.card.model_dump(mode="json"),
        }


class AttemptOutcomesIn(BaseModel):
    """``POST /v1/attempt-outcomes``: one or many attempts, in any order."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    outcomes: list[OutcomeIn] = Field(min_length=1, max_length=10_000)


def contract_row(
    report: Mapping[str, Any], charge: Mapping[str, Any] | None, *, attempted_at: datetime
) -> dict[str, Any]:
    """The data-contract row of a reported attempt (missing values None).

    ``report`` is an :class:`OutcomeIn` as JSON; ``charge`` the stored charge (a decision
    request's ``charge`` or an outcome's :meth:`OutcomeIn.charge_facts`), used for what the
    report leaves out.
    """
    charge = charge or {}
    card = report.get("card") or charge.get("card") or {}
    currency = report.get("currency") or charge.get("currency")
    brand = card.get("brand")
    country = card.get("country")
    return {
        c.ATTEMPT_ID: report.get("attempt_id")
        or f"{report['charge_id']}@{attempted_at.isoformat()}",
        c.CHARGE_ID: report["charge_id"],
        c.CUSTOMER_ID: report.get("customer_id") or charge.get("customer_id"),
        c.ATTEMPTED_AT: attempted_at.isoformat(),
        c.AMOUNT: report.get("amount") or charge.get("amount"),
        c.CURRENCY: None if currency is None else str(currency).lower(),
        c.OUTCOME: report["outcome"],
        c.DECLINE_CODE: report.get("decline_code") if report["outcome"] == c.FAILED else None,
        c.NETWORK_ADVICE_CODE: report.get("network_advice_code"),
        c.CARD_BRAND: None if brand is None else str(brand).lower(),
        c.CARD_FUNDING: card.get("funding"),
        c.CARD_COUNTRY: None if country is None else str(country).upper(),
        c.CARD_ADDED_AT: card.get("added_at"),
        c.CARD_EXP_MONTH: card.get("exp_month"),
        c.CARD_EXP_YEAR: card.get("exp_year"),
        c.CARD_ID: card.get("card_id"),
        c.ISSUER: card.get("issuer"),
        c.CUSTOMER_TIMEZONE: report.get("customer_timezone") or charge.get("customer_timezone"),
        c.RETRY_PROPENSITY: None,
    }


def check_outcomes(
    outcomes: Sequence[OutcomeIn], charges: Mapping[str, Mapping[str, Any] | None]
) -> None:
    """Check reported attempts with the data contract's rules.

    Parameters
    ----------
    outcomes
        The reports (distinct ``(charge_id, attempted_at)``).
    charges
        The stored charge of each reported charge id (None when unknown).

    Raises
    ------
    RequestError
        Naming ``outcomes[i].<field>`` for every broken rule.
    """
    rows = []
    for o in outcomes:
        row = contract_row(
            o.model_dump(mode="json"),
            o.charge_facts() or charges.get(o.charge_id),
            attempted_at=o.attempted_at,
        )
        for col, value in _PLACEHOLDERS.items():
            if row[col] is None:
                row[col] = value
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(c.ALL_COLUMNS))
    report = validate_attempts(frame, drop_invalid=True).report
    issues: list[FieldIssue] = []
    for issue in report.issues:
        field = COLUMN_FIELDS.get(issue.column, issue.column)
        for row_number in issue.rows or (1,):
            issues.append(
                # the rule's description, not the message: that one quotes the values
                FieldIssue(
                    f"outcomes[{row_number - 1}].{field}",
                    f"breaks the data contract: {RULES.get(issue.rule, issue.rule)}",
                    issue.rule,
                )
            )
    if issues:
        raise RequestError(issues)
