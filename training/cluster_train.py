"""Training on a Dask cluster: ``retryopt train --data PATH --dask ADDRESS``.

The attempts are shuffled by customer (:func:`training.cluster.partition_by_customer`); each
partition is validated, turned into retry examples and encoded on a worker, as one process does
it for the whole history (point-in-time features only read the customer's own rows). Only
small summaries travel to the client:

- examples per month of first failure (summed: the same split months as one process,
  :func:`training.train.split_months`), then the split's row masks per partition;
- level counts of the categorical features on the training rows (summed: the same
  :class:`FeatureSpec`, :func:`features.spec.feature_spec_from_counts`);
- the planner's counts of the training rows (retries and successes per decline code for the
  rare-code bounds, decline-code transitions for the next-code map; summed:
  :class:`training.planning_fit.PlanningCounts`, the same bounds and map as one process);
- the **validation and test months in full** (early stopping, calibration, evaluation need every
  row: about 2 / (number of months) of the examples), and a **seeded sample of customers'**
  training rows with at most ``evaluation.baseline_max_rows`` (500,000) rows for the baselines
  (logistic regression, historical rate); one process uses every training row for the
  historical rate.

LightGBM trains data-parallel with ``lightgbm.dask`` on the workers' encoded training rows.
``lightgbm.dask`` has no early stopping, so the booster grows in chunks of
:data:`ROUNDS_PER_CHUNK` rounds (each continuing the previous one) while the client scores each
new round on the validation months and stops as LightGBM's early stopping does (no improvement
of the validation log loss in ``training.early_stopping_rounds`` rounds); the bundle keeps the
best round. Calibration, baselines and evaluation then run on the client
(:func:`training.train.finish_training`), and the bundle and MLflow run are written as for one
process (:func:`training.train.write_training_run`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from retryopt.features.examples import TrainingExamples, build_training_examples
from retryopt.features.spec import (
    FeatureSpec,
    encode_features,
    feature_spec_from_counts,
    level_counts,
)
from retryopt.training.cluster import (
    partition_by_customer,
    read_attempts,
    validated_partition,
    worker_count,
)
from retryopt.training.planning_fit import PlanningCounts
from retryopt.training.progress import Progress
from retryopt.training.train import (
    EvaluationData,
    ExampleRows,
    SplitMonths,
    TimeSplit,
    TrainingDataError,
    TrainingOutcome,
    TrainingRun,
    example_months,
    finish_training,
    split_masks,
    split_months,
    write_training_run,
)
from retryopt.training.train_config import TrainConfig, lightgbm_params

if TYPE_CHECKING:  # pragma: no cover - typing only
    from distributed import Client, Future

__all__ = ["ROUNDS_PER_CHUNK", "run_training_on_cluster", "train_on_cluster"]

ROUNDS_PER_CHUNK: Final = 100
"""Boosting rounds per ``lightgbm.dask`` call between two early-stopping checks."""

_LOG_LOSS_EPS: Final = 1e-15
# Sample of customers for the baselines: a customer is kept when its hash (seeded) falls under
# the share; the same customers whatever the partitioning.
_HASH_SPACE: Final = 1 << 32


# --------------------------------------------------------------------------- worker functions


def _examples(attempts: pd.DataFrame) -> TrainingExamples:
    return build_training_examples(attempts)


def _month_counts(examples: TrainingExamples) -> pd.Series:
    return pd.Series(example_months(examples.meta)).value_counts()


def _split(examples: TrainingExamples, chosen: SplitMonths, config: TrainConfig) -> TimeSplit:
    return split_masks(examples.meta, example_months(examples.meta), chosen, config)


def _summary(examples: TrainingExamples, split: TimeSplit) -> dict[str, Any]:
    """Row and positive counts per split, embargoed rows, known propensities, level counts and
    the planner's counts of the training rows."""
    label = np.asarray(examples.label, dtype=np.int64)
    train = split.train
    return {
        "examples": int(label.size),
        "rows": {
            name: (int(mask.sum()), int(label[mask].sum()))
            for name, mask in (
                ("training", train),
                ("validation", split.validation),
                ("test", split.test),
            )
        },
        "embargoed": split.embargoed,
        "propensity_known": int(np.isfinite(examples.propensity[train]).sum()),
        "levels": level_counts(examples.features[train]),
        "planning": PlanningCounts.count(
            examples.features[train], examples.meta[train], label[train]
        ),
    }


