"""Column parsers and dictionary-encoded text columns of :mod:`features.validation`.

Internal to validation. Every parser is vectorised with pyarrow compute kernels and numpy: a
fast path casts a whole column at once, and a slower path that locates the offending rows runs
only when the fast one fails. Low-cardinality text columns are dictionary-encoded
(:class:`Coded`) so that they are checked once per distinct value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from retryopt.features.localtime import TIMESTAMP_MAX_NS, TIMESTAMP_MIN_NS
from retryopt.features.validation_report import Checks

_TS_NS_UTC = pa.timestamp("ns", tz="UTC")
# A time of day followed by a zone designator: "...10:00Z", "...10:00:00.5+05:30", "...-0800".
_ZONE_RE = r"\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"
# A well-formed ISO 8601 date and time of day with a zone (used to tell "year out of range" from
# garbage when the parsers reject a value).
_YEAR_RE = r"^\s*[+-]?(?P<year>\d{4,})-\d\d-\d\d[Tt ]\d\d:\d\d.*(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"
_PANDAS_MIN_YEAR, _PANDAS_MAX_YEAR = 1678, 2261  # whole years of datetime64[ns]
_NUMBER_RE = r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$"


# --------------------------------------------------------------------------------------------
# Helpers: arrow <-> numpy
# --------------------------------------------------------------------------------------------


def np_bool(x: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Boolean arrow array to numpy, null -> False."""
    filled = pc.fill_null(x, False)
    if isinstance(filled, pa.ChunkedArray):
        filled = filled.combine_chunks()
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=bool)


def to_arrow(series: pd.Series) -> pa.ChunkedArray:
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


def as_string(arr: pa.Array) -> pa.Array:
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


# --------------------------------------------------------------------------------------------
# Parsers (vectorised, fast path + locating slow path)
# --------------------------------------------------------------------------------------------


class Parsed(NamedTuple):
    """A parsed column: values, missing rows and per-rule masks of present but invalid values."""

    values: Any  # pa.Array (timestamps) or np.ndarray (numbers)
    missing: np.ndarray
    bad: dict[str, np.ndarray]  # rule -> mask of present but invalid values


def parse_timestamps(arr: pa.Array) -> Parsed:
    """ISO 8601 with offset or Z -> ``timestamp[ns, UTC]``; zone-less values are rejected, and
    so are instants outside the valid range (:data:`features.localtime.TIMESTAMP_MIN` <= t <
    :data:`~features.localtime.TIMESTAMP_MAX`; rule ``timestamp_out_of_range``, value nulled)."""
    parsed = _parse_timestamps(arr)
    return _range_checked(parsed, arr)


def _range_checked(parsed: Parsed, arr: pa.Array) -> Parsed:
    values = parsed.values
    ns = np.asarray(
        pc.fill_null(pc.cast(values, pa.int64()), TIMESTAMP_MIN_NS).to_numpy(zero_copy_only=False),
        dtype=np.int64,
    )
    out_of_range = (ns < TIMESTAMP_MIN_NS) | (ns >= TIMESTAMP_MAX_NS)
    bad = dict(parsed.bad)
    unparseable = bad.get("timestamp_unparseable")
    if unparseable is not None and unparseable.any():
        # Beyond pandas' nanosecond range (1677-2262) the parsers give up: a value with a
        # well-formed date but such a year is out of range, not garbage.
        idx = np.flatnonzero(unparseable)
        text = as_string(arr.take(pa.array(idx)))
        found = pc.extract_regex(text, _YEAR_RE)
        year = pc.cast(pc.struct_field(found, "year"), pa.int64())
        outside_pandas = pc.or_(pc.less(year, _PANDAS_MIN_YEAR), pc.greater(year, _PANDAS_MAX_YEAR))
        moved = idx[np_bool(outside_pandas)]
        unparseable = unparseable.copy()
        unparseable[moved] = False
        out_of_range[moved] = True
        bad["timestamp_unparseable"] = unparseable
    if out_of_range.any():
        bad["timestamp_out_of_range"] = out_of_range
        values = pc.if_else(pa.array(out_of_range), pa.scalar(None, _TS_NS_UTC), values)
    return Parsed(values, parsed.missing, bad)


def _to_ns(times: pd.Series) -> pd.Series:
    """Parsed times as ``datetime64[ns, UTC]``; times beyond its range (pandas may parse them at
    a coarser unit) become NaT."""
    if getattr(times.dtype, "unit", "ns") != "ns":
        lo, hi = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
        times = times.where((times >= lo) & (times <= hi))
    return times.astype("datetime64[ns, UTC]")


