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

This module is the entry point: import the public names (:func:`validate_attempts`,
:func:`load_attempts`, :class:`ContractError`, :class:`ValidationIssue`,
:class:`ValidationReport`, :class:`ValidationResult`, :data:`RULES`) from here. The parts live in
:mod:`features.validation_report` (rules, issue and report types, the findings collector),
:mod:`features.validation_columns` (column parsers, dictionary-encoded text columns) and
:mod:`features.validation_sort` (row order and duplicate ids as integer keys).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from retryopt.features import contract as c
from retryopt.features.io import read_table
from retryopt.features.iso_codes import COUNTRIES, CURRENCIES
from retryopt.features.localtime import is_valid_timezone
from retryopt.features.taxonomy import classify_codes
from retryopt.features.validation_columns import (
    Coded,
    as_string,
    check_codes,
    encode,
    np_bool,
    parse_integers,
    parse_numbers,
    parse_timestamps,
    to_arrow,
    value_mask,
)
from retryopt.features.validation_report import (
    MAX_EXAMPLES,
    MAX_EXP_YEAR,
    MIN_EXP_YEAR,
    RULES,
    Checks,
    ContractError,
    Finding,
    ValidationIssue,
    ValidationReport,
    ValidationResult,
    table_issue,
)
from retryopt.features.validation_sort import duplicates, group_ids, in_order, sort_order

__all__ = [
    "MAX_EXAMPLES",
    "MAX_EXP_YEAR",
    "MIN_EXP_YEAR",
    "RULES",
    "ContractError",
    "ValidationIssue",
    "ValidationReport",
    "ValidationResult",
    "load_attempts",
    "validate_attempts",
]

