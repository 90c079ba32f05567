"""Point-in-time features for retry decisions: one code path for training and serving.

A *decision* is "this charge has failed so far; if we retry at ``t``, will it succeed?". It is
made at a time ``now`` from what is known at ``now``:

- every attempt of the charge so far (the previous attempt's outcome is what triggers the
  decision; for training examples ``now`` is exactly the previous attempt's time, so the known
  state is "the history strictly before ``now`` plus the previous attempt itself", i.e.
  ``now`` = previous attempt + epsilon);
- rows of the customer's *other* charges (and of the card) only when ``attempted_at < now``
  strictly: no leakage from the future, including later charges and later card updates.

Training examples are the logged retries (every attempt of a charge after its failed first
attempt while the charge is still unpaid); :func:`build_training_examples` builds them for a
whole log at once. :func:`build_candidate_features` builds features for a
:class:`~features.decisions.DecisionBatch` and a grid of candidate retry times. Both go through
the same internals: :class:`_Log` (sorted contract rows), :func:`_decision_state` (per-decision
history state computed point-in-time with sorted-array/cumulative tricks) and
:func:`_candidate_features` (everything that depends on the candidate time ``t``).

Customer aggregates are integer sums (counts, amounts in minor units, seconds, quantised
cosines), so batch and online values are bit-identical whatever the summation order.
See ``docs/features.md`` for the feature table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from retryopt.features import contract as ct
from retryopt.features.decisions import DecisionBatch
from retryopt.features.localtime import (
    NAT_INT,
    NS_PER_DAY,
    NS_PER_HOUR,
    NS_PER_SECOND,
    civil_from_days,
    days_from_civil,
    days_in_month,
    last_business_day,
    resolve_timezones,
    shift_month,
    to_local_ns,
    weekday_of_days,
)
from retryopt.features.taxonomy import (
    classify_decline,
    mastercard_advice,
    normalize_advice_code,
    normalize_code,
)

__all__ = [
    "CATEGORICAL_FEATURES",
    "FEATURES_VERSION",
    "MISSING_LEVEL",
    "NUMERIC_FEATURES",
    "OTHER_LEVEL",
    "AttemptColumns",
    "CandidateEncoder",
    "FeatureSpec",
    "TrainingExamples",
    "build_candidate_features",
    "build_training_examples",
    "encode_candidate_features",
    "encode_candidate_matrix",
    "encode_features",
    "fit_feature_spec",
]

FEATURES_VERSION: Final = "retryopt-features-1"
OTHER_LEVEL: Final = "other"
MISSING_LEVEL: Final = "missing"

# Windows of the per-card attempt counters, after the network limits they mirror:
# Mastercard allows at most 10 declines per card per merchant in 24 h and 35 in 30 days; Visa at
# most 20 reattempts in 30 days (Visa Core Rules, April 2026; see shared/domain-facts.md).
WINDOW_24H_NS: Final = 24 * NS_PER_HOUR
WINDOW_30D_NS: Final = 30 * NS_PER_DAY

# Quantisation of cos/sin sums (integers keep batch and online sums bit-identical).
_Q: Final = 1 << 20
_TWO_PI: Final = 2.0 * math.pi
_NO_PREVIOUS_CODE: Final = "none"

NUMERIC_FEATURES: Final[tuple[str, ...]] = (
    # attempt context
    "retry_number",
    "hours_since_first_failure",
    "hours_since_prev_attempt",
    "hours_from_now",
    "card_attempts_24h",
    "card_attempts_30d",
    # decline
    "last_decline_hard",
    "first_decline_hard",
    "last_visa_category",
    "advice_never_retry",
    "advice_min_wait_hours",
    "distinct_codes",
    # candidate time in the customer's zone
    "local_hour",
    "local_weekday",
    "local_day_of_month",
    "days_to_month_end",
    "is_business_day",
    # pay-cycle signals
    "days_since_1st",
    "days_until_1st",
    "days_since_15th",
    "days_until_15th",
    "days_since_last_business_day",
    "days_until_last_business_day",
    "days_since_friday",
    "days_until_friday",
    # the customer's own payment pattern
    "prior_successes",
    "success_dom_distance",
    "success_dom_concentration",
    "success_weekday_distance",
    "success_weekday_concentration",
    "prior_recoveries",
    "mean_recovery_hours",
    # card
    "card_age_days",
    "days_to_expiry",
    "card_expired",
    "card_changed",
    # amount
    "log_amount",
    "amount_vs_customer_mean",
    # customer history
    "prior_charges",
    "prior_first_failures",
    "prior_recovery_rate",
    "tenure_days",
)

CATEGORICAL_FEATURES: Final[tuple[str, ...]] = (
    "last_decline_code",
    "first_decline_code",
    "last_decline_family",
    "first_decline_family",
    "decline_sequence",
    "network_advice_code",
    "card_brand",
    "card_funding",
    "card_country",
    "issuer",
    "currency",
)

_META_COLUMNS: Final[tuple[str, ...]] = (
    "attempt_id",
    "charge_id",
    "customer_id",
    "decision_time",
    "retry_time",
    "retry_number",
    "decline_family",
    "card_country",
    "card_funding",
    "card_brand",
    "amount",
    "currency",
)


# --------------------------------------------------------------------------------------------
# Feature spec and encoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """Feature names and categorical levels fixed at training time (stored with the model).

    Attributes
    ----------
    numeric
        Numeric feature names, in model-matrix order.
    categorical
        Categorical feature names, after the numeric ones in the model matrix.
    levels
        Levels per categorical feature; always end with ``"other"`` and ``"missing"``.
    version
        Feature-code version the spec was fitted with.
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    levels: dict[str, tuple[str, ...]]
    version: str

    @property
    def names(self) -> tuple[str, ...]:
        """All feature names in model-matrix order (numeric, then categorical)."""
        return self.numeric + self.categorical

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready representation (see :meth:`from_dict`)."""
        return {
            "version": self.version,
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "levels": {k: list(v) for k, v in self.levels.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            If a field is missing or malformed (the message names it).
        """
        if not isinstance(d, dict):
            raise ValueError(f"feature spec must be a mapping, got {type(d).__name__}")
        for key in ("version", "numeric", "categorical", "levels"):
            if key not in d:
                raise ValueError(f"feature spec: missing field {key!r}")
        numeric = _str_tuple(d["numeric"], "numeric")
        categorical = _str_tuple(d["categorical"], "categorical")
        raw_levels = d["levels"]
        if not isinstance(raw_levels, dict):
            raise ValueError("feature spec: field 'levels' must be a mapping")
        levels: dict[str, tuple[str, ...]] = {}
        for name in categorical:
            if name not in raw_levels:
                raise ValueError(f"feature spec: no levels for categorical feature {name!r}")
            lv = _str_tuple(raw_levels[name], f"levels.{name}")
            if OTHER_LEVEL not in lv or MISSING_LEVEL not in lv:
                raise ValueError(
                    f"feature spec: levels.{name} must contain {OTHER_LEVEL!r} and "
                    f"{MISSING_LEVEL!r}"
                )
            if len(set(lv)) != len(lv):
                raise ValueError(f"feature spec: levels.{name} has duplicate levels")
            levels[name] = lv
        overlap = set(numeric) & set(categorical)
        if overlap:
            raise ValueError(f"feature spec: features both numeric and categorical: {overlap}")
        if not isinstance(d["version"], str):
            raise ValueError("feature spec: field 'version' must be a string")
        return cls(numeric=numeric, categorical=categorical, levels=levels, version=d["version"])


def _str_tuple(value: object, field: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"feature spec: field {field!r} must be a list of strings")
    return tuple(value)


def _is_categorical_column(s: pd.Series) -> bool:
    return bool(
        isinstance(s.dtype, pd.CategoricalDtype)
        or pd.api.types.is_string_dtype(s.dtype)
        or s.dtype == object
    )


