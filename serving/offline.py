"""Offline batch decisions: the attempts table of failed charges in, one decision per charge out.

For billing systems that schedule retries in a nightly job (``retryopt decide``). The input is
the data contract's attempts table (docs/data-contract.md), optionally with a ``now`` column:

- **decided charges**: every charge whose last attempt (in the contract's order: time, then
  failed before succeeded, then ``attempt_id``) failed;
- **each decision request** is built exactly as a client of ``POST /v1/retry-decisions/batch``
  would: ``charge`` = the charge's id, customer, amount, currency, time zone and the card of its
  last attempt; ``attempts`` = all of the charge's attempts, oldest first, each with its card;
  ``customer_history`` = the customer's attempts of other charges strictly before ``now``;
  ``now`` = the charge's ``now`` (the column, else the ``now`` argument, else the clock);
  ``constraints`` = the given ones (default: the server settings' defaults);
- **decisions** come from :func:`retryopt.serving.service.decide_requests`, the code the batch
  route runs, in conflict-free groups (two charges of one customer never share a call, as the
  micro-batcher keeps them apart), so each charge gets exactly the API's answer.

Output: one row per decided charge, ``charge_id``, ``customer_id``, ``now`` and the API's fields
(:data:`DECISION_COLUMNS`; ``alternatives`` as JSON text; ``decision_id`` is empty: offline
decisions are not logged in a store).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from retryopt.features import contract as c
from retryopt.features.card_numbers import contains_card_number, find_card_number
from retryopt.features.validation_columns import parse_timestamps
from retryopt.serving.microbatch import conflict_free_groups
from retryopt.serving.schemas import DecisionOut, FieldIssue, RequestError
from retryopt.serving.service import DecisionService, decide_requests

__all__ = [
    "DECISION_COLUMNS",
    "NOW_COLUMN",
    "OfflineInputError",
    "decide_attempts",
    "decision_requests",
    "split_now_column",
]

NOW_COLUMN: Final = "now"
"""Optional input column: the decision time of the row's charge (ISO 8601 with a zone)."""

DECISION_COLUMNS: Final[tuple[str, ...]] = (
    "charge_id",
    "customer_id",
    "now",
    *(name for name in DecisionOut.model_fields if name != "charge_id"),
)
"""Columns of the decisions table: the charge, its decision time, then the API's fields."""


class OfflineInputError(ValueError):
    """The attempts table cannot be decided (bad ``now`` values, a card number, a bad request)."""


def split_now_column(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series | None]:
    """Take the optional ``now`` column off a raw attempts table.

    Returns
    -------
    (pandas.DataFrame, pandas.Series or None)
        The table without ``now`` (for :func:`features.validation.validate_attempts`), and the
        decision time per ``charge_id`` (``datetime64[ns, UTC]``; charges whose rows leave it
        empty are absent), or None without the column.

    Raises
    ------
    OfflineInputError
        When a ``now`` value is not an ISO 8601 time with a zone in the valid range, or the rows
        of one charge give different values (1-based data rows named).
    """
    if NOW_COLUMN not in raw.columns:
        return raw, None
    rest = raw.drop(columns=[NOW_COLUMN])
    column = raw[NOW_COLUMN]
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    values: list[str | None] = [None if pd.isna(v) else str(v) for v in column]
    parsed = parse_timestamps(pa.array(values, type=pa.string()))
    bad = np.zeros(len(raw), dtype=bool)
    for mask in parsed.bad.values():
        bad |= mask
    if bad.any():
        rows = (np.flatnonzero(bad)[:5] + 1).tolist()
        raise OfflineInputError(
            f"column 'now': not an ISO 8601 time with a zone in the valid range (rows {rows})"
        )
    times = pd.Series(parsed.values.to_pandas(), index=raw.index).astype("datetime64[ns, UTC]")
    frame = pd.DataFrame({"charge": raw[c.CHARGE_ID].astype("string"), "now": times}).dropna()
    distinct = frame.groupby("charge", sort=False)["now"].nunique()
    if (distinct > 1).any():
        charge = str(distinct[distinct > 1].index[0])
        rows = (np.flatnonzero((raw[c.CHARGE_ID] == charge).to_numpy())[:5] + 1).tolist()
        raise OfflineInputError(
            f"column 'now': the rows of one charge give different decision times (rows {rows})"
        )
    nows = frame.groupby("charge", sort=False)["now"].first()
    nows.index = nows.index.astype(str)
    return rest, nows


def _iso(values: pd.Series) -> list[str | None]:
    text = values.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [None if pd.isna(v) else str(v) for v in text]


def _text(values: pd.Series) -> list[str | None]:
    return [None if pd.isna(v) else str(v) for v in values]


def _ints(values: pd.Series) -> list[int]:
    return [int(v) for v in values.to_numpy(dtype=np.int64)]


