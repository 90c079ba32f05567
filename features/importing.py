"""The processor-neutral part of importing payment history into the attempt contract.

An importer for one payment processor (Stripe: :mod:`features.stripe_import`) only reads that
processor's exports: it turns each charge (one authorization attempt) into a
:class:`ChargeRecord`, or raises :class:`RecordError` with one of the ``SKIP_*`` reasons for a
record that cannot become one, and collects those as :class:`SkippedRecord`. Everything after
that is shared and lives here:

- :func:`build_attempts` turns the records of all inputs into a contract frame: repeated charge
  ids are dropped, ``card_added_at`` is derived (:func:`derive_card_added_at`), records that
  cannot satisfy the contract are skipped with a reason, retries are grouped into charges (by
  invoice, else payment intent, else the charge itself) and the columns get the contract dtypes;
- :func:`import_records` wraps that into an :class:`ImportResult` whose summary names the
  processor;
- value helpers every importer needs: :func:`clean_text`, :func:`to_int`,
  :func:`normalize_brand`, :func:`normalize_funding`, :func:`parse_major_amount` (with the
  currency's exponent) and :func:`normalize_decline_code`.

Validation of the result is left to :func:`features.validation.validate_attempts`.
docs/stripe-import.md ("How to add an importer for another processor") walks through the steps.

``card_added_at``: a processor's charge usually carries no card-attach time, so it is derived as
the first time the card was seen: the earliest ``created`` of any record (of any status, in any
input) with the same card for the same customer. This is an upper bound on the true attach time:
a card attached long before the first exported charge looks younger than it is.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.currency import currency_exponent

# ChargeRecord.status values.
STATUS_SUCCEEDED: Final = "succeeded"
STATUS_FAILED: Final = "failed"
STATUS_PENDING: Final = "pending"
STATUS_CANCELED: Final = "canceled"
CHARGE_STATUSES: Final[tuple[str, ...]] = (
    STATUS_SUCCEEDED,
    STATUS_FAILED,
    STATUS_PENDING,
    STATUS_CANCELED,
)
"""Every ``ChargeRecord.status``; only succeeded and failed records become attempts."""

# Skip reasons (SkippedRecord.reason, keys of ImportResult.skipped_by_reason).
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

# Card brand spellings (API tokens and display names such as "American Express") -> the brand
# token of the contract (features.contract.KNOWN_CARD_BRANDS, plus "link").
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


# --------------------------------------------------------------------------------------------
# Records


class RecordError(ValueError):
    """A processor record that cannot become an attempt.

    Parameters
    ----------
    reason
        Why, one of the ``SKIP_*`` keys (an importer may add its own).
    detail
        Human-readable explanation naming the offending field and value.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ChargeRecord:
    """One processor charge (one authorization attempt), normalised but not yet filtered.

    Attributes
    ----------
    charge_id
        The processor's id of this attempt; becomes ``attempt_id``.
    status
        One of :data:`CHARGE_STATUSES`.
    created
        When the attempt was made, tz-aware UTC.
    amount
        Minor units of ``currency`` (see :func:`parse_major_amount`).
    currency
        Lower-case ISO 4217 code.
    customer
        The processor's customer id; records without one are skipped.
    invoice, payment_intent
        Retry-group ids: all attempts of one invoice, else of one payment intent (the
        processor's object that several attempts at one payment share), form one charge.
    decline_code
        Normalised decline code of a failed attempt (:func:`normalize_decline_code`).
    network_advice_code
        The network's or processor's retry advice, when given.
    network_decline_code
        The ISO 8583 response code, when given (informational; not a contract column).
    card_brand, card_funding
        Contract tokens (:func:`normalize_brand`, :func:`normalize_funding`).
    card_country
        Upper-case ISO 3166-1 alpha-2 issuing country.
    card_exp_month, card_exp_year
        Card expiry.
    card_fingerprint
        Stable card id across customers' charges; becomes ``card_id``.
    card_last4
        Last four digits; with brand and expiry it identifies a card without a fingerprint.
    issuer
        Issuing bank name or IIN, when given.
    location
        Where the record came from (``"file.json record 3"``), for reports.
    """

    charge_id: str
    status: str
    created: datetime
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
    location: str = ""