def fit_feature_spec(features: pd.DataFrame, *, min_level_count: int = 20) -> FeatureSpec:
    """Fix feature names and categorical levels from training features.

    Parameters
    ----------
    features
        Raw features (:attr:`TrainingExamples.features`): numeric columns and string
        categoricals.
    min_level_count
        Levels seen fewer times than this are not kept: at encoding time they (and levels never
        seen) map to ``"other"``; missing values map to ``"missing"``.

    Returns
    -------
    FeatureSpec
        Numeric and categorical names in column order; levels per categorical sorted by
        decreasing frequency (ties by name), followed by ``"other"`` and ``"missing"``.
    """
    if min_level_count < 1:
        raise ValueError(f"min_level_count must be >= 1, got {min_level_count}")
    numeric: list[str] = []
    categorical: list[str] = []
    levels: dict[str, tuple[str, ...]] = {}
    for name in features.columns:
        col = features[name]
        if _is_categorical_column(col):
            categorical.append(str(name))
            counts = col.dropna().astype(str).value_counts()
            kept = counts[counts >= min_level_count]
            kept = kept[~kept.index.isin([OTHER_LEVEL, MISSING_LEVEL])]
            ordered = sorted(kept.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
            levels[str(name)] = (*(str(k) for k, _ in ordered), OTHER_LEVEL, MISSING_LEVEL)
        elif pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            numeric.append(str(name))
        else:
            raise ValueError(f"feature {name!r}: unsupported dtype {col.dtype}")
    return FeatureSpec(
        numeric=tuple(numeric),
        categorical=tuple(categorical),
        levels=levels,
        version=FEATURES_VERSION,
    )


@lru_cache(maxsize=256)
def _level_lookup(levels: tuple[str, ...]) -> tuple[pd.CategoricalDtype, pd.Index, dict[str, int]]:
    dtype = pd.CategoricalDtype(categories=list(levels), ordered=False)
    index = pd.Index(list(levels), dtype=object)
    return dtype, index, {v: i for i, v in enumerate(levels)}


def _encode_categorical(col: pd.Series, levels: tuple[str, ...]) -> pd.Categorical:
    dtype, index, lookup = _level_lookup(levels)
    other = lookup[OTHER_LEVEL]
    missing = lookup[MISSING_LEVEL]
    arr = col.array
    if hasattr(arr, "__arrow_array__") and pd.api.types.is_string_dtype(col.dtype):
        # Arrow-backed strings (pandas' default str): dictionary-encode in C++, then map the
        # few distinct values through the level lookup.
        values = pa.chunked_array(arr.__arrow_array__()).combine_chunks()
        enc = pc.dictionary_encode(values)
        uniq = enc.dictionary.to_pylist()
        mapped = np.asarray(
            [other if u == MISSING_LEVEL else lookup.get(u, other) for u in uniq] + [missing],
            dtype=np.int64,
        )
        idx = enc.indices.fill_null(len(uniq)).to_numpy(zero_copy_only=False)
        codes = mapped[idx]
    else:
        fac, uniques = pd.factorize(col, use_na_sentinel=True)
        uniq = pd.Index(np.asarray(uniques, dtype=object).astype(str), dtype=object)
        mapped = index.get_indexer(uniq)
        mapped = np.where((mapped < 0) | (mapped == missing), other, mapped)
        # The last slot stands for missing values, so an all-missing column (no uniques) works.
        mapped = np.append(mapped, missing).astype(np.int64)
        codes = mapped[np.where(fac < 0, len(mapped) - 1, fac)]
    return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def encode_features(features: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Model matrix for raw features.

    Parameters
    ----------
    features
        Raw features (from :func:`build_training_examples` or :func:`build_candidate_features`).
    spec
        The spec fixed at training time.

    Returns
    -------
    pandas.DataFrame
        Columns in ``spec.names`` order: numeric as float64, categoricals as pandas
        ``Categorical`` with exactly ``spec.levels`` (unseen or rare values -> ``"other"``,
        missing -> ``"missing"``). The index of ``features`` is kept.

    Raises
    ------
    ValueError
        If a feature of the spec is missing from ``features``.
    """
    absent = [n for n in spec.names if n not in features.columns]
    if absent:
        raise ValueError(f"features lack columns required by the feature spec: {absent}")
    k = len(spec.numeric)
    numeric: np.ndarray | None = None
    leading = features.iloc[:, :k]
    if tuple(leading.columns) == spec.numeric and all(
        isinstance(d, np.dtype) and d.kind in "fiub" for d in leading.dtypes
    ):
        # Frames from this module: the numeric features come first, as one float block.
        numeric = leading.to_numpy(dtype=np.float64)
    else:
        numeric = np.empty((len(features), k), dtype=np.float64)
        for j, name in enumerate(spec.numeric):
            col = features[name]
            try:
                numeric[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"feature {name!r} is not numeric ({col.dtype})") from exc
    cats = {
        name: _encode_categorical(features[name], spec.levels[name]) for name in spec.categorical
    }
    return _join_blocks(numeric, spec.numeric, cats, features.index)


def _join_blocks(
    numeric: np.ndarray, names: tuple[str, ...], others: dict[str, Any], index: pd.Index
) -> pd.DataFrame:
    """A frame with the numeric columns as one float64 block followed by ``others``."""
    left = pd.DataFrame(numeric, columns=list(names), index=index, copy=False)
    if not others:
        return left
    right = pd.DataFrame(others, index=index, copy=False)
    return pd.concat([left, right], axis=1)


# --------------------------------------------------------------------------------------------
# The sorted attempt log
# --------------------------------------------------------------------------------------------


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


@lru_cache(maxsize=65536)
def _decline_info(code: str, advice: str) -> tuple[str, bool, float, bool, float]:
    """(family, hard, visa category or NaN, advice never-retry, advice min wait hours or NaN)."""
    info = classify_decline(code or None, network_advice_code=advice or None)
    # Mastercard merchant advice codes (MAC): 03/21 never retry, 24-30 minimum waits
    # (shared/domain-facts.md, "Mastercard merchant advice codes").
    adv = mastercard_advice(advice) if advice else None
    return (
        str(info.family),
        bool(info.hard),
        math.nan if info.visa_category is None else float(info.visa_category),
        bool(adv is not None and adv.never_retry),
        math.nan if adv is None or adv.min_wait_hours is None else float(adv.min_wait_hours),
    )


_ZONE_CACHE: dict[tuple[str | None, str | None], str] = {}


def _resolve_zone_pairs(pairs: list[tuple[str | None, str | None]]) -> list[str]:
    missing = [p for p in pairs if p not in _ZONE_CACHE]
    if missing:
        tz = pd.Series([p[0] for p in missing], dtype="str")
        cc = pd.Series([p[1] for p in missing], dtype="str")
        resolved = resolve_timezones(tz, cc).tolist()
        for p, z in zip(missing, resolved, strict=True):
            _ZONE_CACHE[p] = str(z)
    return [_ZONE_CACHE[p] for p in pairs]


def _none_if_na(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return str(value)


def _normalized_codes(raw: _Codes, normalize: Any) -> _Codes:
    """Normalise the uniques of a code column ("" -> missing)."""
    norm = [normalize(u) for u in raw.uniques.tolist()]
    uniq = np.asarray([v if v else None for v in norm] + [None], dtype=object)
    codes = np.where(raw.codes < 0, len(uniq) - 1, raw.codes)
    return _Codes(codes.astype(raw.codes.dtype), uniq)


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


@dataclass
class _Log:
    """Contract rows sorted by (charge, attempted_at, failed-before-succeeded, attempt_id)."""

    n: int
    order: np.ndarray  # log row -> row of the source frame
    charge: np.ndarray
    charge_uniques: np.ndarray
    customer: np.ndarray
    t: np.ndarray
    succ: np.ndarray
    start: np.ndarray  # first log row of the row's charge
    run_start: np.ndarray  # first log row of the row's (charge, attempted_at) run
    tie_rank: np.ndarray  # earlier rows of the same (charge, attempted_at, card) group (int32)
    card_key: np.ndarray
    code: _Codes
    advice: _Codes
    family: _Codes  # codes = (decline code, advice code) pair index, uniques = families
    pair_hard: np.ndarray  # per pair: hard decline
    pair_visa: np.ndarray  # per pair: Visa category or NaN
    pair_never: np.ndarray  # per pair: advice forbids retries
    pair_wait: np.ndarray  # per pair: advice minimum wait hours or NaN
    brand: _Codes
    funding: _Codes
    country: _Codes
    issuer: _Codes
    currency: _Codes
    zone: _Codes
    amount: np.ndarray
    card_added: np.ndarray
    exp_end: np.ndarray
    propensity: np.ndarray

    @classmethod
    def from_frames(cls, frames: list[_Table], *, history_frames: int = 0) -> _Log:
        cols = _Columns(frames, history_frames=history_frames)
        n = cols.n
        t_raw = cols.timestamps(ct.ATTEMPTED_AT)
        if n and (t_raw == NAT_INT).any():
            rows = (np.flatnonzero(t_raw == NAT_INT)[:5] + 1).tolist()
            raise ValueError(f"column 'attempted_at' has missing timestamps (rows {rows})")
        charge_raw = cols.strings(ct.CHARGE_ID)
        if n and (charge_raw.codes < 0).any():
            rows = (np.flatnonzero(charge_raw.codes < 0)[:5] + 1).tolist()
            raise ValueError(f"column 'charge_id' has missing values (rows {rows})")
        outcome = cols.strings(ct.OUTCOME)
        succ_u = np.asarray([u == ct.SUCCEEDED for u in outcome.uniques.tolist()], dtype=bool)
        succ_raw = np.append(succ_u, False)[outcome.codes]

        order = np.lexsort((succ_raw, t_raw, charge_raw.codes))
        ch = charge_raw.codes[order].astype(np.int64)
        t = t_raw[order]
        succ = succ_raw[order]
        same_ct = np.zeros(n, dtype=bool)
        if n > 1:
            same_ct[1:] = (ch[1:] == ch[:-1]) & (t[1:] == t[:-1])
        if same_ct.any():
            # Simultaneous attempts of one charge: break ties by attempt_id (then stable).
            tied = np.zeros(n, dtype=bool)
            tied[1:] |= same_ct[1:]
            tied[:-1] |= same_ct[1:]
            ids = cols.objects(ct.ATTEMPT_ID)[order[tied]]
            rank = np.zeros(n, dtype=np.int64)
            rank[tied] = pd.Series(ids.astype(str)).rank(method="dense").to_numpy(np.int64)
            rank_raw = np.empty(n, dtype=np.int64)
            rank_raw[order] = rank
            order = np.lexsort((rank_raw, succ_raw, t_raw, charge_raw.codes))
            ch = charge_raw.codes[order].astype(np.int64)
            t = t_raw[order]
            succ = succ_raw[order]
        idx = np.arange(n, dtype=np.int64)
        new_charge = np.ones(n, dtype=bool)
        new_run = np.ones(n, dtype=bool)
        if n > 1:
            new_charge[1:] = ch[1:] != ch[:-1]
            new_run[1:] = new_charge[1:] | (t[1:] != t[:-1])
        start = np.maximum.accumulate(np.where(new_charge, idx, 0)) if n else idx
        run_start = np.maximum.accumulate(np.where(new_run, idx, 0)) if n else idx

        customer_raw = cols.strings(ct.CUSTOMER_ID)
        if n and (customer_raw.codes < 0).any():
            rows = (np.flatnonzero(customer_raw.codes < 0)[:5] + 1).tolist()
            raise ValueError(f"column 'customer_id' has missing values (rows {rows})")
        customer = customer_raw.codes[order].astype(np.int64)

        brand = cols.strings(ct.CARD_BRAND).take(order)
        exp_month = cols.ints(ct.CARD_EXP_MONTH)[order]
        exp_year = cols.ints(ct.CARD_EXP_YEAR)[order]
        bad = (exp_month < 1) | (exp_month > 12)
        if bad.any():
            rows = (np.sort(order[bad])[:5] + 1).tolist()
            raise ValueError(f"column 'card_exp_month' must be 1-12 (rows {rows})")
        # The card: card_id when given, else a surrogate (customer, brand, expiry). Always
        # scoped by the customer, so the online path (one customer's history) sees the same.
        card_id = cols.strings(ct.CARD_ID).codes[order].astype(np.int64)
        exp_key = exp_year * 13 + exp_month
        surrogate = (brand.codes.astype(np.int64) + 1) * 1_000_000 + exp_key
        card_part = np.where(card_id >= 0, card_id, -1 - surrogate)
        if n <= _SMALL_ROWS:
            card_part_codes = _unique_inverse(card_part)[1]
        else:
            card_part_codes = pd.factorize(card_part)[0].astype(np.int64)
        card_key = customer * (int(card_part_codes.max(initial=0)) + 1) + card_part_codes
        del card_id, exp_key, surrogate, card_part, card_part_codes

        tie_rank = np.zeros(n, dtype=np.int32)
        if same_ct.any():
            tied_rows = np.flatnonzero(~new_run | np.append(~new_run[1:], False))
            grp = pd.DataFrame({"r": run_start[tied_rows], "k": card_key[tied_rows]})
            tie_rank[tied_rows] = grp.groupby(["r", "k"], sort=False).cumcount().to_numpy()

        code = _normalized_codes(cols.strings(ct.DECLINE_CODE), _normalize_code).take(order)
        advice = _normalized_codes(cols.strings(ct.NETWORK_ADVICE_CODE), _normalize_advice)
        advice = advice.take(order)
        pair = code.codes.astype(np.int64) * (len(advice.uniques) + 1) + advice.codes
        pair_u, pair_inv = _unique_inverse(pair)
        del pair
        infos = [
            _decline_info(
                code.uniques[p // (len(advice.uniques) + 1)] or "",
                advice.uniques[p % (len(advice.uniques) + 1)] or "",
            )
            for p in pair_u.tolist()
        ]
        fam_u = np.asarray([i[0] for i in infos], dtype=object)
        family = _Codes(pair_inv.reshape(-1).astype(np.int32), fam_u)
        del pair_inv

        tz = cols.strings(ct.CUSTOMER_TIMEZONE)
        cc = cols.strings(ct.CARD_COUNTRY)
        zpair = (tz.codes.astype(np.int64) + 1) * (len(cc.uniques) + 1) + (cc.codes + 1)
        zp_u, zp_inv = _unique_inverse(zpair)
        del zpair
        tz_ext = np.asarray([*tz.uniques.tolist(), None], dtype=object)
        cc_ext = np.asarray([*cc.uniques.tolist(), None], dtype=object)
        pairs = [
            (
                _none_if_na(tz_ext[p // (len(cc.uniques) + 1) - 1]),
                _none_if_na(cc_ext[p % (len(cc.uniques) + 1) - 1]),
            )
            for p in zp_u.tolist()
        ]
        zones = np.asarray(_resolve_zone_pairs(pairs), dtype=object)
        zone = _Codes(zp_inv.reshape(-1).astype(np.int32), zones).take(order)

        amount = cols.ints(ct.AMOUNT)[order]
        card_added = cols.timestamps(ct.CARD_ADDED_AT)[order]
        if n <= _SMALL_ROWS:
            exp_end = np.asarray(
                [
                    _expiry_end_ns(y, m)
                    for y, m in zip(exp_year.tolist(), exp_month.tolist(), strict=True)
                ],
                dtype=np.int64,
            )
        else:
            exp_end = _expiry_end(exp_year, exp_month)
        propensity = cols.floats(ct.RETRY_PROPENSITY)[order]
        return cls(
            n=n,
            order=order,
            charge=ch,
            charge_uniques=charge_raw.uniques,
            customer=customer,
            t=t,
            succ=succ,
            start=start,
            run_start=run_start,
            tie_rank=tie_rank,
            card_key=card_key,
            code=code,
            advice=advice,
            family=family,
            pair_hard=np.asarray([i[1] for i in infos], dtype=bool),
            pair_visa=np.asarray([i[2] for i in infos], dtype=np.float64),
            pair_never=np.asarray([i[3] for i in infos], dtype=bool),
            pair_wait=np.asarray([i[4] for i in infos], dtype=np.float64),
            brand=brand,
            funding=cols.strings(ct.CARD_FUNDING).take(order),
            country=cc.take(order),
            issuer=cols.strings(ct.ISSUER).take(order),
            currency=cols.strings(ct.CURRENCY).take(order),
            zone=zone,
            amount=amount,
            card_added=card_added,
            exp_end=exp_end,
            propensity=propensity,
        )

    @property
    def pos(self) -> np.ndarray:
        """Position of each row within its charge (0 = first attempt)."""
        return np.arange(self.n, dtype=np.int64) - self.start

    def succ_before(self) -> np.ndarray:
        """Successful attempts of the row's charge strictly before the row."""
        cs = np.cumsum(self.succ, dtype=np.int64)
        excl = cs - self.succ
        return excl - excl[self.start]

    def customer_event(self, name: str) -> np.ndarray:
        """Integer event value per row for one customer aggregate (see _CUSTOMER_EVENTS).

        Events happen at the row's ``attempted_at``: a charge starts (its first attempt), a
        first attempt fails, a payment succeeds (with its local day-of-month and weekday as
        quantised unit-circle coordinates), a failed charge is recovered (with its duration).
        """
        if name == "charges":
            return (self.pos == 0).astype(np.int64)
        if name == "first_failures":
            return ((self.pos == 0) & ~self.succ).astype(np.int64)
        if name == "amount_sum":
            return np.where(self.pos == 0, self.amount, 0)
        if name == "successes":
            return self.succ.astype(np.int64)
        if name in ("recoveries", "recovery_seconds"):
            recovery = self.succ & (self.succ_before() == 0) & (self.pos > 0)
            if name == "recoveries":
                return recovery.astype(np.int64)
            return np.where(recovery, (self.t - self.t[self.start]) // NS_PER_SECOND, 0)
        rows, y, m, d, wd = self._success_calendar
        out = np.zeros(self.n, dtype=np.int64)
        if rows.size:
            if name.startswith("dom"):
                angle = _TWO_PI * (d - 1) / days_in_month(y, m)
            else:
                angle = _TWO_PI * wd / 7.0
            trig = np.cos(angle) if name.endswith("cos") else np.sin(angle)
            out[rows] = np.rint(trig * _Q).astype(np.int64)
        return out

    def customer_event_matrix(self) -> np.ndarray:
        """All :data:`_CUSTOMER_EVENTS` as one ``(len(_CUSTOMER_EVENTS), n)`` int64 array.

        Same values as :meth:`customer_event` per name (shared intermediates computed once);
        used for small logs (online scoring), where per-call overhead dominates.
        """
        pos = self.pos
        first = pos == 0
        succ = self.succ
        recovery = succ & (self.succ_before() == 0) & (pos > 0)
        out = np.zeros((len(_CUSTOMER_EVENTS), self.n), dtype=np.int64)
        out[0] = first
        out[1] = first & ~succ
        out[2] = np.where(first, self.amount, 0)
        out[3] = succ
        rows = np.flatnonzero(succ)
        if rows.size:
            local = to_local_ns(self.t[rows], self.zone.codes[rows], self.zone.uniques)
            days = np.floor_divide(local, NS_PER_DAY).tolist()
            out[4:8, rows] = np.asarray([_success_day_trig(day) for day in days]).T
        out[8] = recovery
        out[9] = np.where(recovery, (self.t - self.t[self.start]) // NS_PER_SECOND, 0)
        return out

    @cached_property
    def _success_calendar(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Successful rows and their local (year, month, day, weekday) in the row's zone."""
        rows = np.flatnonzero(self.succ)
        local = to_local_ns(self.t[rows], self.zone.codes[rows], self.zone.uniques)
        days = np.floor_divide(local, NS_PER_DAY)
        y, m, d = civil_from_days(days)
        wd = weekday_of_days(days)
        # Small integer types: this cache lives through the customer aggregates (memory).
        return rows, y.astype(np.int16), m.astype(np.int8), d.astype(np.int8), wd.astype(np.int8)


@lru_cache(maxsize=65536)
def _success_day_trig(day: int) -> tuple[int, int, int, int]:
    """Quantised (dom cos, dom sin, weekday cos, weekday sin) of a local day since 1970-01-01.

    The same expressions as :meth:`_Log.customer_event` (and :attr:`_Log._success_calendar`'s
    small integer types), on a one-element array: identical values, cached per day.
    """
    days = np.asarray([day], dtype=np.int64)
    y, m, d = civil_from_days(days)
    wd = weekday_of_days(days)
    y, m, d, wd = y.astype(np.int16), m.astype(np.int8), d.astype(np.int8), wd.astype(np.int8)
    a_dom = _TWO_PI * (d - 1) / days_in_month(y, m)
    a_wd = _TWO_PI * wd / 7.0
    q = [np.rint(f(a) * _Q).astype(np.int64)[0] for a in (a_dom, a_wd) for f in (np.cos, np.sin)]
    return int(q[0]), int(q[1]), int(q[2]), int(q[3])


def _expiry_end(exp_year: np.ndarray, exp_month: np.ndarray) -> np.ndarray:
    """UTC ns of the first day after the expiry month (int64 arrays in, int64 out)."""
    ny, nm = shift_month(exp_year, exp_month, 1)
    # A card is valid through the last day of its expiry month (UTC here).
    return days_from_civil(ny, nm, np.ones_like(nm)) * NS_PER_DAY


@lru_cache(maxsize=65536)
def _expiry_end_ns(exp_year: int, exp_month: int) -> int:
    """:func:`_expiry_end` of one card (exact integer arithmetic, cached)."""
    arr = _expiry_end(np.asarray([exp_year], dtype=np.int64), np.asarray([exp_month], np.int64))
    return int(arr[0])


_CUSTOMER_EVENTS: Final[tuple[str, ...]] = (
    "charges",
    "first_failures",
    "amount_sum",
    "successes",
    "dom_cos",
    "dom_sin",
    "wd_cos",
    "wd_sin",
    "recoveries",
    "recovery_seconds",
)


# Codes repeat a lot: cache the normalisation of string codes (non-strings, e.g. NA, go uncached).
_normalize_code_str = lru_cache(maxsize=65536)(normalize_code)
_normalize_advice_str = lru_cache(maxsize=65536)(normalize_advice_code)


def _normalize_code(code: object) -> str:
    return _normalize_code_str(code) if code.__class__ is str else normalize_code(code)


def _normalize_advice(code: object) -> str:
    return _normalize_advice_str(code) if code.__class__ is str else normalize_advice_code(code)


# --------------------------------------------------------------------------------------------
# Point-in-time sums
# --------------------------------------------------------------------------------------------


class _PitIndex:
    """Point-in-time lookups: per query, events of its group with time < the query time.

    Events and queries are merged and sorted by (group, time, queries-first-at-ties); exclusive
    cumulative sums read at the query positions minus the group's start give counts and sums.
    Integer sums are exact, so results do not depend on summation order.
    """

    def __init__(
        self, ev_group: np.ndarray, ev_time: np.ndarray, q_group: np.ndarray, q_time: np.ndarray
    ) -> None:
        n_e = ev_group.size
        n_q = q_group.size
        self.n_e = n_e
        g = np.concatenate([ev_group, q_group])
        tt = np.concatenate([ev_time, q_time])
        kind = np.concatenate([np.ones(n_e, dtype=np.int8), np.zeros(n_q, dtype=np.int8)])
        order = np.lexsort((kind, tt, g))
        del tt, kind
        m = order.size
        g_sorted = g[order]
        del g
        new_group = np.ones(m, dtype=bool)
        new_group[1:] = g_sorted[1:] != g_sorted[:-1]
        del g_sorted
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(m), 0))
        del new_group
        is_query = order >= n_e
        q_pos = np.empty(n_q, dtype=np.int64)
        q_pos[order[is_query] - n_e] = np.flatnonzero(is_query)
        del is_query
        self.order = order
        self.q_pos = q_pos
        self.q_start = group_start[q_pos]

    def sums(self, values: np.ndarray | None = None) -> np.ndarray:
        """Per query: sum of ``values`` (int64 per event; None = count) over its known events."""
        if self.q_pos.size == 0:
            return np.zeros(0, dtype=np.int64)
        merged = np.zeros(self.order.size, dtype=np.int64)
        merged[: self.n_e] = 1 if values is None else values
        seq = merged[self.order]
        del merged
        cs = np.cumsum(seq)
        cs -= seq  # exclusive
        return cs[self.q_pos] - cs[self.q_start]


def _pit_counts(
    ev_group: np.ndarray, ev_time: np.ndarray, q_group: np.ndarray, q_time: np.ndarray
) -> np.ndarray:
    """Per query: number of events of its group with time < query time."""
    if q_group.size > 1 and ev_group.size <= _SMALL_ROWS and bool((q_group == q_group[0]).all()):
        # One group (one decision's card): sorted event times, counts by binary search.
        ev_t = np.sort(ev_time[ev_group == q_group[0]])
        return np.searchsorted(ev_t, q_time, side="left").astype(np.int64)
    if ev_group.size * q_group.size <= _SMALL_PRODUCT:
        hit = (ev_group == q_group[:, None]) & (ev_time < q_time[:, None])
        return hit.sum(axis=1, dtype=np.int64)
    return _PitIndex(ev_group, ev_time, q_group, q_time).sums()


# --------------------------------------------------------------------------------------------
# Decision state (everything known at `now`, independent of the candidate time)
# --------------------------------------------------------------------------------------------


@dataclass
class _State:
    li: np.ndarray  # last known attempt of the charge (log row)
    now: np.ndarray
    first_t: np.ndarray
    last_t: np.ndarray
    card_key: np.ndarray
    card_known_now: np.ndarray  # known attempts of the card before now (F(key, now))
    card_at_now: np.ndarray  # own attempts of the card at exactly `now`
    tenure_start: np.ndarray
    numeric: dict[str, np.ndarray]  # candidate-independent numeric features
    categorical: dict[str, _Codes]
    dom_mean: np.ndarray  # circular mean angle of past success day-of-month (NaN if none)
    wd_mean: np.ndarray


def _sequence_codes(log: _Log, li: np.ndarray, has_prev: np.ndarray) -> _Codes:
    prev_codes = np.where(has_prev, log.code.codes[np.maximum(li - 1, 0)], -2).astype(np.int64)
    last_codes = log.code.codes[li].astype(np.int64)
    n_u = len(log.code.uniques) + 2
    pair = (prev_codes + 2) * n_u + last_codes
    pair_u, inv = _unique_inverse(pair)
    names = []
    for p in pair_u.tolist():
        a = p // n_u - 2
        b = p % n_u
        left = _NO_PREVIOUS_CODE if a == -2 else (log.code.uniques[a] or MISSING_LEVEL)
        right = log.code.uniques[b] or MISSING_LEVEL
        names.append(f"{left}>{right}")
    return _Codes(inv.reshape(-1).astype(np.int64), np.asarray(names, dtype=object))


def _decision_state(log: _Log, li: np.ndarray, now: np.ndarray) -> _State:
    """Point-in-time state of each decision (last known row ``li`` of the charge, time ``now``).

    Known: the charge's rows up to ``li`` (all at or before ``now``) and every other row with
    ``attempted_at < now``.
    """
    s = log.start[li]
    pos = li - s
    last_t = log.t[li]
    first_t = log.t[s]
    cust = log.customer[li]

    # Own rows with attempted_at < now end at `end` (exclusive); customer aggregates are the
    # customer's events before now minus the charge's own.
    end = np.where(last_t < now, li + 1, log.run_start[li])
    agg: dict[str, np.ndarray] = {}
    if log.n * li.size <= _SMALL_PRODUCT:
        # Small logs (online scoring): one integer matrix product over explicit masks (the
        # same integer sums as the cumulative path below, without its per-event overhead).
        idx = np.arange(log.n, dtype=np.int64)
        weight = ((log.customer == cust[:, None]) & (log.t < now[:, None])).astype(np.int64)
        weight -= (idx >= s[:, None]) & (idx < end[:, None])
        sums = log.customer_event_matrix() @ weight.T
        agg = dict(zip(_CUSTOMER_EVENTS, sums, strict=True))
    else:
        pit = _PitIndex(log.customer, log.t, cust, now)
        for name in _CUSTOMER_EVENTS:
            ev = log.customer_event(name)
            total = pit.sums(ev)
            cs = np.concatenate([[0], np.cumsum(ev)])
            del ev
            agg[name] = total - (cs[end] - cs[s])
            del cs
        del pit
    vars(log).pop("_success_calendar", None)  # drop the cached success calendar

    key = log.card_key[li]
    card_known_now = _pit_counts(log.card_key, log.t, key, now)
    card_at_now = np.where(last_t == now, log.tie_rank[li] + 1, 0)

    cust_min = np.full(int(log.customer.max(initial=0)) + 1, _INT64_MAX)
    np.minimum.at(cust_min, log.customer, log.t)
    tenure_start = cust_min[cust]

    charges = agg["charges"].astype(np.float64)
    first_fail = agg["first_failures"].astype(np.float64)
    recov = agg["recoveries"].astype(np.float64)
    succ_n = agg["successes"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recovery_rate = np.where(first_fail > 0, recov / first_fail, np.nan)
        mean_rec_h = np.where(recov > 0, agg["recovery_seconds"] / recov / 3600.0, np.nan)
        mean_amount = np.where(charges > 0, agg["amount_sum"] / charges, np.nan)
        amount = log.amount[li].astype(np.float64)
        amount_rel = np.where(mean_amount > 0, amount / mean_amount, np.nan)
        # Mean resultant length (0 = no preferred day, 1 = always the same day); the
        # quantisation can push it a hair above 1.
        dom_conc = np.where(
            succ_n > 0,
            np.minimum(np.hypot(agg["dom_cos"], agg["dom_sin"]) / (succ_n * _Q), 1.0),
            np.nan,
        )
        wd_conc = np.where(
            succ_n > 0,
            np.minimum(np.hypot(agg["wd_cos"], agg["wd_sin"]) / (succ_n * _Q), 1.0),
            np.nan,
        )
    dom_mean = np.where(
        succ_n > 0, np.arctan2(agg["dom_sin"].astype(float), agg["dom_cos"].astype(float)), np.nan
    )
    wd_mean = np.where(
        succ_n > 0, np.arctan2(agg["wd_sin"].astype(float), agg["wd_cos"].astype(float)), np.nan
    )

    # Distinct decline codes of the charge so far (rows s..li): small per charge, so count
    # first occurrences with a sort on (charge, code).
    distinct = _distinct_codes(log, s, li)

    has_prev = pos >= 1
    last_pair = log.family.codes[li]
    numeric = {
        "retry_number": (pos + 1).astype(np.float64),
        "last_decline_hard": log.pair_hard[last_pair].astype(np.float64),
        "first_decline_hard": log.pair_hard[log.family.codes[s]].astype(np.float64),
        "last_visa_category": log.pair_visa[last_pair],
        "advice_never_retry": log.pair_never[last_pair].astype(np.float64),
        "advice_min_wait_hours": log.pair_wait[last_pair],
        "distinct_codes": distinct.astype(np.float64),
        "prior_successes": succ_n,
        "success_dom_concentration": dom_conc,
        "success_weekday_concentration": wd_conc,
        "prior_recoveries": recov,
        "mean_recovery_hours": mean_rec_h,
        "card_changed": (log.card_key[s] != key).astype(np.float64),
        "log_amount": np.log1p(np.maximum(amount, 0.0)),
        "amount_vs_customer_mean": amount_rel,
        "prior_charges": charges,
        "prior_first_failures": first_fail,
        "prior_recovery_rate": recovery_rate,
    }
    categorical = {
        "last_decline_code": log.code.take(li),
        "first_decline_code": log.code.take(s),
        "last_decline_family": log.family.take(li),
        "first_decline_family": log.family.take(s),
        "decline_sequence": _sequence_codes(log, li, has_prev),
        "network_advice_code": log.advice.take(li),
        "card_brand": log.brand.take(li),
        "card_funding": log.funding.take(li),
        "card_country": log.country.take(li),
        "issuer": log.issuer.take(li),
        "currency": log.currency.take(li),
    }
    return _State(
        li=li,
        now=now,
        first_t=first_t,
        last_t=last_t,
        card_key=key,
        card_known_now=card_known_now,
        card_at_now=card_at_now,
        tenure_start=tenure_start,
        numeric=numeric,
        categorical=categorical,
        dom_mean=dom_mean,
        wd_mean=wd_mean,
    )


def _distinct_codes(log: _Log, s: np.ndarray, li: np.ndarray) -> np.ndarray:
    """Distinct non-missing decline codes among rows s..li of each decision's charge."""
    codes = log.code.codes
    if s.size * log.n <= _SMALL_PRODUCT:
        # Few decisions on a small log (online): count distinct strings with sets.
        uniq = log.code.uniques.tolist()
        code_list = codes.tolist()
        return np.asarray(
            [
                len({uniq[c] for c in code_list[a : b + 1] if c >= 0 and uniq[c] is not None})
                for a, b in zip(s.tolist(), li.tolist(), strict=True)
            ],
            dtype=np.int64,
        )
    # Mark, per log row, whether its code value first appears at this row within its charge.
    first_seen: dict[str, int] = {}
    dense = np.asarray(  # equal strings share a code
        [first_seen.setdefault(u or "", len(first_seen)) for u in log.code.uniques.tolist()],
        dtype=np.int64,
    )
    value = dense[codes]
    missing = np.asarray([u is None for u in log.code.uniques], dtype=bool)[codes]
    order = np.lexsort((np.arange(log.n), value, log.charge))
    first = np.ones(log.n, dtype=bool)
    if log.n > 1:
        same = (log.charge[order][1:] == log.charge[order][:-1]) & (
            value[order][1:] == value[order][:-1]
        )
        first[order[1:]] = ~same
    first &= ~missing
    cs = np.concatenate([[0], np.cumsum(first)])
    return cs[li + 1] - cs[s]


# --------------------------------------------------------------------------------------------
# The shared core: features at candidate times
# --------------------------------------------------------------------------------------------


def _circular_distance(angle: np.ndarray, mean: np.ndarray, period: np.ndarray) -> np.ndarray:
    diff = np.abs(np.mod(angle - mean + math.pi, _TWO_PI) - math.pi)
    return diff * period / _TWO_PI


# Calendar tables cover at most this many days (the batch path's full span stays vectorised).
_CALENDAR_SPAN_MAX: Final = 1 << 16


def _calendar_columns(days: np.ndarray) -> dict[str, np.ndarray]:
    """Local-date features of int64 local days since 1970-01-01 (plus ``_a_dom``, ``_a_wd``,
    ``_dim``: the day-of-month / weekday angles and the days of the month)."""
    out: dict[str, np.ndarray] = {}
    y, m, d = civil_from_days(days)
    wd = weekday_of_days(days)
    dim = days_in_month(y, m)
    out["local_weekday"] = wd.astype(np.float64)
    out["local_day_of_month"] = d.astype(np.float64)
    out["days_to_month_end"] = (dim - d).astype(np.float64)
    out["is_business_day"] = (wd < 5).astype(np.float64)

    # Pay-cycle signals (calendar days; public holidays are not modelled).
    py, pm = shift_month(y, m, -1)
    ny, nm = shift_month(y, m, 1)
    dim_prev = days_in_month(py, pm)
    lbd = last_business_day(y, m)
    lbd_prev = last_business_day(py, pm)
    lbd_next = last_business_day(ny, nm)
    out["days_since_1st"] = (d - 1).astype(np.float64)
    out["days_until_1st"] = (dim - d + 1).astype(np.float64)
    out["days_since_15th"] = np.where(d >= 15, d - 15, d + dim_prev - 15).astype(np.float64)
    out["days_until_15th"] = np.where(d <= 15, 15 - d, dim - d + 15).astype(np.float64)
    out["days_since_last_business_day"] = np.where(
        d >= lbd, d - lbd, d + dim_prev - lbd_prev
    ).astype(np.float64)
    out["days_until_last_business_day"] = np.where(d <= lbd, lbd - d, dim - d + lbd_next).astype(
        np.float64
    )
    out["days_since_friday"] = ((wd - 4) % 7).astype(np.float64)
    out["days_until_friday"] = ((4 - wd) % 7).astype(np.float64)
    out["_a_dom"] = _TWO_PI * (d - 1) / dim
    out["_a_wd"] = _TWO_PI * wd / 7.0
    out["_dim"] = dim
    return out


@lru_cache(maxsize=1024)
def _calendar_table(lo: int, span: int) -> dict[str, np.ndarray]:
    """:func:`_calendar_columns` of the days ``lo .. lo + span - 1`` (read-only arrays)."""
    table = _calendar_columns(np.arange(lo, lo + span, dtype=np.int64))
    for values in table.values():
        values.flags.writeable = False
    return table


# The day features of :func:`_calendar_columns` (local weekday .. days until Friday, listed
# together in NUMERIC_FEATURES), then its helper columns.
_CALENDAR_FEATURES: Final[tuple[str, ...]] = NUMERIC_FEATURES[
    NUMERIC_FEATURES.index("local_weekday") : NUMERIC_FEATURES.index("days_until_friday") + 1
]
_CALENDAR_BLOCK_COLUMNS: Final[tuple[str, ...]] = (*_CALENDAR_FEATURES, "_a_dom", "_a_wd", "_dim")
# Calendar blocks start and end on multiples of this many days (cache hits across requests).
_CALENDAR_ALIGN: Final = 64


@lru_cache(maxsize=64)
def _calendar_block(lo: int, span: int) -> np.ndarray:
    """:func:`_calendar_columns` of the days ``lo .. lo + span - 1`` as one read-only
    ``(span, 15)`` float64 row-major block, columns :data:`_CALENDAR_BLOCK_COLUMNS` (the month
    length ``_dim`` as float64: exact, and what it is promoted to where it is used)."""
    table = _calendar_columns(np.arange(lo, lo + span, dtype=np.int64))
    block = np.empty((span, len(_CALENDAR_BLOCK_COLUMNS)), dtype=np.float64)
    for c, name in enumerate(_CALENDAR_BLOCK_COLUMNS):
        block[:, c] = table[name]
    block.flags.writeable = False
    return block


class _CardCounter:
    """Online counts of a decision's card events before query times (the serving hot path).

    Equal to ``_pit_counts(log.card_key, log.t, st.card_key[dec], q)``: the log's events of the
    decisions' cards are searched with one sorted int64 key ``card * R + (t - base)`` per call
    (``base`` just below the call's earliest query, event times clipped to ``[base, top + 1]``,
    which keeps every "event before query" comparison). Falls back to :func:`_pit_counts` when
    the key would not fit in int64.
    """

    def __init__(self, log: _Log, st: _State) -> None:
        self._log_key = log.card_key
        self._log_t = log.t
        self._dec_key = st.card_key
        keys, self._dec_group = np.unique(st.card_key, return_inverse=True)
        self._dec_group = self._dec_group.reshape(-1).astype(np.int64)
        self._n_groups = int(keys.size)
        at = np.searchsorted(keys, log.card_key)
        at_ok = np.minimum(at, max(keys.size - 1, 0))
        hit = (at < keys.size) & (keys[at_ok] == log.card_key) if keys.size else at < 0
        self._ev_group = at_ok[hit].astype(np.int64)
        self._ev_t = log.t[hit]

    def counts(self, dec: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Per row: events of the card of decision ``dec[r]`` with time ``< q[r]``."""
        return self.counts_many(dec, (q,))[0]

    def counts_many(self, dec: np.ndarray, queries: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        """:meth:`counts` of several query arrays (each as long as ``dec``), one event sort."""
        if dec.size == 0:
            return [np.zeros(0, dtype=np.int64) for _ in queries]
        base = min(int(q.min()) for q in queries) - 1
        top = max(int(q.max()) for q in queries)
        width = top - base + 2
        if self._n_groups * width >= _KEY_LIMIT or base < _INT64_MIN_SAFE:
            key = self._dec_key[dec]
            return [_pit_counts(self._log_key, self._log_t, key, q) for q in queries]
        w = np.int64(width)
        ev = np.sort(self._ev_group * w + (np.clip(self._ev_t, base, top + 1) - base))
        group = self._dec_group[dec]
        first = np.searchsorted(ev, np.arange(self._n_groups, dtype=np.int64) * w, side="left")
        group_start = first[group]
        group *= w
        out = []
        for q in queries:
            qk = q - base
            qk += group
            if qk.size > 4 * ev.size and bool((qk[1:] >= qk[:-1]).all()):
                # Sorted queries (a decision's grid in time order), far more than events: place
                # each event among the queries instead; the events before query k are those
                # placed at or before k (exact integer counts, as the search below).
                at = np.searchsorted(qk, ev, side="right")
                pos = np.cumsum(np.bincount(at, minlength=qk.size + 1)[: qk.size])
            else:
                pos = np.searchsorted(ev, qk, side="left")
            pos -= group_start
            out.append(pos.astype(np.int64, copy=False))
        return out


# Largest search key of _CardCounter (int64 with headroom) and the lowest base it accepts.
_KEY_LIMIT: Final = 2**62
_INT64_MIN_SAFE: Final = -(2**62)


def _candidate_features(
    log: _Log,
    st: _State,
    dec: np.ndarray,
    t_cand: np.ndarray,
    *,
    constants: bool = True,
    card_counter: _CardCounter | None = None,
) -> dict[str, Any]:
    """All features for candidate times ``t_cand`` of decisions ``dec`` (indices into ``st``).

    Returns numeric columns as float64 arrays and categoricals as :class:`_Codes`, in
    :data:`NUMERIC_FEATURES` / :data:`CATEGORICAL_FEATURES` order. ``constants=False`` leaves
    out the candidate-independent features (``st.numeric`` / ``st.categorical``), which
    :class:`CandidateEncoder` places per decision instead of per row; ``card_counter`` (built
    once per batch by the encoder) counts the card's attempts instead of :func:`_pit_counts`.
    """
    valid = t_cand != NAT_INT
    all_valid = bool(valid.all())
    now = st.now[dec]
    tt = t_cand if all_valid else np.where(valid, t_cand, now)
    out: dict[str, Any] = {}
    h = float(NS_PER_HOUR)
    day = float(NS_PER_DAY)
    out["hours_since_first_failure"] = (tt - st.first_t[dec]) / h
    out["hours_since_prev_attempt"] = (tt - st.last_t[dec]) / h
    out["hours_from_now"] = (tt - now) / h

    # Known attempts of the card in [t - W, t): other rows strictly before now, plus the
    # charge's own attempts at exactly now (the previous attempt).
    key = st.card_key[dec]
    lo24 = np.minimum(tt - WINDOW_24H_NS, now)
    lo30 = np.minimum(tt - WINDOW_30D_NS, now)
    if card_counter is not None:
        counts = card_counter.counts(np.concatenate([dec, dec]), np.concatenate([lo24, lo30]))
    else:
        counts = _pit_counts(
            log.card_key, log.t, np.concatenate([key, key]), np.concatenate([lo24, lo30])
        )
    n = tt.size
    known_now = st.card_known_now[dec]
    at_now = st.card_at_now[dec]
    out["card_attempts_24h"] = (
        known_now - counts[:n] + np.where(tt - WINDOW_24H_NS <= now, at_now, 0)
    ).astype(np.float64)
    out["card_attempts_30d"] = (
        known_now - counts[n:] + np.where(tt - WINDOW_30D_NS <= now, at_now, 0)
    ).astype(np.float64)

    # Local civil time in the customer's zone (DST-correct offset tables).
    local = to_local_ns(tt, log.zone.codes[st.li[dec]], log.zone.uniques)
    days = np.floor_divide(local, NS_PER_DAY)
    out["local_hour"] = (local - days * NS_PER_DAY) / h
    # Everything else of the local date depends on the day only: computed once per calendar
    # day of the span (a few days online; cached) and gathered per row.
    lo = int(days.min()) if n else 0
    span = int(days.max()) - lo + 1 if n else 0
    if n and span <= n and span <= _CALENDAR_SPAN_MAX:
        table = _calendar_table(lo, span)
        at = days - lo
        for name, values in table.items():
            out[name] = values[at]
    else:
        out.update(_calendar_columns(days))
    a_dom = out.pop("_a_dom")
    a_wd = out.pop("_a_wd")
    dim = out.pop("_dim")
    out["success_dom_distance"] = _circular_distance(a_dom, st.dom_mean[dec], dim)
    out["success_weekday_distance"] = _circular_distance(a_wd, st.wd_mean[dec], np.full(n, 7.0))

    li = st.li[dec]
    added = log.card_added[li]
    out["card_age_days"] = np.where(added == NAT_INT, np.nan, (tt - added) / day)
    exp_end = log.exp_end[li]
    out["days_to_expiry"] = (exp_end - tt) / day
    out["card_expired"] = (tt >= exp_end).astype(np.float64)
    out["tenure_days"] = (tt - st.tenure_start[dec]) / day

    if not all_valid:
        for name in list(out):
            out[name] = np.where(valid, out[name], np.nan)
    if not constants:
        return out
    for name, values in st.numeric.items():
        out[name] = values[dec]
    for name, cat in st.categorical.items():
        out[name] = cat.take(dec)
    return out


_STR_DTYPE: Final = pd.StringDtype("pyarrow", na_value=np.nan)  # pandas' default ``str``


def _str_array(cat: _Codes) -> pd.api.extensions.ExtensionArray:
    """A pandas ``str`` array from codes (-1, None or "" uniques -> missing)."""
    uniq = [None if u is None or u == "" else str(u) for u in cat.uniques.tolist()]
    table = pa.array([*uniq, None], type=pa.large_string())
    codes = np.where(cat.codes < 0, len(uniq), cat.codes)
    return pd.arrays.ArrowStringArray(table.take(codes), dtype=_STR_DTYPE)  # type: ignore[call-arg]


def _frame(columns: dict[str, Any], n: int) -> pd.DataFrame:
    numeric = np.empty((n, len(NUMERIC_FEATURES)), dtype=np.float64)
    for j, name in enumerate(NUMERIC_FEATURES):
        numeric[:, j] = columns.pop(name)  # pop: free each column once copied (memory)
    cats = {name: _str_array(columns[name]) for name in CATEGORICAL_FEATURES}
    return _join_blocks(numeric, NUMERIC_FEATURES, cats, pd.RangeIndex(n))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingExamples:
    """One example per logged retry.

    Attributes
    ----------
    features
        Raw features (numeric float64, categoricals as ``str``), columns
        :data:`NUMERIC_FEATURES` then :data:`CATEGORICAL_FEATURES`.
    label
        int8, 1 when the retry succeeded.
    propensity
        float64 ``retry_propensity`` of the retry (NaN when absent).
    meta
        attempt_id, charge_id, customer_id, decision_time, retry_time, retry_number,
        decline_family, card_country, card_funding, card_brand, amount, currency.
    """

    features: pd.DataFrame
    label: np.ndarray
    propensity: np.ndarray
    meta: pd.DataFrame


def build_training_examples(attempts: pd.DataFrame) -> TrainingExamples:
    """Point-in-time training examples for every logged retry.

    Parameters
    ----------
    attempts
        Canonical contract frame (:func:`features.validation.validate_attempts`).

    Returns
    -------
    TrainingExamples
        One example per attempt that follows a failed first attempt of its charge while the
        charge was still unpaid (attempts after a success are not retry decisions). The
        decision time ``now`` is the previous attempt of the charge, the candidate time its
        retry; rows are ordered by retry time (then charge). Features use only the charge's
        attempts up to ``now`` and other rows with ``attempted_at < now``.

    Raises
    ------
    ValueError
        If a required column is missing or a key column has missing values.
    """
    log = _Log.from_frames([attempts])
    rows = np.flatnonzero((log.pos >= 1) & (log.succ_before() == 0))
    rows = rows[np.lexsort((log.charge[rows], log.t[rows]))]
    li = rows - 1
    now = log.t[li]
    st = _decision_state(log, li, now)
    dec = np.arange(rows.size, dtype=np.int64)
    columns = _candidate_features(log, st, dec, log.t[rows])
    features = _frame(columns, rows.size)

    src = log.order[rows]

    def src_col(name: str) -> np.ndarray | pd.api.extensions.ExtensionArray:
        return attempts[name].iloc[src].array

    def ts(values: np.ndarray) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(values.view("datetime64[ns]")).tz_localize("UTC")

    meta = pd.DataFrame(
        {
            "attempt_id": src_col(ct.ATTEMPT_ID),
            "charge_id": src_col(ct.CHARGE_ID),
            "customer_id": src_col(ct.CUSTOMER_ID),
            "decision_time": ts(now),
            "retry_time": ts(log.t[rows]),
            "retry_number": log.pos[rows].astype(np.int64),
            "decline_family": features["last_decline_family"].array,
            "card_country": features["card_country"].array,
            "card_funding": features["card_funding"].array,
            "card_brand": features["card_brand"].array,
            "amount": log.amount[li],
            "currency": features["currency"].array,
        },
        index=pd.RangeIndex(rows.size),
    )
    return TrainingExamples(
        features=features,
        label=log.succ[rows].astype(np.int8),
        propensity=log.propensity[rows].astype(np.float64),
        meta=meta,
    )


def _candidate_ns(candidate_times: np.ndarray, n_charges: int) -> np.ndarray:
    arr = np.asarray(candidate_times)
    if arr.ndim == 1 and n_charges == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[0] != n_charges:
        raise ValueError(
            f"candidate_times must have shape (n_charges={n_charges}, n_candidates), "
            f"got {arr.shape}"
        )
    if arr.dtype.kind != "M":
        raise ValueError(f"candidate_times must be datetime64 (UTC, naive), got {arr.dtype}")
    return np.ascontiguousarray(arr.astype("datetime64[ns]")).view(np.int64)


def build_candidate_features(batch: DecisionBatch, candidate_times: np.ndarray) -> pd.DataFrame:
    """Features of each charge of ``batch`` at each of its candidate retry times.

    Parameters
    ----------
    batch
        The failed charges awaiting a decision; ``batch.attempts`` holds each charge's attempts
        so far (all at or before its ``now``), ``batch.history`` the customers' other rows
        (any time: only rows with ``attempted_at < now`` are used; rows repeating an attempt
        of ``batch.attempts`` are dropped; the charge's own rows after ``now`` are ignored).
    candidate_times
        ``datetime64[ns]`` (UTC, naive), shape ``(n_charges, n_candidates)``; ``NaT`` pads.

    Returns
    -------
    pandas.DataFrame
        Raw features, one row per (charge, candidate) in row-major order, same columns as
        :attr:`TrainingExamples.features`. Padding rows keep the charge's candidate-independent
        features; candidate-dependent ones are NaN.

    Raises
    ------
    ValueError
        On shape/dtype errors, a charge without attempts, or attempts after ``now``.
    """
    columns, n = _online_columns(batch, candidate_times)
    return _frame(columns, n)


def encode_candidate_features(
    batch: DecisionBatch, candidate_times: np.ndarray, spec: FeatureSpec
) -> pd.DataFrame:
    """Model matrix for a decision batch: ``encode_features(build_candidate_features(...))``.

    Same values as the two-step call, but categoricals are mapped to the spec's levels from
    their per-decision codes, without materialising string columns.

    Parameters
    ----------
    batch, candidate_times
        As for :func:`build_candidate_features`.
    spec
        The spec fixed at training time.

    Returns
    -------
    pandas.DataFrame
        As :func:`encode_features`.
    """
    columns, n = _online_columns(batch, candidate_times)
    if not _spec_is_native(spec):
        return encode_features(_frame(columns, n), spec)
    numeric = _numeric_block(columns, spec, n)
    cats: dict[str, Any] = {}
    for name in spec.categorical:
        dtype, _, _ = _level_lookup(spec.levels[name])
        codes = _spec_codes(columns[name], spec.levels[name])
        cats[name] = pd.Categorical.from_codes(codes, dtype=dtype, validate=False)
    return _join_blocks(numeric, spec.numeric, cats, pd.RangeIndex(n))


def encode_candidate_matrix(
    batch: DecisionBatch,
    candidate_times: np.ndarray,
    spec: FeatureSpec,
    *,
    attempts: AttemptColumns | None = None,
    history: AttemptColumns | None = None,
) -> np.ndarray:
    """The model matrix of a decision batch as one float64 array (the serving hot path).

    Same numbers as :func:`encode_candidate_features`, with each categorical as its integer
    code in ``spec.levels`` order (as float64): exactly what LightGBM sees when it is given the
    pandas frame, since it converts pandas categoricals to their codes.

    Parameters
    ----------
    batch, candidate_times
        As for :func:`build_candidate_features`.
    spec
        The spec fixed at training time.
    attempts, history
        Optional :class:`AttemptColumns` holding the same rows as ``batch.attempts`` /
        ``batch.history``; when given they are read instead of the frames (no pandas access).

    Returns
    -------
    numpy.ndarray
        ``(n_charges * n_candidates, len(spec.names))`` float64, C-contiguous, columns in
        ``spec.names`` order, rows in row-major (charge, candidate) order.
    """
    columns, n = _online_columns(batch, candidate_times, attempts=attempts, history=history)
    return _model_matrix(columns, spec, n)


_NATIVE_SPECS: dict[int, tuple[FeatureSpec, bool]] = {}


def _spec_is_native(spec: FeatureSpec) -> bool:
    """Whether every feature of ``spec`` is one of ours with its own kind (numeric/categorical)."""
    hit = _NATIVE_SPECS.get(id(spec))
    if hit is not None and hit[0] is spec:  # the spec is frozen: cache per instance
        return hit[1]
    native = set(spec.numeric) <= set(NUMERIC_FEATURES) and set(spec.categorical) <= set(
        CATEGORICAL_FEATURES
    )
    if len(_NATIVE_SPECS) >= 64:
        _NATIVE_SPECS.clear()
    _NATIVE_SPECS[id(spec)] = (spec, native)
    return native


def _numeric_block(columns: dict[str, Any], spec: FeatureSpec, n: int) -> np.ndarray:
    numeric = np.empty((n, len(spec.numeric)), dtype=np.float64)
    for j, name in enumerate(spec.numeric):
        numeric[:, j] = columns[name]
    return numeric


@lru_cache(maxsize=256)
def _spec_value_lookup(levels: tuple[str, ...]) -> tuple[dict[str | None, int], int, int]:
    """(value -> code in ``levels``, other code, missing code); None/"" -> missing and the
    literal ``"missing"`` -> other (it is not a real value)."""
    _, _, lookup = _level_lookup(levels)
    other = lookup[OTHER_LEVEL]
    missing = lookup[MISSING_LEVEL]
    values: dict[str | None, int] = {k: v for k, v in lookup.items()}
    values[MISSING_LEVEL] = other
    values[""] = missing
    values[None] = missing
    return values, other, missing


def _spec_codes(cat: _Codes, levels: tuple[str, ...]) -> np.ndarray:
    """Codes in ``levels`` of a factorised categorical (unseen/rare -> other, missing)."""
    lookup, other, missing = _spec_value_lookup(levels)
    get = lookup.get
    mapped = np.asarray(
        [get(u if u is None or u.__class__ is str else str(u), other) for u in cat.uniques.tolist()]
        + [missing],
        dtype=np.int64,
    )
    return mapped[cat.codes]  # code -1 (missing) reads the last slot


def _spec_code_one(cat: _Codes, levels: tuple[str, ...]) -> int:
    """``_spec_codes(cat, levels)[0]`` of a one-row categorical, without numpy calls."""
    lookup, other, missing = _spec_value_lookup(levels)
    code = int(cat.codes[0])
    if code < 0:
        return missing
    u = cat.uniques[code]
    return lookup.get(u if u is None or u.__class__ is str else str(u), other)


def _attempt_ids(table: _Table) -> list[Any]:
    return _table_list(table, ct.ATTEMPT_ID)


def _online_state(
    batch: DecisionBatch,
    *,
    attempts: AttemptColumns | None = None,
    history: AttemptColumns | None = None,
) -> tuple[_Log, _State]:
    """The attempt log and the per-decision state of a decision batch (candidate-independent)."""
    charge_ids = np.asarray(batch.charge_ids, dtype=object)
    n_charges = charge_ids.size
    now = np.asarray(batch.now).astype("datetime64[ns]").view(np.int64).reshape(-1)
    if now.size != n_charges:
        raise ValueError(f"batch.now has {now.size} values for {n_charges} charges")
    own: _Table = batch.attempts if attempts is None else attempts
    frames: list[_Table] = [own]
    hist: _Table | None = batch.history if history is None else history
    if hist is not None and len(hist):
        # History rows repeating an attempt of batch.attempts are dropped (same attempt_id).
        if len(hist) <= _SMALL_ROWS and len(own) <= _SMALL_ROWS:
            seen = set(_attempt_ids(own))
            keep = np.asarray([a not in seen for a in _attempt_ids(hist)], dtype=bool)
        else:
            own_df = own.to_frame() if isinstance(own, AttemptColumns) else own
            hist = hist.to_frame() if isinstance(hist, AttemptColumns) else hist
            keep = ~hist[ct.ATTEMPT_ID].isin(own_df[ct.ATTEMPT_ID]).to_numpy()
        if not bool(keep.all()):
            hist = hist.take(keep) if isinstance(hist, AttemptColumns) else hist[keep]
        if len(hist):
            frames.append(hist)
    log = _Log.from_frames(frames, history_frames=len(frames) - 1)

    # Locate each decision's charge and its last attempt at or before now.
    lookup = {u: i for i, u in enumerate(log.charge_uniques.tolist())}
    codes = np.asarray([lookup.get(c, -1) for c in charge_ids.tolist()], dtype=np.int64)
    if (codes < 0).any():
        bad = charge_ids[codes < 0][:5].tolist()
        raise ValueError(f"batch.attempts has no rows for charge_ids {bad}")
    # batch.attempts rows must not be after their charge's now (DecisionBatch contract).
    own_rows = np.flatnonzero(log.order < len(own))
    now_of_code = np.full(int(log.charge.max(initial=0)) + 1, _INT64_MAX)
    now_of_code[codes] = now
    late = own_rows[log.t[own_rows] > now_of_code[log.charge[own_rows]]]
    if late.size:
        bad_rows = np.sort(log.order[late])[:5] + 1
        raise ValueError(
            f"batch.attempts has rows after their charge's now (rows {bad_rows.tolist()})"
        )
    counts = _pit_counts(log.charge, log.t, codes, now + 1)
    if (counts == 0).any():
        bad = charge_ids[counts == 0][:5].tolist()
        raise ValueError(f"no attempt at or before now for charge_ids {bad}")
    first_row = np.zeros(int(log.charge.max(initial=0)) + 1, dtype=np.int64)
    first_row[log.charge] = log.start
    li = first_row[codes] + counts - 1
    return log, _decision_state(log, li, now)


def _online_columns(
    batch: DecisionBatch,
    candidate_times: np.ndarray,
    *,
    attempts: AttemptColumns | None = None,
    history: AttemptColumns | None = None,
) -> tuple[dict[str, Any], int]:
    """Feature columns (numeric arrays, categorical codes) for a decision batch."""
    n_charges = np.asarray(batch.charge_ids, dtype=object).size
    cand = _candidate_ns(candidate_times, n_charges)
    log, st = _online_state(batch, attempts=attempts, history=history)
    n_cand = cand.shape[1]
    dec = np.repeat(np.arange(n_charges, dtype=np.int64), n_cand)
    return _candidate_features(log, st, dec, cand.reshape(-1)), dec.size


# Rows per chunk when CandidateEncoder's per-row path writes candidate-dependent columns into
# a row-major matrix (53 float64 features: ~400 KB per chunk, within L2).
_ROW_CHUNK: Final = 1024

# Candidate-dependent features that depend on the candidate's local day only (given the
# decision): CandidateEncoder computes them once per (decision, day) and gathers whole rows.
_DAY_FEATURES: Final[frozenset[str]] = frozenset(
    (*_CALENDAR_FEATURES, "success_dom_distance", "success_weekday_distance")
)
# The other candidate-dependent features: written per row, straight into the matrix.
_HOUR_FEATURES: Final[frozenset[str]] = frozenset(
    {
        "hours_since_first_failure",
        "hours_since_prev_attempt",
        "hours_from_now",
        "card_attempts_24h",
        "card_attempts_30d",
        "local_hour",
        "card_age_days",
        "days_to_expiry",
        "card_expired",
        "tenure_days",
    }
)


@dataclass(frozen=True)
class _Layout:
    """Where :class:`CandidateEncoder` puts each feature of a native spec (cached per spec)."""

    numeric_names: tuple[str, ...]  # candidate-independent numeric features ...
    numeric_cols: np.ndarray  # ... and their matrix columns
    categorical: tuple[tuple[int, str], ...]  # (matrix column, name), all candidate-independent
    varying: tuple[tuple[int, str], ...]  # (matrix column, name) of candidate-dependent ones
    slots: dict[str, int] | None  # varying name -> column (None: not all day/hour features)
    calendar: tuple[tuple[int, int, int], ...]  # (matrix column, block column, width) runs
    varying_cols: np.ndarray


_LAYOUTS: dict[int, tuple[FeatureSpec, _Layout]] = {}


def _layout(spec: FeatureSpec, st: _State) -> _Layout:
    """The :class:`_Layout` of ``spec`` (``st``'s constant features: the same for every state)."""
    hit = _LAYOUTS.get(id(spec))
    if hit is not None and hit[0] is spec:  # the spec is frozen: cache per instance
        return hit[1]
    k = len(spec.numeric)
    numeric = [(j, name) for j, name in enumerate(spec.numeric) if name in st.numeric]
    categorical = [
        (j, name) for j, name in enumerate(spec.categorical, start=k) if name in st.categorical
    ]
    varying = [
        (j, name)
        for j, name in enumerate(spec.names)
        if name not in st.numeric and name not in st.categorical
    ]
    names = {name: j for j, name in varying}
    slots: dict[str, int] | None = names
    runs: list[list[int]] = []
    if not set(names) <= _DAY_FEATURES | _HOUR_FEATURES or set(names) & set(spec.categorical):
        slots = None
    else:
        for c, name in enumerate(_CALENDAR_FEATURES):
            if name not in names:
                continue
            j = names[name]
            if runs and runs[-1][0] + runs[-1][2] == j and runs[-1][1] + runs[-1][2] == c:
                runs[-1][2] += 1  # contiguous in both: one slice copy
            else:
                runs.append([j, c, 1])
    layout = _Layout(
        numeric_names=tuple(name for _, name in numeric),
        numeric_cols=np.asarray([j for j, _ in numeric], dtype=np.intp),
        categorical=tuple(categorical),
        varying=tuple(varying),
        slots=slots,
        calendar=tuple((j, c, w) for j, c, w in runs),
        varying_cols=np.asarray([j for j, _ in varying], dtype=np.intp),
    )
    if len(_LAYOUTS) >= 64:
        _LAYOUTS.clear()
    _LAYOUTS[id(spec)] = (spec, layout)
    return layout


@dataclass
class _DayPlan:
    """Per-decision inputs of :meth:`CandidateEncoder._matrix_by_day` (built once)."""

    zone: np.ndarray  # zone code of each decision
    day0: np.ndarray  # local day (since 1970-01-01) of each decision's `now`
    added: np.ndarray  # card_added_at of each decision's card (NAT_INT = missing)
    added_missing: bool
    exp_end: np.ndarray


class CandidateEncoder:
    """Model-matrix rows of a decision batch at any candidate times (the serving hot path).

    The candidate-independent work (attempt log, per-decision state) is done once at
    construction; :meth:`matrix` then encodes only the (decision, time) rows asked for, e.g. the
    rows a coarse-to-fine search actually scores. Rows equal those of
    :func:`encode_candidate_matrix` for the same (decision, time) pairs.

    Parameters
    ----------
    batch
        The decision batch (as :func:`build_candidate_features`).
    spec
        The spec fixed at training time.
    attempts, history
        Optional :class:`AttemptColumns` holding the same rows as ``batch.attempts`` /
        ``batch.history`` (read instead of the frames).
    """

    def __init__(
        self,
        batch: DecisionBatch,
        spec: FeatureSpec,
        *,
        attempts: AttemptColumns | None = None,
        history: AttemptColumns | None = None,
    ) -> None:
        self.batch = batch
        self.spec = spec
        self.n_charges = int(np.asarray(batch.charge_ids, dtype=object).size)
        self._log, self._state = _online_state(batch, attempts=attempts, history=history)
        self._rows: tuple[np.ndarray, tuple[tuple[int, str], ...]] | None = None
        self._plan: _DayPlan | None = None
        # One decision: _pit_counts' single-group search is as fast without the counter's setup.
        self._counter = _CardCounter(self._log, self._state) if self.n_charges > 1 else None

    def _decision_rows(self) -> tuple[np.ndarray, tuple[tuple[int, str], ...]]:
        """Per-decision model-matrix rows and the (column, name) slots that vary by candidate.

        The candidate-independent features (``_State.numeric`` / ``_State.categorical``, as
        spec codes) are written once per decision; the other slots hold 0 until
        :meth:`matrix` fills them. Built on first use, native specs only.
        """
        if self._rows is None:
            spec = self.spec
            st = self._state
            lay = _layout(spec, st)
            width = len(spec.numeric) + len(spec.categorical)
            if self.n_charges == 1:
                # One decision: the row as Python floats (exact float64 values and codes), one
                # array construction instead of one numpy call per feature.
                row = [0.0] * width
                for j, name in zip(lay.numeric_cols.tolist(), lay.numeric_names, strict=True):
                    row[j] = float(st.numeric[name][0])
                for j, name in lay.categorical:
                    row[j] = float(_spec_code_one(st.categorical[name], spec.levels[name]))
                rows = np.asarray([row], dtype=np.float64)
            else:
                rows = np.zeros((self.n_charges, width), dtype=np.float64)
                if lay.numeric_names:
                    rows[:, lay.numeric_cols] = np.stack(
                        [st.numeric[name] for name in lay.numeric_names], axis=1
                    )
                for j, name in lay.categorical:
                    rows[:, j] = _spec_codes(st.categorical[name], spec.levels[name])
            self._rows = (rows, lay.varying)
        return self._rows

    def _day_plan(self) -> tuple[_DayPlan, _Layout] | None:
        """The :class:`_DayPlan` and layout (None when a varying feature is not a day/hour
        feature of :func:`_candidate_features`)."""
        lay = _layout(self.spec, self._state)
        if lay.slots is None:
            return None
        if self._plan is None:
            log, st = self._log, self._state
            zone = log.zone.codes[st.li]
            added = log.card_added[st.li]
            self._plan = _DayPlan(
                zone=zone,
                day0=np.floor_divide(to_local_ns(st.now, zone, log.zone.uniques), NS_PER_DAY),
                added=added,
                added_missing=bool((added == NAT_INT).any()),
                exp_end=log.exp_end[st.li],
            )
        return self._plan, lay

    def matrix(self, dec: np.ndarray, times: np.ndarray, *, order: str = "C") -> np.ndarray:
        """Model matrix of the rows ``(dec[r], times[r])``.

        Parameters
        ----------
        dec
            ``(n,)`` int, decision (charge) index of each row, ``0 <= dec < n_charges``.
        times
            ``(n,)`` candidate times, ``datetime64[ns]`` (UTC, naive) or int64 ns; NaT rows get
            NaN candidate-dependent features.
        order
            ``"C"`` (row-major, as :func:`encode_candidate_matrix`; the fast one: each row is
            its decision's constant row, then only the candidate-dependent features are
            written in place) or ``"F"`` (column-major, filled one feature at a time).

        Returns
        -------
        numpy.ndarray
            ``(n, len(spec.names))`` float64, columns in ``spec.names`` order.
        """
        dec = np.asarray(dec, dtype=np.int64).reshape(-1)
        t = np.asarray(times)
        if t.dtype.kind == "M":
            t = t.astype("datetime64[ns]").view(np.int64)
        t = np.ascontiguousarray(t, dtype=np.int64).reshape(-1)
        if dec.shape != t.shape:
            raise ValueError(f"dec and times differ in length: {dec.size} and {t.size}")
        if dec.size and (int(dec.min()) < 0 or int(dec.max()) >= self.n_charges):
            raise ValueError(f"dec must be in [0, {self.n_charges}), got {dec.min()}..{dec.max()}")
        if order != "C" or not _spec_is_native(self.spec):
            columns = _candidate_features(
                self._log, self._state, dec, t, card_counter=self._counter
            )
            return _model_matrix(columns, self.spec, dec.size, order=order)
        fast = self._matrix_by_day(dec, t) if dec.size else None
        return fast if fast is not None else self._matrix_by_row(dec, t)

    def _matrix_by_row(self, dec: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Row-major matrix from :func:`_candidate_features` (the reference in-place fill)."""
        # Each row starts as a copy of its decision's constant row (one contiguous row
        # gather), then only the candidate-dependent features are written (strided, in row
        # chunks that stay in cache). No transposed copy.
        rows, varying = self._decision_rows()
        columns = _candidate_features(
            self._log, self._state, dec, t, constants=False, card_counter=self._counter
        )
        out = rows.take(dec, axis=0)
        categorical = set(self.spec.categorical)
        filled = [
            (j, _spec_codes(columns[name], self.spec.levels[name]))
            if name in categorical
            else (j, columns[name])
            for j, name in varying
        ]
        n = dec.size
        step = _ROW_CHUNK
        if n <= step:
            for j, values in filled:
                out[:, j] = values
        else:
            for k in range(0, n, step):
                part = out[k : k + step]
                for j, values in filled:
                    part[:, j] = values[k : k + step]
        return out

    def _matrix_by_day(self, dec: np.ndarray, t: np.ndarray) -> np.ndarray | None:
        """Row-major matrix built from per-(decision, local day) rows (None: not applicable).

        Most candidate-dependent features (the calendar, the success-day distances) depend on
        the candidate's local day only, and a decision's candidates span a few days: rows
        holding the decision's constants plus those features are built once per (decision,
        day) in the call's range and gathered whole; the hour-dependent features are then
        written straight into their columns. Same expressions on the same values as
        :func:`_candidate_features`, so the same bits; None when the (decision, day) table
        would have more rows than the call (the per-row path is cheaper then).
        """
        planned = self._day_plan()
        if planned is None:
            return None
        plan, lay = planned
        slots = lay.slots
        assert slots is not None
        rows, _ = self._decision_rows()
        log, st = self._log, self._state
        n = dec.size
        valid = t != NAT_INT
        all_valid = bool(valid.all())
        now = st.now[dec]
        tt = t if all_valid else np.where(valid, t, now)
        local = to_local_ns(tt, plan.zone[dec], log.zone.uniques)
        days = np.floor_divide(local, NS_PER_DAY)
        rel = days - plan.day0[dec]
        d_lo = int(dec.min())
        d_hi = int(dec.max())
        r_lo = int(rel.min())
        r_hi = int(rel.max())
        width = r_hi - r_lo + 1
        n_keys = (d_hi - d_lo + 1) * width
        if n_keys > max(n, 64):
            return None
        key_dec = np.repeat(np.arange(d_lo, d_hi + 1, dtype=np.int64), width)
        key_day = (plan.day0[d_lo : d_hi + 1, None] + np.arange(r_lo, r_hi + 1)).reshape(-1)
        lo = int(key_day.min()) // _CALENDAR_ALIGN * _CALENDAR_ALIGN
        span = -(-(int(key_day.max()) + 1 - lo) // _CALENDAR_ALIGN) * _CALENDAR_ALIGN
        if span > _CALENDAR_SPAN_MAX:
            return None
        cal = _calendar_block(lo, span).take(key_day - lo, axis=0)
        table = rows.take(key_dec, axis=0)
        for jc, c, w in lay.calendar:
            table[:, jc : jc + w] = cal[:, c : c + w]
        j = slots.get("success_dom_distance")
        if j is not None:
            table[:, j] = _circular_distance(cal[:, 12], st.dom_mean[key_dec], cal[:, 14])
        j = slots.get("success_weekday_distance")
        if j is not None:
            table[:, j] = _circular_distance(cal[:, 13], st.wd_mean[key_dec], np.full(n_keys, 7.0))
        rel -= r_lo
        rel += (dec - d_lo) * width
        out = table.take(rel, axis=0)

        # Hour-dependent features: the expressions of _candidate_features, the last operation
        # of each writing its matrix column (no per-feature temporary, no copy pass).
        h = float(NS_PER_HOUR)
        day = float(NS_PER_DAY)
        tmp = np.empty(n, dtype=np.int64)
        for name, base in (
            ("hours_since_first_failure", st.first_t),
            ("hours_since_prev_attempt", st.last_t),
            ("hours_from_now", None),
        ):
            j = slots.get(name)
            if j is not None:
                np.subtract(tt, now if base is None else base[dec], out=tmp)
                np.divide(tmp, h, out=out[:, j])
        j = slots.get("local_hour")
        if j is not None:
            np.multiply(days, NS_PER_DAY, out=tmp)
            np.subtract(local, tmp, out=tmp)
            np.divide(tmp, h, out=out[:, j])
        j24 = slots.get("card_attempts_24h")
        j30 = slots.get("card_attempts_30d")
        if j24 is not None or j30 is not None:
            lo24 = np.minimum(tt - WINDOW_24H_NS, now)
            lo30 = np.minimum(tt - WINDOW_30D_NS, now)
            if self._counter is not None:
                c24, c30 = self._counter.counts_many(dec, (lo24, lo30))
            else:
                key = st.card_key[dec]
                counts = _pit_counts(
                    log.card_key, log.t, np.concatenate([key, key]), np.concatenate([lo24, lo30])
                )
                c24, c30 = counts[:n], counts[n:]
            known_now = st.card_known_now[dec]
            at_now = st.card_at_now[dec]
            # Integer counts: exact in any order, converted to float64 on assignment.
            for jw, window, part in (
                (j24, WINDOW_24H_NS, c24),
                (j30, WINDOW_30D_NS, c30),
            ):
                if jw is not None:
                    out[:, jw] = known_now - part + np.where(tt - window <= now, at_now, 0)
        j = slots.get("card_age_days")
        if j is not None:
            added = plan.added[dec]
            col = out[:, j]
            np.subtract(tt, added, out=tmp)
            np.divide(tmp, day, out=col)
            if plan.added_missing:
                col[added == NAT_INT] = np.nan
        je = slots.get("days_to_expiry")
        jx = slots.get("card_expired")
        if je is not None or jx is not None:
            exp_end = plan.exp_end[dec]
            if je is not None:
                np.subtract(exp_end, tt, out=tmp)
                np.divide(tmp, day, out=out[:, je])
            if jx is not None:
                out[:, jx] = tt >= exp_end
        j = slots.get("tenure_days")
        if j is not None:
            np.subtract(tt, st.tenure_start[dec], out=tmp)
            np.divide(tmp, day, out=out[:, j])
        if not all_valid:
            out[np.ix_(np.flatnonzero(~valid), lay.varying_cols)] = np.nan
        return out


def _model_matrix(
    columns: dict[str, Any], spec: FeatureSpec, n: int, *, order: str = "C"
) -> np.ndarray:
    """Float64 model matrix from feature columns (categoricals as codes in the spec's levels)."""
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', got {order!r}")
    if not _spec_is_native(spec):
        enc = encode_features(_frame(columns, n), spec)
        out = np.empty((n, len(spec.names)), dtype=np.float64, order="F" if order == "F" else "C")
        for j, name in enumerate(spec.names):
            col = enc[name]
            if isinstance(col.dtype, pd.CategoricalDtype):
                out[:, j] = col.cat.codes.to_numpy()
            else:
                out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
        return out
    k = len(spec.numeric)
    width = k + len(spec.categorical)
    # Filled one feature at a time: contiguous writes into a (features, rows) block, then
    # transposed (a blocked copy for C order; a free view for F order).
    block = np.empty((width, n), dtype=np.float64)
    for j, name in enumerate(spec.numeric):
        block[j] = columns[name]
    for j, name in enumerate(spec.categorical, start=k):
        block[j] = _spec_codes(columns[name], spec.levels[name])
    return block.T if order == "F" else np.ascontiguousarray(block.T)
