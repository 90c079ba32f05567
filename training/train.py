"""Train the retry-success model: time split, LightGBM, calibration, evaluation, bundle, MLflow.

Pipeline (:func:`run_training` is the I/O edge, :func:`train_from_attempts` the pure core):

1. ``features.validation.load_attempts`` reads and validates the history (``ContractError``).
2. ``features.examples.build_training_examples`` builds one point-in-time example per retry.
3. :func:`time_split` cuts by the calendar month (UTC) of each charge's first failure: the
   last ``test_months`` are the test set, the ``validation_months`` before them validation, the
   rest training; with the embargo, examples whose retry happened after the next split started
   are dropped. Fewer than 3 distinct months, or no retries, is a :class:`TrainingDataError`.
4. LightGBM (binary, ``deterministic=True``, seeded, categoricals as pandas ``category`` via
   ``retryopt.features.spec.encode_features``) with early stopping on the validation log loss.
5. Calibration (isotonic vs Platt) chosen by cross-fitted log loss on the validation months
   (:func:`retryopt.model.calibration.choose_calibrator`).
6. Test-month evaluation against the historical-rate and logistic-regression baselines, per
   decline family and per country, reliability curve, gain and mean |SHAP| importance.
7. The bundle is written atomically (:func:`model.bundle.write_bundle`) and the run logged to
   MLflow (:mod:`training.mlflow_tracking`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features.advance import next_decline_codes_from_counts
from retryopt.features.examples import build_training_examples
from retryopt.features.spec import FeatureSpec, encode_features, fit_feature_spec
from retryopt.features.validation import load_attempts
from retryopt.model.adjust import (
    CODE_FEATURE,
    GAP_FEATURE,
    Adjustment,
    code_bounds_from_counts,
    count_code_retries,
)
from retryopt.model.bundle import write_bundle
from retryopt.model.calibration import Calibrator, choose_calibrator
from retryopt.training.evaluation import (
    HistoricalRateBaseline,
    LogisticBaseline,
    classification_metrics,
    feature_importance,
    grouped_metrics,
    plot_reliability,
)
from retryopt.training.mlflow_tracking import log_training_run
from retryopt.training.planning_fit import (
    PlanningCounts,
    decision_centers,
    fit_gap_support,
    fit_timing_shrinkage,
    served_predictor,
)
from retryopt.training.progress import Progress
from retryopt.training.timing import timing_weights
from retryopt.training.train_config import TrainConfig, lightgbm_params

# OpenMP threads that spin while waiting make LightGBM 10x slower on a shared, busy machine; a
# passive wait policy costs nothing when idle. Only effective if set before lightgbm is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODEL_NAMES = ("model", "model_uncalibrated", "logistic", "historical_rate")


class TrainingDataError(ValueError):
    """The history cannot be trained on (no retries, too few months, a single outcome...)."""


# --------------------------------------------------------------------------- data


def data_fingerprint(attempts: pd.DataFrame, *, source: Path | None = None) -> dict[str, Any]:
    """Rows, time range and SHA-256 of a canonical attempts frame (column names, dtypes, values)."""
    digest = hashlib.sha256()
    digest.update(repr([(c, str(attempts[c].dtype)) for c in attempts.columns]).encode())
    if len(attempts):
        hashed = pd.util.hash_pandas_object(attempts, index=False).to_numpy()
        digest.update(np.ascontiguousarray(hashed).tobytes())
    times = pd.to_datetime(attempts["attempted_at"]) if "attempted_at" in attempts else None
    fingerprint: dict[str, Any] = {
        "rows": len(attempts),
        "columns": list(map(str, attempts.columns)),
        "time_min": None if times is None or times.empty else times.min().isoformat(),
        "time_max": None if times is None or times.empty else times.max().isoformat(),
        "sha256": digest.hexdigest(),
    }
    if source is not None:
        fingerprint["source_file"] = source.name
        fingerprint["source_bytes"] = source.stat().st_size
    return fingerprint


def _naive_utc(values: Any) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(pd.to_datetime(values))
    return index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index


@dataclass(frozen=True)
class TimeSplit:
    """Row masks of the train / validation / test months and the months themselves."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    train_months: tuple[str, ...]
    validation_months: tuple[str, ...]
    test_months: tuple[str, ...]
    embargoed: int
    merged_months: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """Plain summary for metrics.json."""
        return {
            "train_months": list(self.train_months),
            "validation_months": list(self.validation_months),
            "test_months": list(self.test_months),
            "train_rows": int(self.train.sum()),
            "validation_rows": int(self.validation.sum()),
            "test_rows": int(self.test.sum()),
            "embargoed_rows": self.embargoed,
            "merged_partial_months": list(self.merged_months),
        }


