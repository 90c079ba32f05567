"""The decision log and reported outcomes over real HTTP, on a SQLite file and on PostgreSQL.

The service runs the rule-based fallback (no model needed): logging, idempotency, outcomes and
filling from the store do not depend on the policy.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.log_export import retry_propensity
from retryopt.serving.settings import Settings
from retryopt.serving.store import LoggedDecision, open_store

T0 = datetime(2026, 1, 5, 8, 12, tzinfo=UTC)
CARD = {
    "brand": "visa",
    "funding": "debit",
    "country": "US",
    "added_at": "2025-03-02T10:00:00Z",
    "exp_month": 4,
    "exp_year": 2028,
    "card_id": "card_1",
}
CHARGE = {
    "charge_id": "ch_1",
    "customer_id": "cus_1",
    "amount": 2500,
    "currency": "usd",
    "card": CARD,
    "customer_timezone": "America/New_York",
}


def request(
    charge_id: str = "ch_1", *, attempts: bool = True, now: datetime | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "charge": {**CHARGE, "charge_id": charge_id},
        "now": (now or T0 + timedelta(minutes=1)).isoformat(),
    }
    if attempts:
        body["attempts"] = [
            {
                "attempted_at": T0.isoformat(),
                "outcome": "failed",
                "decline_code": "insufficient_funds",
            }
        ]
    return body


def outcome(charge_id: str = "ch_1", at: datetime = T0, **extra: Any) -> dict[str, Any]:
    return {
        "charge_id": charge_id,
        "attempted_at": at.isoformat(),
        "outcome": "failed",
        "decline_code": "insufficient_funds",
        **extra,
    }


@pytest.fixture
def served(store_url: str) -> Iterator[tuple[str, str]]:
    """(base URL, store URL) of a fallback service logging to a fresh store."""
    app = create_app(Settings(model=None, store_url=store_url, microbatch_max_size=1))
    with BackgroundServer(app) as server:
        yield server.url, store_url


def test_every_decision_is_logged_with_its_id(served: tuple[str, str]) -> None:
    url, store_url = served
    with httpx.Client(base_url=url, timeout=30) as client:
        one = client.post("/v1/retry-decisions", json=request()).json()
        batch = client.post(
            "/v1/retry-decisions/batch", json={"requests": [request("ch_2"), request("ch_3")]}
        ).json()["decisions"]
        metrics = client.get("/metrics").text
    assert len(one["decision_id"]) == 32 and one["propensity"] == 1.0
    assert one["exploration"] == "none"
    ids = {one["decision_id"], *(d["decision_id"] for d in batch)}
    assert len(ids) == 3
    store = open_store(store_url)
    assert store.count("decisions") == 3
    logged = {d.decision_id: d for d in store.logged_decisions()}
    assert set(logged) == ids
    assert logged[one["decision_id"]].action == one["action"]
    assert "retryopt_decisions_logged_total 3" in metrics
    assert "retryopt_log_write_duration_seconds_count 2" in metrics


def test_idempotency_key_and_same_state_return_the_stored_decision(
    served: tuple[str, str],
) -> None:
    url, store_url = served
    with httpx.Client(base_url=url, timeout=30) as client:
        first = client.post(
            "/v1/retry-decisions", json=request(), headers={"Idempotency-Key": "k-1"}
        ).json()
        # same key, a later `now`: the stored answer, not a new draw
        later = request(now=T0 + timedelta(hours=2))
        again = client.post(
            "/v1/retry-decisions", json=later, headers={"Idempotency-Key": "k-1"}
        ).json()
        # no key, same charge state: the stored answer too
        same = client.post("/v1/retry-decisions", json=request()).json()
        # a new state (later now, no key): a new decision
        new = client.post("/v1/retry-decisions", json=later).json()
        bad = client.post(
            "/v1/retry-decisions", json=request(), headers={"Idempotency-Key": "x" * 300}
        )
    assert again == first and same == first
    assert new["decision_id"] != first["decision_id"]
    with httpx.Client(base_url=url, timeout=30) as client:
        batch = {"requests": [request("ch_b1", now=T0 + timedelta(hours=3)), request("ch_b2")]}
        one = client.post("/v1/retry-decisions/batch", json=batch, headers={"Idempotency-Key": "b"})
        batch["requests"][0]["now"] = (T0 + timedelta(hours=5)).isoformat()
        two = client.post("/v1/retry-decisions/batch", json=batch, headers={"Idempotency-Key": "b"})
    assert one.json() == two.json()  # the key covers the batch: item i under "b#i"
    assert open_store(store_url).find_by_key("b#1") == one.json()["decisions"][1]
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "headers.idempotency-key"
    assert open_store(store_url).count("decisions") == 4


def test_outcomes_stored_idempotently_and_unknown_charges_flagged(
    served: tuple[str, str],
) -> None:
    url, store_url = served
    with httpx.Client(base_url=url, timeout=30) as client:
        decision = client.post("/v1/retry-decisions", json=request()).json()
        reports = {
            "outcomes": [
                outcome(at=T0 + timedelta(days=2), decision_id=decision["decision_id"]),
                outcome("ch_never_seen", card=CARD),
            ]
        }
        first = client.post("/v1/attempt-outcomes", json=reports).json()
        repeat = client.post("/v1/attempt-outcomes", json=reports).json()
        metrics = client.get("/metrics").text
    assert [o["stored"] for o in first["outcomes"]] == ["new", "new"]
    assert [o["known_charge"] for o in first["outcomes"]] == [True, False]
    assert first["outcomes"][0]["decision_id"] == decision["decision_id"]
    assert first["unknown_charges"] == 1
    assert [o["stored"] for o in repeat["outcomes"]] == ["repeat", "repeat"]
    assert repeat["stored"] == 0 and repeat["repeated"] == 2
    assert open_store(store_url).count("outcomes") == 2
    assert 'retryopt_outcomes_total{kind="matched"} 1' in metrics
    assert 'retryopt_outcomes_total{kind="unknown_charge"} 1' in metrics


def test_attempts_and_history_filled_from_the_store(served: tuple[str, str]) -> None:
    url, _ = served
    with httpx.Client(base_url=url, timeout=30) as client:
        # the first failure, reported with the charge's facts (the charge is new)
        first = outcome(customer_id="cus_1", amount=2500, currency="usd", card=CARD)
        earlier = outcome(
            "ch_0",
            at=T0 - timedelta(days=30),
            customer_id="cus_1",
            amount=2500,
            currency="usd",
            card=CARD,
            outcome="succeeded",
            decline_code=None,
        )
        stored = client.post("/v1/attempt-outcomes", json={"outcomes": [first, earlier]})
        assert stored.status_code == 200, stored.text
        filled = client.post("/v1/retry-decisions", json=request(attempts=False)).json()
        sent = client.post(
            "/v1/retry-decisions",
            json={
                **request(),
                "customer_history": [
                    {
                        "charge_id": "ch_0",
                        "attempted_at": (T0 - timedelta(days=30)).isoformat(),
                        "outcome": "succeeded",
                        "amount": 2500,
                        "currency": "usd",
                    }
                ],
            },
        ).json()
        missing = client.post("/v1/retry-decisions", json=request("ch_x", attempts=False))
    for key in ("action", "retry_at", "reason", "success_probability"):
        assert filled[key] == sent[key]
    assert filled["decision_id"] != sent["decision_id"]  # the filled state is logged as such
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["field"] == "attempts"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"currency": "zzz", "customer_id": "c", "amount": 5, "card": CARD},
            "outcomes[0].currency",
        ),
        ({"decline_code": None}, "outcomes[0].decline_code"),
        ({"card": {**CARD, "country": "ZZ"}}, "outcomes[0].card.country"),
        ({"attempted_at": "2026-01-05T08:12:00"}, "outcomes[0].attempted_at"),
        ({"outcome": "maybe"}, "outcomes[0].outcome"),
        ({"customer_timezone": "Mars/Base"}, "outcomes[0].customer_timezone"),
        ({"attempt_id": "4111 1111 1111 1111"}, "outcomes[0].attempt_id"),
        ({"amount": -3}, "outcomes[0].amount"),
    ],
)
def test_hostile_outcomes_are_422_naming_the_field(
    served: tuple[str, str], change: dict[str, Any], field: str
) -> None:
    url, store_url = served
    report = {**outcome(), **change}
    with httpx.Client(base_url=url, timeout=30) as client:
        resp = client.post(
            "/v1/attempt-outcomes", json={"outcomes": [outcome(at=T0 - timedelta(days=1)), report]}
        )
    fields = [d["field"] for d in resp.json()["detail"]]
    assert resp.status_code == 422, resp.text
    assert field.replace("[0]", "[1]") in fields
    assert "4111" not in resp.text
    assert open_store(store_url).count("outcomes") == 0  # nothing of the report is stored


def test_a_broken_store_answers_503_and_logs_nothing_half(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    app = create_app(Settings(model=None, store_url=f"sqlite:///{path}", microbatch_max_size=1))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        with sqlite3.connect(path) as conn:  # an operator error: the charges table is gone
            conn.execute("DROP TABLE charges")
        resp = client.post("/v1/retry-decisions", json=request())
        metrics = client.get("/metrics").text
    assert resp.status_code == 503
    assert resp.json()["detail"][0]["field"] == "store"
    assert "retryopt_store_errors_total 1" in metrics
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 0


def test_a_postgresql_server_down_answers_503_and_recovers() -> None:
    """The PostgreSQL server stops under a running service: decisions and outcome reports are
    refused with 503 (never answered unlogged), and served again once it is back."""
    from postgres_server import PostgresServer, postgres_bin_dir

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found: apt-get install postgresql")
    pg = PostgresServer(bin_dir).start()
    try:
        url = pg.create_database("retryopt_down")
        app = create_app(Settings(model=None, store_url=url, microbatch_max_size=1))
        with (
            BackgroundServer(app) as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            assert client.post("/v1/retry-decisions", json=request("ch_up")).status_code == 200
            pg._run(str(bin_dir / "pg_ctl"), "-D", str(pg.data), "-m", "immediate", "stop")
            down = client.post("/v1/retry-decisions", json=request("ch_down"))
            reported = client.post("/v1/attempt-outcomes", json={"outcomes": [outcome()]})
            metrics = client.get("/metrics").text
            pg.start_existing()
            back = client.post("/v1/retry-decisions", json=request("ch_back"))
        assert down.status_code == 503 and reported.status_code == 503
        assert down.json()["detail"][0]["type"] == "store_unavailable"
        assert "retryopt_store_errors_total 2" in metrics
        assert back.status_code == 200, back.text
        logged = {d.charge_id for d in open_store(url).logged_decisions()}
        assert logged == {"ch_up", "ch_back"}  # nothing of the refused request was written
    finally:
        pg.stop()


def test_without_a_store_outcomes_are_503_and_attempts_required() -> None:
    with (
        BackgroundServer(create_app(Settings(model=None))) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        out = client.post("/v1/attempt-outcomes", json={"outcomes": [outcome()]})
        dec = client.post("/v1/retry-decisions", json=request(attempts=False))
        ok = client.post("/v1/retry-decisions", json=request()).json()
    assert out.status_code == 503
    assert dec.status_code == 422 and dec.json()["detail"][0]["field"] == "attempts"
    assert ok["decision_id"] is None and ok["propensity"] == 1.0


def test_retry_propensity_matched_within_the_grid_hour() -> None:
    hour = 3_600_000_000
    d = LoggedDecision(
        decision_id="d",
        charge_id="c",
        decided_at=10 * hour,
        action="retry",
        retry_at=40 * hour,
        propensity=0.25,
        exploration="softmax",
    )
    assert retry_propensity(40 * hour + hour // 2, 9 * hour, [d]) == 0.25
    assert pd.isna(retry_propensity(41 * hour, 9 * hour, [d]))  # another hour: unknown
    assert pd.isna(retry_propensity(39 * hour, 9 * hour, [d]))
    assert pd.isna(retry_propensity(40 * hour, None, [d]))  # a first attempt is no retry
    assert pd.isna(retry_propensity(40 * hour, 11 * hour, [d]))  # decided before the previous
    # A client asking the moment an attempt failed: that decision is the next retry's.
    at_failure = LoggedDecision(
        decision_id="e",
        charge_id="c",
        decided_at=40 * hour,
        action="retry",
        retry_at=64 * hour,
        propensity=0.5,
        exploration="softmax",
    )
    assert retry_propensity(40 * hour, 10 * hour, [d, at_failure]) == 0.25
    assert retry_propensity(64 * hour, 40 * hour, [d, at_failure]) == 0.5


def _serve(store_url: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """A real ``retryopt serve`` process logging to ``store_url``, once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RETRYOPT_MICROBATCH_MAX_SIZE": "1"}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "retryopt.cli", "serve"),
            *("--workers", str(workers), "--port", str(port)),
            *("--store", store_url, "--log-level", "warning"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/healthz", timeout=1)
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)


