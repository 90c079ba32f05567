"""A billing-service style client: a simulated month of failed charges played over HTTP.

The client turns each round of the synthetic world's ``play`` into batch requests against the
running server (real uvicorn, real trained bundle) and retries when the server says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from retryopt.features import contract as c
from retryopt.features.decisions import Constraints, DecisionBatch, PolicyDecisions
from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.model_store import ModelStore
from retryopt.serving.settings import Settings


def _opt(value: Any) -> Any:
    return None if pd.isna(value) else value


def _iso(value: Any) -> str:
    return pd.Timestamp(value).tz_convert("UTC").isoformat()


class HttpBillingClient:
    """A :class:`~features.decisions.RetryPolicy` that asks the retry API over HTTP."""

    name = "http"

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=120)
        self.calls = 0

    def _request(
        self, charge_id: str, now: np.datetime64, rows: pd.DataFrame, hist: pd.DataFrame | None
    ) -> dict[str, Any]:
        last = rows.iloc[-1]
        history = None
        if hist is not None and len(hist):
            history = [
                {
                    "charge_id": r[c.CHARGE_ID],
                    "attempted_at": _iso(r[c.ATTEMPTED_AT]),
                    "outcome": r[c.OUTCOME],
                    "amount": int(r[c.AMOUNT]),
                    "decline_code": _opt(r[c.DECLINE_CODE]),
                    "network_advice_code": _opt(r[c.NETWORK_ADVICE_CODE]),
                    "card_id": _opt(r[c.CARD_ID]),
                }
                for _, r in hist.iterrows()
            ]
        return {
            "charge": {
                "charge_id": charge_id,
                "customer_id": last[c.CUSTOMER_ID],
                "amount": int(last[c.AMOUNT]),
                "currency": last[c.CURRENCY],
                "card": {
                    "brand": last[c.CARD_BRAND],
                    "funding": last[c.CARD_FUNDING],
                    "country": last[c.CARD_COUNTRY],
                    "added_at": _iso(last[c.CARD_ADDED_AT]),
                    "exp_month": int(last[c.CARD_EXP_MONTH]),
                    "exp_year": int(last[c.CARD_EXP_YEAR]),
                    "issuer": _opt(last[c.ISSUER]),
                    "card_id": _opt(last[c.CARD_ID]),
                },
                "customer_timezone": _opt(last[c.CUSTOMER_TIMEZONE]),
            },
            "attempts": [
                {
                    "attempted_at": _iso(r[c.ATTEMPTED_AT]),
                    "outcome": r[c.OUTCOME],
                    "decline_code": _opt(r[c.DECLINE_CODE]),
                    "network_advice_code": _opt(r[c.NETWORK_ADVICE_CODE]),
                }
                for _, r in rows.iterrows()
            ],
            "customer_history": history,
            "now": pd.Timestamp(now).tz_localize("UTC").isoformat(),
        }

    def decide(self, batch: DecisionBatch) -> PolicyDecisions:
        cons = batch.constraints
        groups = batch.attempts.groupby(c.CHARGE_ID, sort=False)
        hist = batch.history
        by_customer = hist.groupby(c.CUSTOMER_ID, sort=False) if hist is not None else None
        reqs = []
        for cid, now in zip(batch.charge_ids.tolist(), batch.now, strict=True):
            rows = groups.get_group(cid).sort_values(c.ATTEMPTED_AT, kind="stable")
            h = None
            customer = rows.iloc[-1][c.CUSTOMER_ID]
            if by_customer is not None and customer in by_customer.groups:
                h = by_customer.get_group(customer)
                h = h[h[c.ATTEMPTED_AT].dt.tz_localize(None).to_numpy() < now]
            req = self._request(cid, now, rows, h)
            req["constraints"] = {
                "max_retries": cons.max_retries,
                "window_hours": cons.window_hours,
                "min_gap_hours": cons.min_gap_hours,
            }
            reqs.append(req)
        out: list[dict[str, Any]] = []
        for k in range(0, len(reqs), 500):
            r = self.http.post("/v1/retry-decisions/batch", json={"requests": reqs[k : k + 500]})
            self.calls += 1
            assert r.status_code == 200, r.text[:2000]
            out += r.json()["decisions"]
        retry_at = np.array(
            [
                np.datetime64("NaT", "ns")
                if d["retry_at"] is None
                else np.datetime64(
                    pd.Timestamp(d["retry_at"]).tz_convert("UTC").tz_localize(None), "ns"
                )
                for d in out
            ],
            dtype="datetime64[ns]",
        )
        return PolicyDecisions(
            retry_at=retry_at,
            propensity=np.ones(len(out)),
            reason=np.array([d["reason"] for d in out], dtype=object),
        )


@pytest.fixture(scope="module")
def server(trained_bundle: Path) -> Iterator[tuple[str, ModelStore]]:
    store = ModelStore(location=str(trained_bundle))
    store.load()
    with BackgroundServer(create_app(Settings(model=str(trained_bundle)), store=store)) as srv:
        yield srv.url, store


def test_billing_service_plays_a_simulated_month(server: tuple[str, ModelStore]) -> None:
    from retryopt.training.simulate.config import WorldConfig
    from retryopt.training.simulate.play import play
    from retryopt.training.simulate.world import simulate_world

    url, store = server
    world = simulate_world(WorldConfig(), customers=400, months=2, seed=21)
    start = world.attempts[c.ATTEMPTED_AT].min()
    charges = world.failed_charges(start, start + pd.Timedelta(days=30))
    assert len(charges) > 5
    cons = Constraints(max_retries=4, window_hours=504)
    client = HttpBillingClient(url)
    over_http = play(client, world, charges, cons, seed=3)
    summary = over_http.summary()
    assert summary["charges"] == len(charges)
    assert 0 < summary["recovery_rate"] < 1
    assert (over_http.charges["retries"] <= 4).all()
    assert client.calls >= 1
    # The same policy in process gives the same month (the API adds transport, not behaviour).
    assert store.current is not None
    local = play(store.current.planner, world, charges, cons, seed=3)
    assert abs(local.summary()["recovery_rate"] - summary["recovery_rate"]) <= 0.05
    metrics = httpx.get(url + "/metrics").text
    assert (
        'retryopt_decisions_total{action="retry",reason="model_optimum",policy="model"}' in metrics
    )