@dataclass(frozen=True)
class SkippedRecord:
    """A record that was not converted, with where it was and why.

    Attributes
    ----------
    location
        Where the record was (file and record, line or row).
    reason
        One of the ``SKIP_*`` keys.
    detail
        Human-readable explanation.
    charge_id
        The record's charge id, when it could be read.
    """

    location: str
    reason: str
    detail: str
    charge_id: str | None = None


@dataclass
class ImportResult:
    """The converted attempts plus an account of everything read and skipped.

    Attributes
    ----------
    processor
        Display name of the source processor (``"Stripe"``), used in the summary.
    attempts
        Contract frame from :func:`build_attempts`, not yet validated.
    n_records
        Records read from the inputs (unreadable inputs not counted).
    skipped
        Every record that did not become an attempt.
    grouped_by
        Retry groups per grouping key (``invoice``, ``payment_intent``, ``charge``).
    """

    processor: str
    attempts: pd.DataFrame
    n_records: int
    skipped: list[SkippedRecord] = field(default_factory=list)
    grouped_by: dict[str, int] = field(default_factory=dict)

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
            f"{self.processor + ' records read:':<26}{self.n_records}",
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
                f"(customer, card fingerprint); {self.processor} charges carry no card-attach time"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Value helpers


def clean_text(value: Any) -> str | None:
    """A stripped string, or None for null/empty/NaN."""
    if type(value) is str:
        return value.strip() or None
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    text = str(value).strip()
    return text or None


def to_int(value: Any, *, name: str) -> int | None:
    """Integer from an int, an integral float or a numeric string; None when empty.

    Raises
    ------
    RecordError
        With reason ``invalid_record`` for booleans, fractions and non-numbers; the message
        names the field ``name``.
    """
    if value is None or isinstance(value, bool):
        if isinstance(value, bool):
            raise RecordError(SKIP_INVALID, f"{name} is a boolean ({value!r})")
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if np.isnan(value):
            return None
        if value.is_integer():
            return int(value)
        raise RecordError(SKIP_INVALID, f"{name} is not an integer ({value!r})")
    text = clean_text(value)
    if text is None:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise RecordError(SKIP_INVALID, f"{name} is not a number ({value!r})") from None
    if number != number.to_integral_value():
        raise RecordError(SKIP_INVALID, f"{name} is not an integer ({value!r})")
    return int(number)


def normalize_decline_code(value: Any) -> str | None:
    """Lower-case a decline code or decline text ("Insufficient funds" -> snake case).

    Pure ISO 8583 codes ("05", "N7") are upper-cased instead, so they match the network tables.
    """
    text = clean_text(value)
    if text is None:
        return None
    text = text.strip("`'\" .")
    if re.fullmatch(r"[0-9A-Za-z]{2}", text) and any(ch.isdigit() for ch in text):
        return text.upper()
    return re.sub(r"[\s\-]+", "_", text.lower()) or None


def normalize_brand(value: Any) -> str:
    """Map an API brand (``visa``) or a display name (``American Express``) to a brand token.

    Unlisted brands are lower-cased with spaces and dashes as ``_``; missing is ``unknown``.
    """
    text = clean_text(value)
    if text is None:
        return "unknown"
    key = re.sub(r"\s+", " ", text.lower())
    return _BRAND_ALIASES.get(key, re.sub(r"[\s\-]+", "_", key))


def normalize_funding(value: Any) -> str:
    """``credit``/``debit``/``prepaid``; anything else or missing is ``unknown``."""
    text = clean_text(value)
    if text is None:
        return "unknown"
    text = text.lower()
    return text if text in c.CARD_FUNDINGS else "unknown"