def test_several_workers_log_concurrently(store_url: str) -> None:
    """Two uvicorn workers (two processes, each its own connection) log side by side."""
    from concurrent.futures import ThreadPoolExecutor

    proc, url = _serve(store_url, workers=2)

    def decide(i: int) -> str:
        with httpx.Client(base_url=url, timeout=60) as client:
            resp = client.post("/v1/retry-decisions", json=request(f"ch_{i}"))
            assert resp.status_code == 200, resp.text
            return str(resp.json()["decision_id"])

    try:
        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(decide, range(40)))
    finally:
        proc.terminate()
        proc.wait(60)
    assert len(set(ids)) == 40
    assert {d.decision_id for d in open_store(store_url).logged_decisions()} == set(ids)


def test_kill_9_loses_no_acknowledged_decision(store_url: str) -> None:
    """Acknowledged decisions survive a ``kill -9`` of the serving process."""
    proc, url = _serve(store_url, workers=1)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            ids = [
                client.post("/v1/retry-decisions", json=request(f"ch_{i}")).json()["decision_id"]
                for i in range(20)
            ]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    logged = {d.decision_id for d in open_store(store_url).logged_decisions()}
    assert set(ids) <= logged


def test_decision_ids_never_look_like_card_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A billing client echoes decision ids in its outcome reports: none may be refused."""
    import uuid

    from retryopt.features.card_numbers import contains_card_number
    from retryopt.serving import decision_log

    flagged = uuid.UUID("4539578763621486" + "a" * 16)  # a Luhn-valid 16-digit run first
    assert contains_card_number(flagged.hex)
    draws = iter([flagged, uuid.UUID(int=0xABCDEF)])
    monkeypatch.setattr(decision_log.uuid, "uuid4", lambda: next(draws))
    got = decision_log.new_decision_id()
    assert got == uuid.UUID(int=0xABCDEF).hex and not contains_card_number(got)