@dataclass(frozen=True)
class SplitMonths:
    """The months of each split (and trailing partial months folded into the test months)."""

    train: tuple[pd.Period, ...]
    validation: tuple[pd.Period, ...]
    test: tuple[pd.Period, ...]
    merged: tuple[pd.Period, ...] = ()


def example_months(meta: pd.DataFrame) -> pd.PeriodIndex:
    """The calendar month (UTC) in which each example's charge first failed.

    A charge's billing cycle starts at its first failure (its earliest decision time); it
    depends on the charge's own rows only, so parts holding whole charges (customer
    partitions) give the months of the whole.
    """
    decision = pd.Series(_naive_utc(meta["decision_time"]).to_numpy())
    if "charge_id" in meta.columns:
        decision = decision.groupby(meta["charge_id"].to_numpy()).transform("min")
    return pd.DatetimeIndex(decision).to_period("M")


def _partial_last_months(counts: pd.Series, share: float) -> tuple[pd.Period, ...]:
    """Trailing months with fewer than ``share`` x the median monthly number of examples (a
    history exported mid-month, a few charges spilling past the last billing run), folded one
    by one into the month before, so the test set is never a sliver of a month."""
    counts = counts.sort_index().astype(np.int64)
    merged: list[pd.Period] = []
    median = float(counts.median()) if len(counts) else 0.0
    while len(counts) > 1 and counts.iloc[-1] < share * median:
        merged.append(counts.index[-1])
        counts.iloc[-2] += counts.iloc[-1]
        counts = counts.iloc[:-1]
    return tuple(merged)


def split_months(counts: pd.Series, config: TrainConfig) -> SplitMonths:
    """Choose the months of each split from the number of examples per month.

    ``counts`` (examples per :func:`example_months` value) of parts of the data add up to the
    counts of the whole, so a cluster chooses the same months as one process.

    Raises
    ------
    TrainingDataError
        Fewer distinct months than ``min_train_months + validation_months + test_months`` (and
        at least 3).
    """
    counts = counts[counts > 0]
    merged = _partial_last_months(counts, config.partial_month_share)
    distinct = sorted(m for m in counts.index if m not in merged)
    needed = max(3, config.min_train_months + config.validation_months + config.test_months)
    if len(distinct) < needed:
        found = ", ".join(str(m) for m in distinct) or "none"
        raise TrainingDataError(
            f"need retries in at least {needed} distinct months (training, "
            f"{config.validation_months} validation, {config.test_months} test) for a time split; "
            f"found {len(distinct)}: {found}"
        )
    return SplitMonths(
        train=tuple(distinct[: -(config.test_months + config.validation_months)]),
        validation=tuple(
            distinct[-(config.test_months + config.validation_months) : -config.test_months]
        ),
        test=tuple(distinct[-config.test_months :]),
        merged=merged,
    )


def split_masks(
    meta: pd.DataFrame, months: pd.PeriodIndex, chosen: SplitMonths, config: TrainConfig
) -> TimeSplit:
    """Row masks of the chosen months for examples ``meta`` (row by row: any part of the data).

    With ``embargo``, training examples whose retry happened at or after the start of the
    validation months, and validation examples whose retry happened at or after the start of
    the test months, are dropped: their outcome was not known yet at the cut.
    """
    month_values = np.asarray(months.astype(str))
    if chosen.merged:
        # Folded trailing months belong to the last remaining month.
        month_values = np.where(
            np.isin(month_values, [str(m) for m in chosen.merged]),
            str(chosen.test[-1]),
            month_values,
        )
    test = np.isin(month_values, [str(m) for m in chosen.test])
    validation = np.isin(month_values, [str(m) for m in chosen.validation])
    train = ~(test | validation)
    embargoed = 0
    if config.embargo and "retry_time" in meta.columns:
        retry = _naive_utc(meta["retry_time"])
        late_train = train & np.asarray(retry >= chosen.validation[0].start_time)
        late_val = validation & np.asarray(retry >= chosen.test[0].start_time)
        embargoed = int(late_train.sum() + late_val.sum())
        train &= ~late_train
        validation &= ~late_val
    return TimeSplit(
        train=train,
        validation=validation,
        test=test,
        train_months=tuple(str(m) for m in chosen.train),
        validation_months=tuple(str(m) for m in chosen.validation),
        test_months=tuple(str(m) for m in chosen.test),
        embargoed=embargoed,
        merged_months=tuple(str(m) for m in chosen.merged),
    )


