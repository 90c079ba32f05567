"""Hostile transport over real HTTP: streamed body limits, authentication before the body,
admin credentials, reload confinement, /readyz details, settings that refuse to start."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from test_api import body, post

from retryopt.serving.app import BackgroundServer, create_app, is_admin
from retryopt.serving.model_store import REFUSED_MESSAGE, ModelStore, confine_model_path
from retryopt.serving.schemas import MAX_BATCH_ITEMS
from retryopt.serving.settings import BATCH_ITEM_BYTES, Settings, load_settings

MIB = 1024 * 1024


def _read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of one HTTP/1.1 response (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, json.loads(rest[:length])


def send_chunked(
    url: str, path: str, *, total_bytes: int, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], int]:
    """POST a chunked body of up to ``total_bytes`` over a raw socket, stopping as soon as the
    server answers (or closes); returns the status, the JSON answer and the bytes sent."""
    host, port = url.removeprefix("http://").split(":")
    piece = b"[" + b" " * (MIB - 2) + b","  # JSON-ish filler, 1 MiB per chunk
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        head += "Transfer-Encoding: chunked\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        sock.sendall(head.encode() + b"\r\n")
        sent = 0
        sock.setblocking(False)
        while sent < total_bytes:
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server has answered: stop sending
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sock.setblocking(True)
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sock.setblocking(False)
            except OSError:  # the server closed the connection after answering
                break
            sent += len(piece)
        sock.setblocking(True)
        status, answer = _read_response(sock)
    return status, answer, sent


@pytest.fixture(scope="module")
def small_limits() -> Iterator[str]:
    settings = Settings(model=None, max_body_bytes=2 * MIB, max_batch_body_bytes=3 * MIB)
    with BackgroundServer(create_app(settings)) as server:
        yield server.url


@pytest.fixture(scope="module")
def keyed() -> Iterator[str]:
    settings = Settings(model=None, api_keys=("k1", "k2"), admin_token=SecretStr("adm-token"))
    with BackgroundServer(create_app(settings)) as server:
        yield server.url


# --- body limits on the bytes streamed ---------------------------------------------------------


def test_chunked_body_over_the_limit_is_refused_while_streaming(small_limits: str) -> None:
    status, answer, sent = send_chunked(small_limits, "/v1/retry-decisions", total_bytes=70 * MIB)
    assert status == 413
    issue = answer["detail"][0]
    assert issue["field"] == "body" and issue["type"] == "too_large"
    assert str(2 * MIB) in issue["message"] and "RETRYOPT_MAX_BODY_BYTES" in issue["message"]
    assert sent < 70 * MIB  # the server answered before the client finished the body
    # The worker stays healthy and keeps answering normal requests.
    assert httpx.get(small_limits + "/healthz").status_code == 200
    assert post(small_limits, "/v1/retry-decisions", body()).status_code == 200


def test_content_length_over_the_limit_is_refused_before_reading(small_limits: str) -> None:
    r = httpx.post(
        small_limits + "/v1/retry-decisions",
        content=b" " * (2 * MIB + 1),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "RETRYOPT_MAX_BODY_BYTES" in r.json()["detail"][0]["message"]


def test_batch_route_has_its_own_byte_limit(small_limits: str) -> None:
    status, answer, sent = send_chunked(
        small_limits, "/v1/retry-decisions/batch", total_bytes=50 * MIB
    )
    assert status == 413 and sent < 50 * MIB
    message = answer["detail"][0]["message"]
    assert str(3 * MIB) in message and "RETRYOPT_MAX_BATCH_BODY_BYTES" in message
    # Under the byte limit, the 1,000-item limit still answers 422 naming the field.
    small = {"requests": [body(charge_id=f"ch_{i}") for i in range(MAX_BATCH_ITEMS + 1)]}
    r = post(small_limits, "/v1/retry-decisions/batch", small)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "requests"
    assert httpx.get(small_limits + "/healthz").status_code == 200


def test_a_batch_of_many_items_under_the_byte_limit_is_refused_before_validation() -> None:
    # 29,000 items (16 MB, under the default batch byte limit): the item count is checked
    # before any item is validated (this took 6 s and +220 MB of worker memory before).
    many = {"requests": [body(charge_id="ch_x")] * 29_000}
    assert len(json.dumps(many)) < Settings().max_batch_body_bytes
    with BackgroundServer(create_app(Settings())) as server:
        r = post(server.url, "/v1/retry-decisions/batch", many)
        issue = r.json()["detail"][0]
        assert r.status_code == 422 and issue["field"] == "requests"
        assert issue["type"] == "too_long" and str(MAX_BATCH_ITEMS) in issue["message"]


def test_default_batch_byte_limit_is_sized_to_the_item_limit() -> None:
    settings = Settings()
    assert settings.max_batch_body_bytes == settings.max_batch * BATCH_ITEM_BYTES
    assert settings.max_batch_body_bytes < settings.max_body_bytes
    # A realistic full batch fits: each item of the API tests' example is far under 16 KiB.
    assert len(json.dumps(body(n_attempts=20))) < BATCH_ITEM_BYTES


# --- authentication before the body -----------------------------------------------------------


def test_unauthenticated_chunked_body_gets_401_without_being_read(keyed: str) -> None:
    status, answer, sent = send_chunked(keyed, "/v1/retry-decisions", total_bytes=150 * MIB)
    assert status == 401 and answer["detail"][0]["field"] == "headers.authorization"
    assert sent < 150 * MIB
    status, _, sent = send_chunked(
        keyed,
        "/v1/retry-decisions/batch",
        total_bytes=150 * MIB,
        headers={"Authorization": "Bearer k1x"},  # a known key plus one character
    )
    assert status == 401 and sent < 150 * MIB
    ok = post(keyed, "/v1/retry-decisions", body(), headers={"Authorization": "Bearer k2"})
    assert ok.status_code == 200


@pytest.mark.parametrize("token", ["k", "k1", "K1", "k1k2", "k2k", "adm-token"])
def test_only_exact_keys_pass(keyed: str, token: str) -> None:
    r = post(keyed, "/v1/retry-decisions", body(), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == (200 if token == "k1" else 401)
    assert httpx.get(keyed + "/v1/model", headers={"Authorization": "Basic k1"}).status_code == 401


def test_metrics_need_a_key_when_keys_are_configured(keyed: str) -> None:
    assert httpx.get(keyed + "/metrics").status_code == 401
    ok = httpx.get(keyed + "/metrics", headers={"Authorization": "Bearer k1"})
    assert ok.status_code == 200 and "retryopt_http_requests_total" in ok.text
    assert httpx.get(keyed + "/healthz").status_code == 200  # probes stay open


def test_admin_routes_need_the_admin_token(keyed: str) -> None:
    for headers in ({}, {"Authorization": "Bearer k1"}, {"Authorization": "Bearer adm-toke"}):
        r = post(keyed, "/admin/reload", {}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    status, _, sent = send_chunked(keyed, "/admin/reload", total_bytes=150 * MIB)
    assert status == 401 and sent < 150 * MIB
    admin = post(keyed, "/admin/reload", {}, headers={"Authorization": "Bearer adm-token"})
    assert admin.status_code == 409  # authorised; no model is configured
    assert admin.json()["detail"][0]["message"] == REFUSED_MESSAGE


def test_without_admin_token_admin_routes_answer_loopback_only() -> None:
    settings = Settings()

    def scope(host: str) -> dict[str, Any]:
        return {"type": "http", "client": (host, 5000), "headers": []}

    assert is_admin(scope("127.0.0.1"), settings) and is_admin(scope("::1"), settings)
    assert not is_admin(scope("10.1.2.3"), settings)
    assert not is_admin(scope("192.168.0.7"), settings)
    assert not is_admin({"type": "http", "headers": []}, settings)  # unknown client
    token = Settings(admin_token=SecretStr("t0k"))
    with_bearer = {**scope("10.1.2.3"), "headers": [(b"authorization", b"Bearer t0k")]}
    assert is_admin(with_bearer, token) and not is_admin(scope("127.0.0.1"), token)


def _non_loopback_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent (UDP connect)
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_admin_reload_refuses_a_non_loopback_client_over_http() -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback interface on this machine")
    with BackgroundServer(create_app(Settings()), host=address) as server:
        r = post(server.url, "/admin/reload", {})
        assert r.status_code == 403 and "RETRYOPT_ADMIN_TOKEN" in r.json()["detail"][0]["message"]
        assert post(server.url, "/v1/retry-decisions", body()).status_code == 200


# --- settings that refuse to start ------------------------------------------------------------


@pytest.mark.parametrize("value", [",", "", " ", "a,,b", " , key", "key one", "k1,\tk2 x"])
def test_malformed_api_keys_refuse_to_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RETRYOPT_API_KEYS", value)
    with pytest.raises(ValueError, match="RETRYOPT_API_KEYS") as info:
        load_settings()
    for key in ("key", "k1", "k2", "one"):
        assert key not in str(info.value).replace("keys", "").replace("RETRYOPT_API_KEYS", "")


@pytest.mark.parametrize("value", ["", " ", "tok en"])
def test_malformed_admin_token_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RETRYOPT_ADMIN_TOKEN", value)
    with pytest.raises(ValueError, match="RETRYOPT_ADMIN_TOKEN") as info:
        load_settings()
    assert "tok en" not in str(info.value)


def test_serve_refuses_malformed_keys_without_printing_them() -> None:
    env = {"RETRYOPT_API_KEYS": "s3cret-key, ", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "retryopt", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        check=False,
        env={**env, "PYTHONPATH": ":".join(sys.path)},
        timeout=120,
    )
    assert done.returncode == 2
    assert "RETRYOPT_API_KEYS" in done.stderr and "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_serve_refuses_an_unknown_log_level() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "retryopt", "serve", "--log-level", "loud", "--port", "1"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
        timeout=120,
    )
    assert done.returncode == 2 and "--log-level" in done.stderr
    assert "Traceback" not in done.stderr


# --- reload confinement and /readyz details ---------------------------------------------------


def test_confine_model_path(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "b1").mkdir(parents=True)
    (root / "file.txt").write_text("x")
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    assert confine_model_path("b1", root) == str(root / "b1")
    assert confine_model_path(str(root / "b1"), root) == str(root / "b1")
    for bad in ("file.txt", "missing", "../outside", "link", str(tmp_path), ".", "b1\x00", ""):
        assert confine_model_path(bad, root) is None, bad
    assert confine_model_path("b1", None) is None


def test_reload_refusals_are_one_message_without_paths(
    trained_bundle: Path, tmp_path: Path
) -> None:
    root = trained_bundle.parent
    broken = root / f"broken-{tmp_path.name}"
    shutil.copytree(trained_bundle, broken)
    model_file = next(p for p in broken.iterdir() if p.suffix == ".txt")
    model_file.write_text(model_file.read_text()[:-200])
    (root / f"file-{tmp_path.name}").write_text("not a bundle")
    (root / f"empty-{tmp_path.name}").mkdir()
    store = ModelStore(location=str(trained_bundle))
    store.load()
    with BackgroundServer(create_app(Settings(model=str(trained_bundle)), store=store)) as server:
        answers = set()
        for target in (
            broken.name,
            f"file-{tmp_path.name}",
            f"empty-{tmp_path.name}",
            "missing",
            "../" + root.parent.name,
            "/etc",
            "/etc/passwd",
            str(tmp_path),
        ):
            r = post(server.url, "/admin/reload", {"model": target})
            assert r.status_code == 409, target
            assert target not in r.text and str(root) not in r.text
            answers.add(r.text)
        assert len(answers) == 1  # files, folders, missing paths and broken bundles look alike
        r = post(server.url, "/admin/reload", {"model": trained_bundle.name})
        assert r.status_code == 200 and store.current is not None


def test_readyz_shows_load_errors_to_admins_only(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bundle"
    settings = Settings(model=str(missing), admin_token=SecretStr("adm"))
    with BackgroundServer(create_app(settings)) as server:
        anonymous = httpx.get(server.url + "/readyz")
        assert anonymous.status_code == 503 and "error" not in anonymous.json()
        assert str(tmp_path) not in anonymous.text
        admin = httpx.get(server.url + "/readyz", headers={"Authorization": "Bearer adm"})
        assert admin.status_code == 503 and admin.json()["error"]
