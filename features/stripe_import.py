"""Convert Stripe Charge objects and the Dashboard payments export into the attempt contract.

Two input shapes are understood:

- **Charge objects** as the Charges API returns them (docs.stripe.com/api/charges/object): a JSON
  array, a list-endpoint page (``{"object": "list", "data": [...]}``), a single charge, a
  ``charge.*`` webhook event, or any of those one per line (JSON lines).
- **The Dashboard payments export** ("unified payments" CSV, Payments -> Export), whose headers
  are display names such as ``id``, ``Created date (UTC)`` (older exports: ``Created (UTC)``),
  ``Amount`` (decimal, major units), ``Currency``, ``Status`` (``Paid``, ``Failed``,
  ``Refunded``, ...), ``Customer ID``, ``Card Brand``, ``Card Funding``, ``Card Issue Country``,
  ``Card Exp Month``, ``Card Exp Year``, ``Card Fingerprint``, ``Card Last4``,
  ``Decline Reason``, ``Seller Message``, ``Invoice ID``, ``PaymentIntent ID``. Headers are matched
  case- and spacing-insensitively; see ``docs/stripe-import.md`` for every accepted variant.

The conversion is pure: :func:`parse_charge_object` and :func:`parse_dashboard_row` turn one
record into a :class:`StripeCharge` (or raise :class:`StripeRecordError` with a reason),
:func:`build_attempts` turns parsed charges into a contract frame (grouping, outcome, card age),
and :func:`import_stripe_files` reads files and reports what it skipped and why. Validation of
the result is left to :func:`features.validation.validate_attempts`.

``card_added_at``: a charge carries no card-attach time, so it is derived as the first time the
card was seen: the earliest ``created`` of any charge (of any status, in any input file) with the
same card fingerprint for the same customer. This is an upper bound on the true attach time: a
card attached long before the first exported charge looks younger than it is.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, Literal, TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.currency import currency_exponent

InputFormat = Literal["auto", "json", "jsonl", "csv"]
INPUT_FORMATS: Final[tuple[str, ...]] = ("auto", "json", "jsonl", "csv")

# Charge.status values (docs.stripe.com/api/charges/object#charge_object-status).
STATUS_SUCCEEDED: Final = "succeeded"
STATUS_FAILED: Final = "failed"
STATUS_PENDING: Final = "pending"

# Skip reasons (keys of StripeImportResult.skipped_by_reason).
SKIP_PENDING: Final = "pending"
SKIP_CANCELED: Final = "canceled"
SKIP_UNKNOWN_STATUS: Final = "unknown_status"
SKIP_NOT_A_CHARGE: Final = "not_a_charge"
SKIP_NON_CARD: Final = "non_card_payment_method"
SKIP_MISSING_CUSTOMER: Final = "missing_customer"
SKIP_INCOMPLETE_CARD: Final = "incomplete_card_details"
SKIP_NO_DECLINE_CODE: Final = "failed_without_decline_code"
SKIP_INVALID: Final = "invalid_record"
SKIP_DUPLICATE: Final = "duplicate_charge_id"
SKIP_UNREADABLE: Final = "unreadable_input"

# Decline codes that say nothing beyond "declined": when the charge carries an ISO 8583 response
# code (outcome.network_decline_code), that code is more specific and is used instead.
GENERIC_DECLINE_CODES: Final[frozenset[str]] = frozenset({"generic_decline", "card_declined"})


# Dashboard "Card Brand" display names -> Charge payment_method_details.card.brand values.
_BRAND_ALIASES: Final[Mapping[str, str]] = {
    "visa": "visa",
    "mastercard": "mastercard",
    "master card": "mastercard",
    "american express": "amex",
    "americanexpress": "amex",
    "amex": "amex",
    "discover": "discover",
    "jcb": "jcb",
    "diners club": "diners",
    "diners": "diners",
    "dinersclub": "diners",
    "unionpay": "unionpay",
    "union pay": "unionpay",
    "china unionpay": "unionpay",
    "cartes bancaires": "cartes_bancaires",
    "cartes_bancaires": "cartes_bancaires",
    "eftpos australia": "eftpos_au",
    "eftpos_au": "eftpos_au",
    "interac": "interac",
    "link": "link",
    "unknown": "unknown",
}
_FUNDINGS: Final[frozenset[str]] = frozenset({"credit", "debit", "prepaid", "unknown"})

# Dashboard export "Status" values. "Refunded"/"Disputed" charges were authorized and captured:
# the authorization attempt succeeded (the money left later).
_CSV_STATUS: Final[Mapping[str, str]] = {
    "paid": STATUS_SUCCEEDED,
    "succeeded": STATUS_SUCCEEDED,
    "refunded": STATUS_SUCCEEDED,
    "partially refunded": STATUS_SUCCEEDED,
    "partial refund": STATUS_SUCCEEDED,
    "disputed": STATUS_SUCCEEDED,
    "failed": STATUS_FAILED,
    "declined": STATUS_FAILED,
    "blocked": STATUS_FAILED,
    "pending": STATUS_PENDING,
    "incomplete": STATUS_PENDING,
    "uncaptured": "canceled",
    "canceled": "canceled",
    "cancelled": "canceled",
}

# Seller messages such as "The bank returned the decline code `insufficient_funds`."
_SELLER_MESSAGE_CODE = re.compile(r"decline code\s*`?([A-Za-z0-9_]+)`?")
_CURRENCY_RE = re.compile(r"^[a-z]{3}$")
_CREATED_HEADER_RE = re.compile(r"^created(?: date)?(?: \((?P<zone>[^)]+)\))?$")


# --------------------------------------------------------------------------------------------
# Parsed records


class StripeRecordError(ValueError):
    """A Stripe record that cannot become an attempt; ``reason`` is one of the ``SKIP_*`` keys."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StripeCharge:
    """One Stripe charge, normalised but not yet filtered by status."""

    charge_id: str
    status: str  # succeeded / failed / pending / canceled
    created: datetime  # tz-aware, UTC
    amount: int
    currency: str
    customer: str | None
    invoice: str | None
    payment_intent: str | None
    decline_code: str | None
    network_advice_code: str | None
    network_decline_code: str | None
    card_brand: str
    card_funding: str
    card_country: str | None
    card_exp_month: int | None
    card_exp_year: int | None
    card_fingerprint: str | None
    card_last4: str | None
    issuer: str | None
    location: str = ""  # "file.json record 3" etc., for reports


