"""The store interface: decision log, reported outcomes and charges, on any SQL backend.

:class:`SqlStore` holds every query once (written with ``?`` placeholders, translated per
backend); a backend (:mod:`.sqlite`, :mod:`.postgres`) only says how to open a transaction.
Every write is one transaction: a batch of decisions or outcomes is stored whole or not at all.

Times are integers, microseconds since the Unix epoch (UTC), in both backends.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from retryopt.serving.store.migrations import Migration, load_migrations

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StoreError(RuntimeError):
    """The store cannot be reached or refused a write (nothing was written)."""


def to_us(t: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (t - _EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    """The aware UTC datetime of microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=int(us))


LOOKUP_CHUNK = 250
"""Decision lookups per query (two parameters each, far below SQLite's 32,766)."""

DECISION_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "charge_id",
    "customer_id",
    "decided_at",
    "logged_at",
    "state_hash",
    "idempotency_key",
    "request",
    "action",
    "retry_at",
    "success_probability",
    "alternatives",
    "policy",
    "model_version",
    "exploration",
    "propensity",
    "response",
    "arm",
)
INSERT_DECISION = (
    f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(DECISION_COLUMNS))}) ON CONFLICT DO NOTHING"
)
"""A decision, unless its idempotency key or charge state is already stored."""
UPSERT_CHARGE = (
    "ON CONFLICT (charge_id) DO UPDATE SET customer_id = excluded.customer_id, "
    "charge = excluded.charge, updated_at = excluded.updated_at"
)
"""The conflict clause that keeps the latest facts of a charge."""


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any:
        """Run one statement."""

    def fetchall(self) -> list[Any]:
        """Every row of the last statement."""


@dataclass(frozen=True, kw_only=True)
class DecisionRecord:
    """One logged decision (``request`` and ``response`` are JSON objects)."""

    decision_id: str
    charge_id: str
    customer_id: str
    decided_at: int
    logged_at: int
    state_hash: str
    idempotency_key: str | None
    request: Mapping[str, Any]
    charge: Mapping[str, Any]
    action: str
    retry_at: int | None
    success_probability: float | None
    alternatives: Sequence[Mapping[str, Any]]
    policy: str
    model_version: str | None
    exploration: str
    propensity: float
    response: Mapping[str, Any]
    arm: str = "champion"


@dataclass(frozen=True, kw_only=True)
class OutcomeRecord:
    """One reported attempt (``report`` is the validated outcome JSON)."""

    charge_id: str
    attempted_at: int
    customer_id: str | None
    outcome: str
    decision_id: str | None
    report: Mapping[str, Any]
    charge: Mapping[str, Any] | None  # charge facts sent with the report (registers the charge)
    received_at: int


@dataclass(frozen=True, kw_only=True)
class OutcomeStored:
    """What the store did with one reported attempt."""

    inserted: bool  # False: the same (charge_id, attempted_at) was already stored
    known_charge: bool  # the charge was decided or described before (else flagged)
    decision_id: str | None  # the decision it is matched to, if any


@dataclass(frozen=True, kw_only=True)
class StoredAttempt:
    """A stored attempt with its charge's facts (None when the charge is unknown)."""

    charge_id: str
    attempted_at: int
    report: Mapping[str, Any]
    charge: Mapping[str, Any] | None
    decision_id: str | None


@dataclass(frozen=True, kw_only=True)
class LoggedDecision:
    """The fields of a logged decision that the export needs."""

    decision_id: str
    charge_id: str
    decided_at: int
    action: str
    retry_at: int | None
    propensity: float
    exploration: str
    arm: str = "champion"
    policy: str = ""
    model_version: str | None = None


def dumps_json(obj: object) -> str:
    """Canonical JSON text (sorted keys), as :func:`canonical_json`."""
    return canonical_json(obj).decode("utf-8")


def decision_params(r: DecisionRecord) -> tuple[Any, ...]:
    """The values of :data:`DECISION_COLUMNS` for ``r``, JSON fields serialised."""
    return (
        r.decision_id,
        r.charge_id,
        r.customer_id,
        r.decided_at,
        r.logged_at,
        r.state_hash,
        r.idempotency_key,
        dumps_json(r.request),
        r.action,
        r.retry_at,
        r.success_probability,
        dumps_json(r.alternatives),
        r.policy,
        r.model_version,
        r.exploration,
        r.propensity,
        dumps_json(r.response),
        r.arm,
    )


