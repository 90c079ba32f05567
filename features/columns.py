"""Contract rows as columns: :class:`AttemptColumns` (serving's input) and internal containers.

:class:`AttemptColumns` holds contract rows as numpy columns (the online path's input without a
DataFrame). :class:`_Codes` is a factorised string column; :class:`_Columns` reads columns from
one or more frames or :class:`AttemptColumns` (pandas for large inputs, plain lists for small).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from retryopt.features import contract as ct
from retryopt.features.localtime import NAT_INT

__all__ = ["AttemptColumns"]


@dataclass
class _Codes:
    """A factorised string column: ``uniques[codes]`` with ``codes == -1`` for missing."""

    codes: np.ndarray
    uniques: np.ndarray  # object array of str

    def take(self, idx: np.ndarray) -> _Codes:
        return _Codes(self.codes[idx], self.uniques)


def _factorize(values: pd.Series | None, n: int) -> _Codes:
    if values is None:
        return _Codes(np.full(n, -1, dtype=np.int64), np.empty(0, dtype=object))
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    uniq = np.asarray(uniques, dtype=object)
    # int32 codes halve the memory of the 10 M-row path; arithmetic on codes casts to int64.
    return _Codes(codes.astype(np.int32 if uniq.size < 2**31 - 1 else np.int64), uniq)


def _ns(values: pd.Series, name: str) -> np.ndarray:
    """int64 UTC nanoseconds of a timestamp column (NaT -> int64 minimum)."""
    dtype = values.dtype
    # tz-aware arrays store UTC epoch values, naive ones are taken as UTC: asi8 is UTC either way.
    if isinstance(dtype, pd.DatetimeTZDtype):
        unit = str(dtype.unit)
    elif isinstance(dtype, np.dtype) and dtype.kind == "M":
        unit = np.datetime_data(dtype.str)[0]
    else:
        raise ValueError(
            f"column {name!r} must hold timestamps (datetime64[ns, UTC], canonical frame), "
            f"got dtype {dtype}"
        )
    arr: Any = values.array
    if unit != "ns":
        arr = arr.as_unit("ns")
    return np.asarray(arr.asi8, dtype=np.int64)


_REQUIRED_FOR_FEATURES: Final[tuple[str, ...]] = (
    ct.ATTEMPT_ID,
    ct.CHARGE_ID,
    ct.CUSTOMER_ID,
    ct.ATTEMPTED_AT,
    ct.AMOUNT,
    ct.CURRENCY,
    ct.OUTCOME,
    ct.DECLINE_CODE,
    ct.CARD_BRAND,
    ct.CARD_FUNDING,
    ct.CARD_COUNTRY,
    ct.CARD_ADDED_AT,
    ct.CARD_EXP_MONTH,
    ct.CARD_EXP_YEAR,
)


_SMALL_ROWS: Final = 2048
_INT64_MAX: Final = int(np.iinfo(np.int64).max)  # np.iinfo() costs microseconds per call
# Up to this many (event, query) pairs, point-in-time sums use explicit masks (online path).
_SMALL_PRODUCT: Final = 1 << 16
# Columns never read from other charges' rows (only from the decision's own charge).
_HISTORY_UNUSED: Final[frozenset[str]] = frozenset(
    {
        ct.DECLINE_CODE,
        ct.NETWORK_ADVICE_CODE,
        ct.CARD_FUNDING,
        ct.ISSUER,
        ct.CURRENCY,
        ct.CARD_ADDED_AT,
        ct.RETRY_PROPENSITY,
    }
)


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` of a 1-d int64 array (dicts when small)."""
    if values.size > 256:
        uniq, inv = np.unique(values, return_inverse=True)
        return uniq, inv.reshape(-1)
    items = values.tolist()
    ordered = sorted(set(items))
    rank = {v: i for i, v in enumerate(ordered)}
    return (
        np.asarray(ordered, dtype=values.dtype),
        np.asarray([rank[v] for v in items], dtype=np.int64),
    )


