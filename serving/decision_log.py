"""The decision log: every decision stored before it is answered, outcomes reported back.

:class:`DecisionLog` sits between the routes and :class:`DecisionService`:

1. :meth:`DecisionLog.begin` fills a request's omitted ``attempts`` (and ``customer_history``)
   from the reported outcomes and checks it;
2. the service decides while :meth:`DecisionLog.lookup` finds decisions already made for the
   same ``Idempotency-Key`` or the same charge state (the routes run the two at once, so the
   lookup's round trip to the store hides behind the model; a found decision is answered
   again and the fresh one is dropped, so a repeat never re-rolls the exploration);
3. :meth:`DecisionLog.commit` logs the new ones in one transaction and returns the answers,
   each with its ``decision_id``. A store failure raises :class:`StoreError`: nothing is
   answered.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from retryopt.features.card_numbers import (
    body_may_hold_card_number,
    contains_card_number,
    find_card_number,
)
from retryopt.serving.metrics import Metrics
from retryopt.serving.outcomes import AttemptOutcomesIn, OutcomeIn, check_outcomes
from retryopt.serving.policies import Decision
from retryopt.serving.schemas import (
    DETERMINISTIC_PROPENSITY,
    NO_EXPLORATION,
    AttemptIn,
    CardIn,
    DecisionRequest,
    FieldIssue,
    HistoryRowIn,
    RequestError,
)
from retryopt.serving.service import DecisionService, PreparedRequest, decision_json
from retryopt.serving.store import (
    DecisionRecord,
    OutcomeRecord,
    SqlStore,
    StoredAttempt,
    canonical_json,
    from_us,
    to_us,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255


def new_decision_id() -> str:
    """A random 32-hex-digit decision id that the card-number scan cannot mistake for one.

    About 1 in 500 random UUIDs holds a run of 13-19 decimal digits passing the Luhn check; a
    billing client echoing such an id in ``/v1/attempt-outcomes`` would be refused (422
    ``pan_rejected``), so those are drawn again.
    """
    while True:
        candidate = uuid.uuid4().hex
        if not contains_card_number(candidate):
            return candidate


def state_hash(request: DecisionRequest, *, model_version: str) -> str:
    """SHA-256 of the canonical JSON of a (filled) request and the serving model's version.

    A repeat of the same charge state is answered from the log while the same model serves (a
    client retrying after a timeout gets the same draw); after a reload or a promotion the state
    is decided afresh by the new model.
    """
    state = {"request": request.model_dump(mode="json"), "model_version": model_version}
    return hashlib.sha256(canonical_json(state)).hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    """The header's key, or a :class:`RequestError` naming it when too long or empty."""
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise RequestError(
            [
                FieldIssue(
                    f"headers.{IDEMPOTENCY_HEADER.lower()}",
                    f"1-{MAX_IDEMPOTENCY_KEY} printable characters",
                    "invalid",
                )
            ]
        )
    return key


def _attempt(a: StoredAttempt) -> AttemptIn:
    rep = a.report
    return AttemptIn(
        attempted_at=from_us(a.attempted_at),
        outcome=rep["outcome"],
        decline_code=rep.get("decline_code"),
        network_advice_code=rep.get("network_advice_code"),
        attempt_id=rep.get("attempt_id"),
        card=None if rep.get("card") is None else CardIn(**rep["card"]),
    )


def _history_row(a: StoredAttempt) -> HistoryRowIn:
    rep, charge = a.report, a.charge or {}
    card = rep.get("card") or charge.get("card") or {}
    return HistoryRowIn(
        charge_id=a.charge_id,
        attempted_at=from_us(a.attempted_at),
        outcome=rep["outcome"],
        attempt_id=rep.get("attempt_id"),
        amount=rep.get("amount") or charge.get("amount"),
        currency=rep.get("currency") or charge.get("currency"),
        decline_code=rep.get("decline_code"),
        network_advice_code=rep.get("network_advice_code"),
        card_brand=card.get("brand"),
        card_funding=card.get("funding"),
        card_country=card.get("country"),
        card_added_at=card.get("added_at"),
        card_exp_month=card.get("exp_month"),
        card_exp_year=card.get("exp_year"),
        card_id=card.get("card_id"),
        issuer=card.get("issuer"),
    )


