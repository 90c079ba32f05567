"""The retry-decision API over real HTTP (uvicorn on a loopback port, httpx clients).

Model-backed tests use a real LightGBM bundle trained once per session on a small simulated
world (``trained_bundle``); the other tests run the rule-based fallback.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.model_store import ModelStore
from retryopt.serving.settings import Settings

T0 = datetime(2026, 1, 5, 8, 12, tzinfo=UTC)


def body(
    *,
    code: str = "insufficient_funds",
    advice: str | None = None,
    brand: str = "visa",
    charge_id: str = "ch_1",
    n_attempts: int = 1,
    now: datetime | None = None,
    **charge: Any,
) -> dict[str, Any]:
    """A valid decision request (the issue's example)."""
    attempts = [
        {
            "attempted_at": (T0 + timedelta(hours=6 * i)).isoformat(),
            "outcome": "failed",
            "decline_code": code,
            "network_advice_code": advice,
        }
        for i in range(n_attempts)
    ]
    last = T0 + timedelta(hours=6 * (n_attempts - 1))
    return {
        "charge": {
            "charge_id": charge_id,
            "customer_id": "cus_1",
            "amount": 2500,
            "currency": "usd",
            "card": {
                "brand": brand,
                "funding": "debit",
                "country": "US",
                "added_at": "2025-03-02T10:00:00Z",
                "exp_month": 4,
                "exp_year": 2028,
                "issuer": "optional",
                "card_id": "card_1",
            },
            "customer_timezone": "America/New_York",
            **charge,
        },
        "attempts": attempts,
        "now": (now or last + timedelta(minutes=1)).isoformat(),
        "constraints": {"max_retries": 4, "window_hours": 504},
    }


@pytest.fixture(scope="module")
def fallback_url() -> Iterator[str]:
    with BackgroundServer(create_app(Settings(model=None))) as server:
        yield server.url


@pytest.fixture(scope="module")
def model_server(trained_bundle: Path) -> Iterator[tuple[str, ModelStore]]:
    store = ModelStore(location=str(trained_bundle))
    store.load()
    with BackgroundServer(create_app(Settings(model=str(trained_bundle)), store=store)) as server:
        yield server.url, store


def post(url: str, path: str, payload: Any, **kw: Any) -> httpx.Response:
    return httpx.post(url + path, json=payload, timeout=60, **kw)


# --- operations --------------------------------------------------------------------------------


def test_health_ready_and_model_in_fallback(fallback_url: str) -> None:
    assert httpx.get(fallback_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(fallback_url + "/readyz")
    assert ready.status_code == 503 and ready.json()["policy"] == "fallback"
    info = httpx.get(fallback_url + "/v1/model").json()
    assert info["loaded"] is False and info["policy"] == "fallback"


def test_fallback_answers_every_request(fallback_url: str) -> None:
    r = post(fallback_url, "/v1/retry-decisions", body())
    assert r.status_code == 200, r.text
    d = r.json()
    assert set(d) == {
        "charge_id",
        "action",
        "retry_at",
        "success_probability",
        "reason",
        "action_required",
        "alternatives",
        "explanation",
        "model_version",
        "policy",
        "expected_value",
        "attempt_cost",
        "value_currency",
        "decision_id",
        "propensity",
        "exploration",
        "arm",
    }
    assert d["arm"] == "champion"  # no challenger configured
    assert d["decision_id"] is None  # no store configured: nothing logged
    assert d["propensity"] == 1.0 and d["exploration"] == "none"
    assert d["policy"] == "fallback" and d["action"] == "retry"
    assert d["reason"] == "fallback_schedule" and d["model_version"] is None
    assert datetime.fromisoformat(d["retry_at"]) == T0.replace(minute=0) + timedelta(hours=25)


def test_now_defaults_to_the_server_clock(fallback_url: str) -> None:
    b = body()
    recent = datetime.now(UTC) - timedelta(hours=1)
    b["attempts"][0]["attempted_at"] = recent.isoformat()
    del b["now"]
    d = post(fallback_url, "/v1/retry-decisions", b).json()
    assert datetime.fromisoformat(d["retry_at"]) > datetime.now(UTC)


# --- every rule over HTTP ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "advice", "brand", "reason", "action"),
    [
        ("lost_card", None, "visa", "hard_decline", "update_payment_method"),
        ("stolen_card", None, "visa", "hard_decline", "update_payment_method"),
        ("pickup_card", None, "visa", "hard_decline", "update_payment_method"),
        ("fraudulent", None, "visa", "hard_decline", "update_payment_method"),
        ("07", None, "visa", "hard_decline", "update_payment_method"),
        ("do_not_honor", "03", "mastercard", "network_do_not_retry", "update_payment_method"),
        ("do_not_honor", "21", "mastercard", "network_do_not_retry", "contact_customer"),
        ("incorrect_number", None, "visa", "never_retry_code", "update_payment_method"),
        ("expired_card", None, "visa", "update_payment_method", "update_payment_method"),
        (
            "authentication_required",
            None,
            "visa",
            "customer_authentication",
            "customer_authentication",
        ),
    ],
)
def test_rules_stop_over_http(
    fallback_url: str, code: str, advice: str | None, brand: str, reason: str, action: str
) -> None:
    d = post(
        fallback_url, "/v1/retry-decisions", body(code=code, advice=advice, brand=brand)
    ).json()
    assert (d["action"], d["reason"], d["action_required"]) == ("stop", reason, action)
    assert d["retry_at"] is None and d["explanation"]


def test_card_change_reopens_never_retry_code(fallback_url: str) -> None:
    b = body(code="incorrect_number")
    b["attempts"][0]["card"] = {**b["charge"]["card"], "card_id": "card_old"}
    d = post(fallback_url, "/v1/retry-decisions", b).json()
    assert d["action"] == "retry"


def test_mastercard_advice_and_budget_and_window(fallback_url: str) -> None:
    d = post(
        fallback_url,
        "/v1/retry-decisions",
        body(code="do_not_honor", advice="30", brand="mastercard"),
    ).json()
    assert datetime.fromisoformat(d["retry_at"]) >= T0 + timedelta(days=10)
    spent = post(fallback_url, "/v1/retry-decisions", body(n_attempts=5)).json()
    assert spent["reason"] == "budget_exhausted"
    late = post(fallback_url, "/v1/retry-decisions", body(now=T0 + timedelta(days=22))).json()
    assert late["reason"] == "window_exhausted"


def test_unknown_decline_code_is_fine(fallback_url: str) -> None:
    r = post(fallback_url, "/v1/retry-decisions", body(code="brand_new_issuer_code_77"))
    assert r.status_code == 200 and r.json()["action"] == "retry"


# --- bad input ---------------------------------------------------------------------------------


def _bad(mutate: Any) -> dict[str, Any]:
    b = body(n_attempts=2)
    mutate(b)
    return b


BAD_CASES: list[tuple[str, Any, str]] = [
    (
        "zone-less attempt",
        lambda b: b["attempts"][0].update(attempted_at="2026-01-05T08:12:00"),
        "attempts[0].attempted_at",
    ),
    ("zone-less now", lambda b: b.update(now="2026-01-06T08:12:00"), "now"),
    (
        "zone-less card added_at",
        lambda b: b["charge"]["card"].update(added_at="2025-03-02T10:00:00"),
        "charge.card.added_at",
    ),
    ("now before last attempt", lambda b: b.update(now=T0.isoformat()), "now"),
    (
        "attempts out of order",
        lambda b: b["attempts"].reverse(),
        "attempts[1].attempted_at",
    ),
    (
        "succeeded then more",
        lambda b: b["attempts"][0].update(outcome="succeeded", decline_code=None),
        "attempts[0].outcome",
    ),
    ("amount zero", lambda b: b["charge"].update(amount=0), "charge.amount"),
    ("amount negative", lambda b: b["charge"].update(amount=-5), "charge.amount"),
    ("missing charge", lambda b: b.pop("charge"), "charge"),
    ("no attempts", lambda b: b.update(attempts=[]), "attempts"),
    ("bad outcome", lambda b: b["attempts"][0].update(outcome="maybe"), "attempts[0].outcome"),
    (
        "failed without code",
        lambda b: b["attempts"][1].update(decline_code=None),
        "attempts[1].decline_code",
    ),
    (
        "bad zone",
        lambda b: b["charge"].update(customer_timezone="Mars/Olympus"),
        "charge.customer_timezone",
    ),
    ("bad exp month", lambda b: b["charge"]["card"].update(exp_month=13), "charge.card.exp_month"),
    (
        "bad quiet hours",
        lambda b: b["constraints"].update(quiet_hours=[22, 25]),
        "constraints.quiet_hours",
    ),
    (
        "negative budget",
        lambda b: b["constraints"].update(max_retries=-1),
        "constraints.max_retries",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "field"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_names_the_field(fallback_url: str, case: str, mutate: Any, field: str) -> None:
    r = post(fallback_url, "/v1/retry-decisions", _bad(mutate))
    assert r.status_code == 422, r.text
    fields = [d["field"] for d in r.json()["detail"]]
    assert any(f == field or f.startswith((field + ".", field + "[")) for f in fields), fields


def test_too_many_attempts_and_history_rows(fallback_url: str) -> None:
    many = body()
    many["attempts"] = many["attempts"] * 1001
    r = post(fallback_url, "/v1/retry-decisions", many)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "attempts"
    hist = body()
    row = {"charge_id": "ch_0", "attempted_at": "2025-12-01T00:00:00Z", "outcome": "succeeded"}
    hist["customer_history"] = [row] * 100_001
    r = post(fallback_url, "/v1/retry-decisions", hist)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "customer_history"
    ok = body()
    ok["customer_history"] = [row] * 1000
    assert post(fallback_url, "/v1/retry-decisions", ok).status_code == 200


def test_malformed_json_and_oversized_body() -> None:
    with BackgroundServer(create_app(Settings(max_body_bytes=4096))) as server:
        r = httpx.post(
            server.url + "/v1/retry-decisions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422
        big = body()
        big["customer_history"] = [
            {"charge_id": f"ch_{i}", "attempted_at": "2025-12-01T00:00:00Z", "outcome": "succeeded"}
            for i in range(200)
        ]
        r = post(server.url, "/v1/retry-decisions", big)
        assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("charge", "card", "number"), "4242 4242 4242 4242"),
        (("charge", "pan"), 4111111111111111),
        (("charge", "card", "card_id"), "5555-5555-5555-4444"),
    ],
)
def test_card_numbers_are_rejected_and_never_logged(
    fallback_url: str, caplog: pytest.LogCaptureFixture, where: tuple[str, ...], value: Any
) -> None:
    b = body()
    target = b
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    digits = str(value).replace(" ", "").replace("-", "")
    with caplog.at_level(logging.DEBUG):
        r = post(fallback_url, "/v1/retry-decisions", b)
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == ".".join(where)
    assert r.json()["detail"][0]["type"] == "pan_rejected"
    assert digits not in r.text and str(value) not in r.text
    assert digits not in caplog.text and str(value) not in caplog.text


def test_non_luhn_digit_strings_are_accepted(fallback_url: str) -> None:
    b = body()
    b["charge"]["card"]["card_id"] = "4242424242424241"  # fails the Luhn check
    assert post(fallback_url, "/v1/retry-decisions", b).status_code == 200


def test_validation_errors_do_not_echo_input(fallback_url: str) -> None:
    b = body()
    b["charge"]["customer_id"] = {"secret": "s3cr3t-value"}
    r = post(fallback_url, "/v1/retry-decisions", b)
    assert r.status_code == 422 and "s3cr3t-value" not in r.text


# --- batch, keys, metrics ----------------------------------------------------------------------


def test_batch_keeps_order_and_mixes_constraints(fallback_url: str) -> None:
    reqs = [
        body(charge_id=f"ch_{i}", code="lost_card" if i % 3 == 0 else "do_not_honor")
        for i in range(30)
    ]
    reqs[5]["constraints"] = {"max_retries": 0}
    r = post(fallback_url, "/v1/retry-decisions/batch", {"requests": reqs})
    assert r.status_code == 200, r.text
    out = r.json()["decisions"]
    assert [d["charge_id"] for d in out] == [f"ch_{i}" for i in range(30)]
    assert out[0]["reason"] == "hard_decline" and out[1]["action"] == "retry"
    assert out[5]["reason"] == "budget_exhausted"
    dup = post(fallback_url, "/v1/retry-decisions/batch", {"requests": [reqs[1], reqs[1]]})
    assert dup.status_code == 422
    assert dup.json()["detail"][0]["field"] == "requests[1].charge.charge_id"
    bad = [body(charge_id="a"), _bad(lambda b: b["charge"].update(charge_id="b", amount=0))]
    r = post(fallback_url, "/v1/retry-decisions/batch", {"requests": bad})
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "requests[1].charge.amount"


def test_api_keys() -> None:
    settings = Settings(api_keys=("k1", "k2"), admin_token=SecretStr("adm"))
    with BackgroundServer(create_app(settings)) as server:
        assert post(server.url, "/v1/retry-decisions", body()).status_code == 401
        wrong = post(
            server.url, "/v1/retry-decisions", body(), headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = post(server.url, "/v1/retry-decisions", body(), headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 200
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert httpx.get(server.url + "/v1/model").status_code == 401
        user_reload = post(server.url, "/admin/reload", {}, headers={"Authorization": "Bearer k1"})
        assert user_reload.status_code == 401
        admin = post(server.url, "/admin/reload", {}, headers={"Authorization": "Bearer adm"})
        assert admin.status_code == 409  # authorised, but no model is configured


def test_api_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRYOPT_API_KEYS", "a, b")
    monkeypatch.setenv("RETRYOPT_QUIET_HOURS", "22,7")
    monkeypatch.setenv("RETRYOPT_MAX_RETRIES", "6")
    s = Settings()
    assert s.api_keys == ("a", "b")
    cons = s.default_constraints()
    assert cons.quiet_hours == (22, 7) and cons.max_retries == 6


def test_metrics_count_requests_and_decisions(fallback_url: str) -> None:
    post(fallback_url, "/v1/retry-decisions", body(code="lost_card"))
    post(fallback_url, "/v1/retry-decisions", body())
    text = httpx.get(fallback_url + "/metrics").text
    assert (
        'retryopt_http_requests_total{route="/v1/retry-decisions",method="POST",status="200"}'
        in text
    )
    assert 'retryopt_decisions_total{action="stop",reason="hard_decline",policy="fallback"}' in text
    assert (
        'retryopt_http_request_duration_seconds_bucket{route="/v1/retry-decisions",le="+Inf"}'
        in text
    )
    assert "retryopt_model_loaded" in text


# --- the real model ----------------------------------------------------------------------------


def test_model_decision(model_server: tuple[str, ModelStore]) -> None:
    url, store = model_server
    assert httpx.get(url + "/readyz").status_code == 200
    d = post(url, "/v1/retry-decisions", body()).json()
    assert d["policy"] == "model" and d["model_version"] == store.current.version  # type: ignore[union-attr]
    assert d["action"] == "retry" and 0 <= d["success_probability"] <= 1
    assert len(d["alternatives"]) == 3
    assert all(0 <= a["success_probability"] <= 1 for a in d["alternatives"])
    assert "America/New_York" in d["explanation"] and "retries left" in d["explanation"]
    first = datetime.fromisoformat(d["retry_at"])
    assert T0 + timedelta(hours=1) <= first <= T0 + timedelta(hours=504)
    info = httpx.get(url + "/v1/model").json()
    assert info["loaded"] and info["feature_spec"]["numeric"] and info["metrics"]
    stop = post(url, "/v1/retry-decisions", body(code="stolen_card")).json()
    assert stop["reason"] == "hard_decline" and stop["policy"] == "model"


def test_quiet_hours_and_advice_with_the_model(model_server: tuple[str, ModelStore]) -> None:
    url, _ = model_server
    b = body(code="do_not_honor", advice="27", brand="mastercard")
    b["constraints"]["quiet_hours"] = [20, 9]
    d = post(url, "/v1/retry-decisions", b).json()
    at = datetime.fromisoformat(d["retry_at"])
    assert at >= T0 + timedelta(hours=96)
    from zoneinfo import ZoneInfo

    assert 9 <= at.astimezone(ZoneInfo("America/New_York")).hour < 20


def test_reload_refuses_a_broken_bundle(
    model_server: tuple[str, ModelStore], tmp_path: Path
) -> None:
    url, store = model_server
    before = store.current
    assert before is not None
    broken = tmp_path / "broken"
    shutil.copytree(before.location, broken)
    model_file = next(p for p in broken.iterdir() if p.suffix == ".txt")
    model_file.write_text(model_file.read_text()[:-200])
    r = post(url, "/admin/reload", {"model": str(broken)})
    assert r.status_code == 409 and r.json()["detail"][0]["field"] == "model"
    assert store.current is before
    assert post(url, "/v1/retry-decisions", body()).json()["policy"] == "model"
    missing = post(url, "/admin/reload", {"model": str(tmp_path / "nope")})
    assert missing.status_code == 409 and store.current is before


def test_reload_under_load_loses_no_request(
    model_server: tuple[str, ModelStore], tmp_path: Path
) -> None:
    url, store = model_server
    assert store.current is not None
    # Reloads load only bundles under the models root (the started model's folder).
    copy = Path(store.current.location).parent / f"copy-{tmp_path.name}"
    shutil.copytree(store.current.location, copy)
    statuses: list[int] = []
    policies: set[str] = set()
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = 0
            while not stop.is_set() or i < 5:
                r = http.post("/v1/retry-decisions", json=body(charge_id=f"ch_{k}_{i}"))
                statuses.append(r.status_code)
                policies.add(r.json().get("policy", "?"))
                i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    reloads = []
    for target in (copy, store.current.location, copy):
        reloads.append(post(url, "/admin/reload", {"model": str(target)}).status_code)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert reloads == [200, 200, 200]
    assert statuses and set(statuses) == {200}
    assert policies == {"model"}
    assert store.current.location == str(copy)
    text = httpx.get(url + "/metrics").text
    assert 'retryopt_model_reloads_total{outcome="ok"}' in text


def test_batch_with_the_model(model_server: tuple[str, ModelStore]) -> None:
    url, _ = model_server
    # Distinct customers: a batch pools the attempts of one customer's charges (each charge
    # then sees the customer's other charges as history), so only charges of different
    # customers are guaranteed their single-request answers.
    reqs = [
        body(charge_id=f"b_{i}", customer_id=f"cus_b{i}", n_attempts=1 + i % 3) for i in range(40)
    ]
    r = post(url, "/v1/retry-decisions/batch", {"requests": reqs})
    assert r.status_code == 200
    out = r.json()["decisions"]
    assert len(out) == 40 and {d["policy"] for d in out} == {"model"}
    singles = [post(url, "/v1/retry-decisions", reqs[i]).json() for i in (0, 1, 2)]
    for i, s in enumerate(singles):
        assert s == out[i]


def test_concurrent_batches_queue_on_the_batch_thread(
    model_server: tuple[str, ModelStore],
) -> None:
    """Batches sent at once are decided one at a time per worker, each exactly as alone."""
    from concurrent.futures import ThreadPoolExecutor

    url, _ = model_server
    batches = [
        [body(charge_id=f"cb_{k}_{i}", customer_id=f"cus_cb{k}_{i}") for i in range(12)]
        for k in range(4)
    ]
    alone = [post(url, "/v1/retry-decisions/batch", {"requests": b}).json() for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(
            pool.map(
                lambda b: post(url, "/v1/retry-decisions/batch", {"requests": b}).json(), batches
            )
        )
    assert together == alone
    assert all(len(r["decisions"]) == 12 for r in together)


# --- dynamic micro-batching of the single-decision route -----------------------------------


def _varied_bodies(n: int) -> list[dict[str, Any]]:
    """Distinct customers (so they may share a combined call), varied cases and constraints."""
    out = []
    for i in range(n):
        b = body(
            charge_id=f"mb_{i}",
            customer_id=f"cus_mb_{i % (n - 2)}",  # two customers send two charges each
            code=("insufficient_funds", "do_not_honor", "stolen_card", "expired_card")[i % 4],
            brand="mastercard" if i % 3 else "visa",
            n_attempts=1 + i % 3,
        )
        if i % 5 == 0:
            b["constraints"]["max_retries"] = 1
        out.append(b)
    return out


@pytest.fixture(scope="module")
def batching_url(model_server: tuple[str, ModelStore]) -> Iterator[str]:
    """A second server on the same model that waits up to 50 ms to coalesce requests."""
    _, store = model_server
    settings = Settings(model=store.location, microbatch_max_wait_ms=50, microbatch_max_size=8)
    with BackgroundServer(create_app(settings, store=store)) as server:
        yield server.url


def _concurrently(url: str, payloads: list[dict[str, Any]]) -> list[httpx.Response]:
    results: list[httpx.Response | None] = [None] * len(payloads)
    start = threading.Barrier(len(payloads))

    def send(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            start.wait()
            results[i] = http.post("/v1/retry-decisions", json=payloads[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def test_concurrent_requests_get_the_answers_they_get_alone(batching_url: str) -> None:
    payloads = _varied_bodies(12)
    alone = [post(batching_url, "/v1/retry-decisions", p) for p in payloads]
    assert {r.status_code for r in alone} == {200}
    together = _concurrently(batching_url, payloads)
    assert [r.status_code for r in together] == [200] * len(payloads)
    assert [r.json() for r in together] == [r.json() for r in alone]
    assert {r.json()["action"] for r in alone} == {"retry", "stop"}
    text = httpx.get(batching_url + "/metrics").text
    count = int(text.split("retryopt_microbatch_size_count ")[1].split()[0])
    total = int(text.split("retryopt_microbatch_size_sum ")[1].split()[0])
    assert total >= 2 * len(payloads) and count >= len(payloads)  # every decision went through


def test_a_bad_request_among_concurrent_good_ones(batching_url: str) -> None:
    payloads = _varied_bodies(6)
    bad = body(charge_id="mb_bad", customer_id="cus_bad")
    bad["attempts"][0]["attempted_at"] = "2026-01-05T08:12:00"  # no zone
    alone = [post(batching_url, "/v1/retry-decisions", p).json() for p in payloads]
    out = _concurrently(batching_url, [*payloads[:3], bad, *payloads[3:]])
    assert [r.status_code for r in out] == [200, 200, 200, 422, 200, 200, 200]
    assert out[3].json()["detail"][0]["field"] == "attempts[0].attempted_at"
    assert [r.json() for i, r in enumerate(out) if i != 3] == alone


def test_objective_guardrail_and_not_worth_over_http(model_server: tuple[str, ModelStore]) -> None:
    """The objective's numbers come back; a tiny charge stops with them; the ladder is a floor."""
    url, _ = model_server
    d = post(url, "/v1/retry-decisions", body()).json()
    assert d["action"] == "retry" and d["value_currency"] == "usd"
    assert d["attempt_cost"] == pytest.approx(0.12) and d["expected_value"] > 0
    tiny = post(url, "/v1/retry-decisions", body(amount=1)).json()  # one cent
    assert tiny["action"] == "stop" and tiny["reason"] == "not_worth_an_attempt"
    assert tiny["attempt_cost"] == pytest.approx(0.12) and tiny["expected_value"] < 0.12
    assert "0.1200 USD" in tiny["explanation"]
    b = body()
    b["constraints"]["cost_per_attempt"] = 0.0
    assert post(url, "/v1/retry-decisions", b).json()["action"] == "retry"
    b = body()
    b["constraints"]["guardrail_hours"] = [2, 120]
    floored = post(url, "/v1/retry-decisions", b).json()
    assert floored["action"] == "retry"
    assert datetime.fromisoformat(floored["retry_at"]) <= T0 + timedelta(hours=2)
    b = body(currency="eur")
    b["constraints"].update(reporting_currency="EUR", fx_rates={"eur": 0.9})
    eur = post(url, "/v1/retry-decisions", b).json()
    assert eur["value_currency"] == "eur" and eur["action"] == "retry"


def test_a_currency_without_a_rate_is_decided_in_its_own_units(
    model_server: tuple[str, ModelStore],
) -> None:
    # ISO 4217 has 180 currencies; the reference rates cover a few dozen. A valid currency is
    # never refused: without a rate the value is in the charge's currency and no (unconvertible)
    # attempt cost is charged; with the merchant's rate it is priced as usual.
    url, _ = model_server
    b = body(currency="afn")
    own = post(url, "/v1/retry-decisions", b)
    assert own.status_code == 200, own.text
    assert own.json()["value_currency"] == "afn" and own.json()["attempt_cost"] == 0.0
    b["constraints"]["fx_rates"] = {"afn": 70.0}
    priced = post(url, "/v1/retry-decisions", b).json()
    assert priced["value_currency"] == "usd" and priced["attempt_cost"] > 0


@pytest.mark.parametrize(
    ("constraints", "charge", "field"),
    [
        ({"guardrail_hours": [72, 24]}, {}, "constraints.guardrail_hours"),
        ({"guardrail_hours": [-1]}, {}, "constraints.guardrail_hours"),
        ({"fx_rates": {"eur": -1}}, {}, "constraints.fx_rates"),
        ({"fx_rates": {"usd": 2.0}}, {}, "constraints.fx_rates"),
        ({"reporting_currency": "xyz"}, {}, "constraints"),
        ({"daily_cancel_hazard": 1.5}, {}, "constraints.daily_cancel_hazard"),
        ({}, {"currency": "xyz"}, "charge.currency"),
    ],
)
def test_bad_objective_input_names_the_field(
    fallback_url: str, constraints: dict[str, Any], charge: dict[str, Any], field: str
) -> None:
    b = body(**charge)
    b["constraints"].update(constraints)
    r = post(fallback_url, "/v1/retry-decisions", b)
    assert r.status_code == 422, r.text
    assert any(e["field"].startswith(field) for e in r.json()["detail"]), r.json()