def time_split(meta: pd.DataFrame, config: TrainConfig) -> TimeSplit:
    """Split examples by the calendar month (UTC) in which their charge first failed.

    Every retry of a charge lands in the same split (the month of the charge's earliest
    ``decision_time``, i.e. its first failure), so a charge never straddles two splits. The last
    ``test_months`` months are the test set, the ``validation_months`` before them validation,
    the rest training. Trailing months with fewer than ``partial_month_share`` x the median
    monthly number of examples are folded into the month before. With ``embargo``, training
    examples whose retry happened at or after the start of the validation months, and
    validation examples whose retry happened at or after the start of the test months, are
    dropped: their outcome was not known yet at the cut.

    Raises
    ------
    TrainingDataError
        Fewer distinct months than ``min_train_months + validation_months + test_months`` (and
        at least 3).
    """
    months = example_months(meta)
    chosen = split_months(pd.Series(months).value_counts(), config)
    return split_masks(meta, months, chosen, config)


# --------------------------------------------------------------------------- training core


@dataclass
class TrainingOutcome:
    """Everything a training run produced (in memory; :func:`run_training` writes it out)."""

    model_text: str
    calibrator: Calibrator
    feature_spec: Any
    metrics: dict[str, Any]
    test_predictions: dict[str, np.ndarray]
    test_labels: np.ndarray
    importance: pd.DataFrame
    by_family: pd.DataFrame
    by_country: pd.DataFrame
    signature_example: pd.DataFrame


def _progress_callback(progress: Progress, period: int) -> Callable[[Any], None]:
    def callback(env: Any) -> None:
        it = env.iteration + 1
        if it % period == 0 and env.evaluation_result_list:
            _, metric, value, _ = env.evaluation_result_list[-1][:4]
            progress(f"  boosting round {it}: validation {metric} {value:.5f}")

    return callback


def _check_both_classes(name: str, y: np.ndarray) -> None:
    if y.size == 0:
        raise TrainingDataError(f"the {name} months contain no retry examples")
    if y.min() == y.max():
        outcome = "succeeded" if y[0] == 1 else "failed"
        raise TrainingDataError(
            f"every retry in the {name} months {outcome} ({y.size} examples); "
            "a success model needs both outcomes"
        )


def train_from_attempts(
    attempts: pd.DataFrame, *, config: TrainConfig, progress: Progress | None = None
) -> TrainingOutcome:
    """Build examples from a canonical attempts frame, fit, calibrate and evaluate the model.

    Parameters
    ----------
    attempts
        Canonical attempts frame (after ``features.validation``).
    config
        Training configuration.
    progress
        Receives one-line progress messages (default: silent).
    """
    import lightgbm as lgb

    say = progress or (lambda _msg: None)
    if len(attempts) == 0:
        raise TrainingDataError("the history is empty (no attempts)")
    say(f"building retry examples from {len(attempts):,} attempts")
    examples = build_training_examples(attempts)
    n = len(examples.label)
    if n == 0:
        raise TrainingDataError(
            "the history contains no retries (no attempt follows a failed attempt of the same "
            "charge); there is nothing to learn a retry-success model from"
        )
    labels = np.asarray(examples.label, dtype=np.int8)
    split = time_split(examples.meta, config)
    say(
        f"{n:,} retry examples; train {split.train.sum():,} ({', '.join(split.train_months)}), "
        f"validation {split.validation.sum():,} ({', '.join(split.validation_months)}), "
        f"test {split.test.sum():,} ({', '.join(split.test_months)}); "
        f"{split.embargoed:,} embargoed"
    )
    y_tr, y_va, y_te = labels[split.train], labels[split.validation], labels[split.test]
    for name, y in (("training", y_tr), ("validation", y_va), ("test", y_te)):
        _check_both_classes(name, y)

    features = examples.features
    meta = examples.meta.reset_index(drop=True)
    spec = fit_feature_spec(features[split.train], min_level_count=config.min_level_count)
    X_tr = encode_features(features[split.train], spec)
    X_va = encode_features(features[split.validation], spec)
    say(f"fitting LightGBM on {len(X_tr):,} rows x {X_tr.shape[1]} features")
    started = time.perf_counter()
    weights = timing_weights(examples.propensity[split.train]) if config.timing_weights else None
    train_set = lgb.Dataset(X_tr, label=y_tr, weight=weights, free_raw_data=True)
    valid_set = lgb.Dataset(X_va, label=y_va, reference=train_set, free_raw_data=True)
    trained = lgb.train(
        lightgbm_params(config),
        train_set,
        num_boost_round=config.num_boost_round,
        valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[
            lgb.early_stopping(config.early_stopping_rounds, verbose=False),
            _progress_callback(say, 100),
        ],
    )
    best_iteration = int(trained.best_iteration or trained.current_iteration())
    model_text = trained.model_to_string(num_iteration=best_iteration)
    fit_seconds = time.perf_counter() - started
    say(f"LightGBM stopped at round {best_iteration} ({fit_seconds:.1f} s)")
    data = EvaluationData(
        spec=spec,
        validation=ExampleRows(features[split.validation], meta.loc[split.validation], y_va),
        test=ExampleRows(features[split.test], meta.loc[split.test], y_te),
        train=ExampleRows(features[split.train], meta.loc[split.train], y_tr),
        encoded_train=X_tr,
        encoded_validation=X_va,
    )
    return finish_training(
        model_text,
        data,
        best_iteration=best_iteration,
        fit_seconds=fit_seconds,
        split=split.describe(),
        n_examples=n,
        timing=_weight_summary(weights, examples.propensity[split.train]),
        config=config,
        progress=say,
        shrinkage_inputs=(attempts, examples.propensity[split.validation]),
    )