def _parse_timestamps(arr: pa.Array) -> Parsed:
    n = len(arr)
    missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_timestamp(arr.type) and arr.type.tz is not None:
        try:
            return Parsed(pc.cast(arr, _TS_NS_UTC), missing, {})
        except pa.ArrowInvalid:  # out of the datetime64[ns] range
            pass
    if (pa.types.is_timestamp(arr.type) and arr.type.tz is None) or pa.types.is_date(arr.type):
        values = pa.nulls(n, _TS_NS_UTC)
        return Parsed(values, missing, {"timestamp_no_zone": ~missing})
    text = as_string(arr)
    missing = np.asarray(text.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    try:
        return Parsed(pc.cast(text, _TS_NS_UTC), missing, {})
    except pa.ArrowInvalid:
        pass
    has_zone = np_bool(pc.match_substring_regex(text, _ZONE_RE)) & ~missing
    zoned = pc.if_else(pa.array(has_zone), text, pa.scalar(None, pa.large_string()))
    try:
        values = pc.cast(zoned, _TS_NS_UTC)
        unparseable = np.zeros(n, dtype=bool)
    except pa.ArrowInvalid:
        # Some zoned strings are not ISO 8601 for arrow; let pandas decide, row by row.
        parsed = _to_ns(
            pd.to_datetime(
                pd.Series(zoned.to_pandas()), format="ISO8601", utc=True, errors="coerce"
            )
        )
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
    return Parsed(
        values, missing, {"timestamp_unparseable": unparseable, "timestamp_no_zone": no_zone}
    )


def parse_numbers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    text = as_string(arr)
    missing = np.asarray(text.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    try:
        values = pc.cast(text, pa.float64())
        bad = np.zeros(n, dtype=bool)
    except pa.ArrowInvalid:
        numeric = np_bool(pc.match_substring_regex(text, _NUMBER_RE))
        bad = ~missing & ~numeric
        values = pc.cast(
            pc.if_else(pa.array(numeric), text, pa.scalar(None, pa.large_string())), pa.float64()
        )
    out = np.asarray(pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False), dtype=float)
    # Text such as "nan" or "inf" parses as a float but is not a usable number.
    bad = bad | (~missing & ~np.isfinite(out))
    return out, missing, bad


def parse_integers(arr: pa.Array) -> Parsed:
    """Integer column -> int64 values (0 where invalid); integral floats (``100.0``) accepted."""
    if pa.types.is_integer(arr.type):
        missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        values = np.asarray(pc.fill_null(pc.cast(arr, pa.int64()), 0).to_numpy(), dtype=np.int64)
        return Parsed(values, missing, {})
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        text = as_string(arr)
        try:  # fast path: every value is integer text
            ints = pc.cast(text, pa.int64())
            missing = np.asarray(text.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            values = np.asarray(pc.fill_null(ints, 0).to_numpy(), dtype=np.int64)
            return Parsed(values, missing, {})
        except pa.ArrowInvalid:
            arr = text
    floats, missing, not_number = parse_numbers(arr)
    not_number = not_number | (~missing & (np.abs(np.nan_to_num(floats)) >= 2.0**63))  # int64
    finite = ~missing & ~not_number
    fractional = finite & (np.floor(np.where(finite, floats, 0.0)) != np.where(finite, floats, 0))
    ok = finite & ~fractional
    values = np.where(ok, floats, 0.0).astype(np.int64)
    return Parsed(values, missing, {"not_a_number": not_number, "fractional": fractional})


class Coded(NamedTuple):
    """A text column as a dictionary of distinct values and one code per row.

    Low-cardinality columns (codes, brands, countries, ...) are checked once per distinct value
    and materialised in any row order from the small dictionary, which is much faster than
    comparing or gathering millions of strings.
    """

    dictionary: pa.Array  # large_string; may hold an unused "" entry
    codes: np.ndarray  # int32 index into ``dictionary`` per row; -1 = missing (null or "")

    @property
    def missing(self) -> np.ndarray:
        """Per-row mask of missing values."""
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


def encode(arr: pa.Array | pa.ChunkedArray | None, n: int) -> Coded:
    """Dictionary-encode one text column (``None``: absent column, all missing)."""
    if arr is None or n == 0:
        return Coded(pa.array([], pa.large_string()), np.full(n, -1, dtype=np.int32))
    if not pa.types.is_large_string(arr.type):
        arr = as_string(arr)
    encoded = pc.dictionary_encode(arr)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.unify_dictionaries()
        dictionary = encoded.chunk(0).dictionary
        indices = pa.chunked_array([ch.indices for ch in encoded.chunks], pa.int32())
    else:
        dictionary, indices = encoded.dictionary, encoded.indices
    codes = np.asarray(pc.fill_null(indices, -1).to_numpy(), dtype=np.int32)
    empty = np.flatnonzero(np_bool(pc.equal(dictionary, "")))
    if empty.size:  # an empty string counts as missing
        codes = np.where(codes == empty[0], np.int32(-1), codes)
    return Coded(dictionary.cast(pa.large_string()), codes)


def value_mask(dictionary: pa.Array, values: frozenset[str] | Sequence[str]) -> np.ndarray:
    """Per-dictionary-value membership in ``values``."""
    value_set = pa.array(sorted(values), type=pa.large_string())
    return np_bool(pc.is_in(dictionary, value_set=value_set))


def check_codes(
    checks: Checks,
    column: str,
    coded: Coded,
    allowed: frozenset[str],
    *,
    case: str,
    case_rule: str,
    unknown_rule: str,
) -> None:
    """Membership check with a dedicated rule for wrong letter case."""
    dictionary = coded.dictionary
    bad = ~value_mask(dictionary, allowed) & ~np_bool(pc.equal(dictionary, ""))
    if bad.any():
        recased = pc.utf8_lower(dictionary) if case == "lower" else pc.utf8_upper(dictionary)
        wrong_case = bad & value_mask(recased, allowed)
        checks.add(column, case_rule, coded.lookup(wrong_case))
        checks.add(column, unknown_rule, coded.lookup(bad & ~wrong_case))