def _is_missing_scalar(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _py_list(series: pd.Series) -> list[Any]:
    arr = series.array
    if hasattr(arr, "__arrow_array__"):
        return list(arr.__arrow_array__().to_pylist())
    return series.tolist()


@dataclass(frozen=True, eq=False)
class AttemptColumns:
    """Contract rows as plain numpy columns: the online path's input without a DataFrame.

    Serving builds one of these per request instead of a pandas frame (each pandas column
    access costs tens of microseconds, more than the feature arithmetic of one decision).
    Features computed from an :class:`AttemptColumns` are identical to those from the
    equivalent canonical frame (tested).

    Attributes
    ----------
    columns
        Contract column name -> values: timestamps as int64 UTC nanoseconds (int64 minimum =
        missing), ``amount`` / ``card_exp_month`` / ``card_exp_year`` int64,
        ``retry_propensity`` float64 (NaN = missing), strings as object arrays or lists of
        ``str`` (``None`` = missing). Optional contract columns may be absent.
    n_rows
        Number of rows (every column has this length).
    """

    columns: dict[str, Any]
    n_rows: int

    def __post_init__(self) -> None:
        for name, values in self.columns.items():
            if len(values) != self.n_rows:
                raise ValueError(
                    f"AttemptColumns: column {name!r} has {len(values)} values, "
                    f"expected {self.n_rows}"
                )

    def __len__(self) -> int:
        return self.n_rows

    @property
    def column_names(self) -> tuple[str, ...]:
        """Names of the columns present."""
        return tuple(self.columns)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> AttemptColumns:
        """Columns of a canonical contract frame (timestamps UTC, missing -> None / NaT)."""
        cols: dict[str, Any] = {}
        for name in frame.columns:
            key = str(name)
            series = frame[name]
            if key in ct.TIMESTAMP_COLUMNS:
                cols[key] = _ns(series, key)
            elif key in ct.INTEGER_COLUMNS:
                cols[key] = series.to_numpy(dtype=np.int64)
            elif key in ct.FLOAT_COLUMNS:
                cols[key] = series.to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                cols[key] = np.asarray(
                    [None if _is_missing_scalar(v) else str(v) for v in _py_list(series)],
                    dtype=object,
                )
        return cls(columns=cols, n_rows=len(frame))

    def to_frame(self) -> pd.DataFrame:
        """The equivalent canonical frame (pandas dtypes of :mod:`features.contract`)."""
        data: dict[str, Any] = {}
        for key, values in self.columns.items():
            if key in ct.TIMESTAMP_COLUMNS:
                arr = np.asarray(values, dtype=np.int64).view("datetime64[ns]")
                data[key] = pd.DatetimeIndex(arr).tz_localize("UTC")
            elif key in ct.INTEGER_COLUMNS:
                data[key] = np.asarray(values, dtype=np.int64)
            elif key in ct.FLOAT_COLUMNS:
                data[key] = np.asarray(values, dtype=np.float64)
            else:
                data[key] = pd.array(list(values), dtype="str")
        return pd.DataFrame(data, index=pd.RangeIndex(self.n_rows))

    def take(self, rows: np.ndarray) -> AttemptColumns:
        """The rows ``rows`` (integer positions or a boolean mask)."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        cols = {
            k: np.asarray(v, dtype=None if k in _NUMERIC_CONTRACT else object)[idx]
            for k, v in self.columns.items()
        }
        return AttemptColumns(columns=cols, n_rows=int(idx.size))


_NUMERIC_CONTRACT: Final[frozenset[str]] = frozenset(
    (*ct.TIMESTAMP_COLUMNS, *ct.INTEGER_COLUMNS, *ct.FLOAT_COLUMNS)
)

_Table = pd.DataFrame | AttemptColumns


def _table_list(table: _Table, name: str) -> list[Any]:
    if isinstance(table, AttemptColumns):
        values = table.columns[name]
        return values.tolist() if isinstance(values, np.ndarray) else list(values)
    return _py_list(table[name])


def _table_ns(table: _Table, name: str) -> np.ndarray:
    if isinstance(table, AttemptColumns):
        return np.asarray(table.columns[name], dtype=np.int64)
    return _ns(table[name], name)


class _Columns:
    """Column access over one or more contract frames (rows of all frames, in order).

    Large inputs go through pandas (factorize); small ones (online scoring) through plain
    Python lists, which avoids pandas' per-call overhead. Both give the same codes semantics.
    """

    def __init__(self, frames: list[_Table], *, history_frames: int = 0) -> None:
        for i, frame in enumerate(frames):
            absent = [c for c in _REQUIRED_FOR_FEATURES if c not in frame.columns]
            if absent:
                which = "attempts" if i == 0 else "history"
                raise ValueError(f"{which} frame lacks required contract columns: {absent}")
        self.n = sum(len(f) for f in frames)
        self.small = self.n <= _SMALL_ROWS
        if not self.small and any(isinstance(f, AttemptColumns) for f in frames):
            frames = [f.to_frame() if isinstance(f, AttemptColumns) else f for f in frames]
        if not self.small and len(frames) > 1:
            frames = [pd.concat(frames, ignore_index=True)]  # type: ignore[arg-type]
            history_frames = 0
        self.frames = frames
        # The last `history_frames` frames hold other charges' rows: only the columns that
        # feed history aggregates are read from them (the rest is never used for a decision).
        self._names = [
            set(f.columns) - (_HISTORY_UNUSED if i >= len(frames) - history_frames else set())
            for i, f in enumerate(frames)
        ]
        self._any_names: set[str] = set().union(*self._names)

    def has(self, name: str) -> bool:
        return name in self._any_names

    def strings(self, name: str) -> _Codes:
        if not self.has(name):
            return _Codes(np.full(self.n, -1, dtype=np.int64), np.empty(0, dtype=object))
        if not self.small:
            return _factorize(self.frames[0][name], self.n)  # type: ignore[index]
        values: list[Any] = []
        for frame, names in zip(self.frames, self._names, strict=True):
            values += _table_list(frame, name) if name in names else [None] * len(frame)
        # Fast path: plain str / None values (AttemptColumns, Arrow strings) map through one
        # dict in a comprehension; anything else (NaN, NA, non-str) takes the general loop.
        lookup: dict[str, int] = {}
        setdefault = lookup.setdefault
        fast = [-1 if v is None else setdefault(v, len(lookup)) for v in values]
        if all(type(k) is str for k in lookup):
            return _Codes(np.asarray(fast, dtype=np.int64), np.asarray(list(lookup), dtype=object))
        lookup = {}
        codes = np.empty(self.n, dtype=np.int64)
        for i, v in enumerate(values):
            if _is_missing_scalar(v):
                codes[i] = -1
            else:
                key = v if isinstance(v, str) else str(v)
                code = lookup.get(key)
                if code is None:
                    code = lookup[key] = len(lookup)
                codes[i] = code
        return _Codes(codes, np.asarray(list(lookup), dtype=object))

    def timestamps(self, name: str) -> np.ndarray:
        parts = [
            _table_ns(f, name) if name in names else np.full(len(f), NAT_INT, dtype=np.int64)
            for f, names in zip(self.frames, self._names, strict=True)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def ints(self, name: str) -> np.ndarray:
        parts = []
        for f in self.frames:
            try:
                if isinstance(f, AttemptColumns):
                    parts.append(np.asarray(f.columns[name], dtype=np.int64))
                else:
                    parts.append(f[name].to_numpy(dtype=np.int64))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"column {name!r} must hold integers ({exc})") from exc
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def floats(self, name: str) -> np.ndarray:
        parts = [
            (
                np.asarray(f.columns[name], dtype=np.float64)
                if isinstance(f, AttemptColumns)
                else f[name].to_numpy(dtype=np.float64, na_value=np.nan)
            )
            if name in names
            else np.full(len(f), np.nan)
            for f, names in zip(self.frames, self._names, strict=True)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def objects(self, name: str) -> np.ndarray:
        parts = [
            np.asarray(["" if v is None else v for v in f.columns[name]], dtype=object)
            if isinstance(f, AttemptColumns)
            else f[name].to_numpy(dtype=object, na_value="")
            for f in self.frames
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
