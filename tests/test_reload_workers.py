"""Reloads reach every worker of a real ``retryopt serve --workers 2`` (and survive restarts).

The service runs as a subprocess (the supervisor, two uvicorn workers on SO_REUSEPORT
sockets, LightGBM scoring); new connections are spread over the workers by the kernel, so
"40 new connections all see version B2" checks both workers (the chance that 40 connections
all reach one of two workers is 2^-39).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_api import body

from retryopt.model.bundle import load_bundle, write_bundle
from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.arms import CHALLENGER, CHAMPION, assign_arm
from retryopt.serving.settings import Settings
from retryopt.serving.store import open_store
from retryopt.serving.workers import SharedState, WorkerStatus

NEW_CONNECTIONS = 40
START_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(condition: object, *, what: str, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait (bounded) until ``condition()`` is true; fails naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def two_bundles(
    trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """B1 (the trained bundle) and B2 (same model, another version) in one models folder."""
    root = tmp_path_factory.mktemp("models")
    b1 = load_bundle(trained_bundle)
    paths = []
    for version in ("b1-reload-test", "b2-reload-test"):
        paths.append(
            write_bundle(
                root,
                model_text=b1.booster.model_to_string(),
                calibrator=b1.calibrator,
                feature_spec=b1.feature_spec,
                metrics=b1.metrics,
                data_fingerprint=b1.data_fingerprint,
                version=version,
            )
        )
    return paths[0], paths[1]


class Service:
    """A ``retryopt serve --workers 2`` subprocess and its shared state directory."""

    def __init__(self, model: Path, state_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = SharedState(state_dir)
        env = {
            **os.environ,
            "RETRYOPT_ENGINE": "lightgbm",
            "RETRYOPT_STATE_DIR": str(state_dir),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            # No decision log unless a test asks for one: with a log, a repeated request is
            # answered with its stored decision (idempotency), whatever model serves now; and
            # the default store would be a file in the working directory.
            "RETRYOPT_STORE_URL": "off",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "retryopt",
                "serve",
                "--model",
                str(model),
                "--port",
                str(self.port),
                "--workers",
                "2",
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def serving(self) -> list[WorkerStatus]:
        """Workers that finished starting (a model loaded or refused)."""
        return [s for s in self.state.workers() if s.generation >= 0 and s.pid != self.proc.pid]

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture
def service(two_bundles: tuple[Path, Path], tmp_path: Path) -> Iterator[Service]:
    svc = Service(two_bundles[0], tmp_path / "state")
    _wait(lambda: len(svc.serving()) == 2 or svc.proc.poll() is not None, what="2 workers")
    assert svc.proc.poll() is None, svc.stop()
    yield svc
    svc.stop()


def _versions_over_new_connections(url: str, n: int = NEW_CONNECTIONS) -> set[str]:
    """The model version seen on /v1/model and in a decision, over ``n`` new connections each."""
    seen = set()
    for i in range(n):
        info = httpx.get(url + "/v1/model", timeout=60).json()
        seen.add(str(info["version"]))
        decision = httpx.post(
            url + "/v1/retry-decisions", json=body(charge_id=f"ch_v{i}"), timeout=60
        ).json()
        seen.add(str(decision["model_version"]))
    return seen


def _reload_counts(url: str, n: int = NEW_CONNECTIONS) -> set[int]:
    counts = set()
    for _ in range(n):
        text = httpx.get(url + "/metrics", timeout=60).text
        found = re.search(r'retryopt_model_reloads_total\{outcome="ok"\} (\d+)', text)
        counts.add(int(found.group(1)) if found else 0)
    return counts


def test_reload_under_load_reaches_every_worker(
    service: Service, two_bundles: tuple[Path, Path]
) -> None:
    b1, b2 = two_bundles
    assert _versions_over_new_connections(service.url) == {b1.name}
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            try:  # a new connection per request: both workers take part
                r = httpx.post(
                    service.url + "/v1/retry-decisions",
                    json=body(charge_id=f"ch_{k}_{i}"),
                    timeout=60,
                )
                if r.status_code != 200 or r.json()["policy"] != "model":
                    failures.append(f"{r.status_code} {r.text[:200]}")
                answered[0] += 1
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    _wait(lambda: answered[0] >= 10, what="the clients' first answers")
    reload = httpx.post(service.url + "/admin/reload", json={"model": b2.name}, timeout=300)
    during = answered[0]
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert reload.status_code == 200, reload.text
    assert reload.json() == {"loaded": True, "model_version": b2.name, "workers": 2}
    assert failures == [] and during >= 10
    # Every new connection now sees B2, on /v1/model and in decisions.
    assert _versions_over_new_connections(service.url) == {b2.name}
    # SIGHUP reloads the (shared) current model in every worker and is counted: each worker has
    # loaded at start, on the reload and on the SIGHUP.
    assert _reload_counts(service.url) == {2}
    service.proc.send_signal(signal.SIGHUP)
    _wait(lambda: _reload_counts(service.url, 10) == {3}, what="SIGHUP reloads", timeout_s=120)
    assert _reload_counts(service.url) == {3}
    assert _versions_over_new_connections(service.url) == {b2.name}


def test_a_restarted_worker_serves_the_reloaded_model(
    service: Service, two_bundles: tuple[Path, Path]
) -> None:
    b1, b2 = two_bundles
    reload = httpx.post(service.url + "/admin/reload", json={"model": b2.name}, timeout=300)
    assert reload.status_code == 200, reload.text
    # A client under load that retries what docs/serving.md says to retry (a connection error
    # or a 503; decision requests are safe to retry) loses nothing to a kill -9 of a worker.
    failures: list[str] = []
    retried = [0]
    answered = [0]
    stop = threading.Event()

    def client(k: int) -> None:
        i = 0
        while not stop.is_set():
            request = body(charge_id=f"ch_kill_{k}_{i}")
            for attempt in range(3):
                try:
                    r = httpx.post(service.url + "/v1/retry-decisions", json=request, timeout=60)
                except httpx.TransportError as exc:
                    error = repr(exc)
                else:
                    if r.status_code == 200:
                        answered[0] += 1
                        break
                    error = f"{r.status_code} {r.text[:200]}"
                    if r.status_code != 503:
                        failures.append(error)
                        break
                retried[0] += 1
                if attempt == 2:
                    failures.append(error)
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    _wait(lambda: answered[0] >= 10, what="the clients' first answers")
    victim = service.serving()[0].pid
    os.kill(victim, signal.SIGKILL)
    _wait(
        lambda: len(service.serving()) == 2 and victim not in {s.pid for s in service.serving()},
        what="the restarted worker",
    )
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert failures == [], failures
    restarted = [s for s in service.serving() if s.pid != victim]
    assert {s.version for s in restarted} == {b2.name}  # not RETRYOPT_MODEL (B1)
    assert _versions_over_new_connections(service.url) == {b2.name}
    # A reload back to B1 reaches the restarted worker too.
    back = httpx.post(service.url + "/admin/reload", json={"model": b1.name}, timeout=300)
    assert back.status_code == 200 and back.json()["workers"] == 2
    assert _versions_over_new_connections(service.url) == {b1.name}


def test_reload_answers_503_naming_a_lagging_worker(trained_bundle: Path, tmp_path: Path) -> None:
    state = SharedState(tmp_path / "state")
    # A live process that registered as a worker and never follows reloads (a stuck worker).
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (state.root / "workers" / f"{stuck.pid}.json").write_text(
            json.dumps({"pid": stuck.pid, "generation": 0, "version": "old", "error": False})
        )
        settings = Settings(
            model=str(trained_bundle), state_dir=str(state.root), reload_timeout_s=1.0
        )
        with BackgroundServer(create_app(settings)) as server:
            r = httpx.post(server.url + "/admin/reload", json={}, timeout=60)
            assert r.status_code == 503
            issue = r.json()["detail"][0]
            assert issue["field"] == "workers" and str(stuck.pid) in issue["message"]
            assert "RETRYOPT_RELOAD_TIMEOUT_S" in issue["message"]
            # The model was published: the stuck worker would pick it up when it recovers.
            assert state.desired() is not None and state.desired().model == str(trained_bundle)  # type: ignore[union-attr]
    finally:
        stuck.kill()
        stuck.wait()
    # A dead worker's status file no longer counts.
    assert stuck.pid not in {s.pid for s in state.workers()}


def test_a_challenger_bundle_is_promoted_in_every_worker(
    two_bundles: tuple[Path, Path], tmp_path: Path
) -> None:
    """B1 is the champion, B2 the challenger of half the customers; one POST /admin/promote
    and every worker serves B2 to everyone (checked over 40 new connections)."""
    b1, b2 = two_bundles
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    svc = Service(
        b1,
        tmp_path / "state",
        env={
            "RETRYOPT_CHALLENGER": str(b2),
            "RETRYOPT_CHALLENGER_SHARE": "0.5",
            "RETRYOPT_STORE_URL": store_url,
        },
    )
    try:
        _wait(lambda: len(svc.serving()) == 2 or svc.proc.poll() is not None, what="2 workers")
        assert svc.proc.poll() is None
        salt = Settings().ab_salt

        def decide(i: int, tag: str) -> dict[str, Any]:
            request = body(charge_id=f"ch_ab_{tag}_{i}")
            request["charge"]["customer_id"] = f"cus_ab_{i}"
            r = httpx.post(svc.url + "/v1/retry-decisions", json=request, timeout=60)
            assert r.status_code == 200, r.text
            return dict(r.json())

        before = [decide(i, "before") for i in range(NEW_CONNECTIONS)]
        expected = [assign_arm(f"cus_ab_{i}", share=0.5, salt=salt) for i in range(NEW_CONNECTIONS)]
        assert [d["arm"] for d in before] == expected and set(expected) == {CHAMPION, CHALLENGER}
        assert {(d["arm"], d["model_version"]) for d in before} == {
            (CHAMPION, b1.name),
            (CHALLENGER, b2.name),
        }
        promoted = httpx.post(svc.url + "/admin/promote", timeout=300)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json() == {"promoted": str(b2), "champion": b2.name, "workers": 2}
        after = [decide(i, "after") for i in range(NEW_CONNECTIONS)]
        assert {(d["arm"], d["model_version"]) for d in after} == {(CHAMPION, b2.name)}
        assert _versions_over_new_connections(svc.url) == {b2.name}
        # a restarted worker starts from the promotion, not from RETRYOPT_MODEL/CHALLENGER
        victim = svc.serving()[0].pid
        os.kill(victim, signal.SIGKILL)
        _wait(
            lambda: len(svc.serving()) == 2 and victim not in {s.pid for s in svc.serving()},
            what="the restarted worker",
        )
        restarted = [decide(i, "restarted") for i in range(NEW_CONNECTIONS)]
        assert {(d["arm"], d["model_version"]) for d in restarted} == {(CHAMPION, b2.name)}
    finally:
        svc.stop()
    arms = {d.charge_id: d.arm for d in open_store(store_url).logged_decisions()}
    assert [arms[f"ch_ab_before_{i}"] for i in range(NEW_CONNECTIONS)] == expected
