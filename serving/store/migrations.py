"""Versioned schema migrations: ``sql/<backend>/NNNN_name.sql``, applied in order.

Each file is one schema version; :meth:`SqlStore.migrate` applies the versions a database lacks
in one transaction and records each in the ``schema_version`` table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SQL_DIR = Path(__file__).parent / "sql"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One schema version: its number, name and SQL statements."""

    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    """The statements of a migration file (``--`` comments dropped, split on ``;``)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return tuple(s.strip() for s in "\n".join(lines).split(";") if s.strip())


def load_migrations(backend: str) -> list[Migration]:
    """The migrations of ``backend`` (``sqlite`` or ``postgresql``), oldest first.

    Raises
    ------
    ValueError
        When the numbering has a gap or a repeat (a broken release).
    """
    out: list[Migration] = []
    for path in sorted((SQL_DIR / backend).glob("*.sql")):
        m = _FILE.match(path.name)
        if m is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_name.sql")
        out.append(
            Migration(int(m.group(1)), m.group(2), split_statements(path.read_text("utf-8")))
        )
    if [m.version for m in out] != list(range(1, len(out) + 1)):
        raise ValueError(f"{backend} migrations are not numbered 1..{len(out)}")
    return out
