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
record into a :class:`features.importing.ChargeRecord` (or raise
:class:`features.importing.RecordError` with a reason), and :func:`import_stripe_files` reads
files, hands the records of all of them to :func:`features.importing.import_records` (duplicates,
card age, grouping, contract frame) and reports what it skipped and why. Validation of the result
is left to :func:`features.validation.validate_attempts`.

``card_added_at``: a Stripe charge carries no card-attach time, so it is derived (see
:mod:`features.importing`) as the first time the card was seen: the earliest ``created`` of any
charge (of any status, in any input file) with the same card fingerprint for the same customer.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from retryopt.features.importing import (
    SKIP_INVALID,
    SKIP_NON_CARD,
    SKIP_NOT_A_CHARGE,
    SKIP_UNKNOWN_STATUS,
    SKIP_UNREADABLE,
    STATUS_CANCELED,
    STATUS_FAILED,
    STATUS_PENDING,
    STATUS_SUCCEEDED,
    ChargeRecord,
    ImportResult,
    RecordError,
    SkippedRecord,
    clean_text,
    import_records,
    normalize_brand,
    normalize_decline_code,
    normalize_funding,
    parse_major_amount,
    to_int,
)
from retryopt.features.localtime import TIMESTAMP_RANGE_TEXT, in_valid_range

InputFormat = Literal["auto", "json", "jsonl", "csv"]
INPUT_FORMATS: Final[tuple[str, ...]] = ("auto", "json", "jsonl", "csv")

# Decline codes that say nothing beyond "declined": when the charge carries an ISO 8583 response
# code (outcome.network_decline_code), that code is more specific and is used instead.
GENERIC_DECLINE_CODES: Final[frozenset[str]] = frozenset({"generic_decline", "card_declined"})
# Where choose_decline_code looks, for the detail of a failed charge without any decline code.
_DECLINE_SOURCES: Final = "outcome.reason, decline code, failure_code or network code"


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
    "uncaptured": STATUS_CANCELED,
    "canceled": STATUS_CANCELED,
    "cancelled": STATUS_CANCELED,
}

# Seller messages such as "The bank returned the decline code `insufficient_funds`."
_SELLER_MESSAGE_CODE = re.compile(r"decline code\s*`?([A-Za-z0-9_]+)`?")
_CURRENCY_RE = re.compile(r"^[a-z]{3}$")
_CREATED_HEADER_RE = re.compile(r"^created(?: date)?(?: \((?P<zone>[^)]+)\))?$")


# --------------------------------------------------------------------------------------------
# Small value helpers


def _is_map(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, checking ``dict`` (what JSON and CSV produce) first."""
    return isinstance(value, (dict, Mapping))


def _ref(value: Any) -> str | None:
    """An id field that may be a string or an expanded object with ``id``."""
    if _is_map(value):
        return clean_text(value.get("id"))
    return clean_text(value)


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
        The chosen code, normalised by :func:`features.importing.normalize_decline_code`.
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


def _in_range(created: datetime) -> datetime:
    """``created`` if inside the project's valid range (features.localtime), else skipped."""
    if not in_valid_range(created):
        raise RecordError(
            SKIP_INVALID, f"created is outside the valid range ({TIMESTAMP_RANGE_TEXT})"
        )
    return created


def _created_from_unix(value: Any) -> datetime:
    seconds = to_int(value, name="created")
    if seconds is None:
        raise RecordError(SKIP_INVALID, "created is missing")
    try:
        created = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise RecordError(SKIP_INVALID, f"created is out of range ({value!r})") from None
    return _in_range(created)


def parse_created_text(text: str, *, zone: str = "UTC") -> datetime:
    """Parse a Dashboard date: ``YYYY-MM-DD HH:MM[:SS]`` in ``zone`` or ISO 8601 with offset/Z.

    Raises
    ------
    RecordError
        If the text is not a date-time.
    """
    raw = text.strip()
    if re.fullmatch(r"-?\d+", raw):  # some exports carry unix seconds
        return _created_from_unix(int(raw))
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise RecordError(SKIP_INVALID, f"created date is not a date-time ({text!r})") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(zone))
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise RecordError(SKIP_INVALID, f"created date is out of range ({text!r})") from None
    return _in_range(parsed)


# --------------------------------------------------------------------------------------------
# Charge objects (JSON)


