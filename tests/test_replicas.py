"""Serving as N stateless replicas: two ``retryopt serve`` processes share one PostgreSQL store.

Each replica is a real ``retryopt serve`` subprocess on its own loopback port (the rule-based
fallback: consistency comes from the store, not from the policy). Whatever replica a billing
service reaches, a charge in a given state has one decision (one ``decision_id``), outcomes
reported to one replica fill requests sent to the other, and concurrent twins sent to both at
once are logged once (the store's unique index decides the race).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from retryopt.serving.store import open_store

T0 = datetime(2026, 1, 5, 8, 12, tzinfo=UTC)
CHARGE = {
    "customer_id": "cus_1",
    "amount": 2500,
    "currency": "usd",
    "card": {
        "brand": "visa",
        "funding": "debit",
        "country": "US",
        "added_at": "2025-03-02T10:00:00Z",
        "exp_month": 4,
        "exp_year": 2028,
        "card_id": "card_1",
    },
    "customer_timezone": "America/New_York",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Replica:
    """One ``retryopt serve`` process on a loopback port, logging to ``store_url``."""

    def __init__(self, store_url: str, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("wb")
        env = {**os.environ, "RETRYOPT_MODEL": "", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "retryopt",
                "serve",
                "--workers",
                "1",
                "--port",
                str(self.port),
                "--store",
                store_url,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._log.flush()
                raise RuntimeError(f"replica did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="module")
def replicas(
    postgres_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Replica, Replica, str]]:
    store_url = str(postgres_server.create_database("retryopt_replicas"))
    logs = tmp_path_factory.mktemp("replicas")
    first = Replica(store_url, logs / "a.log")
    try:
        second = Replica(store_url, logs / "b.log")
    except Exception:
        first.close()
        raise
    yield first, second, store_url
    first.close()
    second.close()


def _request(charge_id: str, *, attempts: bool = True, minutes: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {
        "charge": {**CHARGE, "charge_id": charge_id},
        "now": (T0 + timedelta(minutes=minutes)).isoformat(),
    }
    if attempts:
        body["attempts"] = [
            {"attempted_at": T0.isoformat(), "outcome": "failed", "decline_code": "do_not_honor"}
        ]
    return body


def _decide(replica: Replica, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    response = httpx.post(replica.url + "/v1/retry-decisions", json=body, timeout=60, **kw)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_either_replica_gives_the_charge_one_decision(
    replicas: tuple[Replica, Replica, str],
) -> None:
    a, b, store_url = replicas
    first = _decide(a, _request("ch_same_state"))
    second = _decide(b, _request("ch_same_state"))
    assert first["decision_id"] and second == first
    keyed = _decide(b, _request("ch_keyed"), headers={"Idempotency-Key": "k-replicas"})
    # The same key at the other replica, even with a later `now`: the stored decision.
    again = _decide(a, _request("ch_keyed", minutes=90), headers={"Idempotency-Key": "k-replicas"})
    assert again == keyed
    assert open_store(store_url).count("decisions") == 2


def test_outcomes_reported_to_one_replica_fill_requests_to_the_other(
    replicas: tuple[Replica, Replica, str],
) -> None:
    a, b, _ = replicas
    reported = httpx.post(
        a.url + "/v1/attempt-outcomes",
        json={
            "outcomes": [
                {
                    "charge_id": "ch_reported",
                    "attempted_at": T0.isoformat(),
                    "outcome": "failed",
                    "decline_code": "do_not_honor",
                    **{k: v for k, v in CHARGE.items()},
                }
            ]
        },
        timeout=60,
    )
    assert reported.status_code == 200, reported.text
    filled_at_b = _decide(b, _request("ch_reported", attempts=False))
    filled_at_a = _decide(a, _request("ch_reported", attempts=False))
    assert filled_at_a == filled_at_b
    sent = _decide(a, _request("ch_reported"))
    for key in ("action", "retry_at", "reason"):
        assert filled_at_b[key] == sent[key]


def test_concurrent_twins_at_both_replicas_are_logged_once(
    replicas: tuple[Replica, Replica, str],
) -> None:
    a, b, store_url = replicas
    charges = [f"ch_race_{i}" for i in range(20)]
    jobs = [(r, c) for c in charges for r in (a, b)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda job: _decide(job[0], _request(job[1])), jobs))
    by_charge: dict[str, set[str]] = {}
    for (_, charge), answer in zip(jobs, answers, strict=True):
        by_charge.setdefault(charge, set()).add(answer["decision_id"])
    assert all(len(ids) == 1 for ids in by_charge.values()), by_charge
    store = open_store(store_url)
    logged = [d for d in store.logged_decisions() if d.charge_id.startswith("ch_race_")]
    assert sorted(d.charge_id for d in logged) == sorted(charges)
