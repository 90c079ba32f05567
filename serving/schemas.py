"""Request and response models of the retry-decision API, and their conversion to a batch.

Inbound models (``*In``, :class:`DecisionRequest`, :class:`BatchDecisionRequest`) validate
shapes and types with pydantic (timestamps must carry a zone); :func:`check_request` adds the
cross-field rules (order of attempts, ``now`` after the last attempt, limits) and names the
offending field. :func:`to_batch` turns validated requests into a
:class:`serving.columnar.ColumnarBatch` (a ``DecisionBatch`` held as numpy columns).
Outbound models (``*Out``) describe the responses. Card numbers are refused before any of this
(:mod:`retryopt.features.card_numbers`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    field_validator,
)

from retryopt.features import contract as c
from retryopt.features.columns import AttemptColumns
from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints
from retryopt.features.iso_codes import COUNTRIES, CURRENCIES
from retryopt.features.localtime import (
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    TIMESTAMP_RANGE_TEXT,
    canonical_timezone,
    in_valid_range,
)
from retryopt.features.validation_report import MAX_EXP_YEAR, MIN_EXP_YEAR
from retryopt.serving.columnar import ColumnarBatch
from retryopt.serving.policies.explore import DETERMINISTIC_PROPENSITY, NO_EXPLORATION
from retryopt.serving.policies.rules import CardRef

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _ns(t: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (exact to the microsecond)."""
    return ((t - _EPOCH) // _US) * 1000


_ISO_DATE_TIME = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d")


def _iso_string(value: object) -> object:
    # JSON has no time type: a timestamp is an ISO 8601 string (not a number of seconds).
    if isinstance(value, str) and not _ISO_DATE_TIME.match(value.strip()):
        raise ValueError("not an ISO 8601 date-time with a zone (2026-01-05T13:00:00Z)")
    if isinstance(value, bool | int | float):
        raise ValueError("a timestamp is an ISO 8601 string (2026-01-05T13:00:00Z)")
    return value


def _in_range(t: datetime) -> datetime:
    if not in_valid_range(t):
        raise ValueError(f"timestamp out of range: valid {TIMESTAMP_RANGE_TEXT}")
    return t


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_iso_string),
    AfterValidator(_in_range),
    Field(
        json_schema_extra={
            "formatMinimum": TIMESTAMP_MIN.isoformat().replace("+00:00", "Z"),
            "formatExclusiveMaximum": TIMESTAMP_MAX.isoformat().replace("+00:00", "Z"),
        }
    ),
]
"""An ISO 8601 / RFC 3339 timestamp with a zone, in the project's valid range
(:data:`features.localtime.TIMESTAMP_MIN` <= t < :data:`~features.localtime.TIMESTAMP_MAX`)."""


def _code_set(codes: frozenset[str]) -> list[str]:
    """The codes in lower and upper case (the API accepts either, not mixed)."""
    return sorted({x.lower() for x in codes} | {x.upper() for x in codes})


