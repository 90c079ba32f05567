"""PostgreSQL backend: psycopg 3 with a connection pool (``psycopg_pool``) per process.

The pool opens on first use in each process (after uvicorn forks its workers). Migrations of
concurrent processes are serialised with a transaction-level advisory lock.

Round trips are the cost of a logged decision here, so the connections run in autocommit:
reads and single-statement writes go without ``BEGIN``/``COMMIT`` (at PostgreSQL's default
READ COMMITTED isolation, every statement sees its own snapshot inside a transaction too, so
a read-only transaction would add round trips and no consistency), and a single decision is
logged with one statement (:data:`INSERT_DECISION_WITH_CHARGE`), durable at its commit.
Writes of several statements run in one explicit transaction.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from retryopt.serving.store.base import (
    INSERT_DECISION,
    UPSERT_CHARGE,
    Cursor,
    DecisionRecord,
    SqlStore,
    StoreError,
    decision_params,
    dumps_json,
)

POOL_MAX_SIZE = 8
CONNECT_TIMEOUT_S = 10.0
_MIGRATION_LOCK = 7_246_001  # advisory lock id of retryopt's migrations

INSERT_DECISION_WITH_CHARGE = (
    f"WITH inserted AS ({INSERT_DECISION} RETURNING decision_id), "
    "charge AS (INSERT INTO charges (charge_id, customer_id, charge, updated_at) "
    f"SELECT ?, ?, ?, ? FROM inserted {UPSERT_CHARGE}) "
    "SELECT decision_id FROM inserted"
)
"""A decision and, when it is new, its charge's facts: one atomic statement (data-modifying
``WITH``, which SQLite lacks)."""


class PostgresStore(SqlStore):
    """The store in a PostgreSQL database (``postgresql://user:pass@host:port/db``)."""

    backend = "postgresql"
    placeholder = "%s"
    one_statement_insert = True

    def __init__(self, url: str, *, max_size: int = POOL_MAX_SIZE) -> None:
        super().__init__(url)
        self.max_size = max_size
        self._pool: Any = None
        self._pid = -1
        self._lock = threading.Lock()

    def _get_pool(self) -> Any:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                try:
                    from psycopg_pool import ConnectionPool
                except ImportError as exc:  # pragma: no cover - depends on the install
                    raise StoreError(
                        "PostgreSQL stores need psycopg: pip install 'retryopt[postgres]'"
                    ) from exc
                pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.max_size,
                    open=False,
                    timeout=CONNECT_TIMEOUT_S,
                    name="retryopt-store",
                    kwargs={"autocommit": True},
                )
                try:
                    pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
                except Exception as exc:
                    pool.close()
                    raise StoreError(f"cannot connect to the PostgreSQL store: {exc}") from exc
                self._pool, self._pid = pool, os.getpid()
            return self._pool

    @contextmanager
    def transaction(self, *, write: bool, one_statement: bool = False) -> Iterator[Cursor]:
        """A pooled connection's cursor: in one explicit transaction for a write of several
        statements, else in autocommit (each statement atomic by itself)."""
        import psycopg

        pool = self._get_pool()
        try:
            with pool.connection() as conn:
                if write and not one_statement:
                    with conn.transaction(), conn.cursor() as cur:
                        yield cur
                else:
                    with conn.cursor() as cur:
                        yield cur
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL store error: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):
                raise StoreError(f"PostgreSQL store unavailable: {exc}") from exc
            raise

    def _insert_decision(self, cur: Cursor, r: DecisionRecord) -> bool:
        """Insert ``r`` and upsert its charge in one statement; False for a stored twin."""
        charge = (r.charge_id, r.customer_id, dumps_json(r.charge), r.logged_at)
        return bool(self._run(cur, INSERT_DECISION_WITH_CHARGE, decision_params(r) + charge))

    def _lock_migrations(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))

    def close(self) -> None:
        """Close this process's pool."""
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None
