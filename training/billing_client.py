"""A billing service's side of the loop, over HTTP: report attempts, ask when to retry.

:class:`HttpBillingClient` is what a subscription billing system does with a running
``retryopt serve``:

- every attempt it makes (first charges, retries, successes and failures) is reported to
  ``POST /v1/attempt-outcomes`` with the charge's facts, and a retry names the ``decision_id``
  it followed;
- for a failed charge it asks ``POST /v1/retry-decisions/batch`` with the charge and ``now``
  only: the service fills the attempts and the customer's history from what was reported;
- ``POST /admin/reload`` deploys a retrained bundle.

It is also a :class:`features.decisions.RetryPolicy`, so the synthetic world's
:func:`training.simulate.play` can drive it round by round (the world draws the outcomes; the
client reports them before asking again). The JSON shaping is pure (:func:`outcome_json`,
:func:`charge_json`); only :class:`HttpBillingClient` does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx
import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.decisions import Constraints, DecisionBatch, PolicyDecisions

OUTCOMES_PER_CALL = 5000
DECISIONS_PER_CALL = 500


def _opt(value: Any) -> Any:
    return None if pd.isna(value) else value


def _iso(value: Any) -> str:
    t = pd.Timestamp(value)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.isoformat().replace("+00:00", "Z")


def card_json(row: pd.Series) -> dict[str, Any]:
    """The ``card`` object of a contract row."""
    return {
        "brand": row[c.CARD_BRAND],
        "funding": row[c.CARD_FUNDING],
        "country": row[c.CARD_COUNTRY],
        "added_at": _iso(row[c.CARD_ADDED_AT]),
        "exp_month": int(row[c.CARD_EXP_MONTH]),
        "exp_year": int(row[c.CARD_EXP_YEAR]),
        "issuer": _opt(row[c.ISSUER]),
        "card_id": _opt(row[c.CARD_ID]),
    }


def charge_json(row: pd.Series) -> dict[str, Any]:
    """The ``charge`` object of a decision request, from the charge's latest contract row."""
    return {
        "charge_id": row[c.CHARGE_ID],
        "customer_id": row[c.CUSTOMER_ID],
        "amount": int(row[c.AMOUNT]),
        "currency": str(row[c.CURRENCY]).lower(),
        "card": card_json(row),
        "customer_timezone": _opt(row[c.CUSTOMER_TIMEZONE]),
    }


def outcome_json(row: pd.Series, decision_id: str | None = None) -> dict[str, Any]:
    """The ``/v1/attempt-outcomes`` report of one contract row (with the charge's facts)."""
    out = {
        "charge_id": row[c.CHARGE_ID],
        "attempted_at": _iso(row[c.ATTEMPTED_AT]),
        "outcome": row[c.OUTCOME],
        "decline_code": _opt(row[c.DECLINE_CODE]),
        "network_advice_code": _opt(row[c.NETWORK_ADVICE_CODE]),
        "attempt_id": _opt(row[c.ATTEMPT_ID]),
        "card": card_json(row),
        "customer_id": row[c.CUSTOMER_ID],
        "amount": int(row[c.AMOUNT]),
        "currency": str(row[c.CURRENCY]).lower(),
        "customer_timezone": _opt(row[c.CUSTOMER_TIMEZONE]),
    }
    if decision_id is not None:
        out["decision_id"] = decision_id
    return {k: v for k, v in out.items() if v is not None}


def constraints_json(cons: Constraints) -> dict[str, Any]:
    """The request's ``constraints`` object of the budget, window and gap."""
    return {
        "max_retries": cons.max_retries,
        "window_hours": cons.window_hours,
        "min_gap_hours": cons.min_gap_hours,
    }


class HttpBillingClient:
    """A billing service talking to a running retry service (see the module docstring).

    Parameters
    ----------
    url
        Base URL of the service.
    api_key
        Bearer key when the service requires one.
    """

    name = "http"

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 300.0) -> None:
        headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.Client(base_url=url, timeout=timeout, headers=headers)
        self.reported: set[tuple[str, str]] = set()
        self.decision_of: dict[str, str] = {}
        self.decisions: list[dict[str, Any]] = []

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _post(self, path: str, body: object) -> Any:
        r = self.http.post(path, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"POST {path} answered {r.status_code}: {r.text[:500]}")
        return r.json()

    def report(self, rows: pd.DataFrame) -> int:
        """Report the attempts of ``rows`` not reported yet; how many were new."""
        todo = []
        for _, row in rows.iterrows():
            key = (str(row[c.CHARGE_ID]), _iso(row[c.ATTEMPTED_AT]))
            if key in self.reported:
                continue
            self.reported.add(key)
            # a charge's first attempt precedes any decision: only retries name one
            todo.append(outcome_json(row, self.decision_of.get(key[0])))
        for k in range(0, len(todo), OUTCOMES_PER_CALL):
            self._post("/v1/attempt-outcomes", {"outcomes": todo[k : k + OUTCOMES_PER_CALL]})
        return len(todo)

    def ask(
        self, charges: Iterable[tuple[pd.Series, np.datetime64]], cons: Constraints
    ) -> list[dict[str, Any]]:
        """Decisions for failed charges (their latest row, ``now``), attempts left to the store."""
        reqs = [
            {
                "charge": charge_json(row),
                "now": _iso(now),
                "constraints": constraints_json(cons),
            }
            for row, now in charges
        ]
        out: list[dict[str, Any]] = []
        for k in range(0, len(reqs), DECISIONS_PER_CALL):
            body = {"requests": reqs[k : k + DECISIONS_PER_CALL]}
            out += self._post("/v1/retry-decisions/batch", body)["decisions"]
        for d in out:
            if d.get("decision_id") is not None:
                self.decision_of[d["charge_id"]] = d["decision_id"]
        self.decisions += out
        return out

    def deploy(self, bundle: str) -> dict[str, Any]:
        """Serve ``bundle`` in every worker (``POST /admin/reload``)."""
        answer: dict[str, Any] = self._post("/admin/reload", {"model": bundle})
        return answer

    def decide(self, batch: DecisionBatch) -> PolicyDecisions:
        """Report the batch's new attempts, then ask (the :class:`RetryPolicy` protocol)."""
        self.report(batch.attempts)
        ordered = batch.attempts.sort_values(c.ATTEMPTED_AT, kind="stable")
        latest = {row[c.CHARGE_ID]: row for _, row in ordered.iterrows()}
        out = self.ask(
            [(latest[cid], now) for cid, now in zip(batch.charge_ids, batch.now, strict=True)],
            batch.constraints,
        )
        retry_at = np.array(
            [
                np.datetime64("NaT", "ns")
                if d["retry_at"] is None
                else np.datetime64(pd.Timestamp(d["retry_at"]).tz_localize(None), "ns")
                for d in out
            ],
            dtype="datetime64[ns]",
        )
        return PolicyDecisions(
            retry_at=retry_at,
            propensity=np.array([float(d["propensity"]) for d in out]),
            reason=np.array([d["reason"] for d in out], dtype=object),
        )