@dataclass(frozen=True)
class SkippedRecord:
    """A record that was not converted, with where it was and why."""

    location: str
    reason: str
    detail: str
    charge_id: str | None = None


@dataclass
class StripeImportResult:
    """The converted attempts plus an account of everything read and skipped."""

    attempts: pd.DataFrame
    n_records: int
    skipped: list[SkippedRecord] = field(default_factory=list)
    grouped_by: dict[str, int] = field(default_factory=dict)  # invoice/payment_intent/charge

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        """Number of skipped records per reason, most frequent first."""
        return dict(Counter(s.reason for s in self.skipped).most_common())

    @property
    def n_charges(self) -> int:
        """Number of distinct charges (``charge_id`` groups) in the attempts."""
        return int(self.attempts[c.CHARGE_ID].nunique()) if len(self.attempts) else 0

    def format_summary(self, *, max_examples: int = 5) -> str:
        """Human-readable summary: counts, skips by reason with examples, grouping, time range."""
        lines = [
            f"Stripe records read:      {self.n_records}",
            f"attempts converted:       {len(self.attempts)}",
            f"skipped:                  {len(self.skipped)}",
        ]
        for reason, n in self.skipped_by_reason.items():
            lines.append(f"  {reason}: {n}")
            examples = [s for s in self.skipped if s.reason == reason][:max_examples]
            for s in examples:
                who = f" {s.charge_id}" if s.charge_id else ""
                lines.append(f"    - {s.location}{who}: {s.detail}")
        lines.append(f"charges (retry groups):   {self.n_charges}")
        if self.grouped_by:
            parts = ", ".join(f"{k}: {v}" for k, v in self.grouped_by.items())
            lines.append(f"  grouped by {parts}")
        if len(self.attempts):
            times = self.attempts[c.ATTEMPTED_AT]
            lines.append(f"time range:               {times.min()} .. {times.max()}")
            lines.append(
                "card_added_at:            derived from the first charge seen per "
                "(customer, card fingerprint); Stripe charges carry no card-attach time"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Small value helpers


def _is_map(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, checking ``dict`` (what JSON and CSV produce) first."""
    return isinstance(value, (dict, Mapping))


def _clean(value: Any) -> str | None:
    """A stripped string, or None for null/empty/NaN."""
    if type(value) is str:
        return value.strip() or None
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    text = str(value).strip()
    return text or None


def _ref(value: Any) -> str | None:
    """An id field that may be a string or an expanded object with ``id``."""
    if _is_map(value):
        return _clean(value.get("id"))
    return _clean(value)


def _to_int(value: Any, *, name: str) -> int | None:
    """Integer from an int, an integral float or a numeric string; None when empty."""
    if value is None or isinstance(value, bool):
        if isinstance(value, bool):
            raise StripeRecordError(SKIP_INVALID, f"{name} is a boolean ({value!r})")
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if np.isnan(value):
            return None
        if value.is_integer():
            return int(value)
        raise StripeRecordError(SKIP_INVALID, f"{name} is not an integer ({value!r})")
    text = _clean(value)
    if text is None:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise StripeRecordError(SKIP_INVALID, f"{name} is not a number ({value!r})") from None
    if number != number.to_integral_value():
        raise StripeRecordError(SKIP_INVALID, f"{name} is not an integer ({value!r})")
    return int(number)


def normalize_decline_code(value: Any) -> str | None:
    """Lower-case a decline code or Dashboard decline text ("Insufficient funds" -> snake case).

    Pure ISO 8583 codes ("05", "N7") are upper-cased instead, so they match the network tables.
    """
    text = _clean(value)
    if text is None:
        return None
    text = text.strip("`'\" .")
    if re.fullmatch(r"[0-9A-Za-z]{2}", text) and any(ch.isdigit() for ch in text):
        return text.upper()
    return re.sub(r"[\s\-]+", "_", text.lower()) or None


def choose_decline_code(
    *,
    outcome_reason: str | None,
    decline_code: str | None = None,
    failure_code: str | None = None,
    network_decline_code: str | None = None,
) -> str | None:
    """Pick the decline code of a failed charge, most specific first.

    Precedence: ``outcome.reason`` (Stripe puts the issuer's decline code there, e.g.
    ``insufficient_funds``, or the Radar reason such as ``highest_risk_level``), then a
    ``decline_code`` field (as on ``last_payment_error``), then ``failure_code`` (often just
    ``card_declined``). When the pick is empty or generic (``generic_decline``, ``card_declined``)
    and the network returned an ISO 8583 code (``outcome.network_decline_code``), that code wins.

    Parameters
    ----------
    outcome_reason, decline_code, failure_code, network_decline_code
        The raw values; empty strings count as missing.

    Returns
    -------
    str or None
        The chosen code, normalised by :func:`normalize_decline_code`.
    """
    chosen = None
    for candidate in (outcome_reason, decline_code, failure_code):
        chosen = normalize_decline_code(candidate)
        if chosen is not None:
            break
    network = normalize_decline_code(network_decline_code)
    if network is not None and (chosen is None or chosen in GENERIC_DECLINE_CODES):
        return network
    return chosen


def normalize_brand(value: Any) -> str:
    """Map an API brand (``visa``) or Dashboard display name (``American Express``) to a token."""
    text = _clean(value)
    if text is None:
        return "unknown"
    key = re.sub(r"\s+", " ", text.lower())
    return _BRAND_ALIASES.get(key, re.sub(r"[\s\-]+", "_", key))


def normalize_funding(value: Any) -> str:
    """``credit``/``debit``/``prepaid``; anything else or missing is ``unknown``."""
    text = _clean(value)
    if text is None:
        return "unknown"
    text = text.lower()
    return text if text in _FUNDINGS else "unknown"


def parse_major_amount(text: str, currency: str) -> int:
    """Convert a Dashboard decimal amount ("1,234.56", "399,00", "1500") to minor units.

    The last ``.`` or ``,`` followed by digits is the decimal separator when it is followed by
    at most the currency's number of decimals; other separators are thousands separators.

    Raises
    ------
    StripeRecordError
        If the text is not a number or has more decimals than the currency allows.
    """
    raw = text.strip().replace("\u00a0", "").replace(" ", "").replace("'", "")
    exponent = currency_exponent(currency)
    match = re.fullmatch(r"(-?)([0-9.,]*?)(?:([.,])([0-9]+))?", raw)
    if not raw or match is None:
        raise StripeRecordError(SKIP_INVALID, f"Amount is not a number ({text!r})")
    sign, whole, sep, frac = match.groups()
    if sep is not None and frac is not None and len(frac) == 3 and exponent != 3:
        # "1,500" or "1.500" with a 2- or 0-decimal currency: a thousands separator.
        whole, sep, frac = f"{whole}{frac}", None, None
    whole = whole.replace(",", "").replace(".", "")
    if not whole and not frac:
        raise StripeRecordError(SKIP_INVALID, f"Amount is not a number ({text!r})")
    try:
        value = Decimal(f"{sign}{whole or '0'}.{frac or '0'}")
    except InvalidOperation:
        raise StripeRecordError(SKIP_INVALID, f"Amount is not a number ({text!r})") from None
    minor = value.scaleb(exponent)
    if minor != minor.to_integral_value():
        raise StripeRecordError(
            SKIP_INVALID,
            f"Amount {text!r} has more decimals than {currency} allows ({exponent})",
        )
    return int(minor)


def _created_from_unix(value: Any) -> datetime:
    seconds = _to_int(value, name="created")
    if seconds is None:
        raise StripeRecordError(SKIP_INVALID, "created is missing")
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise StripeRecordError(SKIP_INVALID, f"created is out of range ({value!r})") from None


def parse_created_text(text: str, *, zone: str = "UTC") -> datetime:
    """Parse a Dashboard date: ``YYYY-MM-DD HH:MM[:SS]`` in ``zone`` or ISO 8601 with offset/Z.

    Raises
    ------
    StripeRecordError
        If the text is not a date-time.
    """
    raw = text.strip()
    if re.fullmatch(r"-?\d+", raw):  # some exports carry unix seconds
        return _created_from_unix(int(raw))
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise StripeRecordError(
            SKIP_INVALID, f"created date is not a date-time ({text!r})"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(zone))
    return parsed.astimezone(UTC)


# --------------------------------------------------------------------------------------------
# Charge objects (JSON)


def parse_charge_object(charge: Mapping[str, Any], *, location: str = "") -> StripeCharge:
    """Normalise one Stripe Charge object.

    Parameters
    ----------
    charge
        A Charge as the API returns it (expanded ``customer``/``invoice``/``payment_intent``
        objects are accepted too). Legacy charges without ``payment_method_details`` fall back to
        the ``source`` card object.
    location
        Where the record came from, kept on the result for reports.

    Raises
    ------
    StripeRecordError
        With ``reason`` one of the ``SKIP_*`` keys when the record is not a card charge or is
        malformed.
    """
    if not _is_map(charge):
        raise StripeRecordError(
            SKIP_INVALID, f"expected a JSON object, got {type(charge).__name__}"
        )
    obj = charge.get("object")
    if obj is not None and obj != "charge":
        raise StripeRecordError(SKIP_NOT_A_CHARGE, f"object is {obj!r}, not 'charge'")
    charge_id = _clean(charge.get("id"))
    if charge_id is None:
        raise StripeRecordError(SKIP_INVALID, "id is missing")

    status = (_clean(charge.get("status")) or "").lower()
    if status not in (STATUS_SUCCEEDED, STATUS_FAILED, STATUS_PENDING):
        raise StripeRecordError(SKIP_UNKNOWN_STATUS, f"status is {charge.get('status')!r}")

    card = _card_details(charge)
    created = _created_from_unix(charge.get("created"))
    currency = (_clean(charge.get("currency")) or "").lower()
    if not _CURRENCY_RE.match(currency):
        raise StripeRecordError(SKIP_INVALID, f"currency is {charge.get('currency')!r}")
    amount = _to_int(charge.get("amount"), name="amount")
    if amount is None or amount <= 0:
        raise StripeRecordError(SKIP_INVALID, f"amount is {charge.get('amount')!r}, not > 0")

    outcome = charge.get("outcome") or {}
    if not _is_map(outcome):
        outcome = {}
    last_error = charge.get("last_payment_error") or {}
    if not _is_map(last_error):
        last_error = {}
    network_decline = _clean(outcome.get("network_decline_code"))
    decline = None
    if status == STATUS_FAILED:
        decline = choose_decline_code(
            outcome_reason=outcome.get("reason"),
            decline_code=charge.get("decline_code") or last_error.get("decline_code"),
            failure_code=charge.get("failure_code") or last_error.get("code"),
            network_decline_code=network_decline,
        )
    advice = _clean(outcome.get("network_advice_code")) or _clean(outcome.get("advice_code"))

    return StripeCharge(
        charge_id=charge_id,
        status=status,
        created=created,
        amount=amount,
        currency=currency,
        customer=_ref(charge.get("customer")),
        invoice=_ref(charge.get("invoice")),
        payment_intent=_ref(charge.get("payment_intent")),
        decline_code=decline,
        network_advice_code=advice,
        network_decline_code=normalize_decline_code(network_decline),
        card_brand=normalize_brand(card.get("brand")),
        card_funding=normalize_funding(card.get("funding")),
        card_country=(_clean(card.get("country")) or "").upper() or None,
        card_exp_month=_to_int(card.get("exp_month"), name="exp_month"),
        card_exp_year=_to_int(card.get("exp_year"), name="exp_year"),
        card_fingerprint=_clean(card.get("fingerprint")),
        card_last4=_clean(card.get("last4")),
        issuer=_clean(card.get("issuer")) or _clean(card.get("iin")),
        location=location,
    )


def _card_details(charge: Mapping[str, Any]) -> Mapping[str, Any]:
    """``payment_method_details.card``, or the legacy ``source`` card; non-card -> skip."""
    details = charge.get("payment_method_details")
    if _is_map(details) and details:
        kind = details.get("type")
        card = details.get("card")
        if kind not in (None, "card") or not _is_map(card):
            raise StripeRecordError(SKIP_NON_CARD, f"payment method type is {kind!r}")
        return card
    for legacy in ("source", "card"):
        src = charge.get(legacy)
        if _is_map(src) and src.get("object") == "card":
            return src
    raise StripeRecordError(SKIP_NON_CARD, "no payment_method_details.card on the charge")


# --------------------------------------------------------------------------------------------
# Dashboard payments export (CSV)


def _header_key(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.replace("\ufeff", "")).strip().lower()


# Field -> accepted header spellings (after _header_key). First match wins.
CSV_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "id": ("id", "charge id", "payment id"),
    "created": ("created date (utc)", "created (utc)", "created date", "created"),
    "amount": ("amount",),
    "currency": ("currency",),
    "status": ("status",),
    "customer": ("customer id", "customer"),
    "invoice": ("invoice id", "invoice"),
    "payment_intent": ("paymentintent id", "payment intent id", "payment intent", "paymentintent"),
    "payment_method_type": (
        "payment method type",
        "payment source type",
        "payment method details type",
    ),
    "brand": ("card brand", "brand"),
    "funding": ("card funding", "funding"),
    "country": ("card issue country", "card country"),
    "exp_month": ("card exp month", "exp month"),
    "exp_year": ("card exp year", "exp year"),
    "fingerprint": ("card fingerprint", "fingerprint"),
    "last4": ("card last4", "card last 4", "last4"),
    "issuer": ("card issuer", "issuer", "card iin", "iin"),
    "decline_reason": ("decline reason", "decline code"),
    "outcome_reason": ("outcome reason",),
    "failure_code": ("failure code",),
    "seller_message": ("seller message",),
    "network_decline_code": ("network decline code", "outcome network decline code"),
    "network_advice_code": ("network advice code", "outcome network advice code"),
    "advice_code": ("advice code", "outcome advice code"),
}
_CSV_REQUIRED: Final[tuple[str, ...]] = ("id", "created", "amount", "currency", "status")


def map_csv_header(header: Sequence[str]) -> dict[str, str]:
    """Map our field names to the file's actual header names (case/spacing-insensitive).

    Raises
    ------
    StripeRecordError
        With reason ``unreadable_input`` if a required column (id, created, amount, currency,
        status) is missing.
    """
    keyed: dict[str, str] = {}
    for name in header:
        keyed.setdefault(_header_key(name), name)
    mapping: dict[str, str] = {}
    for fld, spellings in CSV_COLUMNS.items():
        for spelling in spellings:
            if spelling in keyed:
                mapping[fld] = keyed[spelling]
                break
    if "created" not in mapping:  # "Created date (Europe/Berlin)" and similar
        for key, name in keyed.items():
            if _CREATED_HEADER_RE.match(key):
                mapping["created"] = name
                break
    missing = [f for f in _CSV_REQUIRED if f not in mapping]
    if missing:
        wanted = ", ".join(repr(CSV_COLUMNS[f][0]) for f in missing)
        raise StripeRecordError(
            SKIP_UNREADABLE,
            f"missing required column(s) {wanted}; header is {list(header)!r}",
        )
    return mapping


def created_zone(header_name: str) -> str:
    """Zone named in a created-date header (``Created date (Europe/Berlin)``); UTC by default.

    Raises
    ------
    StripeRecordError
        With reason ``unreadable_input`` if the header names a zone that is not an IANA zone.
    """
    found = re.search(r"\(([^)]+)\)", header_name)
    zone = found.group(1).strip() if found else "UTC"
    if zone.upper() == "UTC":
        return "UTC"
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise StripeRecordError(
            SKIP_UNREADABLE, f"column {header_name!r} names an unknown time zone {zone!r}"
        ) from None
    return zone


def parse_dashboard_row(
    row: Mapping[str, str], columns: Mapping[str, str], *, zone: str = "UTC", location: str = ""
) -> StripeCharge:
    """Normalise one row of the Dashboard payments export.

    Parameters
    ----------
    row
        The row as read by :class:`csv.DictReader` (header name -> text).
    columns
        Result of :func:`map_csv_header` for the file's header.
    zone
        Time zone of naive created dates (see :func:`created_zone`).
    location
        Where the row came from, kept on the result for reports.

    Raises
    ------
    StripeRecordError
        With ``reason`` one of the ``SKIP_*`` keys.
    """

    def get(fld: str) -> str | None:
        name = columns.get(fld)
        return _clean(row.get(name)) if name is not None else None

    charge_id = get("id")
    if charge_id is None:
        raise StripeRecordError(SKIP_INVALID, "id is empty")
    raw_status = (get("status") or "").lower()
    status = _CSV_STATUS.get(re.sub(r"\s+", " ", raw_status))
    if status is None:
        raise StripeRecordError(SKIP_UNKNOWN_STATUS, f"Status is {get('status')!r}")

    kind = get("payment_method_type")
    if kind is not None and kind.lower() != "card":
        raise StripeRecordError(SKIP_NON_CARD, f"payment method type is {kind!r}")
    if kind is None and get("brand") is None and get("last4") is None:
        raise StripeRecordError(SKIP_NON_CARD, "no card columns filled (Card Brand, Card Last4)")

    currency = (get("currency") or "").lower()
    if not _CURRENCY_RE.match(currency):
        raise StripeRecordError(SKIP_INVALID, f"Currency is {get('currency')!r}")
    amount_text = get("amount")
    if amount_text is None:
        raise StripeRecordError(SKIP_INVALID, "Amount is empty")
    amount = parse_major_amount(amount_text, currency)
    if amount <= 0:
        raise StripeRecordError(SKIP_INVALID, f"Amount is {amount_text!r}, not > 0")
    created_text = get("created")
    if created_text is None:
        raise StripeRecordError(SKIP_INVALID, "created date is empty")
    created = parse_created_text(created_text, zone=zone)

    decline = None
    network_decline = get("network_decline_code")
    if status == STATUS_FAILED:
        seller = get("seller_message")
        from_message = None
        if seller is not None:
            found = _SELLER_MESSAGE_CODE.search(seller)
            from_message = found.group(1) if found else None
        decline = choose_decline_code(
            outcome_reason=get("outcome_reason") or get("decline_reason"),
            decline_code=from_message,
            failure_code=get("failure_code"),
            network_decline_code=network_decline,
        )

    return StripeCharge(
        charge_id=charge_id,
        status=status,
        created=created,
        amount=amount,
        currency=currency,
        customer=get("customer"),
        invoice=get("invoice"),
        payment_intent=get("payment_intent"),
        decline_code=decline,
        network_advice_code=get("network_advice_code") or get("advice_code"),
        network_decline_code=normalize_decline_code(network_decline),
        card_brand=normalize_brand(get("brand")),
        card_funding=normalize_funding(get("funding")),
        card_country=(get("country") or "").upper() or None,
        card_exp_month=_to_int(get("exp_month"), name="Card Exp Month"),
        card_exp_year=_to_int(get("exp_year"), name="Card Exp Year"),
        card_fingerprint=get("fingerprint"),
        card_last4=get("last4"),
        issuer=get("issuer"),
        location=location,
    )


# --------------------------------------------------------------------------------------------
# Reading inputs


def detect_format(path: Path, text: str) -> str:
    """``csv``/``jsonl``/``json`` from the suffix, else from the content."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    head = text.lstrip("\ufeff \t\r\n")[:1]
    if head in ("[", "{"):
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return "jsonl"
        return "json"
    return "csv"


def _expand(value: Any) -> Iterator[Any]:
    """Charges inside a JSON value: arrays, list pages, webhook events, or a bare charge."""
    if isinstance(value, list):
        for item in value:
            yield from _expand(item)
    elif _is_map(value) and value.get("object") == "event":
        data = value.get("data")
        yield data.get("object") if _is_map(data) else value
    elif (
        _is_map(value)
        and (value.get("object") == "list" or "id" not in value)
        and isinstance(value.get("data"), list)
    ):
        for item in value["data"]:
            yield from _expand(item)
    else:
        yield value


def iter_json_records(text: str, *, fmt: str, source: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record)`` from JSON or JSON-lines text; bad lines yield an exception."""
    if fmt == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield f"{source}", StripeRecordError(SKIP_UNREADABLE, f"not valid JSON: {exc}")
            return
        for i, record in enumerate(_expand(value), start=1):
            yield f"{source} record {i}", record
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield (
                f"{source} line {line_no}",
                StripeRecordError(SKIP_INVALID, f"not valid JSON: {exc.msg}"),
            )
            continue
        records = list(_expand(value))
        for j, record in enumerate(records, start=1):
            where = f"{source} line {line_no}" + (f" item {j}" if len(records) > 1 else "")
            yield where, record


def parse_stripe_text(
    text: str, *, fmt: str, source: str
) -> tuple[list[StripeCharge], list[SkippedRecord], int]:
    """Parse one input's text into charges; returns (charges, skipped, records read)."""
    charges: list[StripeCharge] = []
    skipped: list[SkippedRecord] = []
    n = 0
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
        try:
            columns = map_csv_header(reader.fieldnames or [])
            zone = created_zone(columns["created"])
        except StripeRecordError as exc:
            return [], [SkippedRecord(source, exc.reason, exc.detail)], 0
        for row_no, row in enumerate(reader, start=1):
            n += 1
            where = f"{source} row {row_no}"
            try:
                charges.append(parse_dashboard_row(row, columns, zone=zone, location=where))
            except StripeRecordError as exc:
                cid = _clean(row.get(columns["id"]))
                skipped.append(SkippedRecord(where, exc.reason, exc.detail, cid))
        return charges, skipped, n
    for where, record in iter_json_records(text, fmt=fmt, source=source):
        if isinstance(record, StripeRecordError):
            if record.reason != SKIP_UNREADABLE:
                n += 1
            skipped.append(SkippedRecord(where, record.reason, record.detail))
            continue
        n += 1
        try:
            charges.append(parse_charge_object(record, location=where))
        except StripeRecordError as exc:
            cid = _clean(record.get("id")) if _is_map(record) else None
            skipped.append(SkippedRecord(where, exc.reason, exc.detail, cid))
    return charges, skipped, n


# --------------------------------------------------------------------------------------------
# Building the contract frame


def build_attempts(
    charges: Iterable[StripeCharge],
) -> tuple[pd.DataFrame, list[SkippedRecord], dict[str, int]]:
    """Turn parsed charges into a contract frame.

    Steps: drop repeated charge ids (keeping the first non-pending copy); derive
    ``card_added_at`` from all charges (pending ones included, as they show the card in use);
    then drop pending/canceled charges and charges that cannot satisfy the contract (no customer,
    no card country/expiry, failed without any decline code), reporting each.

    Returns
    -------
    (attempts, skipped, grouped_by)
        ``attempts`` has every contract column (timestamps UTC, integers int64, strings ``str``
        dtype with NA, ``retry_propensity`` NaN) sorted by ``attempted_at``; ``grouped_by`` counts
        retry groups keyed by invoice, payment_intent or the charge itself.
    """
    skipped: list[SkippedRecord] = []
    unique: dict[str, StripeCharge] = {}
    for ch in charges:
        kept = unique.get(ch.charge_id)
        if kept is None:
            unique[ch.charge_id] = ch
            continue
        drop = ch
        if kept.status == STATUS_PENDING and ch.status != STATUS_PENDING:
            unique[ch.charge_id], drop = ch, kept
        skipped.append(
            SkippedRecord(
                drop.location,
                SKIP_DUPLICATE,
                f"charge id also at {unique[ch.charge_id].location}",
                ch.charge_id,
            )
        )
    rows = list(unique.values())
    if not rows:
        return _empty_frame(), skipped, {}

    frame = pd.DataFrame(
        {
            "customer": [r.customer for r in rows],
            "created": pd.to_datetime([r.created for r in rows], utc=True).as_unit("ns"),
            "fingerprint": [r.card_fingerprint for r in rows],
            "brand": [r.card_brand for r in rows],
            "last4": [r.card_last4 for r in rows],
            "exp": [f"{r.card_exp_month}/{r.card_exp_year}" for r in rows],
        }
    )
    added = derive_card_added_at(frame)

    out: list[dict[str, Any]] = []
    grouped: Counter[str] = Counter()
    seen_groups: set[str] = set()
    for r, card_added in zip(rows, added, strict=True):
        reason = _contract_problem(r)
        if reason is not None:
            skipped.append(SkippedRecord(r.location, reason[0], reason[1], r.charge_id))
            continue
        group, key = (
            (r.invoice, "invoice")
            if r.invoice
            else (r.payment_intent, "payment_intent")
            if r.payment_intent
            else (r.charge_id, "charge")
        )
        if group not in seen_groups:
            seen_groups.add(group)
            grouped[key] += 1
        out.append(
            {
                c.ATTEMPT_ID: r.charge_id,
                c.CHARGE_ID: group,
                c.CUSTOMER_ID: r.customer,
                c.ATTEMPTED_AT: r.created,
                c.AMOUNT: r.amount,
                c.CURRENCY: r.currency,
                c.OUTCOME: c.SUCCEEDED if r.status == STATUS_SUCCEEDED else c.FAILED,
                c.DECLINE_CODE: r.decline_code if r.status == STATUS_FAILED else None,
                c.NETWORK_ADVICE_CODE: r.network_advice_code,
                c.CARD_BRAND: r.card_brand,
                c.CARD_FUNDING: r.card_funding,
                c.CARD_COUNTRY: r.card_country,
                c.CARD_ADDED_AT: card_added,
                c.CARD_EXP_MONTH: r.card_exp_month,
                c.CARD_EXP_YEAR: r.card_exp_year,
                c.CARD_ID: r.card_fingerprint,
                c.ISSUER: r.issuer,
                c.CUSTOMER_TIMEZONE: None,
                c.RETRY_PROPENSITY: np.nan,
            }
        )
    if not out:
        return _empty_frame(), skipped, dict(grouped)
    attempts = _typed_frame(pd.DataFrame(out, columns=list(c.ALL_COLUMNS)))
    attempts = attempts.sort_values(
        [c.ATTEMPTED_AT, c.ATTEMPT_ID], kind="mergesort", ignore_index=True
    )
    return attempts, skipped, dict(grouped)


def _contract_problem(r: StripeCharge) -> tuple[str, str] | None:
    if r.status == STATUS_PENDING:
        return SKIP_PENDING, "status is pending (outcome not known yet)"
    if r.status == "canceled":
        return SKIP_CANCELED, "authorization canceled before capture"
    if r.customer is None:
        return SKIP_MISSING_CUSTOMER, "no customer on the charge"
    missing = [
        name
        for name, value in (
            ("country", r.card_country),
            ("exp_month", r.card_exp_month),
            ("exp_year", r.card_exp_year),
        )
        if value is None
    ]
    if missing:
        return SKIP_INCOMPLETE_CARD, f"card {', '.join(missing)} missing"
    if r.status == STATUS_FAILED and r.decline_code is None:
        return (
            SKIP_NO_DECLINE_CODE,
            "failed charge without outcome.reason, decline code, failure_code or network code",
        )
    return None


def derive_card_added_at(frame: pd.DataFrame) -> pd.Series:
    """First time each card was seen for its customer.

    Parameters
    ----------
    frame
        Columns ``customer``, ``created`` (UTC), ``fingerprint``, ``brand``, ``last4``, ``exp``.

    Returns
    -------
    pandas.Series
        Aligned with ``frame``: the earliest ``created`` among rows of the same customer and the
        same card, where a card is its fingerprint, or without one (brand, last4, expiry), or
        without a last4 the row itself.
    """
    fp = frame["fingerprint"].astype(object)
    last4 = frame["last4"].astype(object)
    fallback = (
        "b:" + frame["brand"].astype(str) + "|" + last4.astype(str) + "|" + frame["exp"].astype(str)
    )
    own = "row:" + pd.Series(np.arange(len(frame)), index=frame.index).astype(str)
    card_key = np.where(
        pd.notna(fp), "fp:" + fp.astype(str), np.where(pd.notna(last4), fallback, own)
    )
    customer = frame["customer"].astype(object).where(pd.notna(frame["customer"]), "<none>")
    keys = pd.DataFrame({"customer": customer.astype(str), "card": card_key})
    return frame["created"].groupby([keys["customer"], keys["card"]]).transform("min")


def _empty_frame() -> pd.DataFrame:
    return _typed_frame(pd.DataFrame({col: [] for col in c.ALL_COLUMNS}))


def _typed_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for col in c.ALL_COLUMNS:
        s = df[col]
        if col in c.TIMESTAMP_COLUMNS:
            out[col] = pd.to_datetime(s, utc=True).astype("datetime64[ns, UTC]")
        elif col in c.INTEGER_COLUMNS:
            out[col] = s.astype("int64")
        elif col in c.FLOAT_COLUMNS:
            out[col] = s.astype("float64")
        else:
            out[col] = s.astype(object).where(pd.notna(s), None).astype("str")
            out[col] = out[col].where(pd.notna(s), pd.NA)
    return out


# --------------------------------------------------------------------------------------------
# Files


def import_stripe_files(
    paths: Sequence[str | Path], *, fmt: InputFormat | str = "auto"
) -> StripeImportResult:
    """Read Stripe exports (JSON, JSON lines, Dashboard CSV) and convert them to attempts.

    All inputs are combined before ``card_added_at`` is derived and duplicates are removed, so
    overlapping exports and split files give the same result as one file.

    Parameters
    ----------
    paths
        Input files.
    fmt
        ``auto`` (by suffix, else by content), ``json``, ``jsonl`` or ``csv``, for every input.

    Returns
    -------
    StripeImportResult
        Not yet validated; pass ``result.attempts`` to
        :func:`features.validation.validate_attempts`.

    Raises
    ------
    ValueError
        For an unknown ``fmt``.
    FileNotFoundError
        When an input does not exist.
    """
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(INPUT_FORMATS)}, got {fmt!r}")
    all_charges: list[StripeCharge] = []
    skipped: list[SkippedRecord] = []
    n_records = 0
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            raise FileNotFoundError(f"Stripe input not found: {path}")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            skipped.append(SkippedRecord(str(path), SKIP_UNREADABLE, f"not UTF-8 text: {exc}"))
            continue
        file_fmt = detect_format(path, text) if fmt == "auto" else fmt
        charges, skips, n = parse_stripe_text(text, fmt=file_fmt, source=path.name)
        all_charges.extend(charges)
        skipped.extend(skips)
        n_records += n
    attempts, more_skips, grouped = build_attempts(all_charges)
    return StripeImportResult(
        attempts=attempts,
        n_records=n_records,
        skipped=skipped + more_skips,
        grouped_by=grouped,
    )