def _rows(examples: TrainingExamples, mask: np.ndarray) -> ExampleRows:
    return ExampleRows(
        examples.features[mask].reset_index(drop=True),
        examples.meta[mask].reset_index(drop=True),
        np.asarray(examples.label[mask], dtype=np.int8),
    )


def _validation_rows(examples: TrainingExamples, split: TimeSplit) -> ExampleRows:
    return _rows(examples, split.validation)


def _test_rows(examples: TrainingExamples, split: TimeSplit) -> ExampleRows:
    return _rows(examples, split.test)


def _customer_sample(
    examples: TrainingExamples, split: TimeSplit, share: float, seed: int
) -> ExampleRows:
    """Training rows of a seeded sample of customers (every row when ``share`` >= 1)."""
    keep = split.train.copy()
    if share < 1.0:
        hashed = pd.util.hash_pandas_object(
            examples.meta["customer_id"].astype(str),
            index=False,
            hash_key=f"{seed:016d}"[-16:],
        ).to_numpy()
        keep &= (hashed % _HASH_SPACE) < share * _HASH_SPACE
    return _rows(examples, keep)


def _encoded_train(examples: TrainingExamples, split: TimeSplit, spec: FeatureSpec) -> pd.DataFrame:
    return encode_features(examples.features[split.train], spec).reset_index(drop=True)


def _train_labels(examples: TrainingExamples, split: TimeSplit) -> pd.Series:
    return pd.Series(np.asarray(examples.label[split.train], dtype=np.int8), name="label")


def _fingerprint_part(attempts: pd.DataFrame) -> dict[str, Any]:
    """Rows, time range and two order-independent sums of the row hashes of one partition."""
    times = attempts["attempted_at"]
    hashed = pd.util.hash_pandas_object(attempts, index=False).to_numpy()
    salted = pd.util.hash_pandas_object(
        attempts, index=False, hash_key="retryopt-cluster"
    ).to_numpy()
    return {
        "rows": len(attempts),
        "columns": [(str(c), str(attempts[c].dtype)) for c in attempts.columns],
        "time_min": times.min() if len(attempts) else None,
        "time_max": times.max() if len(attempts) else None,
        "sum": int(hashed.sum(dtype=np.uint64)),
        "salted_sum": int(salted.sum(dtype=np.uint64)),
    }


# --------------------------------------------------------------------------- client side


def cluster_fingerprint(parts: Sequence[dict[str, Any]], *, source: str) -> dict[str, Any]:
    """The data fingerprint of a partitioned history (the bundle's ``data_fingerprint.json``).

    A partitioned dataset has no row order, so the SHA-256 covers the column names and dtypes,
    the row count and two sums (mod 2**64) of per-row hashes, which do not depend on the order
    or the partitioning.
    """
    rows = sum(p["rows"] for p in parts)
    columns = next((p["columns"] for p in parts if p["rows"]), parts[0]["columns"] if parts else [])
    total = sum(p["sum"] for p in parts) % (1 << 64)
    salted = sum(p["salted_sum"] for p in parts) % (1 << 64)
    digest = hashlib.sha256(repr((columns, rows, total, salted)).encode())
    mins = [p["time_min"] for p in parts if p["time_min"] is not None]
    maxs = [p["time_max"] for p in parts if p["time_max"] is not None]
    return {
        "rows": rows,
        "columns": [name for name, _ in columns],
        "time_min": min(mins).isoformat() if mins else None,
        "time_max": max(maxs).isoformat() if maxs else None,
        "sha256": digest.hexdigest(),
        "sha256_scope": "order-independent (partitioned dataset, trained on a Dask cluster)",
        "source_file": os.path.basename(source.rstrip("/")) or source,
    }


