"""Backtests over customer partitions and on a Dask cluster (``retryopt backtest --dask``).

Every random draw of a backtest is keyed by a charge or customer id, so the draws do not depend
on which other ids share a chunk or partition (property tests); the partition-wise backtest
merged in one process's order equals the one-process backtest in process, and
``retryopt backtest --dask local:2`` on a ``distributed.LocalCluster`` of two worker processes
writes exactly the results of ``retryopt backtest`` without it (skipped, saying why, without
Dask: ``pip install 'retryopt[cluster]'``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from retryopt.cli import app
from retryopt.features.keyed_random import keyed_uniforms
from retryopt.features.validation import load_attempts
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.dm import (
    DeclineTransitions,
    pick_dm_customers,
    split_customers,
)
from retryopt.training.backtest.parts import InProcess
from retryopt.training.backtest.runner import run_backtest, run_backtest_parts
from retryopt.training.backtest.specs import build_policies

RUNNER = CliRunner()
POLICIES = ("logged", "random", "fixed:72,120,168,216")

ids = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True).map(
    lambda xs: np.asarray(xs, dtype=object)
)


@settings(max_examples=50, deadline=None)
@given(keys=ids, seed=st.integers(0, 2**63), cut=st.integers(0, 60), data=st.data())
def test_keyed_draws_do_not_depend_on_order_or_chunks(
    keys: np.ndarray, seed: int, cut: int, data: st.DataObject
) -> None:
    counter = np.arange(len(keys)) % 4
    whole = keyed_uniforms(seed, keys, counter, stream=3)
    assert np.all((whole >= 0) & (whole < 1))
    order = data.draw(st.permutations(range(len(keys))))
    shuffled = keyed_uniforms(seed, keys[order], counter[order], stream=3)
    np.testing.assert_array_equal(shuffled, whole[order])
    k = min(cut, len(keys))
    chunks = [
        keyed_uniforms(seed, keys[a:b], counter[a:b], stream=3) for a, b in ((0, k), (k, None))
    ]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    # the customer split keeps each customer's side whatever else is split with it
    side = split_customers(keys, share=0.5, seed=seed)
    np.testing.assert_array_equal(split_customers(keys[order], share=0.5, seed=seed), side[order])


def test_streams_and_seeds_draw_differently() -> None:
    keys = np.asarray([f"cus_{i}" for i in range(2000)], dtype=object)
    base = keyed_uniforms(7, keys, 0)
    for other in (keyed_uniforms(7, keys, 0, stream=1), keyed_uniforms(8, keys, 0)):
        assert abs(np.corrcoef(base, other)[0, 1]) < 0.1
    assert abs(split_customers(keys, share=0.3, seed=1).mean() - 0.3) < 0.04


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(0, 20), min_size=1, max_size=40),
    cap=st.integers(1, 200),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_the_dm_customers_do_not_depend_on_the_partitions_order(
    counts: list[int], cap: int, seed: int, data: st.DataObject
) -> None:
    series = pd.Series(counts, index=[f"c{i}" for i in range(len(counts))], dtype=np.int64)
    picked = pick_dm_customers(series, max_examples=cap, seed=seed)
    order = data.draw(st.permutations(range(len(counts))))
    again = pick_dm_customers(series.iloc[order], max_examples=cap, seed=seed)
    np.testing.assert_array_equal(again, picked)
    assert series.loc[list(picked)].sum() <= max(cap, 0) or series.sum() <= cap


def test_next_declines_are_drawn_row_by_row() -> None:
    codes = np.asarray(["05", "51", "14", "91"], dtype=object)
    advice = np.asarray([None, "03", None, "24"], dtype=object)
    transitions = DeclineTransitions({None: (codes, advice), "51": (codes[:2], advice[:2])})
    previous = np.asarray(["51", "05", "51", "xx"], dtype=object)
    u = np.asarray([0.0, 0.3, 0.99, 0.6])
    code, adv = transitions.sample(previous, u)
    assert code.tolist() == ["05", "51", "51", "14"]
    assert adv.tolist() == [None, "03", "03", None]
    one = [transitions.sample(previous[i : i + 1], u[i : i + 1])[0][0] for i in range(4)]
    assert one == code.tolist()


@pytest.fixture(scope="module")
def history(trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The bundle's simulated history, as one file and as a dataset splitting customers apart."""
    data = trained_bundle.parent.parent / "attempts.parquet"
    raw = pd.read_parquet(data)
    dataset = tmp_path_factory.mktemp("cluster-backtest") / "attempts"
    dataset.mkdir()
    for part in range(4):
        raw.iloc[part::4].to_parquet(dataset / f"part-{part}.parquet", index=False)
    return data, dataset