def _one_of(allowed: frozenset[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"not {what} (lower or upper case)")
        return value

    return AfterValidator(check)


_CURRENCY_CODES = _code_set(CURRENCIES)
_COUNTRY_CODES = _code_set(COUNTRIES)
Currency = Annotated[
    str,
    _one_of(frozenset(_CURRENCY_CODES), "an ISO 4217 currency code"),
    Field(json_schema_extra={"enum": _CURRENCY_CODES}, description="ISO 4217 (usd or USD)"),
]
Country = Annotated[
    str,
    _one_of(frozenset(_COUNTRY_CODES), "an ISO 3166-1 alpha-2 country code"),
    Field(json_schema_extra={"enum": _COUNTRY_CODES}, description="ISO 3166-1 alpha-2"),
]


def _blank_is_absent(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


class _In(BaseModel):
    # Numbers are StrictInt / StrictFloat (``"amount": true`` or ``"1"`` is not a number) and
    # timestamps are strings (:data:`Timestamp`): JSON types as the OpenAPI schema declares
    # them. Whitespace around strings is ignored.
    model_config = ConfigDict(
        extra="ignore", str_strip_whitespace=True, frozen=True, allow_inf_nan=False
    )


class CardIn(_In):
    """The card to charge (the current card of the charge)."""

    brand: str = Field(
        min_length=1, max_length=32, pattern=r"\S", description="visa, mastercard, amex, ..."
    )
    funding: Literal["credit", "debit", "prepaid", "unknown"]
    country: Country
    added_at: Timestamp
    exp_month: StrictInt = Field(ge=1, le=12)
    exp_year: StrictInt = Field(ge=MIN_EXP_YEAR, le=MAX_EXP_YEAR)
    issuer: str | None = Field(default=None, max_length=128)
    card_id: str | None = Field(default=None, max_length=128)


class ChargeIn(_In):
    """The failed charge."""

    charge_id: str = Field(min_length=1, max_length=255, pattern=r"\S")
    customer_id: str = Field(min_length=1, max_length=255, pattern=r"\S")
    amount: StrictInt = Field(gt=0, le=10**12, description="minor units (cents)")
    currency: Currency
    card: CardIn
    customer_timezone: Annotated[str | None, BeforeValidator(_blank_is_absent)] = Field(
        default=None,
        max_length=64,
        description="IANA zone name (letter case and surrounding space ignored); empty or "
        "blank = absent, as in the data contract (the card country's zone is used)",
    )

    @field_validator("customer_timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        zone = canonical_timezone(value)
        if zone is None:
            raise ValueError("unknown IANA time zone")
        return zone


class AttemptIn(_In):
    """One attempt of the charge, oldest first."""

    attempted_at: Timestamp
    outcome: Literal["failed", "succeeded"]
    decline_code: str | None = Field(default=None, max_length=64)
    network_advice_code: str | None = Field(default=None, max_length=32)
    attempt_id: str | None = Field(default=None, max_length=255)
    card: CardIn | None = Field(
        default=None, description="card used by this attempt (default: the charge's card)"
    )


class HistoryRowIn(_In):
    """An earlier attempt of the same customer (data-contract columns; card defaults to the
    charge's card)."""

    charge_id: str = Field(min_length=1, max_length=255, pattern=r"\S")
    attempted_at: Timestamp
    outcome: Literal["failed", "succeeded"]
    attempt_id: str | None = Field(default=None, max_length=255)
    amount: StrictInt | None = Field(default=None, gt=0, le=10**12)
    currency: Currency | None = None
    decline_code: str | None = Field(default=None, max_length=64)
    network_advice_code: str | None = Field(default=None, max_length=32)
    card_brand: str | None = Field(default=None, max_length=32)
    card_funding: Literal["credit", "debit", "prepaid", "unknown"] | None = None
    card_country: Country | None = None
    card_added_at: Timestamp | None = None
    card_exp_month: StrictInt | None = Field(default=None, ge=1, le=12)
    card_exp_year: StrictInt | None = Field(default=None, ge=MIN_EXP_YEAR, le=MAX_EXP_YEAR)
    card_id: str | None = Field(default=None, max_length=128)
    issuer: str | None = Field(default=None, max_length=128)


_Hour = Annotated[StrictInt, Field(ge=0, le=23)]


class ConstraintsIn(_In):
    """Merchant constraints; omitted fields take the server defaults."""

    max_retries: StrictInt | None = Field(default=None, ge=0, le=50)
    window_hours: StrictFloat | None = Field(default=None, gt=0, le=24 * 120)
    min_gap_hours: StrictFloat | None = Field(default=None, ge=0, le=24 * 30)
    quiet_hours: tuple[_Hour, _Hour] | None = Field(
        default=None, description="(start, end) local hours, 0-23; (22, 7) wraps midnight"
    )
    cost_per_attempt: StrictFloat | None = Field(
        default=None,
        ge=0,
        le=1e9,
        description="cost of one attempt in the reporting currency's major units (fees + "
        "decline damage; default 0.12 USD, sources in docs/serving.md)",
    )
    daily_cancel_hazard: StrictFloat | None = Field(
        default=None, ge=0, lt=1, description="daily probability the customer cancels (0.005)"
    )
    annual_interest_rate: StrictFloat | None = Field(
        default=None, ge=0, le=1, description="annual time value of cash (0.045)"
    )
    reporting_currency: Currency | None = Field(
        default=None, description="currency of expected values and the attempt cost (a rate needed)"
    )
    fx_rates: dict[Currency, Annotated[StrictFloat, Field(gt=0, le=1e9)]] | None = Field(
        default=None,
        max_length=400,
        description="the merchant's rates, units of each currency per US dollar (the reference "
        "rates fill the others)",
    )
    guardrail_hours: list[Annotated[StrictFloat, Field(gt=0, le=24 * 120)]] | None = Field(
        default=None,
        min_length=1,
        max_length=50,
        description="static schedule (hours after the first failure, increasing) as a floor: "
        "the next retry comes no later than its next step",
    )

    @field_validator("fx_rates")
    @classmethod
    def _rates(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        for code, rate in value.items():
            if len(code) != 3 or not code.isalpha():
                raise ValueError("keys must be ISO 4217 currency codes")
            if not math.isfinite(rate) or rate <= 0:
                raise ValueError("every rate must be a positive number")
        if value.get("usd", value.get("USD", 1.0)) != 1.0:
            raise ValueError("the rate of 'usd' must be 1 (rates are units per US dollar)")
        return value

    @field_validator("guardrail_hours")
    @classmethod
    def _ladder(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (
            any(not math.isfinite(h) or h <= 0 for h in value)
            or any(b <= a for a, b in itertools.pairwise(value))
        ):
            raise ValueError("guardrail hours must be positive and increasing")
        return value

    def resolve(self, defaults: Constraints) -> Constraints:
        """These constraints with omitted fields taken from ``defaults``.

        Raises
        ------
        ValueError
            When the reporting currency has no rate.
        """
        values = {k: v for k, v in self.model_dump().items() if v is not None}
        if "quiet_hours" in values:
            values["quiet_hours"] = tuple(values["quiet_hours"])
        if "guardrail_hours" in values:
            values["guardrail_hours"] = tuple(values["guardrail_hours"])
        objective_fields = ("cost_per_attempt", "daily_cancel_hazard", "annual_interest_rate")
        changes: dict[str, Any] = {k: values.pop(k) for k in objective_fields if k in values}
        rates = values.pop("fx_rates", None)
        reporting = values.pop("reporting_currency", None)
        objective = defaults.objective
        if rates is not None or reporting is not None:
            units = dict(objective.fx.units_per_usd)
            units.update({k.lower(): float(v) for k, v in (rates or {}).items()})
            changes["fx"] = FxRates(
                units_per_usd=units,
                reporting=(reporting or objective.fx.reporting).lower(),
                source="request" if rates is not None else objective.fx.source,
            )
        if changes:
            values["objective"] = replace(objective, **changes)
        return Constraints(**{**defaults.__dict__, **values})


class DecisionRequest(_In):
    """``POST /v1/retry-decisions``: when to retry this failed charge, if at all?"""

    charge: ChargeIn
    attempts: list[AttemptIn] | None = Field(
        default=None,
        min_length=1,
        description="the charge's attempts, oldest first (omitted: taken from the store's "
        "reported outcomes, see docs/serving.md)",
    )
    customer_history: list[HistoryRowIn] | None = None
    now: Timestamp | None = Field(default=None, description="default: the server clock")
    constraints: ConstraintsIn | None = None


# The most charges in one batch call (the API contract; ``RETRYOPT_MAX_BATCH`` may lower it).
# Checked by pydantic before any item is validated, so an oversized batch costs its JSON parse
# only (the route's byte limit, RETRYOPT_MAX_BATCH_BODY_BYTES, bounds that parse).
MAX_BATCH_ITEMS = 1000


class BatchDecisionRequest(_In):
    """``POST /v1/retry-decisions/batch``: many charges in one call."""

    requests: list[DecisionRequest] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


# A decision made without exploration: the chosen time had probability 1 (logged as such);
# the constants live with the exploration scheme (serving.policies.explore).


class AlternativeOut(BaseModel):
    """Another good retry time."""

    retry_at: datetime
    success_probability: float | None


class DecisionOut(BaseModel):
    """The decision for one charge."""

    charge_id: str
    action: Literal["retry", "stop"]
    retry_at: datetime | None
    success_probability: float | None
    reason: str
    action_required: str | None
    alternatives: list[AlternativeOut]
    explanation: str
    model_version: str | None
    policy: str = Field(
        description="the policy that decided: 'model', 'greedy', 'fallback', or a model-free "
        "arm such as 'fixed:72,120,168,216'"
    )
    expected_value: float | None = Field(
        default=None,
        description="the planner's expected value of its choice (net of costs; for a "
        "not_worth_an_attempt stop, the best retry's expected value before its cost), in "
        "value_currency major units",
    )
    attempt_cost: float | None = Field(
        default=None, description="cost of one attempt, in value_currency major units"
    )
    value_currency: str | None = Field(default=None, description="the objective's currency")
    decision_id: str | None = Field(
        default=None, description="id of the logged decision (null when no store is configured)"
    )
    propensity: float = Field(
        default=DETERMINISTIC_PROPENSITY,
        description="probability with which this retry time was chosen (1.0: deterministic)",
    )
    exploration: str = Field(
        default=NO_EXPLORATION,
        description="exploration scheme ('none', or 'near_best:share=S,tolerance=T': with "
        "probability S the time was drawn uniformly among the allowed times within T of the "
        "best planned value; propensity is the chosen time's probability)",
    )
    arm: Literal["champion", "challenger"] = Field(
        default="champion",
        description="the A/B arm that served this customer (by a hash of customer_id)",
    )


class BatchDecisionOut(BaseModel):
    """Decisions, in the order of the requests."""

    decisions: list[DecisionOut]


class FieldErrorOut(BaseModel):
    """One problem with the request."""

    field: str
    message: str
    type: str


class ErrorOut(BaseModel):
    """A 4xx answer."""

    detail: list[FieldErrorOut]


class ModelOut(BaseModel):
    """``GET /v1/model``."""

    loaded: bool
    policy: str
    version: str | None
    path: str | None
    metrics: dict[str, Any]
    feature_spec: dict[str, Any] | None
    loaded_at: datetime | None
    arms: dict[str, Any] | None = Field(
        default=None,
        description="champion and challenger: the promoted model-free champion (null: the "
        "model), the challenger spec and version, its share of customers",
    )


class ReloadIn(_In):
    """``POST /admin/reload``: optional new model location (default: the configured one)."""

    model: str | None = Field(default=None, max_length=4096)


# ------------------------------------------------------------------------------------------
# Validation beyond types
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldIssue:
    """A request problem naming the field (JSON path, list indices 0-based)."""

    field: str
    message: str
    type: str = "value_error"


class RequestError(ValueError):
    """Malformed request; carries every :class:`FieldIssue` found."""

    def __init__(self, issues: Sequence[FieldIssue], *, status_code: int = 422) -> None:
        self.issues = list(issues)
        self.status_code = status_code
        super().__init__("; ".join(f"{i.field}: {i.message}" for i in self.issues))


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Size limits of one request."""

    max_attempts: int = 1000
    max_history_rows: int = 100_000
    max_batch: int = 1000


def check_request(
    req: DecisionRequest, *, now: datetime, limits: Limits, prefix: str = ""
) -> list[FieldIssue]:
    """Cross-field checks of one decision request; returns the problems found.

    Parameters
    ----------
    req
        The parsed request.
    now
        The effective decision time (``req.now`` or the server clock).
    limits
        Size limits.
    prefix
        Field-path prefix (``"requests[3]."`` in a batch).
    """
    issues: list[FieldIssue] = []
    if req.attempts is None:
        return [
            FieldIssue(
                f"{prefix}attempts",
                "attempts are required: none were sent and the store holds no reported attempt "
                "of this charge (POST /v1/attempt-outcomes first, or send them)",
                "missing",
            )
        ]
    n = len(req.attempts)
    if n > limits.max_attempts:
        issues.append(
            FieldIssue(
                f"{prefix}attempts",
                f"{n} attempts given, at most {limits.max_attempts} allowed",
                "too_long",
            )
        )
        return issues
    hist = req.customer_history or []
    if len(hist) > limits.max_history_rows:
        issues.append(
            FieldIssue(
                f"{prefix}customer_history",
                f"{len(hist)} rows given, at most {limits.max_history_rows} allowed",
                "too_long",
            )
        )
        return issues
    prev: datetime | None = None
    for i, a in enumerate(req.attempts):
        f = f"{prefix}attempts[{i}]"
        if prev is not None and a.attempted_at < prev:
            issues.append(
                FieldIssue(
                    f"{f}.attempted_at",
                    f"attempts out of order: attempt {i + 1} is before the previous attempt; "
                    "send attempts oldest first",
                    "out_of_order",
                )
            )
        prev = a.attempted_at
        if a.outcome == c.SUCCEEDED and i < n - 1:
            issues.append(
                FieldIssue(
                    f"{f}.outcome",
                    f"attempt {i + 1} succeeded but {n - 1 - i} more attempt(s) follow it",
                    "succeeded_then_more",
                )
            )
        if a.outcome == c.FAILED and not a.decline_code:
            issues.append(
                FieldIssue(
                    f"{f}.decline_code",
                    f"a failed attempt needs a decline_code (row {i + 1}); unknown codes are fine",
                    "missing",
                )
            )
    if prev is not None and now < prev:
        issues.append(
            FieldIssue(
                f"{prefix}now",
                "now is before the last attempt",
                "now_before_last_attempt",
            )
        )
    return issues


# ------------------------------------------------------------------------------------------
# Requests -> DecisionBatch
# ------------------------------------------------------------------------------------------


def card_ref(card: CardIn) -> CardRef:
    """The rules' identity of a card."""
    return CardRef(
        brand=card.brand.lower(),
        card_id=card.card_id,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
    )


@dataclass(frozen=True, kw_only=True)
class PreparedBatch:
    """Requests converted for the policies (same constraints for the whole batch)."""

    batch: ColumnarBatch
    current_cards: list[CardRef]
    columns: tuple[AttemptColumns, AttemptColumns | None] | None = None


def _columns(cols: dict[str, list[Any]], order: np.ndarray | None = None) -> AttemptColumns:
    """The same rows as :func:`_frame` as numpy columns (the features' fast path input)."""
    data: dict[str, Any] = {}
    for col in c.ALL_COLUMNS:
        values = cols[col]
        if col in c.TIMESTAMP_COLUMNS or col in c.INTEGER_COLUMNS:
            arr: np.ndarray = np.array(values, dtype=np.int64)
        elif col in c.FLOAT_COLUMNS:
            arr = np.full(len(values), np.nan)
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
        data[col] = arr if order is None else arr[order]
    return AttemptColumns(columns=data, n_rows=len(cols[c.ATTEMPT_ID]))


def _empty_cols() -> dict[str, list[Any]]:
    return {col: [] for col in c.ALL_COLUMNS}


def _add_row(
    cols: dict[str, list[Any]],
    *,
    attempt_id: str,
    charge: ChargeIn,
    charge_id: str,
    attempted_at: datetime,
    amount: int,
    currency: str,
    outcome: str,
    decline_code: str | None,
    advice: str | None,
    brand: str,
    funding: str,
    country: str,
    added_at: datetime,
    exp_month: int,
    exp_year: int,
    card_id: str | None,
    issuer: str | None,
) -> None:
    cols[c.ATTEMPT_ID].append(attempt_id)
    cols[c.CHARGE_ID].append(charge_id)
    cols[c.CUSTOMER_ID].append(charge.customer_id)
    cols[c.ATTEMPTED_AT].append(_ns(attempted_at))
    cols[c.AMOUNT].append(amount)
    cols[c.CURRENCY].append(currency.lower())
    cols[c.OUTCOME].append(outcome)
    cols[c.DECLINE_CODE].append(decline_code if outcome == c.FAILED else None)
    cols[c.NETWORK_ADVICE_CODE].append(advice)
    cols[c.CARD_BRAND].append(brand.lower())
    cols[c.CARD_FUNDING].append(funding)
    cols[c.CARD_COUNTRY].append(country.upper())
    cols[c.CARD_ADDED_AT].append(_ns(added_at))
    cols[c.CARD_EXP_MONTH].append(exp_month)
    cols[c.CARD_EXP_YEAR].append(exp_year)
    cols[c.CARD_ID].append(card_id)
    cols[c.ISSUER].append(issuer)
    cols[c.CUSTOMER_TIMEZONE].append(charge.customer_timezone)
    cols[c.RETRY_PROPENSITY].append(None)


def to_batch(
    requests: Sequence[DecisionRequest], *, nows: Sequence[datetime], constraints: Constraints
) -> PreparedBatch:
    """Convert validated requests (sharing ``constraints``) into a :class:`ColumnarBatch`.

    Parameters
    ----------
    requests
        Requests that passed :func:`check_request`, with distinct charge ids.
    nows
        Effective decision time per request.
    constraints
        The resolved constraints shared by these requests.
    """
    cols = _empty_cols()
    hist = _empty_cols()
    seen_hist: set[str] = set()
    for req in requests:
        ch = req.charge
        for i, a in enumerate(req.attempts or ()):
            card = a.card or ch.card
            _add_row(
                cols,
                attempt_id=a.attempt_id or f"{ch.charge_id}:{i + 1}",
                charge=ch,
                charge_id=ch.charge_id,
                attempted_at=a.attempted_at,
                amount=ch.amount,
                currency=ch.currency,
                outcome=a.outcome,
                decline_code=a.decline_code,
                advice=a.network_advice_code,
                brand=card.brand,
                funding=card.funding,
                country=card.country,
                added_at=card.added_at,
                exp_month=card.exp_month,
                exp_year=card.exp_year,
                card_id=card.card_id,
                issuer=card.issuer,
            )
        for h in req.customer_history or []:
            if h.charge_id == ch.charge_id:
                continue  # the charge's own attempts come from ``attempts``
            aid = h.attempt_id or f"h:{ch.customer_id}:{h.charge_id}:{_ns(h.attempted_at)}"
            if aid in seen_hist:
                continue
            seen_hist.add(aid)
            card = ch.card
            _add_row(
                hist,
                attempt_id=aid,
                charge=ch,
                charge_id=h.charge_id,
                attempted_at=h.attempted_at,
                amount=h.amount or ch.amount,
                currency=h.currency or ch.currency,
                outcome=h.outcome,
                decline_code=h.decline_code,
                advice=h.network_advice_code,
                brand=h.card_brand or card.brand,
                funding=h.card_funding or card.funding,
                country=h.card_country or card.country,
                added_at=h.card_added_at or card.added_at,
                exp_month=h.card_exp_month or card.exp_month,
                exp_year=h.card_exp_year or card.exp_year,
                card_id=h.card_id if h.card_id is not None else card.card_id,
                issuer=h.issuer if h.issuer is not None else card.issuer,
            )
    history_columns = None
    if hist[c.ATTEMPT_ID]:
        order = np.argsort(np.array(hist[c.ATTEMPTED_AT], dtype=np.int64), kind="stable")
        history_columns = _columns(hist, order)
    attempt_columns = _columns(cols)
    batch = ColumnarBatch(
        charge_ids=np.array([r.charge.charge_id for r in requests], dtype=object),
        now=np.array([_ns(t) for t in nows], dtype=np.int64).astype("datetime64[ns]"),
        attempt_columns=attempt_columns,
        history_columns=history_columns,
        constraints=constraints,
    )
    return PreparedBatch(
        batch=batch,
        current_cards=[card_ref(r.charge.card) for r in requests],
        columns=(attempt_columns, history_columns),
    )
