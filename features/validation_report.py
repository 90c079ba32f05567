"""Rules, issues and reports of :mod:`features.validation`, and the collector of findings.

The public types (:class:`ValidationIssue`, :class:`ValidationReport`, :class:`ValidationResult`,
:class:`ContractError`, :data:`RULES`) are imported from :mod:`features.validation`, the entry
point. :class:`Checks` is internal to validation: it records the rows that violate each rule
while the columns are parsed and turns them into issues with example rows and values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from retryopt.features.localtime import TIMESTAMP_RANGE_TEXT

MAX_EXAMPLES = 5
"""How many row numbers and values an issue lists."""

MIN_EXP_YEAR = 1980
MAX_EXP_YEAR = 2100
"""Plausible 4-digit card expiry years (inclusive)."""

RULES: dict[str, str] = {
    "missing_column": "required column absent",
    "duplicate_column": "column name appears more than once",
    "missing_value": "missing required value",
    "timestamp_unparseable": "not an ISO 8601 timestamp",
    "timestamp_no_zone": "timestamp without zone offset (ISO 8601 needs 'Z' or '+HH:MM')",
    "timestamp_out_of_range": f"timestamp outside the valid range ({TIMESTAMP_RANGE_TEXT})",
    "not_a_number": "not a number",
    "fractional": "fractional number (must be an integer)",
    "not_positive": "not positive (must be > 0 minor units)",
    "currency_not_lower_case": "currency code must be lower-case ISO 4217",
    "currency_unknown": "not an ISO 4217 currency code",
    "outcome_unknown": "outcome not 'succeeded' or 'failed'",
    "decline_code_missing": "failed attempt without decline_code",
    "decline_code_on_success": "succeeded attempt with a decline_code",
    "duplicate_attempt_id": "attempt_id already used by an earlier row",
    "multiple_successes": "second success within the charge",
    "attempt_after_success": "attempt after the charge already succeeded",
    "card_brand_not_lower_case": "card brand must be lower-case",
    "card_funding_unknown": "not one of credit, debit, prepaid, unknown",
    "country_not_upper_case": "country code must be upper-case ISO 3166-1 alpha-2",
    "country_unknown": "not an ISO 3166-1 alpha-2 country code",
    "exp_month_out_of_range": "month outside 1-12",
    "exp_year_implausible": f"not a 4-digit year in {MIN_EXP_YEAR}-{MAX_EXP_YEAR}",
    "propensity_out_of_range": "probability outside (0, 1]",
    "timezone_unknown": "not an IANA time zone name",
}
"""Rule id -> short description. Rule ids are stable (documented in docs/data-contract.md)."""


# --------------------------------------------------------------------------------------------
# Public result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationIssue:
    """One violated rule in one column.

    Attributes
    ----------
    column
        Contract column (comma-separated names for ``missing_column``).
    rule
        Stable rule id, a key of :data:`RULES`.
    message
        Human-readable sentence naming the column, the rows and the values.
    n_rows
        Number of offending rows (0 for table-level issues).
    rows
        First few offending 1-based data-row numbers.
    values
        The offending values at those rows (``"<missing>"`` for missing values); for
        ``missing_column`` the missing column names.
    """

    column: str
    rule: str
    message: str
    n_rows: int
    rows: tuple[int, ...]
    values: tuple[str, ...]


@dataclass
class ValidationReport:
    """Outcome of validating one table.

    Attributes
    ----------
    n_rows
        Rows in the raw table.
    n_valid
        Rows that pass every check (the rows of the clean frame).
    issues
        Violated rules, in check order.
    unknown_decline_codes
        Decline codes (of valid failed rows) not in the taxonomy, with counts; they are kept and
        classified into the ``unknown`` family.
    decline_families
        Valid failed rows per decline family (:class:`features.taxonomy.DeclineFamily` values).
    extra_columns
        Columns outside the contract; dropped from the canonical frame.
    """

    n_rows: int
    n_valid: int
    issues: list[ValidationIssue] = field(default_factory=list)
    unknown_decline_codes: dict[str, int] = field(default_factory=dict)
    decline_families: dict[str, int] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no rule is violated."""
        return not self.issues

    @property
    def n_invalid(self) -> int:
        """Rows with at least one issue."""
        return self.n_rows - self.n_valid

    def format(self) -> str:
        """Render the report as readable plain text (one issue per line)."""
        status = "valid" if self.ok else f"{len(self.issues)} issue(s)"
        lines = [
            f"{self.n_rows:,} rows, {self.n_valid:,} valid, {self.n_invalid:,} invalid: {status}"
        ]
        for issue in self.issues:
            lines.append(f"  [{issue.rule}] {issue.message}")
        if self.extra_columns:
            lines.append(f"Columns outside the contract (dropped): {', '.join(self.extra_columns)}")
        if self.unknown_decline_codes:
            top = sorted(self.unknown_decline_codes.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{code!r}: {count:,}" for code, count in top[:20])
            more = f" and {len(top) - 20} more" if len(top) > 20 else ""
            lines.append(f"Unknown decline codes (kept, family 'unknown'): {shown}{more}")
        if self.decline_families:
            total = sum(self.decline_families.values())
            mix = ", ".join(
                f"{family} {count / total:.1%}"
                for family, count in sorted(self.decline_families.items(), key=lambda kv: -kv[1])
            )
            lines.append(f"Decline families ({total:,} failed attempts): {mix}")
        return "\n".join(lines)


@dataclass
class ValidationResult:
    """Canonical valid rows, rejected raw rows and the report.

    Attributes
    ----------
    clean
        Canonical frame of the valid rows (see module docstring).
    rejects
        The invalid raw rows as given, preceded by ``row`` (1-based data-row number) and
        ``reason`` (every violated rule of the row, ``"; "``-joined), in row order.
    report
        The validation report.
    """

    clean: pd.DataFrame
    rejects: pd.DataFrame
    report: ValidationReport


class ContractError(ValueError):
    """A table violates the data contract; ``report`` lists every issue."""

    def __init__(self, report: ValidationReport, *, source: str | None = None) -> None:
        self.report = report
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}data contract violated\n{report.format()}")


