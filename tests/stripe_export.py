"""Test helper: write a simulated world's attempts as Stripe Charge objects (JSON lines).

The output is shaped like the documented Charge object (docs.stripe.com/api/charges/object) and
like ``tests/fixtures/stripe/charges_list.json``, so that ``retryopt import-stripe`` can be
exercised on a history of realistic size:

- one Charge per authorization attempt, ``id`` ``ch_...``; all attempts of one world charge share
  an ``invoice`` (``in_...``) and a ``payment_intent`` (``pi_...``), as an invoice's automatic
  retries do on Stripe;
- ``created`` in unix seconds; ``amount`` in minor units; ``currency`` lower case;
- declines as Stripe reports issuer declines: ``failure_code`` ``card_declined`` (or the
  dedicated codes ``expired_card`` and ``processing_error``), the issuer's decline code in
  ``outcome.reason``, the ISO 8583 response in ``outcome.network_decline_code``, Stripe's
  ``outcome.advice_code`` and the Mastercard merchant advice code (the world's
  ``network_advice_code``) in ``outcome.network_advice_code``;
- ``payment_method_details.card`` with a ``fingerprint`` (one per world ``card_id``), ``last4``,
  brand, network, funding, issuing country, expiry and issuer.

Identifiers are derived from the world's ids with a keyed hash, so an export is deterministic
and :func:`stripe_ids` maps every attempt back to its world ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

_BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class DeclineShape:
    """How Stripe reports one decline code on a failed Charge.

    ``failure_code`` is the API error code (docs.stripe.com/error-codes), ``failure_message`` the
    customer-facing text, ``network_decline_code`` the ISO 8583 response code of the network and
    ``advice_code`` Stripe's ``outcome.advice_code`` (``try_again_later``, ``do_not_try_again``,
    ``confirm_card_data``; docs.stripe.com/declines/codes).
    """

    failure_code: str
    failure_message: str
    network_decline_code: str | None
    advice_code: str | None


_DECLINED: Final = "Your card was declined."
_NEVER: Final = "do_not_try_again"
_LATER: Final = "try_again_later"

# Stripe decline codes (docs.stripe.com/declines/codes) with the error code Stripe pairs them with
# and the usual ISO 8583 response code (Visa/Mastercard response code tables: 51 insufficient
# funds, 05 do not honor, 54 expired card, 41 lost, 43 stolen, 04 pick up, 59 suspected fraud,
# 14 invalid account number, R0 stop payment order, 65 exceeds frequency limit, 91 issuer
# unavailable, 96 system malfunction, 19 re-enter transaction, 1A additional authentication).
# generic_decline carries 05, as in the fixture; the importer then prefers the network code.
DECLINE_SHAPES: Final[Mapping[str, DeclineShape]] = {
    "insufficient_funds": DeclineShape(
        "card_declined", "Your card has insufficient funds.", "51", _LATER
    ),
    "do_not_honor": DeclineShape("card_declined", _DECLINED, "05", _LATER),
    "generic_decline": DeclineShape("card_declined", _DECLINED, "05", _LATER),
    "expired_card": DeclineShape(
        "expired_card", "Your card has expired.", "54", "confirm_card_data"
    ),
    "issuer_not_available": DeclineShape("card_declined", _DECLINED, "91", _LATER),
    "processing_error": DeclineShape(
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
        "96",
        _LATER,
    ),
    "try_again_later": DeclineShape("card_declined", _DECLINED, "19", _LATER),
    "authentication_required": DeclineShape(
        "card_declined",
        "Your card was declined. This transaction requires authentication.",
        "1A",
        None,
    ),
    "card_velocity_exceeded": DeclineShape("card_declined", _DECLINED, "65", _LATER),
    "fraudulent": DeclineShape("card_declined", _DECLINED, "59", _NEVER),
    "lost_card": DeclineShape("card_declined", _DECLINED, "41", _NEVER),
    "stolen_card": DeclineShape("card_declined", _DECLINED, "43", _NEVER),
    "pickup_card": DeclineShape("card_declined", _DECLINED, "04", _NEVER),
    "invalid_account": DeclineShape("card_declined", _DECLINED, "14", _NEVER),
    "stop_payment_order": DeclineShape("card_declined", _DECLINED, "R0", _NEVER),
}
_UNKNOWN_DECLINE: Final = DeclineShape("card_declined", _DECLINED, None, None)

# payment_method_details.card.network for each card brand (Stripe's network names).
_NETWORK: Final[Mapping[str, str]] = {
    "visa": "visa",
    "mastercard": "mastercard",
    "amex": "amex",
    "discover": "discover",
    "jcb": "jcb",
    "diners": "diners",
    "unionpay": "unionpay",
    "cartes_bancaires": "cartes_bancaires",
    "eftpos_au": "eftpos_au",
    "interac": "interac",
}

_ATTEMPT_COLUMNS: Final[tuple[str, ...]] = (
    "attempt_id",
    "charge_id",
    "customer_id",
    "attempted_at",
    "amount",
    "currency",
    "outcome",
    "decline_code",
    "network_advice_code",
    "card_brand",
    "card_funding",
    "card_country",
    "card_exp_month",
    "card_exp_year",
    "card_id",
    "issuer",
)


@functools.lru_cache(maxsize=1 << 18)
def stripe_id(prefix: str, key: str, *, length: int = 24, salt: str = "") -> str:
    """A Stripe-looking identifier (``prefix`` + base62) derived deterministically from ``key``.

    Parameters
    ----------
    prefix
        Object prefix including the underscore, e.g. ``"ch_"``, ``"in_"``, ``"cus_"``, or ``""``
        for a bare token such as a card fingerprint.
    key
        The source identifier (a world id).
    length
        Number of base62 characters after the prefix (at most 64).
    salt
        Separates id spaces derived from the same key (e.g. ``pi`` and ``in`` of one charge).
    """
    if not 0 < length <= 64:
        raise ValueError(f"length must be in 1..64, got {length}")
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=length).digest()
    return prefix + "".join([_BASE62[b % 62] for b in digest])


def _digits(key: str, n: int) -> str:
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest())
    return str(value % 10**n).zfill(n)


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    """A column as Python values, missing -> None (fast: no per-cell Arrow boxing)."""
    values = frame[name]
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        # unix seconds, as Stripe's ``created``
        seconds = (values - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        return seconds.astype("int64").tolist()
    out: list[Any] = values.astype(object).where(values.notna(), None).tolist()
    return out


def stripe_ids(attempts: pd.DataFrame) -> pd.DataFrame:
    """The Stripe ids an export gives each world attempt.

    Returns
    -------
    pandas.DataFrame
        One row per attempt, aligned with ``attempts``: ``attempt_id`` and ``charge_id`` (world),
        ``stripe_charge`` (``ch_...``), ``invoice`` (``in_...``), ``payment_intent``
        (``pi_...``), ``customer`` (``cus_...``), ``fingerprint``.
    """
    return pd.DataFrame(_id_columns(attempts), index=attempts.index)


def _id_columns(attempts: pd.DataFrame) -> dict[str, list[str]]:
    attempt = _column(attempts, "attempt_id")
    charge = _column(attempts, "charge_id")
    return {
        "attempt_id": attempt,
        "charge_id": charge,
        "stripe_charge": [stripe_id("ch_3", a, salt="ch") for a in attempt],
        "invoice": [stripe_id("in_1", ch, salt="in") for ch in charge],
        "payment_intent": [stripe_id("pi_3", ch, salt="pi") for ch in charge],
        "customer": [
            stripe_id("cus_", cu, length=14, salt="cus") for cu in _column(attempts, "customer_id")
        ],
        "fingerprint": [
            stripe_id("", card, length=16, salt="fp") for card in _column(attempts, "card_id")
        ],
    }


def charge_object(
    row: Mapping[str, Any],
    *,
    ids: Mapping[str, str],
    risk_score: int,
    first_charge_of_customer: bool,
) -> dict[str, Any]:
    """One Stripe Charge object for one world attempt.

    Parameters
    ----------
    row
        A world attempt as Python values (contract columns; ``attempted_at`` in unix seconds,
        missing values None).
    ids
        Its row of :func:`stripe_ids`.
    risk_score
        Radar risk score (0-99) for ``outcome.risk_score``.
    first_charge_of_customer
        Whether this is the customer's first invoice (``description`` "Subscription creation").

    Raises
    ------
    ValueError
        If ``outcome`` is neither ``succeeded`` nor ``failed`` (naming the attempt).
    """
    outcome = str(row["outcome"])
    if outcome not in ("succeeded", "failed"):
        raise ValueError(f"attempt {row['attempt_id']}: outcome {outcome!r} is not a Charge status")
    ok = outcome == "succeeded"
    amount = int(row["amount"])
    created = int(row["attempted_at"])
    card_key = str(row["card_id"])
    brand = str(row["card_brand"])
    country = str(row["card_country"])
    if ok:
        shape = None
        stripe_outcome: dict[str, Any] = {
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": risk_score,
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
    else:
        code = str(row["decline_code"])
        shape = DECLINE_SHAPES.get(code, _UNKNOWN_DECLINE)
        stripe_outcome = {
            "advice_code": shape.advice_code,
            "network_advice_code": _opt(row["network_advice_code"]),
            "network_decline_code": shape.network_decline_code,
            "network_status": "declined_by_network",
            "reason": code,
            "risk_level": "normal",
            "risk_score": risk_score,
            "seller_message": f"The bank returned the decline code `{code}`.",
            "type": "issuer_declined",
        }
    charge_id = ids["stripe_charge"]
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if ok else 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": ("txn_" + charge_id[3:]) if ok else None,
        "billing_details": {
            "address": {
                "city": None,
                "country": country,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": None,
            "name": None,
            "phone": None,
        },
        "calculated_statement_descriptor": "RETRYOPT SIM",
        "captured": ok,
        "created": created,
        "currency": str(row["currency"]).lower(),
        "customer": ids["customer"],
        "description": (
            "Subscription creation" if first_charge_of_customer else "Subscription update"
        ),
        "destination": None,
        "dispute": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None if shape is None else shape.failure_code,
        "failure_message": None if shape is None else shape.failure_message,
        "fraud_details": {},
        "invoice": ids["invoice"],
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "order": None,
        "outcome": stripe_outcome,
        "paid": ok,
        "payment_intent": ids["payment_intent"],
        "payment_method": stripe_id("pm_1", card_key, salt="pm"),
        "payment_method_details": {
            "card": {
                "amount_authorized": amount if ok else None,
                "authorization_code": _digits(f"auth|{charge_id}", 6) if ok else None,
                "brand": brand,
                "checks": {
                    "address_line1_check": None,
                    "address_postal_code_check": None,
                    "cvc_check": None,  # off-session renewals carry no CVC
                },
                "country": country,
                "exp_month": int(row["card_exp_month"]),
                "exp_year": int(row["card_exp_year"]),
                "extended_authorization": {"status": "disabled"},
                "fingerprint": ids["fingerprint"],
                "funding": str(row["card_funding"]),
                "incremental_authorization": {"status": "unavailable"},
                "installments": None,
                "issuer": _opt(row["issuer"]),
                "last4": _digits(f"last4|{card_key}", 4),
                "mandate": None,
                "multicapture": {"status": "unavailable"},
                "network": _NETWORK.get(brand, brand),
                "network_token": {"used": False},
                "network_transaction_id": _digits(f"ntid|{charge_id}", 15) if ok else None,
                "overcapture": {"maximum_amount_capturable": 0, "status": "unavailable"},
                "regulated_status": "unregulated",
                "three_d_secure": None,
                "wallet": None,
            },
            "type": "card",
        },
        "radar_options": {},
        "receipt_email": None,
        "receipt_number": None,
        "receipt_url": None,
        "refunded": False,
        "review": None,
        "shipping": None,
        "source": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": outcome,
        "transfer_data": None,
        "transfer_group": None,
    }


def attempts_to_charges(attempts: pd.DataFrame, *, seed: int = 0) -> list[dict[str, Any]]:
    """Stripe Charge objects for every world attempt, in the order of ``attempts``.

    Parameters
    ----------
    attempts
        A canonical contract frame (``SimulatedWorld.attempts``); ``card_id`` must be present.
    seed
        Seeds the Radar risk scores (the only random field).

    Raises
    ------
    ValueError
        If a needed column is missing, or ``card_id`` is missing on some rows (1-based rows).
    """
    missing = [col for col in _ATTEMPT_COLUMNS if col not in attempts.columns]
    if missing:
        raise ValueError(f"attempts lack column(s): {', '.join(missing)}")
    no_card = np.flatnonzero(pd.isna(attempts["card_id"]).to_numpy())
    if no_card.size:
        rows = ", ".join(str(i + 1) for i in no_card[:5])
        raise ValueError(f"card_id is missing on {no_card.size} row(s) (rows {rows}, ...)")
    id_columns = _id_columns(attempts)
    ids = [dict(zip(id_columns, v, strict=True)) for v in zip(*id_columns.values(), strict=True)]
    rng = np.random.default_rng(seed)
    risk = rng.integers(5, 65, size=len(attempts))
    order = attempts.sort_values(["customer_id", "attempted_at"], kind="mergesort")
    first_charge = order.groupby("customer_id", sort=False)["charge_id"].transform("first")
    is_first = (attempts["charge_id"] == first_charge.reindex(attempts.index)).to_numpy()
    columns = {col: _column(attempts, col) for col in _ATTEMPT_COLUMNS}
    records = [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
    return [
        charge_object(row, ids=row_ids, risk_score=int(score), first_charge_of_customer=bool(first))
        for row, row_ids, score, first in zip(records, ids, risk, is_first, strict=True)
    ]


def write_jsonl_atomic(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one compact JSON object per line to ``path`` atomically (temp file + rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, separators=(",", ":")))
                fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def export_attempts_jsonl(attempts: pd.DataFrame, path: str | Path, *, seed: int = 0) -> Path:
    """Write ``attempts`` as Stripe Charge objects, one per line, to ``path`` (atomically)."""
    return write_jsonl_atomic(attempts_to_charges(attempts, seed=seed), path)
