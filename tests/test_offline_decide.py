"""``retryopt decide``: offline batch decisions equal the HTTP API's, on one process or a cluster.

The decisions of an attempts table are compared with a real ``BackgroundServer`` answering the
same requests over HTTP, and a ``distributed.LocalCluster`` of two worker processes with the
single-process run (skipped, saying why, without Dask: ``pip install 'retryopt[cluster]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
from typer.testing import CliRunner

from retryopt.cli import app
from retryopt.features.io import read_table, write_table_atomic
from retryopt.features.validation import validate_attempts
from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.offline import (
    DECISION_COLUMNS,
    decide_attempts,
    decision_requests,
    decisions_frame,
    split_now_column,
)
from retryopt.serving.service import service_for
from retryopt.serving.settings import Settings
from retryopt.training.simulate.config import WorldConfig
from retryopt.training.simulate.world import simulate_world

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def dunning(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datetime]:
    """A simulated history cut at a moment when many charges are being retried."""
    world = simulate_world(WorldConfig(), customers=400, months=3, seed=23)
    attempts = world.attempts.assign(currency=world.attempts["currency"].str.lower())
    cut = pd.Timestamp("2025-03-09T06:00:00Z")
    attempts = attempts[attempts["attempted_at"] < cut].reset_index(drop=True)
    path = tmp_path_factory.mktemp("decide") / "failed.parquet"
    write_table_atomic(attempts, path)
    return path, cut.to_pydatetime()


@pytest.fixture(scope="module")
def model_url(trained_bundle: Path) -> Iterator[str]:
    with BackgroundServer(create_app(Settings(model=str(trained_bundle)))) as server:
        yield server.url


def _api_decisions(url: str, requests: list[dict[str, object]]) -> pd.DataFrame:
    """The HTTP API's answers, one request per call (each charge decided on its own)."""
    answers = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for request in requests:
            response = client.post("/v1/retry-decisions", json=request)
            assert response.status_code == 200, response.text
            answers.append(response.json())
    return decisions_frame(requests, answers)


def test_requests_cover_the_failed_charges_with_their_history(
    dunning: tuple[Path, datetime],
) -> None:
    path, now = dunning
    attempts = validate_attempts(read_table(path)).clean
    requests = decision_requests(attempts, now=now)
    last = attempts.groupby("charge_id", sort=False)["outcome"].last()
    assert {r["charge"]["charge_id"] for r in requests} == set(last[last == "failed"].index)
    assert any(r.get("customer_history") for r in requests)
    for r in requests:
        assert r["attempts"][-1]["outcome"] == "failed"
        assert all(
            h["charge_id"] != r["charge"]["charge_id"] for h in r.get("customer_history", [])
        )
        assert all(h["attempted_at"] < r["now"] for h in r.get("customer_history", []))


def test_decide_command_gives_exactly_the_api_decisions(
    dunning: tuple[Path, datetime], trained_bundle: Path, model_url: str, tmp_path: Path
) -> None:
    path, now = dunning
    out = tmp_path / "decisions.parquet"
    result = RUNNER.invoke(
        app,
        [
            "decide",
            "--model",
            str(trained_bundle),
            "--data",
            str(path),
            "--out",
            str(out),
            "--now",
            now.isoformat(),
        ],
    )
    assert result.exit_code == 0, result.output
    offline = pd.read_parquet(out)
    attempts = validate_attempts(read_table(path)).clean
    expected = _api_decisions(model_url, decision_requests(attempts, now=now))
    assert list(offline.columns) == list(DECISION_COLUMNS)
    assert len(offline) > 30 and (offline["action"] == "retry").sum() > 5
    assert set(offline["policy"]) == {"model"}
    pd.testing.assert_frame_equal(offline, expected, check_dtype=False)