@dataclass(frozen=True)
class ExampleRows:
    """Raw features, meta columns and labels of some examples (aligned row by row)."""

    features: pd.DataFrame
    meta: pd.DataFrame
    label: np.ndarray


@dataclass(frozen=True)
class EvaluationData:
    """What the steps after the fit read: the spec, the validation and test examples in full
    and the training rows the baselines are fitted on (all of them in one process; a sample of
    customers on a cluster), with their encodings when already built.

    ``train_counts`` are the planning counts of *every* training row (on a cluster, summed over
    the workers' partitions); None: counted from ``train``.
    """

    spec: FeatureSpec
    validation: ExampleRows
    test: ExampleRows
    train: ExampleRows
    encoded_train: pd.DataFrame | None = None
    encoded_validation: pd.DataFrame | None = None
    train_counts: PlanningCounts | None = None


def finish_training(
    model_text: str,
    data: EvaluationData,
    *,
    best_iteration: int,
    fit_seconds: float,
    split: Mapping[str, Any],
    n_examples: int,
    timing: Mapping[str, float],
    config: TrainConfig,
    progress: Progress | None = None,
    shrinkage_inputs: tuple[pd.DataFrame, np.ndarray] | None = None,
) -> TrainingOutcome:
    """Calibrate, fit the baselines, evaluate and explain a fitted booster (``model_text``).

    Shared by one-process training and training on a cluster (``training.cluster_train``).
    ``shrinkage_inputs`` (the attempts and the validation rows' ``retry_propensity``) enable the
    timing shrinkage fit; without them (on a cluster) only the rare-code bounds are fitted.
    """
    import lightgbm as lgb

    say = progress or (lambda _msg: None)
    spec = data.spec
    # Predict with the booster parsed back from the text, exactly as the bundle will.
    booster = lgb.Booster(model_str=model_text)
    y_tr, y_va, y_te = data.train.label, data.validation.label, data.test.label
    X_tr = (
        data.encoded_train
        if data.encoded_train is not None
        else encode_features(data.train.features, spec)
    )
    X_va = (
        data.encoded_validation
        if data.encoded_validation is not None
        else encode_features(data.validation.features, spec)
    )
    X_te = encode_features(data.test.features, spec)

    threads = config.num_threads
    raw_va = np.asarray(booster.predict(X_va, num_threads=threads), dtype=np.float64)
    raw_te = np.asarray(booster.predict(X_te, num_threads=threads), dtype=np.float64)
    say(f"choosing calibration among {', '.join(config.calibration_methods)} (cross-fitted)")
    choice = choose_calibrator(
        raw_va,
        y_va,
        data.validation.meta["customer_id"].astype(str).to_numpy(),
        methods=config.calibration_methods,  # type: ignore[arg-type]
        n_folds=config.calibration_folds,
        seed=config.seed,
    )
    calibrator = choice.calibrator
    train_counts = data.train_counts or PlanningCounts.count(
        data.train.features, data.train.meta, data.train.label
    )
    planning = _fit_adjustments(
        data,
        train_counts,
        shrinkage_inputs,
        (booster, calibrator),
        (raw_va, X_va[CODE_FEATURE].cat.codes.to_numpy()),
        config,
        say,
        train_rows=(X_tr, np.asarray(y_tr)),
    )
    adjustment = Adjustment.from_planning(planning)
    code_table = adjustment.level_bounds(spec.levels.get(CODE_FEATURE, ()))

    say("fitting baselines (historical success rate, logistic regression)")
    historical = HistoricalRateBaseline(prior_strength=config.historical_prior_strength)
    historical.fit(data.train.meta, y_tr)
    rng = np.random.default_rng(config.seed)
    base_rows = np.flatnonzero(np.ones(len(X_tr), dtype=bool))
    if base_rows.size > config.baseline_max_rows:
        base_rows = np.sort(rng.choice(base_rows, size=config.baseline_max_rows, replace=False))
    logistic = LogisticBaseline(C=config.logistic_c).fit(X_tr.iloc[base_rows], y_tr[base_rows])

    say(f"evaluating on {len(y_te):,} test examples")
    test_meta = data.test.meta
    test_predictions = {
        # As served: calibrated, then capped by the rare-code bounds.
        "model": Adjustment.bound_levels(
            calibrator.apply(raw_te), X_te[CODE_FEATURE].cat.codes.to_numpy(), code_table
        ),
        "model_uncalibrated": raw_te,
        "logistic": logistic.predict_proba(X_te),
        "historical_rate": historical.predict_proba(test_meta),
    }
    bins = config.ece_bins
    test_metrics = {
        name: classification_metrics(y_te, p, n_bins=bins) for name, p in test_predictions.items()
    }
    validation_metrics = {
        "model_uncalibrated": classification_metrics(y_va, raw_va, n_bins=bins),
        "model": classification_metrics(y_va, calibrator.apply(raw_va), n_bins=bins),
    }
    by_family = grouped_metrics(
        y_te,
        test_predictions,
        test_meta["decline_family"].to_numpy(dtype=object),
        min_rows=config.group_min_rows,
    )
    by_country = grouped_metrics(
        y_te,
        test_predictions,
        test_meta["card_country"].to_numpy(dtype=object),
        min_rows=config.group_min_rows,
    )
    sample = min(config.shap_sample_rows, len(X_te))
    sample_rows = np.sort(rng.choice(len(X_te), size=sample, replace=False))
    say(f"feature importance (gain, mean |SHAP| on {sample:,} test rows)")
    importance = feature_importance(booster, X_te.iloc[sample_rows])

    next_codes = next_decline_codes_from_counts(
        train_counts.transitions, min_count=config.min_level_count
    )
    metrics: dict[str, Any] = {
        "split": dict(split),
        "planning": {
            "next_decline_code": next_codes,
            "next_decline_codes_changed": sum(a != b for a, b in next_codes.items()),
            **planning,
        },
        "timing_weights": dict(timing),
        "examples": n_examples,
        "best_iteration": best_iteration,
        "fit_seconds": round(fit_seconds, 3),
        "calibration": {"method": calibrator.method, "oof_log_loss": choice.oof_log_loss},
        "ece_bins": bins,
        "ece_binning": "equal-mass",
        "test": test_metrics,
        "validation": validation_metrics,
        "by_decline_family": by_family.to_dict(orient="records"),
        "by_country": by_country.to_dict(orient="records"),
        "feature_importance": importance.to_dict(orient="records"),
        "config": config.to_dict(),
    }
    example = data.test.features.head(5).reset_index(drop=True)
    return TrainingOutcome(
        model_text=model_text,
        calibrator=calibrator,
        feature_spec=spec,
        metrics=metrics,
        test_predictions=test_predictions,
        test_labels=y_te,
        importance=importance,
        by_family=by_family,
        by_country=by_country,
        signature_example=example,
    )


