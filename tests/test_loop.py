"""The closed loop (training.loop) on a small world against a real server, on both store backends.

History imported over HTTP, three months served by the running server through the billing
client, exported, retrained and deployed after each, and the next model backtested on each
month's log against the world's truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retryopt.features import contract as c
from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.settings import Settings
from retryopt.serving.store import open_store
from retryopt.training.billing_client import HttpBillingClient, outcome_json
from retryopt.training.loop import LoopConfig, export_log, month_charges, month_start, run_loop
from retryopt.training.simulate.config import WorldConfig
from retryopt.training.simulate.world import simulate_world


@pytest.fixture(scope="module")
def world() -> object:
    return simulate_world(WorldConfig(), customers=700, months=6, seed=31)


def test_months_partition_the_world(world: object) -> None:
    from retryopt.training.simulate import SimulatedWorld

    assert isinstance(world, SimulatedWorld)
    all_failed = set(world.failed_charges())
    by_month = [set(month_charges(world, k)) for k in range(6)]
    assert set().union(*by_month) == all_failed
    assert sum(len(m) for m in by_month) == len(all_failed)
    assert month_start(world, 1) > month_start(world, 0)


def test_outcome_reports_carry_the_charge_facts(world: object) -> None:
    from retryopt.training.simulate import SimulatedWorld

    assert isinstance(world, SimulatedWorld)
    row = world.attempts.iloc[0]
    out = outcome_json(row, "d1")
    assert out["charge_id"] == row[c.CHARGE_ID] and out["decision_id"] == "d1"
    assert out["attempted_at"].endswith("Z") and out["amount"] == int(row[c.AMOUNT])
    assert {"brand", "funding", "country", "added_at", "exp_month", "exp_year"} <= set(out["card"])


def test_three_months_of_the_closed_loop(world: object, store_url: str, tmp_path: Path) -> None:
    """The whole loop on a SQLite file and on a real PostgreSQL server (``store_url`` fixture)."""
    from retryopt.training.simulate import SimulatedWorld

    assert isinstance(world, SimulatedWorld)
    models = tmp_path / "models"
    settings = Settings(model=None, store_url=store_url, models_root=str(models))
    cfg = LoopConfig(warmup_months=3, served_months=3, bootstrap=30, truth_replications=1)
    with BackgroundServer(create_app(settings)) as server:
        client = HttpBillingClient(server.url)
        try:
            result = run_loop(world, client, store_url=store_url, models=models, config=cfg)
        finally:
            client.close()
    assert len(result.months) == 3 and len(result.bundles) == 4
    assert len(set(result.bundles)) == 4  # retrained after every month
    table = result.table()
    assert (table["failed_charges"] > 20).all()
    assert ((table["recovery_rate"] > 0) & (table["recovery_rate"] < 1)).all()
    # every month was decided by the model that was deployed, with exploration on
    decided = pd.DataFrame(client.decisions)
    retries = decided[decided["action"] == "retry"]
    assert set(retries["policy"]) == {"model"}
    assert set(retries["exploration"]) == {"near_best:share=0.3,tolerance=0.02"}
    assert (retries["propensity"] < 1).any()
    assert len(set(decided["model_version"])) == 3
    # the log: every retry the server decided carries its logged propensity
    logged = export_log(store_url)
    served = np.concatenate([month_charges(world, k) for k in (3, 4, 5)])
    retried = logged[logged[c.CHARGE_ID].isin(pd.Index(served))]
    first = retried.groupby(c.CHARGE_ID)[c.ATTEMPTED_AT].transform("min")
    later = retried[retried[c.ATTEMPTED_AT] > first]
    assert len(later) > 0 and later[c.RETRY_PROPENSITY].notna().all()
    store = open_store(store_url)
    try:
        assert store.count("decisions") == len(decided)
    finally:
        store.close()
    # the next model's off-policy estimates, set against the world's truth
    est = result.estimates()
    assert {"dm"} <= set(est["estimator"])
    assert set(est["policy"]) == {"next model", "served model, no exploration"}
    assert est["truth"].notna().all()
    overlap = result.overlap()
    assert len(overlap) == 6 and overlap["ess"].notna().all()
    # the log explored around the served model's choices: it supports all of its first retries
    served_policy = overlap[overlap["policy"] == "served model, no exploration"]
    gap = (served_policy["first_retry_support"] - 1.0).abs()
    assert (gap <= 4 * served_policy["first_retry_support_se"] + 0.05).all(), served_policy
    for m in result.months:
        assert m.logged_propensities > 0 and 0 < m.explored_share <= 1