def canonical_json(obj: object) -> bytes:
    """Canonical JSON (sorted keys, no spaces, UTF-8) of plain JSON values."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


class SqlStore(ABC):
    """The store on a SQL database (one subclass per backend).

    Parameters
    ----------
    url
        The store URL (``sqlite:///PATH`` or ``postgresql://...``).
    """

    backend: str = ""
    placeholder: str = "?"

    def __init__(self, url: str) -> None:
        self.url = url

    # ---- backend hooks -------------------------------------------------------------------
    one_statement_insert: bool = False
    """Whether :meth:`_insert_decision` is one SQL statement (atomic by itself)."""

    @abstractmethod
    def transaction(
        self, *, write: bool, one_statement: bool = False
    ) -> AbstractContextManager[Cursor]:
        """A cursor inside one transaction, committed on exit, rolled back on an error.

        ``one_statement``: the block writes with at most one statement, which is atomic by
        itself, so a backend may run it without ``BEGIN``/``COMMIT`` round trips.
        """

    @abstractmethod
    def _lock_migrations(self, cur: Cursor) -> None:
        """Serialise migrations of concurrent processes (inside the transaction)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _run(self, cur: Cursor, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur.execute(self._sql(sql), tuple(params))
        try:
            return list(cur.fetchall())
        except Exception:  # statements without rows (driver-specific error types)
            return []

    # ---- schema --------------------------------------------------------------------------
    def migrations(self) -> list[Migration]:
        """This backend's versioned SQL migrations, oldest first."""
        return load_migrations(self.backend)

    def migrate(self) -> int:
        """Apply the migrations not yet applied, in one transaction; the schema version."""
        with self.transaction(write=True) as cur:
            self._lock_migrations(cur)
            self._run(
                cur,
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
            )
            rows = self._run(cur, "SELECT MAX(version) FROM schema_version")
            current = int(rows[0][0] or 0) if rows else 0
            for m in self.migrations():
                if m.version <= current:
                    continue
                for statement in m.statements:
                    self._run(cur, statement)
                self._run(
                    cur,
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, to_us(datetime.now(UTC))),
                )
                current = m.version
            return current

    def schema_version(self) -> int:
        """The applied schema version (0 on an empty database)."""
        with self.transaction(write=False) as cur:
            try:
                rows = self._run(cur, "SELECT MAX(version) FROM schema_version")
            except Exception:
                return 0
            return int(rows[0][0] or 0) if rows else 0

    # ---- decisions -----------------------------------------------------------------------
    def find_by_key(self, key: str) -> dict[str, Any] | None:
        """The stored response of the decision made under an ``Idempotency-Key``."""
        with self.transaction(write=False) as cur:
            rows = self._run(
                cur, "SELECT response FROM decisions WHERE idempotency_key = ?", (key,)
            )
        return json.loads(rows[0][0]) if rows else None

    def find_decisions(
        self, lookups: Sequence[tuple[str | None, str, str]]
    ) -> list[dict[str, Any] | None]:
        """The stored response for each ``(idempotency_key, charge_id, state_hash)``.

        The decision stored under the key comes first, else the one stored for the charge
        state, else None. One query per :data:`LOOKUP_CHUNK` lookups (one for a single
        decision), so a repeat costs the request a single round trip to the store.
        """
        out: list[dict[str, Any] | None] = [None] * len(lookups)
        if not lookups:
            return out
        with self.transaction(write=False) as cur:
            for start in range(0, len(lookups), LOOKUP_CHUNK):
                part = lookups[start : start + LOOKUP_CHUNK]
                keys = [k for k, _, _ in part if k is not None]
                where = " OR ".join(["(charge_id = ? AND state_hash = ?)"] * len(part))
                params: list[Any] = [x for _, charge_id, h in part for x in (charge_id, h)]
                if keys:
                    where += " OR idempotency_key IN (" + ", ".join("?" * len(keys)) + ")"
                    params += keys
                rows = self._run(
                    cur,
                    "SELECT idempotency_key, charge_id, state_hash, response FROM decisions "
                    "WHERE " + where,
                    params,
                )
                by_key = {r[0]: r[3] for r in rows if r[0] is not None}
                by_state = {(r[1], r[2]): r[3] for r in rows}
                for i, (k, charge_id, h) in enumerate(part):
                    raw = by_key.get(k) if k is not None else None
                    raw = raw if raw is not None else by_state.get((charge_id, h))
                    out[start + i] = None if raw is None else json.loads(raw)
        return out

    def record_decisions(self, records: Sequence[DecisionRecord]) -> list[dict[str, Any]]:
        """Log decisions in one transaction; the response stored for each.

        A record whose idempotency key or ``(charge_id, state_hash)`` is already stored (a
        concurrent twin) is not written; the stored response is returned in its place.
        """
        out: list[dict[str, Any]] = []
        one = len(records) == 1 and self.one_statement_insert
        with self.transaction(write=True, one_statement=one) as cur:
            for r in records:
                if self._insert_decision(cur, r):
                    out.append(dict(r.response))
                    continue
                rows = self._run(  # the twin under the key first, as find_decisions
                    cur,
                    "SELECT response FROM decisions WHERE idempotency_key = ? "
                    "OR (charge_id = ? AND state_hash = ?) "
                    "ORDER BY CASE WHEN idempotency_key = ? THEN 0 ELSE 1 END LIMIT 1",
                    (r.idempotency_key, r.charge_id, r.state_hash, r.idempotency_key),
                )
                out.append(json.loads(rows[0][0]))
        return out

    def _insert_decision(self, cur: Cursor, r: DecisionRecord) -> bool:
        """Insert ``r`` and upsert its charge; False when a twin is already stored."""
        inserted = self._run(cur, INSERT_DECISION + " RETURNING decision_id", decision_params(r))
        if inserted:
            self._upsert_charge(cur, r.charge_id, r.customer_id, r.charge, r.logged_at)
        return bool(inserted)

    def _upsert_charge(
        self, cur: Cursor, charge_id: str, customer_id: str, charge: Mapping[str, Any], now: int
    ) -> None:
        self._run(
            cur,
            "INSERT INTO charges (charge_id, customer_id, charge, updated_at) "
            "VALUES (?, ?, ?, ?) " + UPSERT_CHARGE,
            (charge_id, customer_id, dumps_json(charge), now),
        )

    def logged_decisions(self) -> list[LoggedDecision]:
        """Every logged decision (for the export), by charge and time."""
        with self.transaction(write=False) as cur:
            rows = self._run(
                cur,
                "SELECT decision_id, charge_id, decided_at, action, retry_at, propensity, "
                "exploration, arm, policy, model_version FROM decisions "
                "ORDER BY charge_id, decided_at, logged_at",
            )
        return [
            LoggedDecision(
                decision_id=r[0],
                charge_id=r[1],
                decided_at=int(r[2]),
                action=r[3],
                retry_at=None if r[4] is None else int(r[4]),
                propensity=float(r[5]),
                exploration=r[6],
                arm=r[7],
                policy=r[8],
                model_version=r[9],
            )
            for r in rows
        ]

    def count(self, table: str) -> int:
        """Rows in ``decisions``, ``outcomes`` or ``charges``."""
        if table not in ("decisions", "outcomes", "charges"):
            raise ValueError(f"unknown table {table!r}")
        with self.transaction(write=False) as cur:
            return int(self._run(cur, f"SELECT COUNT(*) FROM {table}")[0][0])

    # ---- outcomes ------------------------------------------------------------------------
    def record_outcomes(self, records: Sequence[OutcomeRecord]) -> list[OutcomeStored]:
        """Store reported attempts in one transaction (a repeat of a stored
        ``(charge_id, attempted_at)`` is left as it is)."""
        out: list[OutcomeStored] = []
        with self.transaction(write=True) as cur:
            for r in records:
                if r.charge is not None and r.customer_id is not None:
                    self._upsert_charge(cur, r.charge_id, r.customer_id, r.charge, r.received_at)
                known = bool(
                    self._run(cur, "SELECT 1 FROM charges WHERE charge_id = ?", (r.charge_id,))
                )
                matched = self._match(cur, r)
                customer = r.customer_id
                if customer is None and known:
                    customer = self._run(
                        cur, "SELECT customer_id FROM charges WHERE charge_id = ?", (r.charge_id,)
                    )[0][0]
                inserted = self._run(
                    cur,
                    "INSERT INTO outcomes (charge_id, attempted_at, customer_id, outcome, "
                    "decision_id, known_charge, report, received_at) VALUES (?, ?, ?, ?, ?, ?, "
                    "?, ?) ON CONFLICT (charge_id, attempted_at) DO NOTHING RETURNING charge_id",
                    (
                        r.charge_id,
                        r.attempted_at,
                        customer,
                        r.outcome,
                        matched,
                        1 if known else 0,
                        dumps_json(r.report),
                        r.received_at,
                    ),
                )
                if not inserted:
                    row = self._run(
                        cur,
                        "SELECT known_charge, decision_id FROM outcomes "
                        "WHERE charge_id = ? AND attempted_at = ?",
                        (r.charge_id, r.attempted_at),
                    )[0]
                    out.append(
                        OutcomeStored(inserted=False, known_charge=bool(row[0]), decision_id=row[1])
                    )
                else:
                    out.append(
                        OutcomeStored(inserted=True, known_charge=known, decision_id=matched)
                    )
        return out

    def _match(self, cur: Cursor, r: OutcomeRecord) -> str | None:
        """The decision an attempt answers: the one named, else the charge's latest decision
        made before the attempt."""
        if r.decision_id is not None:
            rows = self._run(
                cur,
                "SELECT decision_id FROM decisions WHERE decision_id = ? AND charge_id = ?",
                (r.decision_id, r.charge_id),
            )
            return str(rows[0][0]) if rows else None
        rows = self._run(
            cur,
            "SELECT decision_id FROM decisions WHERE charge_id = ? AND decided_at <= ? "
            "ORDER BY decided_at DESC, logged_at DESC LIMIT 1",
            (r.charge_id, r.attempted_at),
        )
        return str(rows[0][0]) if rows else None

    def charge_attempts(
        self, charge_id: str, *, until: int, history_limit: int
    ) -> tuple[Mapping[str, Any] | None, list[StoredAttempt], list[StoredAttempt]]:
        """A charge's facts, its attempts up to ``until`` and the customer's other attempts
        up to ``until`` (the latest ``history_limit``), oldest first."""
        with self.transaction(write=False) as cur:
            rows = self._run(
                cur, "SELECT customer_id, charge FROM charges WHERE charge_id = ?", (charge_id,)
            )
            charge = json.loads(rows[0][1]) if rows else None
            own = self._attempts(
                cur,
                "WHERE o.charge_id = ? AND o.attempted_at <= ? ORDER BY o.attempted_at",
                (charge_id, until),
            )
            customer = rows[0][0] if rows else None
            if customer is None and own:
                customer = own[-1].report.get("customer_id")
            history: list[StoredAttempt] = []
            if customer is not None and history_limit > 0:
                history = self._attempts(
                    cur,
                    "WHERE o.customer_id = ? AND o.charge_id <> ? AND o.attempted_at <= ? "
                    "ORDER BY o.attempted_at DESC LIMIT ?",
                    (customer, charge_id, until, history_limit),
                )[::-1]
        return charge, own, history

    def _attempts(self, cur: Cursor, where: str, params: Sequence[Any]) -> list[StoredAttempt]:
        rows = self._run(
            cur,
            "SELECT o.charge_id, o.attempted_at, o.report, c.charge, o.decision_id "
            "FROM outcomes o LEFT JOIN charges c ON c.charge_id = o.charge_id " + where,
            params,
        )
        return [
            StoredAttempt(
                charge_id=r[0],
                attempted_at=int(r[1]),
                report=json.loads(r[2]),
                charge=None if r[3] is None else json.loads(r[3]),
                decision_id=r[4],
            )
            for r in rows
        ]

    def all_attempts(self) -> Iterator[StoredAttempt]:
        """Every stored attempt with its charge's facts, by charge and time."""
        with self.transaction(write=False) as cur:
            rows = self._attempts(cur, "ORDER BY o.charge_id, o.attempted_at", ())
        yield from rows

    # ---- retention -----------------------------------------------------------------------
    def purge(self, before: int) -> dict[str, int]:
        """Delete decisions made and attempts made before ``before`` (and charges left with
        neither), in one transaction; rows deleted per table."""
        with self.transaction(write=True) as cur:
            counts = {}
            for table, column in (("decisions", "decided_at"), ("outcomes", "attempted_at")):
                counts[table] = len(
                    self._run(
                        cur,
                        f"DELETE FROM {table} WHERE {column} < ? RETURNING 1",
                        (before,),
                    )
                )
            counts["charges"] = len(
                self._run(
                    cur,
                    "DELETE FROM charges WHERE updated_at < ? AND NOT EXISTS (SELECT 1 FROM "
                    "decisions d WHERE d.charge_id = charges.charge_id) AND NOT EXISTS (SELECT "
                    "1 FROM outcomes o WHERE o.charge_id = charges.charge_id) RETURNING 1",
                    (before,),
                )
            )
        return counts