def _fit_adjustments(
    data: EvaluationData,
    train_counts: PlanningCounts,
    shrinkage_inputs: tuple[pd.DataFrame, np.ndarray] | None,
    model: tuple[Any, Calibrator],
    validation: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    say: Progress,
    *,
    train_rows: tuple[pd.DataFrame, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The planner's adjustments (:mod:`retryopt.model.adjust`), never fitted on the test months.

    Rare-code bounds from the training (``train_counts``) and validation rows; the gap support
    from the validation rows and ``train_rows`` (encoded training rows and labels: every one in
    one process, the client's customer sample on a cluster; in-sample, so their ratio errs toward
    the model's own level, never away from it); the timing
    shrinkage on a seeded sample of at most ``shrinkage_decisions`` validation decisions
    (:mod:`.planning_fit`), when ``shrinkage_inputs`` (attempts, validation propensities) are
    given. ``model`` is the booster and calibrator, ``validation`` the validation rows' raw
    predictions and ``last_decline_code`` level indices.
    """
    booster, calibrator = model
    spec = data.spec
    held = count_code_retries(
        data.validation.features[CODE_FEATURE].to_numpy(dtype=object), data.validation.label
    )
    bounds = code_bounds_from_counts(
        train_counts.code_retries.add(held, fill_value=0),
        levels=spec.levels.get(CODE_FEATURE, ()),
        confidence=config.rare_code_confidence,
    )
    out: dict[str, Any] = {
        "rare_code_bounds": bounds,
        "rare_code_confidence": config.rare_code_confidence,
    }
    if bounds:
        say(f"rare decline codes bounded (never succeeded when retried): {', '.join(bounds)}")
    if config.gap_support and GAP_FEATURE in data.validation.features.columns:
        table = Adjustment.from_planning(out).level_bounds(spec.levels.get(CODE_FEATURE, ()))
        # (gap hours, raw prediction, code level index, label) of each row set.
        rows = [(data.validation.features[GAP_FEATURE], *validation, data.validation.label)]
        if train_rows is not None:
            X_fit, y_fit = train_rows
            raw_fit = np.asarray(booster.predict(X_fit, num_threads=config.num_threads))
            codes_fit = X_fit[CODE_FEATURE].cat.codes.to_numpy()
            rows.insert(0, (X_fit[GAP_FEATURE], raw_fit, codes_fit, y_fit))
        out["gap_support"] = fit_gap_support(
            np.concatenate([np.asarray(g, dtype=np.float64) for g, _, _, _ in rows]),
            np.concatenate([np.asarray(y) for _, _, _, y in rows]),
            np.concatenate(
                [
                    Adjustment.bound_levels(calibrator.apply(raw), np.asarray(codes), table)
                    for _, raw, codes, _ in rows
                ]
            ),
            confidence=config.rare_code_confidence,
        )
        say(
            "gap support (factor per hours since the previous attempt): "
            + ", ".join(f"{e['from_hours']:g}h {e['factor']:.2f}" for e in out["gap_support"])
        )
    if not config.timing_shrinkage or shrinkage_inputs is None:
        out["timing_shrinkage"] = 1.0  # none (stated, so reports and MLflow show it)
        return out
    attempts, propensity = shrinkage_inputs
    n_validation = len(data.validation.label)
    rng = np.random.default_rng(config.seed)
    pick = np.sort(
        rng.choice(n_validation, size=min(n_validation, config.shrinkage_decisions), replace=False)
    )
    say(f"fitting the timing shrinkage on {pick.size:,} validation decisions")
    adjustment = Adjustment.from_planning(out)
    predict = served_predictor(booster, calibrator, spec, adjustment, config.num_threads)
    meta = data.validation.meta.iloc[pick].reset_index(drop=True)
    centers = decision_centers(
        attempts,
        meta,
        data.validation.features["hours_since_first_failure"].to_numpy(dtype=np.float64)[pick],
        spec=spec,
        predict=predict,
    )
    raw_va, codes_va = validation
    p_logged = Adjustment.bound_levels(
        calibrator.apply(raw_va[pick]),
        codes_va[pick],
        adjustment.level_bounds(spec.levels.get(CODE_FEATURE, ())),
    )
    shrink = fit_timing_shrinkage(
        np.asarray(data.validation.label, dtype=np.int8)[pick],
        p_logged,
        centers,
        propensity=propensity[pick],
        groups=meta["customer_id"].astype(str).to_numpy(),
        n_folds=config.calibration_folds,
        seed=config.seed,
    )
    out["timing_shrinkage"] = shrink["beta"]
    out["timing_shrinkage_fit"] = shrink
    return out


# --------------------------------------------------------------------------- reporting


def _weight_summary(weights: np.ndarray | None, propensity: np.ndarray) -> dict[str, float]:
    """Share of training rows with a propensity and the weights' effective sample share."""
    known = float(np.mean(np.isfinite(propensity))) if propensity.size else 0.0
    if weights is None or weights.size == 0:
        return {"rows_with_propensity": known, "effective_sample_share": 1.0}
    ess = float(weights.sum() ** 2 / np.sum(weights**2)) / weights.size
    return {"rows_with_propensity": known, "effective_sample_share": ess}


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numeric metrics flattened for MLflow: ``test.model.roc_auc``, ``validation.model.ece``..."""
    flat: dict[str, float] = {}
    for section in ("test", "validation"):
        for model, values in metrics.get(section, {}).items():
            for key, value in values.items():
                flat[f"{section}.{model}.{key}"] = float(value)
    flat["best_iteration"] = float(metrics.get("best_iteration", 0))
    for key, value in metrics.get("split", {}).items():
        if isinstance(value, int):
            flat[f"split.{key}"] = float(value)
    for method, value in metrics.get("calibration", {}).get("oof_log_loss", {}).items():
        flat[f"calibration.oof_log_loss.{method}"] = float(value)
    planning = metrics.get("planning", {})
    if "next_decline_code" in planning:
        flat["planning.next_decline_codes"] = float(len(planning["next_decline_code"]))
        flat["planning.next_decline_codes_changed"] = float(
            planning.get("next_decline_codes_changed", 0)
        )
    bounds = planning.get("rare_code_bounds", {})
    if "rare_code_bounds" in planning:
        flat["planning.rare_codes"] = float(len(bounds))
    for code, entry in bounds.items():
        flat[f"planning.rare_code_bound.{code}"] = float(entry["upper_bound"])
        flat[f"planning.rare_code_retries.{code}"] = float(entry["retries"])
    if "timing_shrinkage" in planning:
        flat["planning.timing_shrinkage"] = float(planning["timing_shrinkage"])
    for key, value in planning.get("timing_shrinkage_fit", {}).items():
        flat[f"planning.timing_shrinkage_fit.{key}"] = float(value)
    for entry in planning.get("gap_support", []):
        key = f"planning.gap_support.{entry['from_hours']:g}h"
        flat[f"{key}.factor"] = float(entry["factor"])
        flat[f"{key}.retries"] = float(entry["retries"])
    for key, value in metrics.get("timing_weights", {}).items():
        flat[f"timing_weights.{key}"] = float(value)
    return flat


def summary_table(metrics: Mapping[str, Any]) -> str:
    """The end-of-run table: test metrics of the model and the baselines, side by side."""
    labels = {
        "model": "LightGBM (calibrated)",
        "model_uncalibrated": "LightGBM (raw)",
        "logistic": "logistic regression",
        "historical_rate": "historical rate",
    }
    lines = [
        f"{'test months':<24}{'ROC AUC':>9}{'log loss':>10}{'Brier':>9}{'ECE':>8}",
        "-" * 60,
    ]
    for name in MODEL_NAMES:
        m = metrics["test"].get(name)
        if m is None:
            continue
        lines.append(
            f"{labels[name]:<24}{m['roc_auc']:>9.4f}{m['log_loss']:>10.4f}"
            f"{m['brier']:>9.4f}{m['ece']:>8.4f}"
        )
    split = metrics["split"]
    cal = metrics["calibration"]
    oof = ", ".join(f"{k} {v:.4f}" for k, v in cal["oof_log_loss"].items())
    lines += [
        "-" * 60,
        f"rows: train {split['train_rows']:,}  validation {split['validation_rows']:,}  "
        f"test {split['test_rows']:,}  (embargoed {split['embargoed_rows']:,})",
        f"calibration: {cal['method']} (cross-fitted validation log loss: {oof})",
        f"best iteration: {metrics['best_iteration']}",
    ]
    planning = metrics.get("planning", {})
    bounds = planning.get("rare_code_bounds", {})
    if bounds:
        lines.append(
            "rare codes capped (no success when retried): "
            + ", ".join(
                f"{code} <= {b['upper_bound']:.4f} ({b['retries']:.0f} retries)"
                for code, b in bounds.items()
            )
        )
    fit = planning.get("timing_shrinkage_fit")
    if fit:
        lines.append(
            f"timing shrinkage (optimiser's curse): beta {fit['beta']:.3f} on "
            f"{fit['decisions']:,.0f} validation decisions (cross-fitted log loss "
            f"{fit['oof_log_loss_unshrunk']:.4f} -> {fit['oof_log_loss_shrunk']:.4f})"
        )
    support = planning.get("gap_support", [])
    if support:
        lines.append(
            "gap support (hours since the previous attempt: factor, logged retries): "
            + ", ".join(
                f"{e['from_hours']:g}h {e['factor']:.2f} ({e['retries']:.0f})" for e in support
            )
        )
    top = metrics.get("feature_importance", [])[:5]
    if top:
        lines.append(
            "top features (gain share): "
            + ", ".join(f"{r['feature']} {r['gain_share']:.2f}" for r in top)
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- I/O edge


@dataclass(frozen=True)
class TrainingRun:
    """Result of :func:`run_training`."""

    bundle_path: Path
    metrics: dict[str, Any]
    tracked: Any  # training.mlflow_tracking.TrackedRun | None


def run_training(
    data: str | Path,
    out_dir: str | Path,
    *,
    config: TrainConfig,
    experiment: str,
    registered_name: str | None,
    track: bool = True,
    tracking_uri: str | None = None,
    progress: Progress | None = None,
) -> TrainingRun:
    """Load ``data``, train, write the bundle under ``out_dir`` and log the run to MLflow.

    Nothing is written (no bundle, no ``out_dir``, no MLflow run) unless training succeeds.

    Raises
    ------
    features.validation.ContractError
        The history breaks the data contract.
    TrainingDataError
        The history cannot be trained on.
    """

    say = progress or (lambda _msg: None)
    source = Path(data)
    if not source.is_file():
        raise FileNotFoundError(f"data file {source} does not exist")
    if source.stat().st_size == 0:
        raise TrainingDataError(f"data file {source} is empty")
    say(f"loading and validating {source}")
    attempts = load_attempts(source)
    fingerprint = data_fingerprint(attempts, source=source)
    outcome = train_from_attempts(attempts, config=config, progress=say)
    del attempts
    return write_training_run(
        outcome,
        fingerprint,
        out_dir,
        config=config,
        experiment=experiment,
        registered_name=registered_name,
        track=track,
        tracking_uri=tracking_uri,
        progress=say,
    )


def write_training_run(
    outcome: TrainingOutcome,
    fingerprint: Mapping[str, Any],
    out_dir: str | Path,
    *,
    config: TrainConfig,
    experiment: str,
    registered_name: str | None,
    track: bool = True,
    tracking_uri: str | None = None,
    progress: Progress | None = None,
) -> TrainingRun:
    """Write the bundle of a training outcome under ``out_dir`` and log the run to MLflow."""
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="retryopt-train-") as tmp:
        plot = plot_reliability(
            {
                "LightGBM calibrated": (outcome.test_labels, outcome.test_predictions["model"]),
                "LightGBM raw": (
                    outcome.test_labels,
                    outcome.test_predictions["model_uncalibrated"],
                ),
                "logistic": (outcome.test_labels, outcome.test_predictions["logistic"]),
                "historical rate": (
                    outcome.test_labels,
                    outcome.test_predictions["historical_rate"],
                ),
            },
            Path(tmp) / "reliability.png",
            n_bins=config.ece_bins,
        )
        reports = {
            "reliability.png": plot.read_bytes(),
            "metrics_by_decline_family.csv": outcome.by_family.to_csv(index=False).encode(),
            "metrics_by_country.csv": outcome.by_country.to_csv(index=False).encode(),
            "feature_importance.csv": outcome.importance.to_csv(index=False).encode(),
        }
        bundle_path = write_bundle(
            out_dir,
            model_text=outcome.model_text,
            calibrator=outcome.calibrator,
            feature_spec=outcome.feature_spec,
            metrics=outcome.metrics,
            data_fingerprint=dict(fingerprint),
            extra_files=reports,
        )
        say(f"bundle written to {bundle_path}")
        tracked = None
        if track:
            say("logging the run and registering the model in MLflow")
            tracked = log_training_run(
                experiment=experiment,
                run_name=bundle_path.name,
                params=config.to_dict(),
                metrics=flat_metrics(outcome.metrics),
                data_fingerprint=dict(fingerprint),
                bundle_path=bundle_path,
                report_files={"plots": plot},
                registered_name=registered_name,
                signature_example=outcome.signature_example,
                explicit_uri=tracking_uri,
            )
    return TrainingRun(bundle_path=bundle_path, metrics=outcome.metrics, tracked=tracked)
