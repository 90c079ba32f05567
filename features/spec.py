"""The feature spec fixed at training time and the encoding of raw features into a model matrix.

:func:`fit_feature_spec` fixes feature names and categorical levels (frequent levels, then
``"other"`` and ``"missing"``); :func:`encode_features` maps raw features to the model matrix of a
:class:`FeatureSpec`. The ``_spec_*`` helpers map factorised categoricals to spec-level codes
(the online path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from retryopt.features.columns import _Codes

__all__ = [
    "FEATURES_VERSION",
    "MISSING_LEVEL",
    "OTHER_LEVEL",
    "FeatureSpec",
    "encode_features",
    "feature_spec_from_counts",
    "fit_feature_spec",
    "level_counts",
]

FEATURES_VERSION: Final = "retryopt-features-1"
OTHER_LEVEL: Final = "other"
MISSING_LEVEL: Final = "missing"


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
    return feature_spec_from_counts(
        list(map(str, features.columns)), level_counts(features), min_level_count=min_level_count
    )


def level_counts(features: pd.DataFrame) -> dict[str, pd.Series]:
    """Occurrences of each level of every categorical feature (missing values not counted).

    Counts of parts of the training rows add up (``a.add(b, fill_value=0)``) to the counts of
    the whole: :func:`feature_spec_from_counts` of the sum equals :func:`fit_feature_spec` of
    the rows (training on a cluster, one customer partition at a time).

    Raises
    ------
    ValueError
        For a column that is neither numeric, boolean nor text.
    """
    counts: dict[str, pd.Series] = {}
    for name in features.columns:
        col = features[name]
        if _is_categorical_column(col):
            counts[str(name)] = col.dropna().astype(str).value_counts()
        elif not (
            pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype)
        ):
            raise ValueError(f"feature {name!r}: unsupported dtype {col.dtype}")
    return counts


def feature_spec_from_counts(
    names: Sequence[str], counts: Mapping[str, pd.Series], *, min_level_count: int = 20
) -> FeatureSpec:
    """The :class:`FeatureSpec` of features ``names`` whose categoricals have level ``counts``.

    Names without counts are numeric; see :func:`fit_feature_spec` for the levels kept.
    """
    if min_level_count < 1:
        raise ValueError(f"min_level_count must be >= 1, got {min_level_count}")
    numeric: list[str] = []
    categorical: list[str] = []
    levels: dict[str, tuple[str, ...]] = {}
    for name in names:
        if name in counts:
            categorical.append(name)
            level = counts[name]
            kept = level[level >= min_level_count]
            kept = kept[~kept.index.isin([OTHER_LEVEL, MISSING_LEVEL])]
            ordered = sorted(kept.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
            levels[name] = (*(str(k) for k, _ in ordered), OTHER_LEVEL, MISSING_LEVEL)
        else:
            numeric.append(name)
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
