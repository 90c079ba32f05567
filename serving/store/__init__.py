"""The store of decisions and outcomes: one interface, SQLite and PostgreSQL backends.

``open_store(url)`` opens ``sqlite:///PATH`` or ``postgresql://...`` and applies the pending
schema migrations. See docs/serving.md, "Decision log and outcomes".
"""

from __future__ import annotations

from retryopt.serving.store.base import (
    DecisionRecord,
    LoggedDecision,
    OutcomeRecord,
    OutcomeStored,
    SqlStore,
    StoredAttempt,
    StoreError,
    canonical_json,
    from_us,
    to_us,
)
from retryopt.serving.store.postgres import PostgresStore
from retryopt.serving.store.sqlite import SqliteStore

__all__ = [
    "DecisionRecord",
    "LoggedDecision",
    "OutcomeRecord",
    "OutcomeStored",
    "PostgresStore",
    "SqlStore",
    "SqliteStore",
    "StoreError",
    "StoredAttempt",
    "canonical_json",
    "from_us",
    "open_store",
    "redact_url",
    "to_us",
]


def redact_url(url: str) -> str:
    """The URL with any password hidden (for logs and messages)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def open_store(url: str, *, migrate: bool = True) -> SqlStore:
    """Open the store at ``url``; apply pending migrations unless ``migrate`` is False.

    Raises
    ------
    ValueError
        On a URL of another scheme (naming the accepted ones).
    StoreError
        When the database cannot be reached or migrated.
    """
    url = url.strip()
    store: SqlStore
    if url.startswith("sqlite:"):
        store = SqliteStore(url)
    elif url.startswith(("postgresql://", "postgres://")):
        store = PostgresStore(url)
    else:
        raise ValueError(
            f"unsupported store URL {redact_url(url)!r}: use sqlite:///PATH or postgresql://..."
        )
    if migrate:
        store.migrate()
    return store
