"""Training on a Dask cluster (``retryopt train --dask``) against training in one process.

The pieces that make the cluster choose what one process chooses are tested on their own (the
split months and feature spec from summed per-part counts, the order-independent fingerprint,
early stopping between chunks); then one run on a ``distributed.LocalCluster`` of two worker
processes is compared with one process on the same simulated history (skipped, saying why,
without Dask: ``pip install 'retryopt[cluster]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from retryopt.cli import app
from retryopt.features.advance import fit_next_decline_codes, next_decline_codes_from_counts
from retryopt.features.examples import build_training_examples
from retryopt.features.spec import feature_spec_from_counts, fit_feature_spec, level_counts
from retryopt.features.validation import validate_attempts
from retryopt.model.adjust import code_bounds_from_counts, fit_code_bounds
from retryopt.model.bundle import load_bundle
from retryopt.training.cluster import ClusterError, connect, parse_address
from retryopt.training.cluster_train import (
    _EarlyStopping,
    _fingerprint_part,
    cluster_fingerprint,
    train_on_cluster,
)
from retryopt.training.planning_fit import PlanningCounts
from retryopt.training.simulate.config import WorldConfig
from retryopt.training.simulate.world import simulate_world
from retryopt.training.train import (
    example_months,
    run_training,
    split_masks,
    split_months,
    time_split,
)
from retryopt.training.train_config import load_config

RUNNER = CliRunner()
TRAIN_TOML = """
[lightgbm]
num_leaves = 15
min_data_in_leaf = 50
[training]
num_boost_round = 200
early_stopping_rounds = 20
num_threads = 1
[calibration]
folds = 3
"""
# Tolerances of the cluster-trained model's test metrics against one process. Data-parallel
# LightGBM builds its feature bins from each worker's rows (not all rows), so its trees differ
# slightly; the baselines are fitted on a customer sample on a cluster. On a test set of a few
# thousand retries, the sampling error of AUC is about 0.01 and of ECE (15 equal-mass bins)
# about 0.01-0.02, so the two models must agree within about that.
AUC_TOLERANCE = 0.015
LOG_LOSS_TOLERANCE = 0.01
ECE_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    """A simulated history, as one file and as a partitioned dataset splitting customers."""
    world = simulate_world(WorldConfig(), customers=12000, months=5, seed=11)
    attempts = world.attempts.assign(currency=world.attempts["currency"].str.lower())
    root = tmp_path_factory.mktemp("cluster-train")
    dataset = root / "attempts"
    dataset.mkdir()
    for part in range(4):
        attempts.iloc[part::4].to_parquet(dataset / f"part-{part}.parquet", index=False)
    attempts.to_parquet(root / "attempts.parquet", index=False)
    (root / "train.toml").write_text(TRAIN_TOML)
    return attempts, root


def _parts(attempts: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """Customer partitions of a canonical frame."""
    codes = pd.factorize(attempts["customer_id"])[0] % n
    return [attempts[codes == i].reset_index(drop=True) for i in range(n)]


def test_split_and_spec_from_summed_counts_equal_one_process(
    history: tuple[pd.DataFrame, Path],
) -> None:
    attempts = validate_attempts(history[0]).clean
    config = load_config(seed=3)
    whole = build_training_examples(attempts)
    split = time_split(whole.meta, config)
    spec = fit_feature_spec(whole.features[split.train], min_level_count=20)

    parts = [build_training_examples(p) for p in _parts(attempts, 3)]
    counts = pd.concat([pd.Series(example_months(p.meta)).value_counts() for p in parts])
    chosen = split_months(counts.groupby(level=0).sum(), config)
    masks = [split_masks(p.meta, example_months(p.meta), chosen, config) for p in parts]
    assert [m.train_months for m in masks] == [split.train_months] * 3
    assert sum(int(m.train.sum()) for m in masks) == int(split.train.sum())
    assert sum(int(m.test.sum()) for m in masks) == int(split.test.sum())
    assert sum(m.embargoed for m in masks) == split.embargoed

    levels: dict[str, pd.Series] = {}
    for p, m in zip(parts, masks, strict=True):
        for name, series in level_counts(p.features[m.train]).items():
            levels[name] = levels[name].add(series, fill_value=0) if name in levels else series
    names = list(map(str, whole.features.columns))
    assert feature_spec_from_counts(names, levels, min_level_count=20) == spec


def test_planning_counts_of_customer_parts_add_up_to_one_process(
    history: tuple[pd.DataFrame, Path],
) -> None:
    """The rare-code bounds and the next-code map from summed per-part counts are exactly the
    ones fitted on every row (what ``train --dask`` sums on the client)."""
    attempts = validate_attempts(history[0]).clean
    whole = build_training_examples(attempts)
    codes = whole.features["last_decline_code"].to_numpy(dtype=object)
    parts = [build_training_examples(p) for p in _parts(attempts, 3)]
    counts = [PlanningCounts.count(p.features, p.meta, p.label) for p in parts]
    summed = sum(counts[1:], start=counts[0])
    assert int(summed.code_retries["retries"].sum()) == sum(isinstance(c, str) for c in codes)
    levels = sorted({c for c in codes if isinstance(c, str)})
    # a code that never succeeds, so the bounds are not empty
    label = np.where(codes == levels[0], 0, whole.label)
    never = [np.where(p.features["last_decline_code"] == levels[0], 0, p.label) for p in parts]
    summed_never = sum(
        (
            PlanningCounts.count(p.features, p.meta, y)
            for p, y in zip(parts[1:], never[1:], strict=True)
        ),
        start=PlanningCounts.count(parts[0].features, parts[0].meta, never[0]),
    )
    expected = fit_code_bounds(codes, label, levels=levels, confidence=0.95)
    assert levels[0] in expected
    got = code_bounds_from_counts(summed_never.code_retries, levels=levels, confidence=0.95)
    assert got == expected
    next_codes = fit_next_decline_codes(
        whole.meta["charge_id"], whole.meta["retry_number"], codes, min_count=5
    )
    assert len(next_codes) > 3
    assert next_decline_codes_from_counts(summed.transitions, min_count=5) == next_codes


def test_the_fingerprint_ignores_row_order_and_partitioning(
    history: tuple[pd.DataFrame, Path],
) -> None:
    attempts = validate_attempts(history[0]).clean
    two = cluster_fingerprint([_fingerprint_part(p) for p in _parts(attempts, 2)], source="x")
    five = cluster_fingerprint([_fingerprint_part(p) for p in _parts(attempts, 5)], source="x")
    assert two == five and two["rows"] == len(attempts)
    changed = attempts.assign(amount=attempts["amount"].where(attempts.index != 7, 1))
    assert cluster_fingerprint([_fingerprint_part(changed)], source="x") != two


def test_early_stopping_keeps_the_best_round_and_waits_for_the_patience() -> None:
    stopping = _EarlyStopping(patience=3)
    losses = [0.9, 0.8, 0.7, 0.71, 0.7, 0.69, 0.72, 0.73, 0.74]
    stops = [stopping.update(x) for x in losses]
    assert stopping.best_round == 6 and stopping.best_loss == 0.69
    assert stops.index(True) == 8  # three rounds without improvement after round 6


@pytest.mark.parametrize(
    ("address", "expected"),
    [("local", ("local", 2)), ("local:3", ("local", 3)), ("tcp://h:8786", ("tcp://h:8786", None))],
)
def test_addresses(address: str, expected: tuple[str, int | None]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", "local:0", "local:x"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ClusterError, match="--dask"):
        parse_address(address)


def test_bad_cluster_options_end_with_a_message(
    history: tuple[pd.DataFrame, Path], tmp_path: Path
) -> None:
    root = history[1]
    shrinking = tmp_path / "shrinking.toml"
    shrinking.write_text(TRAIN_TOML + "[planning]\ntiming_shrinkage = true\n")
    for options, message in (
        (["--data", str(root / "attempts"), "--dask", "local:0"], "positive worker count"),
        (["--store", "sqlite:///x.db", "--dask", "local"], "--data only"),
        (
            ["--data", str(root / "attempts"), "--dask", "local:2", "--config", str(shrinking)],
            "planning.timing_shrinkage is not supported with --dask",
        ),
    ):
        result = RUNNER.invoke(app, ["train", "--out", str(tmp_path / "m"), *options])
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert not (tmp_path / "m").exists()


def test_a_cluster_trains_a_model_as_good_as_one_process(
    history: tuple[pd.DataFrame, Path], tmp_path: Path
) -> None:
    pytest.importorskip(
        "distributed", reason="Dask is not installed: pip install 'retryopt[cluster]'"
    )
    pytest.importorskip("lightgbm.dask", reason="lightgbm.dask is not importable")
    root = history[1]
    single = run_training(
        root / "attempts.parquet",
        tmp_path / "single",
        config=load_config(root / "train.toml", seed=3),
        experiment="cluster-test",
        registered_name=None,
        track=False,
    )
    result = RUNNER.invoke(
        app,
        [
            "train",
            "--data",
            str(root / "attempts"),
            "--dask",
            "local:2",
            "--out",
            str(tmp_path / "cluster"),
            "--config",
            str(root / "train.toml"),
            "--seed",
            "3",
            "--experiment",
            "cluster-test",
            "--registered-name",
            "retryopt-cluster-test",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "registered model: models:/retryopt-cluster-test/1" in result.output
    path = next(x for x in result.output.splitlines() if x.startswith("Bundle: "))
    bundle = load_bundle(path.removeprefix("Bundle: "))
    reference = load_bundle(single.bundle_path)
    assert bundle.feature_spec == reference.feature_spec
    ours, theirs = bundle.metrics, reference.metrics
    assert ours["split"] == theirs["split"]
    # counted on the workers over every training row: the same planner tables as one process
    for key in ("rare_code_bounds", "next_decline_code"):
        assert ours["planning"][key] == theirs["planning"][key], key
    assert ours["cluster"]["workers"] == 2 and ours["cluster"]["partitions"] >= 2
    m, r = ours["test"]["model"], theirs["test"]["model"]
    assert abs(m["roc_auc"] - r["roc_auc"]) <= AUC_TOLERANCE, (m, r)
    assert abs(m["log_loss"] - r["log_loss"]) <= LOG_LOSS_TOLERANCE, (m, r)
    assert abs(m["ece"] - r["ece"]) <= ECE_TOLERANCE, (m, r)
    # The bundle predicts as any bundle does.
    test_rows = np.isfinite(
        bundle.predict_proba(
            build_training_examples(validate_attempts(history[0]).clean).features.head(50)
        )
    )
    assert test_rows.all()


def test_boosting_continues_across_chunks_until_early_stopping(
    history: tuple[pd.DataFrame, Path],
) -> None:
    """Chunks of 10 rounds: the booster grows past several chunks (``init_model``) and stops
    with LightGBM's rule, keeping its best round."""
    pytest.importorskip(
        "distributed", reason="Dask is not installed: pip install 'retryopt[cluster]'"
    )
    root = history[1]
    config = load_config(root / "train.toml", seed=3)
    lines: list[str] = []
    with connect("local:2") as client:
        outcome, _ = train_on_cluster(
            client,
            str(root / "attempts"),
            config=config,
            rounds_per_chunk=10,
            progress=lines.append,
        )
    best = outcome.metrics["best_iteration"]
    checks = [line for line in lines if "boosting round" in line]
    assert best > 20 and len(checks) >= 3
    last_round = int(checks[-1].split("boosting round ")[1].split(":")[0])
    # Stopped by the rule (patience 20 after the best round), not by the round limit.
    assert last_round == best + config.early_stopping_rounds < config.num_boost_round
    assert outcome.metrics["cluster"]["rounds_per_chunk"] == 10
