"""SQLite backend: one file, WAL mode, a busy timeout; one connection per process.

Each process (uvicorn worker) opens its own connection on first use (after the fork); threads
of a process share it under a lock. Writes take the database lock up front (``BEGIN
IMMEDIATE``), so concurrent writers of several workers queue for up to the busy timeout.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retryopt.serving.store.base import Cursor, SqlStore, StoreError

BUSY_TIMEOUT_MS = 10_000


SYNCHRONOUS_MODES = ("NORMAL", "FULL")


def sqlite_path(url: str) -> tuple[Path, str]:
    """The file and synchronous mode of ``sqlite:///PATH[?synchronous=NORMAL|FULL]``
    (``sqlite:////abs/path`` or ``sqlite:///relative/path``)."""
    if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
        raise ValueError(f"a SQLite store URL is sqlite:///PATH, got {url!r}")
    path, _, query = url[len("sqlite:///") :].partition("?")
    mode = "NORMAL"
    for part in filter(None, query.split("&")):
        name, _, value = part.partition("=")
        if name != "synchronous" or value.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"unknown SQLite store option {part!r}: only synchronous=NORMAL|FULL")
        mode = value.upper()
    if not path:
        raise ValueError(f"a SQLite store URL is sqlite:///PATH, got {url!r}")
    return Path(path), mode


class SqliteStore(SqlStore):
    """The store in a SQLite file (created with its folder when missing)."""

    backend = "sqlite"
    placeholder = "?"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path, self.synchronous = sqlite_path(url)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path,
                    timeout=BUSY_TIMEOUT_MS / 1000,
                    isolation_level=None,  # explicit BEGIN/COMMIT below
                    check_same_thread=False,
                )
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                # WAL + NORMAL (default): a commit is in the WAL file before the answer, so a
                # killed process (kill -9) loses nothing acknowledged; only an OS crash or
                # power loss can lose the last commits. FULL also fsyncs every commit (+~3 ms).
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from exc
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextmanager
    def transaction(self, *, write: bool, one_statement: bool = False) -> Iterator[Cursor]:
        """A cursor in one transaction (``BEGIN IMMEDIATE`` for writes; ``one_statement`` is
        ignored: the file is local, so ``BEGIN``/``COMMIT`` cost no round trip)."""
        with self._lock:
            conn = self._connection()
            try:
                cur = conn.cursor()
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store unavailable: {exc}") from exc
            try:
                yield cur
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"SQLite store refused the write: {exc}") from exc
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _lock_migrations(self, cur: Cursor) -> None:
        """``BEGIN IMMEDIATE`` already holds the database's write lock."""

    def close(self) -> None:
        """Close this process's connection."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