_HIGH_CARDINALITY = frozenset({c.ATTEMPT_ID, c.CHARGE_ID, c.CUSTOMER_ID, c.CARD_ID})
"""Identifier columns kept as plain text; every other text column is dictionary-encoded."""
_GATHER_THREADS = min(4, os.cpu_count() or 1)
"""Threads gathering the columns of the canonical frame into sorted order."""


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
            table_issue(
                ", ".join(duplicated),
                "duplicate_column",
                duplicated,
                f"column names appear more than once: {', '.join(map(repr, duplicated))}",
            )
        )
    if missing_columns:
        fatal.append(
            table_issue(
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
        col: to_arrow(raw.iloc[:, names.index(col)]) for col in c.ALL_COLUMNS if col in names
    }
    checks = Checks(n, raw_arrays)
    out: dict[str, Any] = {}
    missing_of: dict[str, np.ndarray] = {}

    # Strings (identifiers and codes); required ones must be present. Low-cardinality columns
    # are dictionary-encoded; identifiers stay plain text.
    for col in c.STRING_COLUMNS:
        if col in _HIGH_CARDINALITY:
            absent = pa.nulls(n, pa.large_string())
            text = as_string(raw_arrays[col]) if col in raw_arrays else absent
            out[col] = text
            missing_of[col] = np.asarray(text.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        else:
            out[col] = encode(raw_arrays.get(col), n)
            missing_of[col] = out[col].missing
        if col in c.REQUIRED_COLUMNS and col != c.DECLINE_CODE:
            checks.add(col, "missing_value", missing_of[col])

    # Timestamps.
    ts_valid: dict[str, np.ndarray] = {}
    for col in c.TIMESTAMP_COLUMNS:
        parsed = parse_timestamps(raw_arrays[col])
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
        parsed = parse_integers(raw_arrays[col])
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
        floats, prop_missing, not_number = parse_numbers(raw_arrays[c.RETRY_PROPENSITY])
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
    check_codes(
        checks,
        c.CURRENCY,
        out[c.CURRENCY],
        CURRENCIES,
        case="lower",
        case_rule="currency_not_lower_case",
        unknown_rule="currency_unknown",
    )
    check_codes(
        checks,
        c.CARD_COUNTRY,
        out[c.CARD_COUNTRY],
        COUNTRIES,
        case="upper",
        case_rule="country_not_upper_case",
        unknown_rule="country_unknown",
    )
    funding: Coded = out[c.CARD_FUNDING]
    funding_ok = value_mask(funding.dictionary, c.CARD_FUNDINGS)
    checks.add(
        c.CARD_FUNDING, "card_funding_unknown", ~funding.missing & ~funding.lookup(funding_ok)
    )
    brands: pa.Array = out[c.CARD_BRAND].dictionary
    checks.add(
        c.CARD_BRAND,
        "card_brand_not_lower_case",
        out[c.CARD_BRAND].lookup(np_bool(pc.not_equal(pc.utf8_lower(brands), brands))),
    )
    if c.CUSTOMER_TIMEZONE in raw_arrays:
        zones: Coded = out[c.CUSTOMER_TIMEZONE]
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
    outcome: Coded = out[c.OUTCOME]
    succeeded = outcome.lookup(np_bool(pc.equal(outcome.dictionary, c.SUCCEEDED)))
    failed = outcome.lookup(np_bool(pc.equal(outcome.dictionary, c.FAILED)))
    checks.add(c.OUTCOME, "outcome_unknown", ~missing_of[c.OUTCOME] & ~succeeded & ~failed)
    has_code = ~missing_of[c.DECLINE_CODE]
    checks.add(c.DECLINE_CODE, "decline_code_missing", failed & ~has_code, show=c.OUTCOME)
    checks.add(c.DECLINE_CODE, "decline_code_on_success", succeeded & has_code)

    # Duplicate attempt ids (every occurrence after the first).
    attempt_ids = out[c.ATTEMPT_ID]
    duplicate = duplicates(attempt_ids, n)
    checks.add(c.ATTEMPT_ID, "duplicate_attempt_id", duplicate)

    # Order, and the charge-level rules on rows whose charge, time and outcome are valid.
    attempted = out[c.ATTEMPTED_AT]
    ts_ns = np.asarray(
        pc.fill_null(pc.cast(attempted, pa.int64()), 0).to_numpy(zero_copy_only=False),
        dtype=np.int64,
    )
    sortable = ~missing_of[c.CHARGE_ID] & ts_valid[c.ATTEMPTED_AT]
    order, group = sort_order(out[c.CHARGE_ID], ts_ns, attempt_ids, sortable)
    charge_sorted = None
    if group is None:  # the arrow fallback sort: number the charges from their sorted text
        identity = order.size == n and bool(np.all(order == np.arange(n)))
        charge_sorted = out[c.CHARGE_ID] if identity else out[c.CHARGE_ID].take(pa.array(order))
        group = group_ids(charge_sorted)
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
    checks: Checks,
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


def _summarise_declines(report: ValidationReport, codes: Coded, rows: np.ndarray) -> None:
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
        if isinstance(values, Coded):
            return values.take(rows)
        return in_order(values, rows, keep, identity=identity)

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


def _rejects(raw: pd.DataFrame, findings: list[Finding], invalid: np.ndarray) -> pd.DataFrame:
    """Invalid raw rows with ``row`` (1-based) and ``reason`` (all violated rules)."""
    positions = np.flatnonzero(invalid)
    rejects = raw.iloc[positions].reset_index(drop=True)
    rejects = rejects.drop(columns=[x for x in ("row", "reason") if x in rejects.columns])
    if positions.size == 0:
        reasons = pd.Series([], dtype="str")
    else:
        reasons = pd.Series(_reason_texts(findings, positions, len(raw)), dtype="str")
    rejects.insert(0, "reason", reasons)
    rejects.insert(0, "row", (positions + 1).astype(np.int64))
    return rejects


def _reason_texts(findings: list[Finding], positions: np.ndarray, n_rows: int) -> np.ndarray:
    """Per row of ``positions``: its violated rules, ``"; "``-joined in finding order.

    Rows are grouped by the set of findings they break (a bit mask), and each distinct set is
    joined once: the cost is linear in the rows, however many rows are invalid.
    """
    texts = [f"{f.column}: {RULES[f.rule]}" for f in findings]
    out = np.empty(positions.size, dtype=object)
    for start in range(0, len(findings), 63):  # 63 findings per int64 mask
        part = findings[start : start + 63]
        mask = np.zeros(n_rows, dtype=np.int64)
        for bit, f in enumerate(part):
            mask[f.positions] |= np.int64(1) << bit
        sets, inverse = np.unique(mask[positions], return_inverse=True)
        joined = np.array(
            [
                "; ".join(texts[start + b] for b in range(len(part)) if (int(m) >> b) & 1)
                for m in sets.tolist()
            ],
            dtype=object,
        )[inverse]
        if start == 0:
            out[:] = joined
        else:
            both = (out != "") & (joined != "")
            out = np.where(both, out + "; " + joined, np.where(out != "", out, joined))
    return out


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

    raw = read_table(path)
    try:
        return validate_attempts(raw, drop_invalid=drop_invalid).clean
    except ContractError as exc:
        raise ContractError(exc.report, source=str(path)) from None