def _customer_parts(attempts: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    codes = pd.util.hash_array(attempts["customer_id"].astype(str).to_numpy(dtype=object)) % n
    return [attempts[codes == k].reset_index(drop=True) for k in range(n)]


def _assert_same(got: Any, want: Any) -> None:
    """Exactly equal backtest results (NaN equal to NaN), but for the run time."""
    for name in ("estimates", "uplift", "breakdowns", "retry_numbers", "curves", "calibration"):
        pd.testing.assert_frame_equal(getattr(got, name), getattr(want, name), check_exact=True)
    assert {**got.meta, "seconds": 0} == {**want.meta, "seconds": 0}
    assert (got.overlap, got.rules, got.warnings) == (want.overlap, want.rules, want.warnings)


def test_partitions_merged_in_process_equal_one_process(history: tuple[Path, Path]) -> None:
    attempts = load_attempts(history[0])
    # a small world: a low minimum ESS lets the random policy's IPS, SNIPS and DR through
    config = BacktestConfig(n_boot=30, seed=5, dm_refits=2, min_ess=2.0)
    _, policies = build_policies(POLICIES, seed=config.seed)
    single = run_backtest(attempts, policies, config=config)
    # partitions in a scrambled row order: the merge and the keyed draws must not care
    parts = [p.sample(frac=1.0, random_state=1) for p in _customer_parts(attempts, 3)]
    parted = run_backtest_parts(InProcess(), parts, policies, config=config)
    assert single.meta["n_charges"] > 100
    assert {"dm", "ips", "snips", "dr"} <= set(single.estimates["estimator"])
    # exact: the same per-charge terms in the same order, the same bootstrap weights
    _assert_same(parted, single)


def test_cluster_backtest_equals_one_process(
    history: tuple[Path, Path], trained_bundle: Path, tmp_path: Path
) -> None:
    pytest.importorskip(
        "distributed", reason="Dask is not installed: pip install 'retryopt[cluster]'"
    )
    data, dataset = history
    common = ["--bootstrap", "30", "--seed", "5", "--dm-refits", "2", "--min-ess", "2"]
    for spec in (*POLICIES, f"model:{trained_bundle}"):
        common += ["--policy", spec]
    one = tmp_path / "one"
    single = RUNNER.invoke(app, ["backtest", "--data", str(data), "--out", str(one), *common])
    assert single.exit_code == 0, single.output
    many = tmp_path / "cluster"
    clustered = RUNNER.invoke(
        app,
        ["backtest", "--data", str(dataset), "--out", str(many), "--dask", "local:2", *common],
    )
    assert clustered.exit_code == 0, clustered.output
    want = json.loads((one / "results.json").read_text())
    got = json.loads((many / "results.json").read_text())
    for results in (want, got):
        results["meta"].pop("seconds")
        results["meta"].pop("data", None)
    # held out: the model's test months only, found on the workers
    assert want["meta"]["holdout_charges"] and want["meta"]["n_charges"] > 20
    assert {"dm", "dr"} <= {row["estimator"] for row in want["estimates"]}
    # exact equality (no tolerance): keyed draws and the canonical merge leave no round-off
    assert got == want
    assert (many / "report.html").exists()


def test_the_api_backtests_on_a_cluster_as_one_process(history: tuple[Path, Path]) -> None:
    pytest.importorskip(
        "distributed", reason="Dask is not installed: pip install 'retryopt[cluster]'"
    )
    import retryopt

    data, dataset = history
    config = BacktestConfig(n_boot=20, seed=9, dm_refits=0, min_ess=2.0)
    single = retryopt.backtest(str(data), policies=POLICIES, config=config)
    clustered = retryopt.backtest(
        str(dataset / "*.parquet"), policies=POLICIES, config=config, dask="local:2"
    )
    _assert_same(clustered, single)
    with pytest.raises(ValueError, match="path"):
        retryopt.backtest(load_attempts(data), policies=POLICIES, dask="local:2")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dask", "local:0"], "positive worker count"),
        (["--dask", "local:x"], "--dask"),
        (["--dask", " "], "--dask: empty address"),
        (["--dask", "local", "--simulate"], "--simulate"),
        (["--dask", "local", "--policy", "oracle"], "oracle"),
        (["--dask", "local", "--policy", "bogus:1"], "unknown policy spec"),
    ],
)
def test_bad_cluster_options_end_with_a_message(
    options: list[str], message: str, tmp_path: Path
) -> None:
    out = tmp_path / "bt"
    args = ["backtest", "--data", str(tmp_path / "x.parquet"), "--out", str(out)]
    result = RUNNER.invoke(app, [*args, "--policy", "logged", *options])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_dask_needs_data_not_a_store(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "bt")]
    result = RUNNER.invoke(
        app,
        ["backtest", "--store", "sqlite:///x.db", "--dask", "local", "--policy", "logged", *out],
    )
    assert result.exit_code == 2
    assert "--data only" in result.output


def test_unreadable_cluster_data_is_named(tmp_path: Path) -> None:
    pytest.importorskip(
        "distributed", reason="Dask is not installed: pip install 'retryopt[cluster]'"
    )
    out = tmp_path / "bt"
    data = "/no/such/folder"
    result = RUNNER.invoke(
        app,
        ["backtest", "--data", data, "--out", str(out), "--dask", "local:1", "--policy", "logged"],
    )
    assert result.exit_code == 2, result.output
    assert f"--data {data}" in result.output and "Traceback" not in result.output
    assert not out.exists()