def parse_charge_object(charge: Mapping[str, Any], *, location: str = "") -> ChargeRecord:
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
    RecordError
        With ``reason`` one of the ``SKIP_*`` keys when the record is not a card charge or is
        malformed.
    """
    if not _is_map(charge):
        raise RecordError(SKIP_INVALID, f"expected a JSON object, got {type(charge).__name__}")
    obj = charge.get("object")
    if obj is not None and obj != "charge":
        raise RecordError(SKIP_NOT_A_CHARGE, f"object is {obj!r}, not 'charge'")
    charge_id = clean_text(charge.get("id"))
    if charge_id is None:
        raise RecordError(SKIP_INVALID, "id is missing")

    status = (clean_text(charge.get("status")) or "").lower()
    if status not in (STATUS_SUCCEEDED, STATUS_FAILED, STATUS_PENDING):
        raise RecordError(SKIP_UNKNOWN_STATUS, f"status is {charge.get('status')!r}")

    card = _card_details(charge)
    created = _created_from_unix(charge.get("created"))
    currency = (clean_text(charge.get("currency")) or "").lower()
    if not _CURRENCY_RE.match(currency):
        raise RecordError(SKIP_INVALID, f"currency is {charge.get('currency')!r}")
    amount = to_int(charge.get("amount"), name="amount")
    if amount is None or amount <= 0:
        raise RecordError(SKIP_INVALID, f"amount is {charge.get('amount')!r}, not > 0")

    outcome = charge.get("outcome") or {}
    if not _is_map(outcome):
        outcome = {}
    last_error = charge.get("last_payment_error") or {}
    if not _is_map(last_error):
        last_error = {}
    network_decline = clean_text(outcome.get("network_decline_code"))
    decline = None
    if status == STATUS_FAILED:
        decline = choose_decline_code(
            outcome_reason=outcome.get("reason"),
            decline_code=charge.get("decline_code") or last_error.get("decline_code"),
            failure_code=charge.get("failure_code") or last_error.get("code"),
            network_decline_code=network_decline,
        )
    advice = clean_text(outcome.get("network_advice_code"))
    advice = advice or clean_text(outcome.get("advice_code"))

    return ChargeRecord(
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
        card_country=(clean_text(card.get("country")) or "").upper() or None,
        card_exp_month=to_int(card.get("exp_month"), name="exp_month"),
        card_exp_year=to_int(card.get("exp_year"), name="exp_year"),
        card_fingerprint=clean_text(card.get("fingerprint")),
        card_last4=clean_text(card.get("last4")),
        issuer=clean_text(card.get("issuer")) or clean_text(card.get("iin")),
        location=location,
    )


def _card_details(charge: Mapping[str, Any]) -> Mapping[str, Any]:
    """``payment_method_details.card``, or the legacy ``source`` card; non-card -> skip."""
    details = charge.get("payment_method_details")
    if _is_map(details) and details:
        kind = details.get("type")
        card = details.get("card")
        if kind not in (None, "card") or not _is_map(card):
            raise RecordError(SKIP_NON_CARD, f"payment method type is {kind!r}")
        return card
    for legacy in ("source", "card"):
        src = charge.get(legacy)
        if _is_map(src) and src.get("object") == "card":
            return src
    raise RecordError(SKIP_NON_CARD, "no payment_method_details.card on the charge")


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
    RecordError
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
        raise RecordError(
            SKIP_UNREADABLE,
            f"missing required column(s) {wanted}; header is {list(header)!r}",
        )
    return mapping


def created_zone(header_name: str) -> str:
    """Zone named in a created-date header (``Created date (Europe/Berlin)``); UTC by default.

    Raises
    ------
    RecordError
        With reason ``unreadable_input`` if the header names a zone that is not an IANA zone.
    """
    found = re.search(r"\(([^)]+)\)", header_name)
    zone = found.group(1).strip() if found else "UTC"
    if zone.upper() == "UTC":
        return "UTC"
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise RecordError(
            SKIP_UNREADABLE, f"column {header_name!r} names an unknown time zone {zone!r}"
        ) from None
    return zone


def parse_dashboard_row(
    row: Mapping[str, str], columns: Mapping[str, str], *, zone: str = "UTC", location: str = ""
) -> ChargeRecord:
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
    RecordError
        With ``reason`` one of the ``SKIP_*`` keys.
    """

    def get(fld: str) -> str | None:
        name = columns.get(fld)
        return clean_text(row.get(name)) if name is not None else None

    charge_id = get("id")
    if charge_id is None:
        raise RecordError(SKIP_INVALID, "id is empty")
    raw_status = (get("status") or "").lower()
    status = _CSV_STATUS.get(re.sub(r"\s+", " ", raw_status))
    if status is None:
        raise RecordError(SKIP_UNKNOWN_STATUS, f"Status is {get('status')!r}")

    kind = get("payment_method_type")
    if kind is not None and kind.lower() != "card":
        raise RecordError(SKIP_NON_CARD, f"payment method type is {kind!r}")
    if kind is None and get("brand") is None and get("last4") is None:
        raise RecordError(SKIP_NON_CARD, "no card columns filled (Card Brand, Card Last4)")

    currency = (get("currency") or "").lower()
    if not _CURRENCY_RE.match(currency):
        raise RecordError(SKIP_INVALID, f"Currency is {get('currency')!r}")
    amount_text = get("amount")
    if amount_text is None:
        raise RecordError(SKIP_INVALID, "Amount is empty")
    amount = parse_major_amount(amount_text, currency)
    if amount <= 0:
        raise RecordError(SKIP_INVALID, f"Amount is {amount_text!r}, not > 0")
    created_text = get("created")
    if created_text is None:
        raise RecordError(SKIP_INVALID, "created date is empty")
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

    return ChargeRecord(
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
        card_exp_month=to_int(get("exp_month"), name="Card Exp Month"),
        card_exp_year=to_int(get("exp_year"), name="Card Exp Year"),
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
        except RecursionError:
            return "json"  # one value, too deep: reported as unreadable when parsed
        return "json"
    return "csv"


# Stripe's shapes nest at most a few containers deep (an array or list page of charges, an
# event wrapping one); deeper nesting is not an export.
MAX_CONTAINER_DEPTH: Final = 4
_TOO_DEEP: Final = "JSON nested too deeply to be a Stripe export"


def _expand(value: Any, depth: int = 0) -> Iterator[Any]:
    """Charges inside a JSON value: arrays, list pages, webhook events, or a bare charge.

    Containers nested deeper than :data:`MAX_CONTAINER_DEPTH` are not a Stripe shape: they are
    yielded as they are (and skipped as "not a charge"), so hostile nesting costs no recursion.
    """
    if depth > MAX_CONTAINER_DEPTH:
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _expand(item, depth + 1)
    elif _is_map(value) and value.get("object") == "event":
        data = value.get("data")
        yield data.get("object") if _is_map(data) else value
    elif (
        _is_map(value)
        and (value.get("object") == "list" or "id" not in value)
        and isinstance(value.get("data"), list)
    ):
        for item in value["data"]:
            yield from _expand(item, depth + 1)
    else:
        yield value


def iter_json_records(text: str, *, fmt: str, source: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record)`` from JSON or JSON-lines text; bad lines yield an exception."""
    if fmt == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield f"{source}", RecordError(SKIP_UNREADABLE, f"not valid JSON: {exc}")
            return
        except RecursionError:
            yield f"{source}", RecordError(SKIP_UNREADABLE, _TOO_DEEP)
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
                RecordError(SKIP_INVALID, f"not valid JSON: {exc.msg}"),
            )
            continue
        except RecursionError:
            yield f"{source} line {line_no}", RecordError(SKIP_INVALID, _TOO_DEEP)
            continue
        records = list(_expand(value))
        for j, record in enumerate(records, start=1):
            where = f"{source} line {line_no}" + (f" item {j}" if len(records) > 1 else "")
            yield where, record


def parse_stripe_text(
    text: str, *, fmt: str, source: str
) -> tuple[list[ChargeRecord], list[SkippedRecord], int]:
    """Parse one input's text into charges; returns (charges, skipped, records read)."""
    charges: list[ChargeRecord] = []
    skipped: list[SkippedRecord] = []
    n = 0
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
        try:
            columns = map_csv_header(reader.fieldnames or [])
            zone = created_zone(columns["created"])
        except RecordError as exc:
            return [], [SkippedRecord(source, exc.reason, exc.detail)], 0
        for row_no, row in enumerate(reader, start=1):
            n += 1
            where = f"{source} row {row_no}"
            try:
                charges.append(parse_dashboard_row(row, columns, zone=zone, location=where))
            except RecordError as exc:
                cid = clean_text(row.get(columns["id"]))
                skipped.append(SkippedRecord(where, exc.reason, exc.detail, cid))
        return charges, skipped, n
    for where, record in iter_json_records(text, fmt=fmt, source=source):
        if isinstance(record, RecordError):
            if record.reason != SKIP_UNREADABLE:
                n += 1
            skipped.append(SkippedRecord(where, record.reason, record.detail))
            continue
        n += 1
        try:
            charges.append(parse_charge_object(record, location=where))
        except RecordError as exc:
            cid = clean_text(record.get("id")) if _is_map(record) else None
            skipped.append(SkippedRecord(where, exc.reason, exc.detail, cid))
    return charges, skipped, n


# --------------------------------------------------------------------------------------------
# Files


def import_stripe_files(
    paths: Sequence[str | Path], *, fmt: InputFormat | str = "auto"
) -> ImportResult:
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
    ImportResult
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
    all_charges: list[ChargeRecord] = []
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
    return import_records(
        all_charges,
        processor="Stripe",
        n_records=n_records,
        skipped=skipped,
        decline_sources=_DECLINE_SOURCES,
    )
