"""Validation of payment-attempt tables against the data contract (:mod:`features.contract`).

:func:`validate_attempts` checks a raw frame (as read by :func:`features.io.read_table`: strings
from CSV, or typed columns from Parquet / in-memory producers) and returns the *canonical* frame:
every contract column in :data:`features.contract.ALL_COLUMNS` order, canonical dtypes, rows
sorted by ``(charge_id, attempted_at, attempt_id)``, index ``0..n-1``; columns outside the
contract are dropped and listed in :attr:`ValidationReport.extra_columns`.

Every problem is reported as a :class:`ValidationIssue` naming the column, a stable rule id (see
:data:`RULES`), the number of rows, the first few 1-based row numbers (row 1 = first data row)
and the offending values. Strict mode (the default) raises :class:`ContractError` carrying the
report; ``drop_invalid=True`` keeps the valid rows and returns the rejected raw rows with their
reasons. A missing required column is fatal in both modes.

All checks are vectorised with pyarrow compute kernels and numpy; a fast path casts whole columns
at once and a slower path that locates the offending rows only runs when the fast one fails.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from retryopt.features import contract as c
from retryopt.features.iso_codes import COUNTRIES, CURRENCIES
from retryopt.features.localtime import is_valid_timezone

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

_TS_NS_UTC = pa.timestamp("ns", tz="UTC")
# A time of day followed by a zone designator: "...10:00Z", "...10:00:00.5+05:30", "...-0800".
_ZONE_RE = r"\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"
_HIGH_CARDINALITY = frozenset({c.ATTEMPT_ID, c.CHARGE_ID, c.CUSTOMER_ID, c.CARD_ID})
"""Identifier columns kept as plain text; every other text column is dictionary-encoded."""
_GATHER_THREADS = min(4, os.cpu_count() or 1)
"""Threads gathering the columns of the canonical frame into sorted order."""
_NUMBER_RE = r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$"


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


# --------------------------------------------------------------------------------------------
# Helpers: arrow <-> numpy
# --------------------------------------------------------------------------------------------


def _np_bool(x: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Boolean arrow array to numpy, null -> False."""
    filled = pc.fill_null(x, False)
    if isinstance(filled, pa.ChunkedArray):
        filled = filled.combine_chunks()
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=bool)


def _to_arrow(series: pd.Series) -> pa.ChunkedArray:
    """One raw pandas column as arrow (zero-copy where possible; strings as ``large_string``)."""
    try:
        obj = pa.array(series, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError):
        # Mixed Python objects: fall back to their text form, keeping missing values.
        text = series.astype("str")
        obj = pa.array(text.where(series.notna()), from_pandas=True)
    arr = obj if isinstance(obj, pa.ChunkedArray) else pa.chunked_array([obj], type=obj.type)
    if pa.types.is_dictionary(arr.type):
        arr = pc.cast(arr, arr.type.value_type)
    if pa.types.is_string(arr.type):
        arr = arr.cast(pa.large_string())
    return arr


def _as_string(arr: pa.Array) -> pa.Array:
    """Text form of a column; empty strings become missing."""
    if pa.types.is_large_string(arr.type):
        text = arr
    elif pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        text = pc.cast(pc.cast(arr, pa.string()), pa.large_string())
    else:
        text = pc.cast(arr, pa.large_string())
    empty = pc.equal(text, "")
    if pc.any(empty).as_py():
        text = pc.if_else(empty, pa.scalar(None, pa.large_string()), text)
    return text