@dataclass
class Pending:
    """Requests between :meth:`DecisionLog.begin` and :meth:`DecisionLog.commit`."""

    requests: list[DecisionRequest]
    hashes: list[str]
    keys: list[str | None]
    answers: list[dict[str, Any] | None]  # stored answers (idempotent repeats)
    todo: list[int]  # indices decided (a stored answer, once looked up, wins)
    items: list[PreparedRequest]  # prepared requests of ``todo``, same order


class DecisionLog:
    """Logs decisions and outcomes in a store (see the module docstring).

    Parameters
    ----------
    store
        The opened store.
    service
        The decision service (checks requests, runs the policies).
    metrics
        The service's metrics.
    """

    def __init__(self, *, store: SqlStore, service: DecisionService, metrics: Metrics) -> None:
        self.store = store
        self.service = service
        self.metrics = metrics

    # ---- decisions -----------------------------------------------------------------------
    def fill(self, request: DecisionRequest, *, server_now: datetime) -> DecisionRequest:
        """The request with omitted ``attempts`` taken from the store, and, when
        ``customer_history`` is omitted too, the customer's other stored attempts (both up to
        the decision's ``now``). A request that sends its attempts is returned unchanged."""
        if request.attempts is not None:
            return request
        now = request.now or server_now
        _, own, history = self.store.charge_attempts(
            request.charge.charge_id,
            until=to_us(now),
            history_limit=self.service.limits.max_history_rows,
        )
        if not own:
            return request  # check_request names the missing attempts
        update: dict[str, Any] = {"attempts": [_attempt(a) for a in own]}
        if request.customer_history is None:
            update["customer_history"] = [_history_row(a) for a in history]
        return request.model_copy(update=update)

    def begin(
        self,
        requests: Sequence[DecisionRequest],
        *,
        prefixes: Sequence[str],
        key: str | None,
        batch: bool = False,
        server_now: datetime | None = None,
    ) -> Pending:
        """Fill and check the requests (:class:`RequestError` naming the fields). A batch's
        ``key`` covers the batch: item ``i`` is stored under ``key#i``.

        A request that fails its checks now but was decided before (a repeat after the
        charge's window closed, say) is answered from the log rather than refused.
        """
        server_now = server_now or datetime.now(UTC)
        filled = [self.fill(r, server_now=server_now) for r in requests]
        keys = [
            None if key is None else (f"{key}#{i}" if batch else key) for i in range(len(requests))
        ]
        current = self.service.store.current
        version = current.version if current is not None else "fallback"
        hashes = [state_hash(r, model_version=version) for r in filled]
        pending = Pending(filled, hashes, keys, [None] * len(filled), list(range(len(filled))), [])
        try:
            pending.items = self._prepare(pending, prefixes, server_now)
        except RequestError:
            self.lookup(pending)
            pending.todo = [i for i in pending.todo if pending.answers[i] is None]
            pending.items = self._prepare(pending, prefixes, server_now)
        return pending

    def _prepare(
        self, pending: Pending, prefixes: Sequence[str], server_now: datetime
    ) -> list[PreparedRequest]:
        return self.service.prepare(
            [pending.requests[i] for i in pending.todo],
            prefixes=[prefixes[i] for i in pending.todo],
            server_now=server_now,
        )

    def lookup(self, pending: Pending) -> None:
        """Set ``pending.answers`` of the requests already decided (idempotent repeats)."""
        found = self.store.find_decisions(
            [
                (pending.keys[i], pending.requests[i].charge.charge_id, pending.hashes[i])
                for i in pending.todo
            ]
        )
        for i, answer in zip(pending.todo, found, strict=True):
            pending.answers[i] = answer

    def commit(self, pending: Pending, decisions: Sequence[Decision]) -> list[dict[str, Any]]:
        """Log the new decisions in one transaction; every answer, in request order.

        Call after :meth:`lookup`: a request answered from the log drops its fresh decision.
        """
        started = time.perf_counter()
        records = []
        logged_at = to_us(datetime.now(UTC))
        new = []
        for i, item, d in zip(pending.todo, pending.items, decisions, strict=True):
            if pending.answers[i] is not None:
                continue
            new.append(i)
            r = item.request
            response = decision_json(d, arm=item.arm)
            response["decision_id"] = new_decision_id()
            request_json = r.model_dump(mode="json", exclude_none=True)
            if body_may_hold_card_number(canonical_json(request_json)) and (
                find_card_number(request_json) is not None
            ):
                # Never reached (requests with a card number are rejected at the door); kept
                # so that no card number can ever be written to the store.
                raise RequestError([FieldIssue("body", "looks like a card number", "pan_rejected")])
            records.append(
                DecisionRecord(
                    decision_id=response["decision_id"],
                    charge_id=r.charge.charge_id,
                    customer_id=r.charge.customer_id,
                    decided_at=to_us(item.now),
                    logged_at=logged_at,
                    state_hash=pending.hashes[i],
                    idempotency_key=pending.keys[i],
                    request=request_json,
                    charge=r.charge.model_dump(mode="json"),
                    action=d.action,
                    retry_at=None if d.retry_at is None else int(d.retry_at.value) // 1000,
                    success_probability=d.success_probability,
                    alternatives=response["alternatives"],
                    policy=d.policy,
                    model_version=d.model_version,
                    exploration=response.get("exploration", NO_EXPLORATION),
                    propensity=float(response.get("propensity", DETERMINISTIC_PROPENSITY)),
                    arm=item.arm,
                    response=response,
                )
            )
        answers = list(pending.answers)
        if records:
            stored = self.store.record_decisions(records)
            self.metrics.observe_log_write(len(records), time.perf_counter() - started)
            for i, answer in zip(new, stored, strict=True):
                answers[i] = answer
        return [a for a in answers if a is not None]

    def decide(
        self,
        requests: Sequence[DecisionRequest],
        *,
        prefixes: Sequence[str],
        key: str | None,
        batch: bool = True,
    ) -> list[dict[str, Any]]:
        """Fill, decide and log ``requests`` in the calling thread (one log transaction)."""
        pending = self.begin(requests, prefixes=prefixes, key=key, batch=batch)
        self.lookup(pending)
        return self.commit(pending, self.service.decide_prepared(pending.items))

    # ---- outcomes ------------------------------------------------------------------------
    def record_outcomes(self, body: AttemptOutcomesIn) -> dict[str, Any]:
        """Check and store reported attempts (one transaction); what was done with each.

        Raises
        ------
        RequestError
            Naming ``outcomes[i].<field>`` for every broken contract rule.
        """
        unique: dict[tuple[str, int], OutcomeIn] = {}
        for o in body.outcomes:
            unique.setdefault((o.charge_id, to_us(o.attempted_at)), o)
        outcomes = list(unique.values())
        charges = {
            cid: self.store.charge_attempts(cid, until=0, history_limit=0)[0]
            for cid in {o.charge_id for o in outcomes}
        }
        check_outcomes(outcomes, charges)
        received = to_us(datetime.now(UTC))
        records = [
            OutcomeRecord(
                charge_id=o.charge_id,
                attempted_at=to_us(o.attempted_at),
                customer_id=o.customer_id,
                outcome=o.outcome,
                decision_id=o.decision_id,
                report=o.model_dump(mode="json", exclude_none=True),
                charge=o.charge_facts(),
                received_at=received,
            )
            for o in outcomes
        ]
        stored = self.store.record_outcomes(records)
        new = [s for s in stored if s.inserted]
        self.metrics.observe_outcomes(
            new=len(new),
            repeated=len(stored) - len(new),
            matched=sum(s.decision_id is not None for s in new),
            unknown_charge=sum(not s.known_charge for s in new),
        )
        results = [
            {
                "charge_id": o.charge_id,
                "attempted_at": o.attempted_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "stored": "new" if s.inserted else "repeat",
                "known_charge": s.known_charge,
                "decision_id": s.decision_id,
            }
            for o, s in zip(outcomes, stored, strict=True)
        ]
        return {
            "outcomes": results,
            "stored": sum(s.inserted for s in stored),
            "repeated": len(body.outcomes) - sum(s.inserted for s in stored),
            "unknown_charges": sum(not s.known_charge for s in stored),
        }