def _concat(rows: Sequence[ExampleRows]) -> ExampleRows:
    """Parts in one process's example order (retry time, then charge, then retry number)."""
    features = pd.concat([r.features for r in rows], ignore_index=True)
    meta = pd.concat([r.meta for r in rows], ignore_index=True)
    label = np.concatenate([r.label for r in rows]) if rows else np.zeros(0, dtype=np.int8)
    order = np.lexsort(
        (
            meta["retry_number"].to_numpy(),
            meta["charge_id"].astype(str).to_numpy(),
            meta["retry_time"].to_numpy(),
        )
    )
    return ExampleRows(
        features.iloc[order].reset_index(drop=True),
        meta.iloc[order].reset_index(drop=True),
        label[order],
    )


def _check_counts(name: str, rows: int, positives: int) -> None:
    """:func:`training.train._check_both_classes` on counts."""
    if rows == 0:
        raise TrainingDataError(f"the {name} months contain no retry examples")
    if positives in (0, rows):
        outcome = "succeeded" if positives else "failed"
        raise TrainingDataError(
            f"every retry in the {name} months {outcome} ({rows} examples); "
            "a success model needs both outcomes"
        )


def _log_loss(y: np.ndarray, margin: np.ndarray) -> float:
    p = np.clip(1.0 / (1.0 + np.exp(-margin)), _LOG_LOSS_EPS, 1 - _LOG_LOSS_EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


@dataclass
class _EarlyStopping:
    """LightGBM's early stopping on the validation log loss, fed one round at a time."""

    patience: int
    best_loss: float = float("inf")
    best_round: int = 0
    rounds: int = 0

    def update(self, loss: float) -> bool:
        """Record the next round's loss; True when training should stop."""
        self.rounds += 1
        if loss < self.best_loss:
            self.best_loss, self.best_round = loss, self.rounds
        return self.rounds - self.best_round >= self.patience


def _fit_lightgbm(
    client: Client,
    X_parts: list[Future],
    y_parts: list[Future],
    meta_X: pd.DataFrame,
    validation: pd.DataFrame,
    y_validation: np.ndarray,
    config: TrainConfig,
    say: Progress,
    rounds_per_chunk: int,
) -> tuple[str, int]:
    """Data-parallel LightGBM with early stopping checked between chunks of rounds."""
    import dask
    import dask.dataframe as dd
    import lightgbm as lgb
    from lightgbm.dask import DaskLGBMClassifier

    X = dd.from_delayed([dask.delayed(f) for f in X_parts], meta=meta_X, verify_meta=False)
    y = dd.from_delayed(
        [dask.delayed(f) for f in y_parts],
        meta=pd.Series([], dtype=np.int8, name="label"),
        verify_meta=False,
    )
    params = lightgbm_params(config)
    params.pop("num_threads")  # lightgbm.dask uses each worker's threads
    params["tree_learner"] = "data"
    stopping = _EarlyStopping(patience=config.early_stopping_rounds)
    margin = np.zeros(len(validation), dtype=np.float64)
    booster: lgb.Booster | None = None
    while stopping.rounds < config.num_boost_round:
        chunk = min(rounds_per_chunk, config.num_boost_round - stopping.rounds)
        model = DaskLGBMClassifier(client=client, n_estimators=chunk, **params)
        model.fit(X, y, init_model=booster)
        booster = model.booster_
        grown = booster.current_iteration()
        before = stopping.rounds
        stop = False
        for k in range(before, grown):
            margin += np.asarray(
                booster.predict(validation, raw_score=True, start_iteration=k, num_iteration=1),
                dtype=np.float64,
            )
            stop = stopping.update(_log_loss(y_validation, margin))
            if stop:
                break
        say(
            f"  boosting round {stopping.rounds}: validation binary_logloss "
            f"{stopping.best_loss:.5f} (best round {stopping.best_round})"
        )
        if stop or grown < before + chunk:
            break  # stopped early, or LightGBM could not grow more trees
    assert booster is not None
    best = max(1, stopping.best_round)
    return booster.model_to_string(num_iteration=best), best


def train_on_cluster(
    client: Client,
    data: str | os.PathLike[str],
    *,
    config: TrainConfig,
    partitions: int | None = None,
    rounds_per_chunk: int = ROUNDS_PER_CHUNK,
    progress: Progress | None = None,
) -> tuple[TrainingOutcome, dict[str, Any]]:
    """Train on the cluster's workers; the outcome and data fingerprint as one process has them.

    ``partitions`` is the number of customer partitions (default: the input's);
    ``rounds_per_chunk`` the boosting rounds between two early-stopping checks.

    Raises
    ------
    TrainingDataError
        As :func:`training.train.train_from_attempts` (no retries, too few months, a split with
        a single outcome), or ``training.timing_weights`` or ``planning.timing_shrinkage`` (not
        supported on a cluster; both are off by default).
    training.cluster.OfflineInputError
        The history breaks the data contract (the report names rows within a partition).
    """
    say = progress or (lambda _msg: None)
    check_cluster_config(config)
    source = os.fspath(data)
    say(f"reading {source} and partitioning it by customer")
    frame = partition_by_customer(
        read_attempts(source), partitions=partitions, workers=worker_count(client)
    )
    raw_parts = client.compute(frame.to_delayed())
    attempts = client.map(validated_partition, raw_parts, pure=False)
    say(f"validating and building retry examples on {len(attempts)} customer partitions")
    fingerprints = client.gather(client.map(_fingerprint_part, attempts, pure=False))
    del raw_parts
    fingerprint = cluster_fingerprint(fingerprints, source=source)
    if fingerprint["rows"] == 0:
        raise TrainingDataError("the history is empty (no attempts)")
    examples = client.map(_examples, attempts, pure=False)
    counts = client.gather(client.map(_month_counts, examples, pure=False))
    del attempts
    total = pd.concat(counts).groupby(level=0).sum() if counts else pd.Series(dtype=np.int64)
    if int(total.sum()) == 0:
        raise TrainingDataError(
            "the history contains no retries (no attempt follows a failed attempt of the same "
            "charge); there is nothing to learn a retry-success model from"
        )
    chosen = split_months(total, config)
    splits = client.map(_split, examples, chosen=chosen, config=config, pure=False)
    summaries = client.gather(client.map(_summary, examples, splits, pure=False))
    rows = {
        name: (
            sum(s["rows"][name][0] for s in summaries),
            sum(s["rows"][name][1] for s in summaries),
        )
        for name in ("training", "validation", "test")
    }
    n = sum(s["examples"] for s in summaries)
    embargoed = sum(s["embargoed"] for s in summaries)
    split_info = {
        "train_months": [str(m) for m in chosen.train],
        "validation_months": [str(m) for m in chosen.validation],
        "test_months": [str(m) for m in chosen.test],
        "train_rows": rows["training"][0],
        "validation_rows": rows["validation"][0],
        "test_rows": rows["test"][0],
        "embargoed_rows": embargoed,
        "merged_partial_months": [str(m) for m in chosen.merged],
    }
    say(
        f"{n:,} retry examples; train {rows['training'][0]:,}, validation "
        f"{rows['validation'][0]:,}, test {rows['test'][0]:,}; {embargoed:,} embargoed"
    )
    for name, (count, positives) in rows.items():
        _check_counts(name, count, positives)

    levels: dict[str, pd.Series] = {}
    for s in summaries:
        for name, series in s["levels"].items():
            levels[name] = levels[name].add(series, fill_value=0) if name in levels else series
    names = list(client.submit(lambda e: list(map(str, e.features.columns)), examples[0]).result())
    spec = feature_spec_from_counts(names, levels, min_level_count=config.min_level_count)

    validation = _concat(client.gather(client.map(_validation_rows, examples, splits, pure=False)))
    test = _concat(client.gather(client.map(_test_rows, examples, splits, pure=False)))
    share = min(1.0, config.baseline_max_rows / max(1, rows["training"][0]))
    sample = _concat(
        client.gather(
            client.map(
                _customer_sample, examples, splits, share=share, seed=config.seed, pure=False
            )
        )
    )
    say(
        f"on the client: validation {len(validation.label):,} and test {len(test.label):,} rows; "
        f"baseline sample {len(sample.label):,} training rows ({share:.0%} of customers)"
    )

    keep = [i for i, s in enumerate(summaries) if s["rows"]["training"][0] > 0]
    X_parts = client.map(
        _encoded_train, [examples[i] for i in keep], [splits[i] for i in keep], spec=spec
    )
    y_parts = client.map(_train_labels, [examples[i] for i in keep], [splits[i] for i in keep])
    encoded_validation = encode_features(validation.features, spec)
    say(
        f"fitting LightGBM (lightgbm.dask, data-parallel) on {rows['training'][0]:,} rows x "
        f"{len(spec.names)} features in {len(keep)} partitions"
    )
    started = time.perf_counter()
    model_text, best_iteration = _fit_lightgbm(
        client,
        X_parts,
        y_parts,
        encoded_validation.head(0),
        encoded_validation,
        validation.label.astype(np.float64),
        config,
        say,
        rounds_per_chunk,
    )
    fit_seconds = time.perf_counter() - started
    say(f"LightGBM stopped at round {best_iteration} ({fit_seconds:.1f} s)")
    del X_parts, y_parts, examples, splits
    known = sum(s["propensity_known"] for s in summaries)
    outcome = finish_training(
        model_text,
        EvaluationData(
            spec=spec,
            validation=validation,
            test=test,
            train=sample,
            encoded_validation=encoded_validation,
            train_counts=sum(
                (s["planning"] for s in summaries[1:]), start=summaries[0]["planning"]
            ),
        ),
        best_iteration=best_iteration,
        fit_seconds=fit_seconds,
        split=split_info,
        n_examples=n,
        timing={
            "rows_with_propensity": known / max(1, rows["training"][0]),
            "effective_sample_share": 1.0,
        },
        config=config,
        progress=say,
    )
    outcome.metrics["cluster"] = {
        "workers": worker_count(client),
        "partitions": len(summaries),
        "baseline_sample_rows": len(sample.label),
        "baseline_sample_customer_share": share,
        "rounds_per_chunk": rounds_per_chunk,
    }
    return outcome, fingerprint


def check_cluster_config(config: TrainConfig) -> None:
    """Refuse the options a cluster does not support (before connecting to one).

    Raises
    ------
    TrainingDataError
        ``training.timing_weights`` or ``planning.timing_shrinkage`` is on (both are off by
        default).
    """
    if config.timing_weights:
        raise TrainingDataError("training.timing_weights is not supported with --dask")
    if config.timing_shrinkage:
        # Its fit scores every candidate time of sampled validation decisions from the raw
        # attempts of those charges, which stay on the workers (planning_fit.decision_centers).
        raise TrainingDataError(
            "planning.timing_shrinkage is not supported with --dask (it is off by default)"
        )


def run_training_on_cluster(
    client: Client,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: TrainConfig,
    experiment: str,
    registered_name: str | None,
    track: bool = True,
    partitions: int | None = None,
    progress: Progress | None = None,
) -> TrainingRun:
    """:func:`train_on_cluster`, then the bundle and MLflow run as one process writes them."""
    outcome, fingerprint = train_on_cluster(
        client, data, config=config, partitions=partitions, progress=progress
    )
    return write_training_run(
        outcome,
        fingerprint,
        os.fspath(out_dir),
        config=config,
        experiment=experiment,
        registered_name=registered_name,
        track=track,
        progress=progress,
    )
