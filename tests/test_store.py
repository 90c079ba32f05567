"""The store, run the same way against a SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from retryopt.serving.store import (
    DecisionRecord,
    OutcomeRecord,
    StoreError,
    open_store,
    redact_url,
    to_us,
)
from retryopt.serving.store.base import LOOKUP_CHUNK
from retryopt.serving.store.migrations import load_migrations, split_statements

T0 = to_us(datetime(2026, 3, 1, 12, tzinfo=UTC))
HOUR = 3_600_000_000


def _decision(
    i: int, *, charge: str = "ch_1", key: str | None = None, state: str = "s"
) -> DecisionRecord:
    response = {"decision_id": f"d{i}", "charge_id": charge, "action": "retry"}
    return DecisionRecord(
        decision_id=f"d{i}",
        charge_id=charge,
        customer_id="cus_1",
        decided_at=T0 + i * HOUR,
        logged_at=T0 + i * HOUR,
        state_hash=state,
        idempotency_key=key,
        request={"charge": {"charge_id": charge}},
        charge={"charge_id": charge, "customer_id": "cus_1", "amount": 500, "currency": "usd"},
        action="retry",
        retry_at=T0 + (i + 24) * HOUR,
        success_probability=0.3,
        alternatives=[{"retry_at": "2026-03-03T12:00:00Z", "success_probability": 0.2}],
        policy="model",
        model_version="v1",
        exploration="none",
        propensity=1.0,
        response=response,
    )


def _outcome(charge_id: str, at: int, **kw: Any) -> OutcomeRecord:
    return OutcomeRecord(
        charge_id=charge_id,
        attempted_at=at,
        customer_id=kw.get("customer_id"),
        outcome=kw.get("outcome", "failed"),
        decision_id=kw.get("decision_id"),
        report={"charge_id": charge_id, "outcome": kw.get("outcome", "failed")},
        charge=kw.get("charge"),
        received_at=at,
    )


def test_migrations_are_versioned_and_recorded(store_url: str) -> None:
    store = open_store(store_url, migrate=False)
    assert store.schema_version() == 0
    latest = len(load_migrations(store.backend))
    assert store.migrate() == latest
    assert store.migrate() == latest  # idempotent
    assert store.schema_version() == latest
    store.close()


def test_version_2_adds_the_arm_and_keeps_older_decisions_as_champion(store_url: str) -> None:
    store = open_store(store_url, migrate=False)
    version_1 = store.migrations()[0]
    with store.transaction(write=True) as cur:  # a database of the first release
        store._run(
            cur,
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_at BIGINT NOT NULL)",
        )
        for statement in version_1.statements:
            store._run(cur, statement)
        store._run(cur, "INSERT INTO schema_version VALUES (1, 'initial', 0)")
        store._run(
            cur,
            "INSERT INTO decisions (decision_id, charge_id, customer_id, decided_at, logged_at, "
            "state_hash, request, action, alternatives, policy, exploration, propensity, "
            "response) VALUES ('old', 'ch_0', 'cus_0', 1, 1, 's', '{}', 'stop', '[]', "
            "'model', 'none', 1.0, '{}')",
        )
    assert store.migrate() == len(load_migrations(store.backend)) >= 2
    store.record_decisions([DecisionRecord(**{**_decision(1).__dict__, "arm": "challenger"})])
    arms = {d.decision_id: d.arm for d in store.logged_decisions()}
    assert arms == {"old": "champion", "d1": "challenger"}
    store.close()


def test_decisions_logged_and_found_by_key_and_state(store_url: str) -> None:
    store = open_store(store_url)
    out = store.record_decisions([_decision(1, key="k1", state="a"), _decision(2, charge="ch_2")])
    assert [o["decision_id"] for o in out] == ["d1", "d2"]
    assert store.find_by_key("k1") == out[0]
    assert store.find_by_key("nope") is None
    found = store.find_decisions(
        [("k1", "ch_9", "x"), (None, "ch_1", "a"), (None, "ch_1", "zzz"), ("nope", "ch_2", "s")]
    )
    assert found == [out[0], out[0], None, out[1]]  # by key, by state, neither, state after key
    # a twin (same key, or same charge state) is not written; the stored answer comes back
    twin = store.record_decisions([_decision(3, key="k1", state="b"), _decision(4, state="a")])
    assert [o["decision_id"] for o in twin] == ["d1", "d1"]
    assert store.count("decisions") == 2
    store.close()


def test_lookups_beyond_one_query_keep_their_order(store_url: str) -> None:
    store = open_store(store_url)
    n = 2 * LOOKUP_CHUNK + 7
    store.record_decisions([_decision(i, charge=f"ch_{i}") for i in range(0, n, 3)])
    found = store.find_decisions([(None, f"ch_{i}", "s") for i in range(n)])
    assert [f is not None and f["decision_id"] for f in found] == [
        i % 3 == 0 and f"d{i}" for i in range(n)
    ]
    store.close()


def test_a_single_decision_is_logged_with_its_charge_and_twins_are_not(store_url: str) -> None:
    store = open_store(store_url)  # one record: one statement on PostgreSQL
    assert store.record_decisions([_decision(1, key="k1")])[0]["decision_id"] == "d1"
    charge, _, _ = store.charge_attempts("ch_1", until=T0, history_limit=0)
    assert charge is not None and charge["charge_id"] == "ch_1"
    assert store.record_decisions([_decision(2, key="k1")])[0]["decision_id"] == "d1"
    assert store.record_decisions([_decision(3)])[0]["decision_id"] == "d1"  # same state
    assert (store.count("decisions"), store.count("charges")) == (1, 1)
    store.close()


def test_outcomes_idempotent_flagged_and_matched(store_url: str) -> None:
    store = open_store(store_url)
    store.record_decisions([_decision(0)])
    stored = store.record_outcomes(
        [
            _outcome("ch_1", T0 + 30 * HOUR),
            _outcome("ch_unknown", T0),
            _outcome("ch_1", T0 + 40 * HOUR, decision_id="d0", outcome="succeeded"),
        ]
    )
    assert [s.inserted for s in stored] == [True, True, True]
    assert [s.known_charge for s in stored] == [True, False, True]
    assert [s.decision_id for s in stored] == ["d0", None, "d0"]
    again = store.record_outcomes([_outcome("ch_1", T0 + 30 * HOUR)])
    assert not again[0].inserted and again[0].known_charge
    assert store.count("outcomes") == 3
    charge, own, history = store.charge_attempts("ch_1", until=T0 + 35 * HOUR, history_limit=10)
    assert charge is not None and charge["amount"] == 500
    assert [a.attempted_at for a in own] == [T0 + 30 * HOUR]
    assert history == []
    store.close()


def test_outcome_with_charge_facts_registers_the_charge(store_url: str) -> None:
    store = open_store(store_url)
    facts = {"charge_id": "ch_9", "customer_id": "cus_9", "amount": 100, "currency": "eur"}
    s = store.record_outcomes([_outcome("ch_9", T0, customer_id="cus_9", charge=facts)])
    assert s[0].known_charge
    store.record_outcomes(
        [_outcome("ch_8", T0 - HOUR, customer_id="cus_9", charge=facts | {"charge_id": "ch_8"})]
    )
    _, own, history = store.charge_attempts("ch_9", until=T0 + HOUR, history_limit=10)
    assert [a.charge_id for a in own] == ["ch_9"]
    assert [a.charge_id for a in history] == ["ch_8"]
    store.close()


def test_purge_deletes_before_the_date_only(store_url: str) -> None:
    store = open_store(store_url)
    store.record_decisions([_decision(0, state="x"), _decision(100, state="y")])
    store.record_outcomes([_outcome("ch_1", T0 + HOUR), _outcome("ch_1", T0 + 200 * HOUR)])
    counts = store.purge(T0 + 50 * HOUR)
    assert counts["decisions"] == 1 and counts["outcomes"] == 1
    assert store.count("decisions") == 1 and store.count("outcomes") == 1
    store.close()


def test_a_failed_write_leaves_nothing(store_url: str) -> None:
    store = open_store(store_url)
    bad = _decision(2, state="z")
    bad_response = DecisionRecord(**{**bad.__dict__, "action": None})  # NOT NULL violated
    with pytest.raises(StoreError):
        store.record_decisions([_decision(1, state="w"), bad_response])
    assert store.count("decisions") == 0 and store.count("charges") == 0
    store.close()


def _write_many(url: str, worker: int) -> None:
    store = open_store(url)
    for i in range(20):
        store.record_decisions([_decision(worker * 1000 + i, state=f"{worker}-{i}")])
    store.close()


def test_several_processes_write_concurrently(store_url: str) -> None:
    open_store(store_url).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(store_url, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert open_store(store_url).count("decisions") == 60


def test_unreachable_store_raises_store_error(tmp_path: Any) -> None:
    with pytest.raises(StoreError):
        open_store("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    (tmp_path / "dir").mkdir()
    with pytest.raises(StoreError):
        open_store(f"sqlite:///{tmp_path / 'dir'}")  # a folder, not a file


def test_urls_are_checked_and_passwords_hidden() -> None:
    with pytest.raises(ValueError, match="sqlite:///PATH"):
        open_store("mysql://x")
    assert redact_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


def test_split_statements_drops_comments() -> None:
    assert split_statements("-- c\nCREATE TABLE a (x INT); -- t\n\nSELECT 1;") == (
        "CREATE TABLE a (x INT)",
        "SELECT 1",
    )


def test_sqlite_url_options(tmp_path: Any) -> None:
    from retryopt.serving.store.sqlite import sqlite_path

    assert sqlite_path("sqlite:///a/b.db") == (Path("a/b.db"), "NORMAL")
    assert sqlite_path("sqlite:////abs/b.db?synchronous=full") == (Path("/abs/b.db"), "FULL")
    with pytest.raises(ValueError, match="synchronous"):
        sqlite_path("sqlite:///b.db?journal=off")
    store = open_store(f"sqlite:///{tmp_path / 's.db'}?synchronous=FULL")
    with store.transaction(write=False) as cur:
        cur.execute("PRAGMA synchronous")
        assert cur.fetchall()[0][0] == 2  # FULL
        cur.execute("PRAGMA journal_mode")
        assert cur.fetchall()[0][0] == "wal"