def _display(value: Any) -> str:
    """An example value as shown in an issue (``<missing>`` for null and NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "<missing>"
    return str(value)


# --------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------


@dataclass
class Finding:
    """The rows of one column that violate one rule."""

    column: str
    rule: str
    positions: np.ndarray  # 0-based raw positions, ascending
    values: tuple[str, ...]
    detail: str = ""


class Checks:
    """Collects findings while the columns are parsed.

    Parameters
    ----------
    n
        Rows in the raw table.
    raw
        Raw columns as arrow, where example values are taken from.
    """

    def __init__(self, n: int, raw: dict[str, pa.Array]) -> None:
        self.n = n
        self.raw = raw
        self.findings: list[Finding] = []

    def add(
        self,
        column: str,
        rule: str,
        mask: np.ndarray,
        *,
        detail: str = "",
        show: str | None = None,
    ) -> None:
        """Record ``rule`` for the rows in ``mask``; values are shown from column ``show``."""
        positions = np.flatnonzero(mask)
        if positions.size == 0:
            return
        source = self.raw[show or column]
        head = source.take(pa.array(positions[:MAX_EXAMPLES])).to_pylist()
        values = tuple(_display(v) for v in head)
        self.findings.append(Finding(column, rule, positions, values, detail))

    def invalid(self) -> np.ndarray:
        """Mask of the rows with at least one finding."""
        mask = np.zeros(self.n, dtype=bool)
        for finding in self.findings:
            mask[finding.positions] = True
        return mask

    def issues(self) -> list[ValidationIssue]:
        """One issue per finding, in the order they were added."""
        return [_issue(f) for f in self.findings]


def _issue(f: Finding) -> ValidationIssue:
    """The issue of one finding: counts, first rows and values in one sentence."""
    n = int(f.positions.size)
    rows = tuple(int(p) + 1 for p in f.positions[:MAX_EXAMPLES])
    more = ", ..." if n > MAX_EXAMPLES else ""
    plural = "s" if n > 1 else ""
    what = "charge" if f.rule in {"multiple_successes", "attempt_after_success"} else "value"
    described = RULES[f.rule] + (f" ({f.detail})" if f.detail else "")
    message = (
        f"{f.column}: {described} in {n:,} row{plural} "
        f"(row{plural} {', '.join(map(str, rows))}{more}); "
        f"{what}{plural} {', '.join(repr(v) for v in f.values)}{more}"
    )
    return ValidationIssue(f.column, f.rule, message, n, rows, f.values)


def table_issue(column: str, rule: str, names: Sequence[str], message: str) -> ValidationIssue:
    """A table-level issue (no rows) whose values are the column ``names``."""
    return ValidationIssue(column, rule, message, 0, (), tuple(names))