def _display(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "<missing>"
    return str(value)


# --------------------------------------------------------------------------------------------
# Parsers (vectorised, fast path + locating slow path)
# --------------------------------------------------------------------------------------------


class _Parsed(NamedTuple):
    values: Any  # pa.Array (timestamps) or np.ndarray (numbers)
    missing: np.ndarray
    bad: dict[str, np.ndarray]  # rule -> mask of present but invalid values


def _parse_timestamps(arr: pa.Array) -> _Parsed:
    """ISO 8601 with offset or Z -> ``timestamp[ns, UTC]``; zone-less values are rejected."""
    n = len(arr)
    missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_timestamp(arr.type) and arr.type.tz is not None:
        try:
            return _Parsed(pc.cast(arr, _TS_NS_UTC), missing, {})
        except pa.ArrowInvalid:  # out of the datetime64[ns] range
            pass
    if (pa.types.is_timestamp(arr.type) and arr.type.tz is None) or pa.types.is_date(arr.type):
        values = pa.nulls(n, _TS_NS_UTC)
        return _Parsed(values, missing, {"timestamp_no_zone": ~missing})
    text = _as_string(arr)
    missing = np.asarray(text.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    try:
        return _Parsed(pc.cast(text, _TS_NS_UTC), missing, {})
    except pa.ArrowInvalid:
        pass
    has_zone = _np_bool(pc.match_substring_regex(text, _ZONE_RE)) & ~missing
    zoned = pc.if_else(pa.array(has_zone), text, pa.scalar(None, pa.large_string()))
    try:
        values = pc.cast(zoned, _TS_NS_UTC)
        unparseable = np.zeros(n, dtype=bool)
    except pa.ArrowInvalid:
        # Some zoned strings are not ISO 8601 for arrow; let pandas decide, row by row.
        parsed = pd.to_datetime(
            pd.Series(zoned.to_pandas()), format="ISO8601", utc=True, errors="coerce"
        ).astype("datetime64[ns, UTC]")
        values = pa.array(parsed, type=_TS_NS_UTC)
        unparseable = has_zone & parsed.isna().to_numpy()
    no_zone = ~missing & ~has_zone
    if no_zone.any():
        # Split zone-less values into "parseable but no zone" and "not a timestamp at all".
        idx = np.flatnonzero(no_zone)
        subset = pd.Series(text.take(pa.array(idx)).to_pandas())
        ok = pd.to_datetime(subset, format="ISO8601", errors="coerce", utc=True).notna()
        garbage = idx[~ok.to_numpy()]
        unparseable[garbage] = True
        no_zone[garbage] = False
    return _Parsed(
        values, missing, {"timestamp_unparseable": unparseable, "timestamp_no_zone": no_zone}
    )


def _parse_numbers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column -> (float64 values, missing mask, not-a-number mask). NaN floats are missing."""
    n = len(arr)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        values = np.asarray(values, dtype=np.float64)
        missing = np.isnan(values)
        return values, missing, np.isinf(values)
    if pa.types.is_boolean(arr.type):
        missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        return np.full(n, np.nan), missing, ~missing
    text = _as_string(arr)
    missing = np.asarray(text.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    try:
        values = pc.cast(text, pa.float64())
        bad = np.zeros(n, dtype=bool)
    except pa.ArrowInvalid:
        numeric = _np_bool(pc.match_substring_regex(text, _NUMBER_RE))
        bad = ~missing & ~numeric
        values = pc.cast(
            pc.if_else(pa.array(numeric), text, pa.scalar(None, pa.large_string())), pa.float64()
        )
    out = np.asarray(pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False), dtype=float)
    # Text such as "nan" or "inf" parses as a float but is not a usable number.
    bad = bad | (~missing & ~np.isfinite(out))
    return out, missing, bad


def _parse_integers(arr: pa.Array) -> _Parsed:
    """Integer column -> int64 values (0 where invalid); integral floats (``100.0``) accepted."""
    if pa.types.is_integer(arr.type):
        missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        values = np.asarray(pc.fill_null(pc.cast(arr, pa.int64()), 0).to_numpy(), dtype=np.int64)
        return _Parsed(values, missing, {})
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        text = _as_string(arr)
        try:  # fast path: every value is integer text
            ints = pc.cast(text, pa.int64())
            missing = np.asarray(text.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            values = np.asarray(pc.fill_null(ints, 0).to_numpy(), dtype=np.int64)
            return _Parsed(values, missing, {})
        except pa.ArrowInvalid:
            arr = text
    floats, missing, not_number = _parse_numbers(arr)
    not_number = not_number | (~missing & (np.abs(np.nan_to_num(floats)) >= 2.0**63))  # int64
    finite = ~missing & ~not_number
    fractional = finite & (np.floor(np.where(finite, floats, 0.0)) != np.where(finite, floats, 0))
    ok = finite & ~fractional
    values = np.where(ok, floats, 0.0).astype(np.int64)
    return _Parsed(values, missing, {"not_a_number": not_number, "fractional": fractional})


# --------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------


@dataclass
class _Finding:
    column: str
    rule: str
    positions: np.ndarray  # 0-based raw positions, ascending
    values: tuple[str, ...]
    detail: str = ""


class _Checks:
    """Collects findings while the columns are parsed."""

    def __init__(self, n: int, raw: dict[str, pa.Array]) -> None:
        self.n = n
        self.raw = raw
        self.findings: list[_Finding] = []

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
        self.findings.append(_Finding(column, rule, positions, values, detail))

    def invalid(self) -> np.ndarray:
        mask = np.zeros(self.n, dtype=bool)
        for finding in self.findings:
            mask[finding.positions] = True
        return mask

    def issues(self) -> list[ValidationIssue]:
        return [_issue(f) for f in self.findings]


def _issue(f: _Finding) -> ValidationIssue:
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


def _table_issue(column: str, rule: str, names: Sequence[str], message: str) -> ValidationIssue:
    return ValidationIssue(column, rule, message, 0, (), tuple(names))


class _Coded(NamedTuple):
    """A text column as a dictionary of distinct values and one code per row.

    Low-cardinality columns (codes, brands, countries, ...) are checked once per distinct value
    and materialised in any row order from the small dictionary, which is much faster than
    comparing or gathering millions of strings.
    """

    dictionary: pa.Array  # large_string; may hold an unused "" entry
    codes: np.ndarray  # int32 index into ``dictionary`` per row; -1 = missing (null or "")

    @property
    def missing(self) -> np.ndarray:
        return self.codes < 0

    def lookup(self, per_value: np.ndarray) -> np.ndarray:
        """Per-row mask from a per-dictionary-value mask (missing rows -> False)."""
        return np.append(np.asarray(per_value, dtype=bool), False)[self.codes]

    def take(self, rows: np.ndarray) -> pa.Array:
        """The text values at ``rows`` (missing -> null) as ``large_string``."""
        idx = self.codes[rows]
        if len(self.dictionary) == 0:
            return pa.nulls(idx.size, pa.large_string())
        absent = idx < 0
        return self.dictionary.take(pa.array(idx, mask=absent) if absent.any() else pa.array(idx))


def _encode(arr: pa.Array | pa.ChunkedArray | None, n: int) -> _Coded:
    """Dictionary-encode one text column (``None``: absent column, all missing)."""
    if arr is None or n == 0:
        return _Coded(pa.array([], pa.large_string()), np.full(n, -1, dtype=np.int32))
    if not pa.types.is_large_string(arr.type):
        arr = _as_string(arr)
    encoded = pc.dictionary_encode(arr)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.unify_dictionaries()
        dictionary = encoded.chunk(0).dictionary
        indices = pa.chunked_array([ch.indices for ch in encoded.chunks], pa.int32())
    else:
        dictionary, indices = encoded.dictionary, encoded.indices
    codes = np.asarray(pc.fill_null(indices, -1).to_numpy(), dtype=np.int32)
    empty = np.flatnonzero(_np_bool(pc.equal(dictionary, "")))
    if empty.size:  # an empty string counts as missing
        codes = np.where(codes == empty[0], np.int32(-1), codes)
    return _Coded(dictionary.cast(pa.large_string()), codes)


def _value_mask(dictionary: pa.Array, values: frozenset[str] | Sequence[str]) -> np.ndarray:
    """Per-dictionary-value membership in ``values``."""
    value_set = pa.array(sorted(values), type=pa.large_string())
    return _np_bool(pc.is_in(dictionary, value_set=value_set))


def _check_codes(
    checks: _Checks,
    column: str,
    coded: _Coded,
    allowed: frozenset[str],
    *,
    case: str,
    case_rule: str,
    unknown_rule: str,
) -> None:
    """Membership check with a dedicated rule for wrong letter case."""
    dictionary = coded.dictionary
    bad = ~_value_mask(dictionary, allowed) & ~_np_bool(pc.equal(dictionary, ""))
    if bad.any():
        recased = pc.utf8_lower(dictionary) if case == "lower" else pc.utf8_upper(dictionary)
        wrong_case = bad & _value_mask(recased, allowed)
        checks.add(column, case_rule, coded.lookup(wrong_case))
        checks.add(column, unknown_rule, coded.lookup(bad & ~wrong_case))


_MAX_KEY_BYTES = 32
"""Widest text (in UTF-8 bytes) turned into integer sort/hash keys; wider text uses arrow."""


def _text_keys(arr: pa.Array | pa.ChunkedArray) -> list[np.ndarray] | None:
    """Order-preserving integer keys of a ``large_string`` column, most significant first.

    The UTF-8 bytes of each value, zero-padded to the longest value, are packed big-endian into
    ``uint64`` words (byte positions that hold the same byte in every row are skipped: they never
    decide an order); a final length key breaks ties between values that differ only by trailing
    NUL bytes. Comparing the key tuples lexicographically is comparing the strings byte by byte
    (arrow's string order). Nulls get the keys of ``""``. ``None`` when a value is longer than
    :data:`_MAX_KEY_BYTES` bytes.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.large_string())
    n = len(arr)
    if n == 0:
        return [np.zeros(0, dtype=np.uint64)]
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + n + 1]
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    if arr.null_count:  # a null slot may span bytes: treat it as ""
        lengths = np.where(_np_bool(arr.is_valid()), lengths, 0)
    width = int(lengths.max())
    if width > _MAX_KEY_BYTES:
        return None
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    )
    uniform = bool(np.all(lengths == width))  # then the values are back to back
    if uniform:
        block = data[int(starts[0]) : int(starts[0]) + n * width].reshape(n, width)
        varies = np.flatnonzero(~np.all(block == block[:1], axis=0))
        columns = [block[:, j] for j in varies]
    else:
        columns = []
        for j in range(width):
            present = lengths > j
            byte = np.where(present, data[np.where(present, starts + j, 0)], np.uint8(0))
            if not np.all(byte == byte[0]):
                columns.append(byte)
    n_words = -(-len(columns) // 8)
    packed = np.zeros((n, 8 * n_words), dtype=np.uint8)
    for j, byte in enumerate(columns):
        packed[:, j] = byte
    words = packed.view(">u8")  # big-endian: the first byte is the most significant
    keys = [words[:, i].astype(np.uint64) for i in range(n_words)]
    if not uniform and not np.all(lengths == lengths[0]):
        keys.append(lengths.astype(np.uint64))
    return keys or [np.zeros(n, dtype=np.uint64)]


def _duplicates(ids: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """Mask of rows whose (present) id occurred in an earlier row."""
    duplicate = np.zeros(n, dtype=bool)
    keys = _text_keys(ids)
    if keys is None:
        counts = pc.value_counts(ids)
        repeated = counts.field("values").filter(
            pc.and_(pc.greater(counts.field("counts"), 1), pc.is_valid(counts.field("values")))
        )
        if len(repeated) == 0:
            return duplicate
        rows = np.flatnonzero(_np_bool(pc.is_in(ids, value_set=repeated)))
    else:
        # One 64-bit hash per id (exact when the id fits one key word); the few rows whose
        # hash repeats are compared as text below.
        hashed = keys[0].copy()
        for key in keys[1:]:
            hashed = (hashed * np.uint64(0x9E3779B97F4A7C15)) ^ key
        present = np.flatnonzero(~np.asarray(ids.is_null().to_numpy(zero_copy_only=False)))
        hashed = hashed[present]
        by_hash = np.argsort(hashed)  # sorting beats a hash table on 64-bit keys here
        equal = hashed[by_hash[1:]] == hashed[by_hash[:-1]]
        repeats = np.zeros(present.size, dtype=bool)
        repeats[by_hash[1:][equal]] = True
        repeats[by_hash[:-1][equal]] = True
        rows = present[repeats]
    if rows.size == 0:
        return duplicate
    # Only the few rows holding a repeated id: keep each id's first occurrence.
    later = pd.Series(ids.take(pa.array(rows)).to_pylist()).duplicated(keep="first").to_numpy()
    duplicate[rows[later]] = True
    return duplicate


def _sort_order(
    charge: pa.ChunkedArray, ts_ns: np.ndarray, attempt: pa.ChunkedArray, sortable: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions of the ``sortable`` rows ordered by (charge_id, attempted_at, attempt_id).

    Strings compare in code-point (UTF-8 byte) order; missing attempt ids sort last; the sort
    is stable, so rows equal on all three keys keep their input order. Also returns the charge
    group number of each ordered row when it falls out of the sort (else ``None``).

    Charge ids are sorted as integer keys (:func:`_text_keys`) with the time by a stable
    ``numpy.lexsort``; only the rows tied on (charge, time) are then ordered by attempt id.
    """
    if not sortable.any():
        return np.zeros(0, dtype=np.int64), None
    keys = _text_keys(charge)
    if keys is None:
        table = pa.table({"c": charge, "t": ts_ns, "a": attempt})
        order = pc.sort_indices(
            table,
            sort_keys=[("c", "ascending"), ("t", "ascending"), ("a", "ascending")],
        )  # nulls (missing attempt ids) are placed at the end by default
        positions = np.asarray(order.to_numpy(), dtype=np.int64)
        return positions[sortable[positions]], None
    rows = np.flatnonzero(sortable)
    sub_keys = [key[rows] for key in keys]
    times = ts_ns[rows]
    local = np.lexsort([times, *reversed(sub_keys)])  # stable; last key is the primary one
    positions = rows[local]
    same_charge = np.ones(max(positions.size - 1, 0), dtype=bool)
    for key in sub_keys:
        ordered = key[local]
        same_charge &= ordered[1:] == ordered[:-1]
    ordered_times = times[local]
    tie = same_charge & (ordered_times[1:] == ordered_times[:-1])
    if tie.any():
        # Runs of rows equal on (charge, time): order each run by attempt id (stable, nulls last).
        tied_before = np.r_[False, tie]
        in_run = tied_before | np.r_[tie, False]
        slots = np.flatnonzero(in_run)
        run = np.cumsum(~tied_before[slots])
        ties = pa.table({"r": run, "a": attempt.take(pa.array(positions[slots]))})
        within = pc.sort_indices(ties, sort_keys=[("r", "ascending"), ("a", "ascending")])
        positions[slots] = positions[slots][np.asarray(within.to_numpy(), dtype=np.int64)]
    group = np.cumsum(np.r_[True, ~same_charge], dtype=np.int64)
    return positions, group


def _group_ids(sorted_keys: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Group number per row of a sorted, null-free column (a new group where the value changes)."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    same = _np_bool(pc.equal(sorted_keys.slice(1), sorted_keys.slice(0, n - 1)))
    return np.cumsum(np.r_[True, ~same], dtype=np.int64)


def _in_order(values: Any, rows: np.ndarray, keep: np.ndarray | None, *, identity: bool) -> Any:
    """``values`` at ``rows`` (ascending positions selected by mask ``keep`` when monotonic)."""
    if identity:
        return values
    if isinstance(values, np.ndarray):
        return values[rows]
    if keep is not None:
        return values.filter(pa.array(keep))
    return values.take(pa.array(rows, type=pa.int64()))


# --------------------------------------------------------------------------------------------
# validate_attempts
# --------------------------------------------------------------------------------------------


def validate_attempts(raw: pd.DataFrame, *, drop_invalid: bool = False) -> ValidationResult:
    """Check a raw attempts frame against the contract and return the canonical frame.

    Parameters
    ----------
    raw
        One row per authorization attempt; strings (e.g. from CSV) or typed columns. Row ``i``
        (0-based position) is reported as row ``i + 1``.
    drop_invalid
        False (strict): raise :class:`ContractError` when any rule is violated. True: keep the
        valid rows in ``clean`` and return the others in ``rejects``. A row violating a
        charge-level rule (second success, attempt after the success) is rejected on its own;
        the rest of its charge stays.

    Returns
    -------
    ValidationResult
        ``clean``: every contract column in :data:`features.contract.ALL_COLUMNS` order with
        canonical dtypes, sorted by ``(charge_id, attempted_at, attempt_id)``;
        ``rejects``: ``row``, ``reason`` and the raw columns of the invalid rows;
        ``report``: the :class:`ValidationReport`.

    Raises
    ------
    ContractError
        Required columns are missing or column names repeat (both modes), or any rule is
        violated in strict mode.
    TypeError
        ``raw`` is not a DataFrame.
    """
    if not isinstance(raw, pd.DataFrame):
        raise TypeError(f"validate_attempts expects a pandas DataFrame, got {type(raw).__name__}")
    n = len(raw)
    names = [str(col) for col in raw.columns]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    missing_columns = [col for col in c.REQUIRED_COLUMNS if col not in names]
    extra = [col for col in names if col not in c.ALL_COLUMNS]
    fatal: list[ValidationIssue] = []
    if duplicated:
        fatal.append(
            _table_issue(
                ", ".join(duplicated),
                "duplicate_column",
                duplicated,
                f"column names appear more than once: {', '.join(map(repr, duplicated))}",
            )
        )
    if missing_columns:
        fatal.append(
            _table_issue(
                ", ".join(missing_columns),
                "missing_column",
                missing_columns,
                f"required columns are missing: {', '.join(map(repr, missing_columns))}"
                f" (the table has {', '.join(map(repr, names)) or 'no columns'})",
            )
        )
    if fatal:
        report = ValidationReport(n_rows=n, n_valid=0, issues=fatal, extra_columns=extra)
        raise ContractError(report)

    raw_arrays = {
        col: _to_arrow(raw.iloc[:, names.index(col)]) for col in c.ALL_COLUMNS if col in names
    }
    checks = _Checks(n, raw_arrays)
    out: dict[str, Any] = {}
    missing_of: dict[str, np.ndarray] = {}

    # Strings (identifiers and codes); required ones must be present. Low-cardinality columns
    # are dictionary-encoded; identifiers stay plain text.
    for col in c.STRING_COLUMNS:
        if col in _HIGH_CARDINALITY:
            absent = pa.nulls(n, pa.large_string())
            text = _as_string(raw_arrays[col]) if col in raw_arrays else absent
            out[col] = text
            missing_of[col] = np.asarray(text.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        else:
            out[col] = _encode(raw_arrays.get(col), n)
            missing_of[col] = out[col].missing
        if col in c.REQUIRED_COLUMNS and col != c.DECLINE_CODE:
            checks.add(col, "missing_value", missing_of[col])

    # Timestamps.
    ts_valid: dict[str, np.ndarray] = {}
    for col in c.TIMESTAMP_COLUMNS:
        parsed = _parse_timestamps(raw_arrays[col])
        checks.add(col, "missing_value", parsed.missing)
        for rule, mask in parsed.bad.items():
            checks.add(col, rule, mask)
        out[col] = parsed.values
        bad = parsed.missing.copy()
        for mask in parsed.bad.values():
            bad |= mask
        ts_valid[col] = ~bad

    # Integers.
    for col in c.INTEGER_COLUMNS:
        parsed = _parse_integers(raw_arrays[col])
        checks.add(col, "missing_value", parsed.missing)
        for rule, mask in parsed.bad.items():
            checks.add(col, rule, mask)
        usable = ~parsed.missing
        for mask in parsed.bad.values():
            usable &= ~mask
        values = parsed.values
        if col == c.AMOUNT:
            checks.add(col, "not_positive", usable & (values <= 0))
        elif col == c.CARD_EXP_MONTH:
            checks.add(col, "exp_month_out_of_range", usable & ((values < 1) | (values > 12)))
        else:
            implausible = (values < MIN_EXP_YEAR) | (values > MAX_EXP_YEAR)
            checks.add(col, "exp_year_implausible", usable & implausible)
        out[col] = values

    # Propensity (optional): a probability in (0, 1].
    if c.RETRY_PROPENSITY in raw_arrays:
        floats, prop_missing, not_number = _parse_numbers(raw_arrays[c.RETRY_PROPENSITY])
        checks.add(c.RETRY_PROPENSITY, "not_a_number", not_number)
        usable = ~prop_missing & ~not_number
        checks.add(
            c.RETRY_PROPENSITY,
            "propensity_out_of_range",
            usable & ~((floats > 0) & (floats <= 1)),
        )
        out[c.RETRY_PROPENSITY] = np.where(usable, floats, np.nan)
    else:
        out[c.RETRY_PROPENSITY] = np.full(n, np.nan)

    # Codes, checked once per distinct value.
    _check_codes(
        checks,
        c.CURRENCY,
        out[c.CURRENCY],
        CURRENCIES,
        case="lower",
        case_rule="currency_not_lower_case",
        unknown_rule="currency_unknown",
    )
    _check_codes(
        checks,
        c.CARD_COUNTRY,
        out[c.CARD_COUNTRY],
        COUNTRIES,
        case="upper",
        case_rule="country_not_upper_case",
        unknown_rule="country_unknown",
    )
    funding: _Coded = out[c.CARD_FUNDING]
    funding_ok = _value_mask(funding.dictionary, c.CARD_FUNDINGS)
    checks.add(
        c.CARD_FUNDING, "card_funding_unknown", ~funding.missing & ~funding.lookup(funding_ok)
    )
    brands: pa.Array = out[c.CARD_BRAND].dictionary
    checks.add(
        c.CARD_BRAND,
        "card_brand_not_lower_case",
        out[c.CARD_BRAND].lookup(_np_bool(pc.not_equal(pc.utf8_lower(brands), brands))),
    )
    if c.CUSTOMER_TIMEZONE in raw_arrays:
        zones: _Coded = out[c.CUSTOMER_TIMEZONE]
        unknown_zone = np.array(
            [
                z is not None and z != "" and not is_valid_timezone(z)
                for z in zones.dictionary.to_pylist()
            ],
            dtype=bool,
        )
        if unknown_zone.any():
            checks.add(c.CUSTOMER_TIMEZONE, "timezone_unknown", zones.lookup(unknown_zone))

    # Outcome and decline code.
    outcome: _Coded = out[c.OUTCOME]
    succeeded = outcome.lookup(_np_bool(pc.equal(outcome.dictionary, c.SUCCEEDED)))
    failed = outcome.lookup(_np_bool(pc.equal(outcome.dictionary, c.FAILED)))
    checks.add(c.OUTCOME, "outcome_unknown", ~missing_of[c.OUTCOME] & ~succeeded & ~failed)
    has_code = ~missing_of[c.DECLINE_CODE]
    checks.add(c.DECLINE_CODE, "decline_code_missing", failed & ~has_code, show=c.OUTCOME)
    checks.add(c.DECLINE_CODE, "decline_code_on_success", succeeded & has_code)

    # Duplicate attempt ids (every occurrence after the first).
    attempt_ids = out[c.ATTEMPT_ID]
    duplicate = _duplicates(attempt_ids, n)
    checks.add(c.ATTEMPT_ID, "duplicate_attempt_id", duplicate)

    # Order, and the charge-level rules on rows whose charge, time and outcome are valid.
    attempted = out[c.ATTEMPTED_AT]
    ts_ns = np.asarray(
        pc.fill_null(pc.cast(attempted, pa.int64()), 0).to_numpy(zero_copy_only=False),
        dtype=np.int64,
    )
    sortable = ~missing_of[c.CHARGE_ID] & ts_valid[c.ATTEMPTED_AT]
    order, group = _sort_order(out[c.CHARGE_ID], ts_ns, attempt_ids, sortable)
    charge_sorted = None
    if group is None:  # the arrow fallback sort: number the charges from their sorted text
        identity = order.size == n and bool(np.all(order == np.arange(n)))
        charge_sorted = out[c.CHARGE_ID] if identity else out[c.CHARGE_ID].take(pa.array(order))
        group = _group_ids(charge_sorted)
    eligible = sortable & (succeeded | failed) & ~duplicate
    _check_charges(checks, group, order, eligible, succeeded)

    invalid = checks.invalid()
    issues = checks.issues()
    keep_sorted = ~invalid[order]
    valid_order = order[keep_sorted]
    report = ValidationReport(
        n_rows=n, n_valid=int(valid_order.size), issues=issues, extra_columns=extra
    )
    failed_valid = valid_order[failed[valid_order]]
    _summarise_declines(report, out[c.DECLINE_CODE], failed_valid)
    if issues and not drop_invalid:
        raise ContractError(report)
    if charge_sorted is None:  # gathered with the other columns
        clean = _canonical_frame(out, valid_order, ~invalid)
    else:
        out[c.CHARGE_ID] = charge_sorted.filter(pa.array(keep_sorted))
        clean = _canonical_frame(out, valid_order, ~invalid, sorted_columns={c.CHARGE_ID})
    rejects = _rejects(raw, checks.findings, invalid)
    return ValidationResult(clean=clean, rejects=rejects, report=report)


def _check_charges(
    checks: _Checks,
    group: np.ndarray,
    order: np.ndarray,
    eligible: np.ndarray,
    succeeded: np.ndarray,
) -> None:
    """Flag second successes and attempts after the success within each charge.

    ``order`` lists the sortable rows in (charge, time, attempt_id) order and ``group`` numbers
    their charges (same length as ``order``).
    """
    in_scope = eligible[order]
    rows = order[in_scope]
    if rows.size == 0:
        return
    codes = group[in_scope]
    success = succeeded[rows].astype(np.int64)
    cumulative = np.cumsum(success)
    starts = np.r_[True, codes[1:] != codes[:-1]]
    # Successes strictly before each row within the same charge.
    base = (cumulative - success)[starts]
    index = np.cumsum(starts) - 1
    before = cumulative - success - base[index]
    after = before > 0
    second = np.zeros(len(eligible), dtype=bool)
    later = np.zeros(len(eligible), dtype=bool)
    second[rows[after & (success == 1)]] = True
    later[rows[after & (success == 0)]] = True
    checks.add(c.CHARGE_ID, "multiple_successes", second)
    checks.add(c.CHARGE_ID, "attempt_after_success", later)


def _summarise_declines(report: ValidationReport, codes: _Coded, rows: np.ndarray) -> None:
    """Decline-family mix and unknown decline codes of the valid failed rows."""
    if rows.size == 0:
        return
    row_codes = codes.codes[rows]
    row_codes = row_codes[row_codes >= 0]
    if row_codes.size == 0:
        return
    k = len(codes.dictionary)
    numbers = np.bincount(row_codes, minlength=k)
    # Codes in order of first appearance among the rows (ties in the mix keep that order).
    first = np.full(k, row_codes.size, dtype=np.int64)
    np.minimum.at(first, row_codes, np.arange(row_codes.size, dtype=np.int64))
    present = np.flatnonzero(numbers > 0)
    present = present[np.argsort(first[present], kind="stable")]
    values = codes.dictionary.take(pa.array(present)).to_pylist()
    from retryopt.features.taxonomy import classify_codes

    info = classify_codes(pd.Series(values, dtype="str"))
    families: dict[str, int] = {}
    for i, value, family, known in zip(present, values, info["family"], info["known"], strict=True):
        families[str(family)] = families.get(str(family), 0) + int(numbers[i])
        if not known:
            report.unknown_decline_codes[str(value)] = int(numbers[i])
    report.decline_families = dict(sorted(families.items(), key=lambda kv: -kv[1]))


def _canonical_frame(
    out: dict[str, Any],
    rows: np.ndarray,
    valid: np.ndarray,
    *,
    sorted_columns: frozenset[str] | set[str] = frozenset(),
) -> pd.DataFrame:
    """Contract columns in order with canonical dtypes, rows taken in ``rows`` order.

    ``valid`` is the row mask that ``rows`` orders; columns in ``sorted_columns`` already hold
    exactly the rows of ``rows`` in that order. Each column is gathered once: not at all when
    ``rows`` is ``0..n-1``, by a sequential filter when ``rows`` is ascending, by a take
    otherwise (low-cardinality text from its small dictionary).
    """
    n = len(valid)
    identity = rows.size == n and bool(np.all(rows == np.arange(n)))
    ascending = identity or bool(np.all(rows[1:] > rows[:-1]))
    keep = None if identity or not ascending else valid

    def gather(col: str) -> Any:
        values = out[col]
        if col in sorted_columns:
            return values
        if isinstance(values, _Coded):
            return values.take(rows)
        return _in_order(values, rows, keep, identity=identity)

    # The gathers are arrow/numpy kernels that release the GIL: run them on a few threads.
    with ThreadPoolExecutor(max_workers=_GATHER_THREADS) as pool:
        data = dict(zip(c.ALL_COLUMNS, pool.map(gather, c.ALL_COLUMNS), strict=True))
    frame = pa.table(data).to_pandas()
    for col in c.STRING_COLUMNS:
        if frame[col].dtype != "str":
            frame[col] = frame[col].astype("str")
    for col in c.TIMESTAMP_COLUMNS:
        frame[col] = frame[col].astype("datetime64[ns, UTC]")
    return frame


def _rejects(raw: pd.DataFrame, findings: list[_Finding], invalid: np.ndarray) -> pd.DataFrame:
    """Invalid raw rows with ``row`` (1-based) and ``reason`` (all violated rules)."""
    positions = np.flatnonzero(invalid)
    rejects = raw.iloc[positions].reset_index(drop=True)
    rejects = rejects.drop(columns=[x for x in ("row", "reason") if x in rejects.columns])
    if positions.size == 0:
        reasons = pd.Series([], dtype="str")
    else:
        pos = np.concatenate([f.positions for f in findings])
        label = np.concatenate(
            [np.full(f.positions.size, i, dtype=np.int64) for i, f in enumerate(findings)]
        )
        texts = np.array([f"{f.column}: {RULES[f.rule]}" for f in findings], dtype=object)
        order = np.argsort(pos, kind="stable")
        joined = pd.Series(texts[label[order]]).groupby(pos[order], sort=True).agg("; ".join)
        reasons = pd.Series(joined.to_numpy(), dtype="str")
    rejects.insert(0, "reason", reasons)
    rejects.insert(0, "row", (positions + 1).astype(np.int64))
    return rejects


def load_attempts(path: str | Path, *, drop_invalid: bool = False) -> pd.DataFrame:
    """Read a CSV/Parquet attempts table and return its canonical frame.

    Parameters
    ----------
    path
        ``.csv``, ``.csv.gz``, ``.parquet`` or ``.pq`` file.
    drop_invalid
        Drop invalid rows instead of raising.

    Returns
    -------
    pandas.DataFrame
        The canonical frame (see :func:`validate_attempts`).

    Raises
    ------
    features.io.TableIOError
        The file cannot be read.
    ContractError
        The table violates the contract (strict mode), naming ``path``.
    """
    from retryopt.features.io import read_table

    raw = read_table(path)
    try:
        return validate_attempts(raw, drop_invalid=drop_invalid).clean
    except ContractError as exc:
        raise ContractError(exc.report, source=str(path)) from None