def parse_major_amount(text: str, currency: str) -> int:
    """Convert a decimal amount in major units ("1,234.56", "399,00", "1500") to minor units.

    The last ``.`` or ``,`` followed by digits is the decimal separator when it is followed by
    at most the currency's number of decimals (:func:`features.currency.currency_exponent`);
    other separators are thousands separators.

    Raises
    ------
    RecordError
        If the text is not a number or has more decimals than the currency allows.
    """
    raw = text.strip().replace("\u00a0", "").replace(" ", "").replace("'", "")
    exponent = currency_exponent(currency)
    match = re.fullmatch(r"(-?)([0-9.,]*?)(?:([.,])([0-9]+))?", raw)
    if not raw or match is None:
        raise RecordError(SKIP_INVALID, f"Amount is not a number ({text!r})")
    sign, whole, sep, frac = match.groups()
    if sep is not None and frac is not None and len(frac) == 3 and exponent != 3:
        # "1,500" or "1.500" with a 2- or 0-decimal currency: a thousands separator.
        whole, sep, frac = f"{whole}{frac}", None, None
    whole = whole.replace(",", "").replace(".", "")
    if not whole and not frac:
        raise RecordError(SKIP_INVALID, f"Amount is not a number ({text!r})")
    try:
        value = Decimal(f"{sign}{whole or '0'}.{frac or '0'}")
    except InvalidOperation:
        raise RecordError(SKIP_INVALID, f"Amount is not a number ({text!r})") from None
    minor = value.scaleb(exponent)
    if minor != minor.to_integral_value():
        raise RecordError(
            SKIP_INVALID,
            f"Amount {text!r} has more decimals than {currency} allows ({exponent})",
        )
    return int(minor)


# --------------------------------------------------------------------------------------------
# Building the contract frame


def build_attempts(
    records: Iterable[ChargeRecord], *, decline_sources: str = "a decline code"
) -> tuple[pd.DataFrame, list[SkippedRecord], dict[str, int]]:
    """Turn charge records (of every input together) into a contract frame.

    Steps: drop repeated charge ids (keeping the first non-pending copy); derive
    ``card_added_at`` from all records (pending ones included, as they show the card in use);
    then drop pending/canceled records and records that cannot satisfy the contract (no
    customer, no card country/expiry, failed without any decline code), reporting each; group
    retries by invoice, else payment intent, else the charge itself.

    Parameters
    ----------
    records
        Parsed records of all inputs.
    decline_sources
        What the importer looked at for a decline code, named in the detail of
        ``failed_without_decline_code`` skips ("failed charge without <decline_sources>").

    Returns
    -------
    (attempts, skipped, grouped_by)
        ``attempts`` has every contract column (timestamps UTC, integers int64, strings ``str``
        dtype with NA, ``customer_timezone`` missing, ``retry_propensity`` NaN) sorted by
        ``attempted_at``; ``grouped_by`` counts retry groups keyed by ``invoice``,
        ``payment_intent`` or ``charge``.
    """
    skipped: list[SkippedRecord] = []
    unique: dict[str, ChargeRecord] = {}
    for ch in records:
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
        reason = _contract_problem(r, decline_sources)
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


def _contract_problem(r: ChargeRecord, decline_sources: str) -> tuple[str, str] | None:
    """``(reason, detail)`` when the record cannot become a contract row, else None."""
    if r.status == STATUS_PENDING:
        return SKIP_PENDING, "status is pending (outcome not known yet)"
    if r.status == STATUS_CANCELED:
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
        return SKIP_NO_DECLINE_CODE, f"failed charge without {decline_sources}"
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
    """A typed contract frame without rows."""
    return _typed_frame(pd.DataFrame({col: [] for col in c.ALL_COLUMNS}))


def _typed_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Every contract column with its contract dtype (strings ``str`` with NA)."""
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


def import_records(
    records: Iterable[ChargeRecord],
    *,
    processor: str,
    n_records: int,
    skipped: Iterable[SkippedRecord] = (),
    decline_sources: str = "a decline code",
) -> ImportResult:
    """Build the attempts of all records and account for every skip, as an :class:`ImportResult`.

    Parameters
    ----------
    records
        Parsed records of all inputs (combined, so duplicates and card age span inputs).
    processor
        Display name of the processor, for the summary.
    n_records
        Records read from the inputs.
    skipped
        Records the importer already skipped while parsing; :func:`build_attempts`'s skips follow.
    decline_sources
        See :func:`build_attempts`.

    Returns
    -------
    ImportResult
        Not yet validated; pass ``result.attempts`` to
        :func:`features.validation.validate_attempts`.
    """
    attempts, more_skips, grouped = build_attempts(records, decline_sources=decline_sources)
    return ImportResult(
        processor=processor,
        attempts=attempts,
        n_records=n_records,
        skipped=[*skipped, *more_skips],
        grouped_by=grouped,
    )
