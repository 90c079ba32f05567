"""Training configuration: :class:`TrainConfig`, read from ``default_train.toml`` and a user's
TOML file (:func:`load_config`), and the LightGBM parameters it implies."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_FILE = "default_train.toml"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Training configuration (see ``training/default_train.toml`` for the meaning of each key)."""

    config_version: int = 1
    validation_months: int = 1
    test_months: int = 1
    min_train_months: int = 1
    embargo: bool = True
    partial_month_share: float = 0.2
    min_level_count: int = 20
    lightgbm: Mapping[str, Any] = field(default_factory=dict)
    num_boost_round: int = 2000
    early_stopping_rounds: int = 50
    num_threads: int = 2
    seed: int = 42
    calibration_methods: tuple[str, ...] = ("isotonic", "platt")
    calibration_folds: int = 5
    ece_bins: int = 15
    group_min_rows: int = 200
    shap_sample_rows: int = 20_000
    baseline_max_rows: int = 500_000
    logistic_c: float = 1.0
    historical_prior_strength: float = 20.0
    timing_weights: bool = False
    rare_code_confidence: float = 0.95
    timing_shrinkage: bool = False
    shrinkage_decisions: int = 20_000
    gap_support: bool = True

    def __post_init__(self) -> None:
        checks = {
            "split.validation_months": self.validation_months >= 1,
            "split.test_months": self.test_months >= 1,
            "split.min_train_months": self.min_train_months >= 1,
            "training.num_boost_round": self.num_boost_round >= 1,
            "training.early_stopping_rounds": self.early_stopping_rounds >= 1,
            "training.num_threads": self.num_threads >= 1,
            "calibration.folds": self.calibration_folds >= 2,
            "evaluation.ece_bins": self.ece_bins >= 2,
            "planning.rare_code_confidence": 0.5 <= self.rare_code_confidence < 1,
            "planning.shrinkage_decisions": self.shrinkage_decisions >= 100,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training config value(s): {', '.join(bad)}")
        unknown = set(self.calibration_methods) - {"isotonic", "platt", "identity"}
        if unknown or not self.calibration_methods:
            raise ValueError(
                f"calibration.methods must be a non-empty subset of isotonic, platt, identity; "
                f"got {list(self.calibration_methods)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Nested form mirroring the TOML sections (logged to MLflow and metrics.json)."""
        return {
            "config_version": self.config_version,
            "split": {
                "validation_months": self.validation_months,
                "test_months": self.test_months,
                "min_train_months": self.min_train_months,
                "embargo": self.embargo,
                "partial_month_share": self.partial_month_share,
            },
            "features": {"min_level_count": self.min_level_count},
            "lightgbm": dict(self.lightgbm),
            "training": {
                "num_boost_round": self.num_boost_round,
                "early_stopping_rounds": self.early_stopping_rounds,
                "num_threads": self.num_threads,
                "seed": self.seed,
                "timing_weights": self.timing_weights,
            },
            "calibration": {
                "methods": list(self.calibration_methods),
                "folds": self.calibration_folds,
            },
            "evaluation": {
                "ece_bins": self.ece_bins,
                "group_min_rows": self.group_min_rows,
                "shap_sample_rows": self.shap_sample_rows,
                "baseline_max_rows": self.baseline_max_rows,
                "logistic_c": self.logistic_c,
                "historical_prior_strength": self.historical_prior_strength,
            },
            "planning": {
                "rare_code_confidence": self.rare_code_confidence,
                "timing_shrinkage": self.timing_shrinkage,
                "shrinkage_decisions": self.shrinkage_decisions,
                "gap_support": self.gap_support,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from the nested TOML structure; unknown sections or keys raise ``ValueError``."""
        fields: dict[str, tuple[str, str]] = {
            "split.validation_months": ("validation_months", "int"),
            "split.test_months": ("test_months", "int"),
            "split.min_train_months": ("min_train_months", "int"),
            "split.embargo": ("embargo", "bool"),
            "split.partial_month_share": ("partial_month_share", "float"),
            "features.min_level_count": ("min_level_count", "int"),
            "training.num_boost_round": ("num_boost_round", "int"),
            "training.early_stopping_rounds": ("early_stopping_rounds", "int"),
            "training.num_threads": ("num_threads", "int"),
            "training.seed": ("seed", "int"),
            "training.timing_weights": ("timing_weights", "bool"),
            "calibration.methods": ("calibration_methods", "list"),
            "calibration.folds": ("calibration_folds", "int"),
            "evaluation.ece_bins": ("ece_bins", "int"),
            "evaluation.group_min_rows": ("group_min_rows", "int"),
            "evaluation.shap_sample_rows": ("shap_sample_rows", "int"),
            "evaluation.baseline_max_rows": ("baseline_max_rows", "int"),
            "evaluation.logistic_c": ("logistic_c", "float"),
            "evaluation.historical_prior_strength": ("historical_prior_strength", "float"),
            "planning.rare_code_confidence": ("rare_code_confidence", "float"),
            "planning.timing_shrinkage": ("timing_shrinkage", "bool"),
            "planning.shrinkage_decisions": ("shrinkage_decisions", "int"),
            "planning.gap_support": ("gap_support", "bool"),
        }
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "config_version":
                kwargs["config_version"] = int(value)
                continue
            if key == "lightgbm":
                if not isinstance(value, Mapping):
                    raise ValueError("config section [lightgbm] must be a table")
                kwargs["lightgbm"] = dict(value)
                continue
            if not isinstance(value, Mapping):
                raise ValueError(f"unknown config key {key!r}")
            for sub, sub_value in value.items():
                dotted = f"{key}.{sub}"
                if dotted not in fields:
                    raise ValueError(f"unknown config key {dotted!r}")
                name, kind = fields[dotted]
                kwargs[name] = _coerce(dotted, sub_value, kind)
        return cls(**kwargs)


def _coerce(key: str, value: Any, kind: str) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"config key {key!r} must be a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"config key {key!r} must be a number, got {value!r}")
    if kind == "int":
        if float(value) != int(value):
            raise ValueError(f"config key {key!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, *, seed: int | None = None) -> TrainConfig:
    """The packaged defaults, overridden by the TOML file ``path`` and by ``seed`` if given."""
    defaults = tomllib.loads(
        resources.files("retryopt.training")
        .joinpath(DEFAULT_CONFIG_FILE)
        .read_text(encoding="utf-8")
    )
    data: dict[str, Any] = defaults
    if path is not None:
        file = Path(path)
        try:
            user = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"config file {file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config file {file}: invalid TOML ({exc})") from exc
        data = _deep_merge(defaults, user)
    if seed is not None:
        data = _deep_merge(data, {"training": {"seed": seed}})
    try:
        return TrainConfig.from_dict(data)
    except ValueError as exc:
        where = f"config file {path}" if path is not None else "default config"
        raise ValueError(f"{where}: {exc}") from exc


def lightgbm_params(config: TrainConfig) -> dict[str, Any]:
    """LightGBM parameters: the config's ``[lightgbm]`` plus the fixed, reproducible settings."""
    params: dict[str, Any] = dict(config.lightgbm)
    params.update(
        objective="binary",
        metric="binary_logloss",
        num_threads=config.num_threads,
        seed=config.seed,
        deterministic=True,
        force_row_wise=True,
        verbosity=-1,
    )
    return params