def decision_requests(
    attempts: pd.DataFrame,
    *,
    nows: pd.Series | None = None,
    now: datetime | None = None,
    constraints: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The API's decision request for every charge whose last attempt failed.

    Parameters
    ----------
    attempts
        Canonical attempts frame (:func:`features.validation.validate_attempts`: sorted by
        charge, then time, failed before succeeded, then ``attempt_id``).
    nows
        Decision time per ``charge_id`` (:func:`split_now_column`); charges not in it use
        ``now``.
    now
        Decision time of the other charges (None: the request carries none, the clock decides).
    constraints
        ``constraints`` object of every request (the API's JSON shape); None: server defaults.

    Returns
    -------
    list of dict
        One request per decided charge, ordered by customer then charge id, in the JSON shape
        of ``POST /v1/retry-decisions`` (see the module docstring).
    """
    n = len(attempts)
    if n == 0:
        return []
    col: dict[str, list[Any]] = {
        name: _text(attempts[name])
        for name in (
            c.ATTEMPT_ID,
            c.CHARGE_ID,
            c.CUSTOMER_ID,
            c.CURRENCY,
            c.OUTCOME,
            c.DECLINE_CODE,
            c.NETWORK_ADVICE_CODE,
            c.CARD_BRAND,
            c.CARD_FUNDING,
            c.CARD_COUNTRY,
            c.CARD_ID,
            c.ISSUER,
            c.CUSTOMER_TIMEZONE,
        )
    }
    col[c.ATTEMPTED_AT] = _iso(attempts[c.ATTEMPTED_AT])
    col[c.CARD_ADDED_AT] = _iso(attempts[c.CARD_ADDED_AT])
    for name in (c.AMOUNT, c.CARD_EXP_MONTH, c.CARD_EXP_YEAR):
        col[name] = _ints(attempts[name])
    times = attempts[c.ATTEMPTED_AT].to_numpy(dtype="datetime64[ns]").astype(np.int64)

    charge = attempts[c.CHARGE_ID].to_numpy(dtype=object)
    starts = np.flatnonzero(np.r_[True, charge[1:] != charge[:-1]])
    ends = np.r_[starts[1:], n]
    last = ends - 1
    decided = [i for i in range(starts.size) if col[c.OUTCOME][last[i]] == c.FAILED]
    by_customer: dict[str, list[int]] = {}
    for i, cust in enumerate(col[c.CUSTOMER_ID]):
        by_customer.setdefault(str(cust), []).append(i)

    def card(r: int) -> dict[str, Any]:
        return {
            "brand": col[c.CARD_BRAND][r],
            "funding": col[c.CARD_FUNDING][r],
            "country": col[c.CARD_COUNTRY][r],
            "added_at": col[c.CARD_ADDED_AT][r],
            "exp_month": col[c.CARD_EXP_MONTH][r],
            "exp_year": col[c.CARD_EXP_YEAR][r],
            "issuer": col[c.ISSUER][r],
            "card_id": col[c.CARD_ID][r],
        }

    def attempt(r: int) -> dict[str, Any]:
        return {
            "attempted_at": col[c.ATTEMPTED_AT][r],
            "outcome": col[c.OUTCOME][r],
            "decline_code": col[c.DECLINE_CODE][r],
            "network_advice_code": col[c.NETWORK_ADVICE_CODE][r],
            "attempt_id": col[c.ATTEMPT_ID][r],
            "card": card(r),
        }

    def history_row(r: int) -> dict[str, Any]:
        return {
            "charge_id": col[c.CHARGE_ID][r],
            "attempted_at": col[c.ATTEMPTED_AT][r],
            "outcome": col[c.OUTCOME][r],
            "attempt_id": col[c.ATTEMPT_ID][r],
            "amount": col[c.AMOUNT][r],
            "currency": col[c.CURRENCY][r],
            "decline_code": col[c.DECLINE_CODE][r],
            "network_advice_code": col[c.NETWORK_ADVICE_CODE][r],
            "card_brand": col[c.CARD_BRAND][r],
            "card_funding": col[c.CARD_FUNDING][r],
            "card_country": col[c.CARD_COUNTRY][r],
            "card_added_at": col[c.CARD_ADDED_AT][r],
            "card_exp_month": col[c.CARD_EXP_MONTH][r],
            "card_exp_year": col[c.CARD_EXP_YEAR][r],
            "card_id": col[c.CARD_ID][r],
            "issuer": col[c.ISSUER][r],
        }

    known = {} if nows is None else nows.to_dict()
    default_ns = None if now is None else pd.Timestamp(now).value
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for i in decided:
        r = int(last[i])
        charge_id, customer = str(col[c.CHARGE_ID][r]), str(col[c.CUSTOMER_ID][r])
        when = known.get(charge_id)
        when_ns = default_ns if when is None else pd.Timestamp(when).value
        request: dict[str, Any] = {
            "charge": {
                "charge_id": charge_id,
                "customer_id": customer,
                "amount": col[c.AMOUNT][r],
                "currency": col[c.CURRENCY][r],
                "card": card(r),
                "customer_timezone": col[c.CUSTOMER_TIMEZONE][r],
            },
            "attempts": [attempt(k) for k in range(int(starts[i]), int(ends[i]))],
        }
        history = [
            history_row(k)
            for k in by_customer[customer]
            if charge[k] != charge_id and (when_ns is None or times[k] < when_ns)
        ]
        if history:
            history.sort(key=lambda h: (h["attempted_at"], h["attempt_id"]))
            request["customer_history"] = history
        if when_ns is not None:
            request["now"] = _iso(pd.Series(pd.to_datetime([when_ns], utc=True)))[0]
        if constraints is not None:
            request["constraints"] = dict(constraints)
        requests.append((customer, charge_id, request))
    requests.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in requests]


def _named(issues: Sequence[FieldIssue], requests: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for issue in issues[:20]:
        field = issue.field
        if field.startswith("requests["):
            index = int(field[len("requests[") : field.index("]")])
            rest = field[field.index("]") + 2 :]
            field = f"charge {requests[index]['charge']['charge_id']!r}: {rest}"
        lines.append(f"  {field}: {issue.message}")
    more = len(issues) - 20
    return "\n".join(lines) + (f"\n  ... and {more} more" if more > 0 else "")


def _column_with_card_number(attempts: pd.DataFrame) -> str | None:
    """The first text column of ``attempts`` holding a card number anywhere, else None."""
    for name in attempts.columns:
        column = attempts[name]
        if pd.api.types.is_string_dtype(column.dtype) and any(
            contains_card_number(str(v)) for v in column.dropna().unique()
        ):
            return str(name)
    return None


def decide_attempts(
    attempts: pd.DataFrame,
    *,
    service: DecisionService,
    nows: pd.Series | None = None,
    now: datetime | None = None,
    constraints: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Decide every charge of ``attempts`` whose last attempt failed, as the API does.

    Parameters
    ----------
    attempts
        Canonical attempts frame; it must hold every attempt of each customer it contains (a
        customer's other charges are the decision's ``customer_history``).
    service
        The decision service (:func:`retryopt.serving.service.service_for`).
    nows, now, constraints
        As :func:`decision_requests`; ``now`` defaults to the clock once for the whole call.

    Returns
    -------
    pandas.DataFrame
        :data:`DECISION_COLUMNS`, one row per decided charge, ordered by customer then charge.

    Raises
    ------
    OfflineInputError
        When a request holds a card number (its field path named, never the value) or breaks
        the API's rules (each bad field named with its charge id).
    """
    column = _column_with_card_number(attempts)
    if column is not None:
        raise OfflineInputError(
            f"a card number was found in column {column!r} of the attempts table; card numbers "
            "must never be stored or processed"
        )
    fixed_now = now or datetime.now(UTC)
    requests = decision_requests(attempts, nows=nows, now=fixed_now, constraints=constraints)
    for request in requests:
        where = find_card_number(request)
        if where is not None:
            raise OfflineInputError(
                f"a card number was found in the attempts table (decision request field "
                f"{where}); card numbers must never be stored or processed"
            )
    groups = conflict_free_groups(
        requests,
        lambda r: [r["charge"]["customer_id"]],
        max_size=service.limits.max_batch,
    )
    decided: list[dict[str, Any] | None] = [None] * len(requests)
    for group in groups:
        chunk = [requests[i] for i in group]
        try:
            answers = decide_requests(service, chunk, now=None)
        except RequestError as exc:
            raise OfflineInputError(
                f"decision requests break the API's rules:\n{_named(exc.issues, chunk)}"
            ) from None
        for i, answer in zip(group, answers, strict=True):
            decided[i] = answer
    return decisions_frame(requests, [d for d in decided if d is not None])


def decisions_frame(
    requests: Sequence[Mapping[str, Any]], decisions: Sequence[Mapping[str, Any]]
) -> pd.DataFrame:
    """The decisions table (:data:`DECISION_COLUMNS`) of requests and their API answers."""
    rows = {name: [d[name] for d in decisions] for name in DECISION_COLUMNS[3:]}
    rows["alternatives"] = [orjson.dumps(a).decode() for a in rows["alternatives"]]
    frame = pd.DataFrame(
        {
            "charge_id": pd.array([d["charge_id"] for d in decisions], dtype="str"),
            "customer_id": pd.array([r["charge"]["customer_id"] for r in requests], dtype="str"),
            "now": pd.to_datetime(
                pd.Series([r.get("now") for r in requests], dtype="str"), utc=True, format="ISO8601"
            ),
            **rows,
        },
        columns=list(DECISION_COLUMNS),
    )
    frame["retry_at"] = pd.to_datetime(frame["retry_at"], utc=True, format="ISO8601")
    for name in ("now", "retry_at"):
        frame[name] = frame[name].astype("datetime64[us, UTC]")
    for name in ("success_probability", "expected_value", "attempt_cost", "propensity"):
        frame[name] = frame[name].astype("float64")
    for name in (
        "action",
        "alternatives",
        "reason",
        "action_required",
        "explanation",
        "model_version",
        "policy",
        "value_currency",
        "decision_id",
        "exploration",
        "arm",
    ):
        frame[name] = frame[name].astype("str")
    return frame