def test_the_now_column_decides_each_charge_at_its_own_time(
    dunning: tuple[Path, datetime], trained_bundle: Path, model_url: str
) -> None:
    path, now = dunning
    raw = read_table(path)
    last = raw.groupby("charge_id")["attempted_at"].transform("max")
    raw["now"] = (last + pd.Timedelta(hours=7)).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    rest, nows = split_now_column(raw)
    assert nows is not None and len(nows) == raw["charge_id"].nunique()
    attempts = validate_attempts(rest).clean
    service = service_for(str(trained_bundle), settings=Settings(model=None))
    offline = decide_attempts(attempts, service=service, nows=nows, now=now)
    expected = _api_decisions(model_url, decision_requests(attempts, nows=nows, now=now))
    pd.testing.assert_frame_equal(offline, expected, check_dtype=False)
    assert offline["now"].nunique() > 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw.assign(now="2025-03-09 06:00"), "column 'now'"),
        (lambda raw: raw.assign(amount=-raw["amount"]), "amount"),
        (
            lambda raw: raw.assign(
                attempt_id=raw["attempt_id"].mask(raw.index == 3, "4242424242424242")
            ),
            "card number",
        ),
    ],
)
def test_bad_tables_end_with_a_message_and_no_output(
    dunning: tuple[Path, datetime], tmp_path: Path, change: object, message: str
) -> None:
    path, now = dunning
    bad = tmp_path / "bad.parquet"
    write_table_atomic(change(read_table(path)), bad)  # type: ignore[operator]
    out = tmp_path / "decisions.parquet"
    result = RUNNER.invoke(
        app, ["decide", "--data", str(bad), "--out", str(out), "--now", now.isoformat()]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "4242424242424242" not in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--now", "2025-03-09T06:00:00"], "zone"),
        (["--policy", "oracle"], "model or greedy"),
        (["--dask", "local:0"], "positive worker count"),
        (["--model", "/no/such/bundle"], "refused"),
    ],
)
def test_bad_options_are_named(
    dunning: tuple[Path, datetime], tmp_path: Path, options: list[str], message: str
) -> None:
    path, _ = dunning
    out = tmp_path / "decisions.parquet"
    result = RUNNER.invoke(app, ["decide", "--data", str(path), "--out", str(out), *options])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_a_cluster_decides_as_one_process(
    dunning: tuple[Path, datetime], trained_bundle: Path, tmp_path: Path
) -> None:
    pytest.importorskip(
        "distributed", reason="Dask is not installed: pip install 'retryopt[cluster]'"
    )
    from retryopt.training.cluster import connect, decide_on_cluster

    path, now = dunning
    raw = read_table(path)
    # A partitioned dataset whose files split customers apart: the cluster must regroup them.
    dataset = tmp_path / "failed"
    dataset.mkdir()
    for part in range(3):
        raw.iloc[part::3].to_parquet(dataset / f"part-{part}.parquet", index=False)
    settings = Settings(model=None)
    with connect("local:2") as client:
        assert len(client.scheduler_info()["workers"]) == 2
        clustered = decide_on_cluster(
            client, dataset, model=str(trained_bundle), now=now, settings=settings
        )
    attempts = validate_attempts(raw).clean
    single = decide_attempts(
        attempts, service=service_for(str(trained_bundle), settings=settings), now=now
    )
    assert len(single) > 30
    pd.testing.assert_frame_equal(clustered, single, check_dtype=False)


@pytest.mark.parametrize("data", ["/no/such/folder", "/no/such/*.parquet"])
def test_unreadable_cluster_data_is_named(tmp_path: Path, data: str) -> None:
    pytest.importorskip(
        "distributed", reason="Dask is not installed: pip install 'retryopt[cluster]'"
    )
    out = tmp_path / "decisions.parquet"
    result = RUNNER.invoke(app, ["decide", "--data", data, "--out", str(out), "--dask", "local:1"])
    assert result.exit_code == 2, result.output
    assert f"--data {data}" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_a_table_without_failed_charges_gives_an_empty_table(
    dunning: tuple[Path, datetime], tmp_path: Path
) -> None:
    path, now = dunning
    raw = read_table(path).sort_values("attempted_at", kind="stable").reset_index(drop=True)
    paid = raw.groupby("charge_id")["outcome"].transform("last") == "succeeded"
    data = tmp_path / "paid.parquet"
    write_table_atomic(raw[paid.to_numpy()].reset_index(drop=True), data)
    out = tmp_path / "decisions.parquet"
    result = RUNNER.invoke(
        app, ["decide", "--data", str(data), "--out", str(out), "--now", now.isoformat()]
    )
    assert result.exit_code == 0, result.output
    assert "0 charges decided" in result.output
    empty = pd.read_parquet(out)
    assert list(empty.columns) == list(DECISION_COLUMNS) and empty.empty
