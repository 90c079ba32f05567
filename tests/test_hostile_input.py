"""Hostile input (issue 13, items 1-3 and 10): no 500, no card number anywhere, no forged log
line, no echoed value, and the data contract, the importer and the API agree on what is valid.

API tests run against a real ``retryopt serve`` process (one uvicorn worker, rule-based
fallback) whose stderr, i.e. the server log, is captured to a file and searched afterwards;
model-backed cases use the real LightGBM bundle of ``test_api``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from test_api import body

from retryopt.features.card_numbers import (
    REDACTED,
    contains_card_number,
    find_card_number,
)
from retryopt.features.localtime import TIMESTAMP_MAX, TIMESTAMP_MIN
from retryopt.features.stripe_import import parse_charge_object, parse_created_text
from retryopt.features.validation import ContractError, validate_attempts
from retryopt.serving.app import BackgroundServer, create_app
from retryopt.serving.logs import EscapingFormatter, escape_control
from retryopt.serving.model_store import ModelStore
from retryopt.serving.settings import Settings

PAN = "4242424242424242"  # a test card number (passes Luhn)
PAN_SPACED = "4242 4242 4242 4242"
FULL_WIDTH = "".join(chr(0xFF10 + int(d)) for d in PAN)
ZERO_WIDTH = "\u200b".join(PAN[i : i + 4] for i in range(0, 16, 4))
NBSP = "\u00a0".join(PAN[i : i + 4] for i in range(0, 16, 4))
ARABIC_INDIC = "".join(chr(0x0660 + int(d)) for d in PAN)
MIXED = "4242\u20134242\u2060\ufeff4242\u00ad4242"  # en dash, word joiner, BOM, soft hyphen
ENCODINGS = [
    PAN,
    PAN_SPACED,
    FULL_WIDTH,
    ZERO_WIDTH,
    NBSP,
    ARABIC_INDIC,
    MIXED,
    "4242-4242-4242-4242",
]
# How a card number could appear in a response or log: digits with or without separators.
SHAPES = (PAN, PAN_SPACED, "4242-4242-4242-4242", FULL_WIDTH, "4242", "\\u0034\\u0032")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """A ``retryopt serve`` process with its log (stderr) in a file."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "server.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "RETRYOPT_MODEL": "", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retryopt", "serve", "--workers", "1", "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("served"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def model_url(trained_bundle: Path) -> Iterator[str]:
    store = ModelStore(location=str(trained_bundle))
    store.load()
    with BackgroundServer(create_app(Settings(model=str(trained_bundle)), store=store)) as s:
        yield s.url


def post(url: str, payload: Any, path: str = "/v1/retry-decisions", **kw: Any) -> httpx.Response:
    return httpx.post(url + path, json=payload, timeout=60, **kw)


def post_raw(url: str, raw: bytes, path: str = "/v1/retry-decisions") -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(url + path, content=raw, headers=headers, timeout=60)


def fields(r: httpx.Response) -> list[str]:
    return [d["field"] for d in r.json()["detail"]]


def assert_no_card_number(text: str) -> None:
    for shape in SHAPES[:4]:
        assert shape not in text
    assert not contains_card_number(text)


# --- 1. timestamps: one valid range, 422 naming the field, never 500 ---------------------------

OUT_OF_RANGE = [
    "9999-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "2300-06-01T00:00:00Z",
    "2262-04-01T00:00:00Z",
    "2099-01-01T00:00:00Z",  # the exclusive upper bound
    "1969-12-31T23:59:59Z",
    "9999-12-31T23:59:59-01:00",  # past year 9999 in UTC
]


def _with(b: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    """``b`` with the value at a dotted path (``attempts.0.attempted_at``) replaced."""
    target: Any = b
    keys = where.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target[k]
    target[keys[-1]] = value
    return b


@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("attempts.0.attempted_at", "attempts[0].attempted_at"),
        ("charge.card.added_at", "charge.card.added_at"),
        ("now", "now"),
    ],
)
def test_out_of_range_timestamps_are_422_naming_the_field(
    served: Served, value: str, where: str, field: str
) -> None:
    r = post(served.url, _with(body(), where, value))
    assert r.status_code == 422, r.text
    assert field in fields(r)
    detail = next(d for d in r.json()["detail"] if d["field"] == field)
    assert detail["message"].endswith(
        "timestamp out of range: valid from 1970-01-01T00:00:00Z up to (excluding) "
        "2099-01-01T00:00:00Z"
    )  # the documented range, never the value sent


def test_the_issues_reproductions(served: Served, model_url: str) -> None:
    """Year 9999 attempt and now; only added_at in year 1; now in 2300; attempt on 2262-04-01."""
    cases = [
        {"attempts.0.attempted_at": "9999-01-01T00:00:00Z", "now": "9999-01-01T01:00:00Z"},
        {"charge.card.added_at": "0001-01-01T00:00:00Z"},
        {"now": "2300-01-01T00:00:00Z"},
        {"attempts.0.attempted_at": "2262-04-01T00:00:00Z", "now": "2262-04-01T01:00:00Z"},
    ]
    for url in (served.url, model_url):
        for case in cases:
            b = body()
            for where, value in case.items():
                _with(b, where, value)
            r = post(url, b)
            assert r.status_code == 422, r.text
            assert set(fields(r)) <= {k.replace(".0.", "[0].") for k in case}
            assert set(fields(r)) >= {"attempts[0].attempted_at"} & {
                k.replace(".0.", "[0].") for k in case
            }


def test_the_edges_of_the_range_are_decided(served: Served, model_url: str) -> None:
    """Valid at both ends: the 21-day grid and the zone tables stay inside their ranges."""
    late = body(now=datetime(2098, 12, 31, 23, 59, tzinfo=UTC))
    late["attempts"][0]["attempted_at"] = "2098-12-31T23:00:00Z"
    late["charge"]["card"]["added_at"] = "1970-01-01T00:00:00Z"
    late["constraints"] = {"window_hours": 24 * 120}
    for url in (served.url, model_url):
        r = post(url, late)
        assert r.status_code == 200, r.text
        early = body(now=datetime(1970, 1, 1, 0, 1, tzinfo=UTC))
        early["attempts"][0]["attempted_at"] = "1970-01-01T00:00:00Z"
        early["charge"]["card"]["added_at"] = "1970-01-01T00:00:00Z"
        r = post(url, early)
        assert r.status_code == 200, r.text


def test_one_bad_item_does_not_make_the_batch_a_500(served: Served, model_url: str) -> None:
    good = body(charge_id="ch_ok")
    bad = _with(body(charge_id="ch_bad"), "attempts.0.attempted_at", "2262-04-01T00:00:00Z")
    for url in (served.url, model_url):
        r = post(url, {"requests": [good, bad]}, "/v1/retry-decisions/batch")
        assert r.status_code == 422, r.text
        assert fields(r) == ["requests[1].attempts[0].attempted_at"]


@pytest.mark.parametrize(
    "value",
    [
        "2262-04-01T00:00:00Z",
        "9999-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:00:00Z",
    ],
)
def test_data_contract_rejects_out_of_range_timestamps(value: str) -> None:
    row = {"attempt_id": "a1", "charge_id": "c1", "customer_id": "u1",
           "attempted_at": "2024-05-01T10:00:00Z", "amount": "100", "currency": "usd",
           "outcome": "failed", "decline_code": "insufficient_funds", "card_brand": "visa",
           "card_funding": "debit", "card_country": "US", "card_added_at": value,
           "card_exp_month": "1", "card_exp_year": "2030"}  # fmt: skip
    with pytest.raises(ContractError) as info:
        validate_attempts(pd.DataFrame([row], dtype="str"))
    (issue,) = info.value.report.issues
    assert (issue.column, issue.rule, issue.rows) == (
        "card_added_at",
        "timestamp_out_of_range",
        (1,),
    )
    fine = {**row, "attempt_id": "a2", "card_added_at": "2023-01-01T00:00:00Z"}
    kept = validate_attempts(pd.DataFrame([row, fine], dtype="str"), drop_invalid=True)
    assert list(kept.clean["attempt_id"]) == ["a2"]


def test_cli_validate_reports_out_of_range_timestamps(tmp_path: Path) -> None:
    row = {"attempt_id": "a1", "charge_id": "c1", "customer_id": "u1",
           "attempted_at": "9999-01-01T10:00:00Z", "amount": "100", "currency": "usd",
           "outcome": "failed", "decline_code": "insufficient_funds", "card_brand": "visa",
           "card_funding": "debit", "card_country": "US", "card_added_at": "2023-01-01T00:00:00Z",
           "card_exp_month": "1", "card_exp_year": "2030"}  # fmt: skip
    path = tmp_path / "a.csv"
    pd.DataFrame([row]).to_csv(path, index=False)
    done = subprocess.run(
        [sys.executable, "-m", "retryopt", "validate", str(path)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path]),
        },
        timeout=300,
    )
    assert done.returncode != 0
    assert "timestamp_out_of_range" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("created", [253402300800, -1, 4102444800])  # 10000, 1969, 2100
def test_import_stripe_skips_out_of_range_created(created: int) -> None:
    from retryopt.features.importing import RecordError

    fixture = Path(__file__).parent / "fixtures" / "stripe" / "charges_list.json"
    charge = json.loads(fixture.read_text())["data"][4]
    assert parse_charge_object(charge).created  # the fixture as it is imports
    with pytest.raises(RecordError) as info:
        parse_charge_object({**charge, "created": created})
    assert "range" in str(info.value)


@pytest.mark.parametrize("text", ["9999-01-01 00:00", "0001-01-01T00:00:00Z", "2262-04-01 00:00"])
def test_import_stripe_csv_dates_out_of_range(text: str) -> None:
    from retryopt.features.importing import RecordError

    with pytest.raises(RecordError):
        parse_created_text(text)
    assert TIMESTAMP_MIN <= parse_created_text("2024-05-01 10:00") < TIMESTAMP_MAX


@pytest.mark.parametrize(
    "now", [datetime(2300, 1, 1, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC), datetime(2026, 1, 6)]
)
def test_python_api_now_out_of_range(now: datetime) -> None:
    import retryopt
    from retryopt.serving.schemas import RequestError

    b = body()
    del b["now"]
    with pytest.raises(RequestError) as info:
        retryopt.decide([b], now=now)
    assert [i.field for i in info.value.issues] == ["now"]


@pytest.mark.parametrize(
    "raw", [b"[" * 100_000 + b"]" * 100_000, b'{"charge":' * 50_000 + b"1" + b"}" * 50_000]
)
@pytest.mark.parametrize("path", ["/v1/retry-decisions", "/admin/reload"])
def test_deeply_nested_bodies_are_a_4xx_in_the_error_shape(
    served: Served, raw: bytes, path: str
) -> None:
    r = post_raw(served.url, raw, path)
    assert 400 <= r.status_code < 500
    assert fields(r) == ["body"]


# --- 2. card numbers: decoded keys and values, every encoding, every route ---------------------


@pytest.mark.parametrize("pan", ENCODINGS)
def test_detector_sees_every_encoding(pan: str) -> None:
    assert contains_card_number(pan)
    assert contains_card_number(f"note: card {pan} thanks")
    assert find_card_number({"metadata": {pan: "x"}}) == f"metadata.{REDACTED}"
    assert find_card_number({"a": [1, {"b": pan}]}) == "a[1].b"


@pytest.mark.parametrize(
    "text",
    ["2026-01-05T13:00:00.123456Z", "4242424242424241", "1234 5678", "x" * 100, "ch_" + "7" * 30],
)
def test_detector_leaves_other_text_alone(text: str) -> None:
    assert not contains_card_number(text)


def _json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(ch):04x}" for ch in text)


@pytest.mark.parametrize("pan", ENCODINGS)
def test_card_numbers_in_values_are_rejected(served: Served, pan: str) -> None:
    r = post(served.url, body(charge_id=pan))
    assert r.status_code == 422 and fields(r) == ["charge.charge_id"], r.text
    assert r.json()["detail"][0]["type"] == "pan_rejected"
    assert_no_card_number(r.text)


@pytest.mark.parametrize("pan", [PAN, PAN_SPACED, FULL_WIDTH, ZERO_WIDTH])
def test_json_escaped_card_numbers_are_rejected(served: Served, pan: str) -> None:
    raw = json.dumps(body(charge_id="PLACEHOLDER")).replace("PLACEHOLDER", _json_escaped(pan))
    r = post_raw(served.url, raw.encode())
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "pan_rejected", r.text
    assert_no_card_number(r.text)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
def test_card_numbers_in_other_body_encodings_are_rejected(served: Served, encoding: str) -> None:
    text = json.dumps(body(charge_id=PAN))
    r = post_raw(served.url, text.encode(encoding))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] == "pan_rejected"
    assert_no_card_number(r.text)
    # The same body without the number is decided (the service accepts these encodings).
    ok = post_raw(served.url, json.dumps(body()).encode(encoding))
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("pan", ENCODINGS)
def test_card_numbers_as_keys_are_redacted(served: Served, pan: str) -> None:
    b = body()
    b["charge"]["metadata"] = {pan: "x"}
    r = post(served.url, b)
    assert r.status_code == 422
    assert fields(r) == [f"charge.metadata.{REDACTED}"]
    assert_no_card_number(r.text)


def test_card_numbers_in_the_batch_route(served: Served) -> None:
    batch = {"requests": [body(), body(charge_id=ZERO_WIDTH)]}
    r = post(served.url, batch, "/v1/retry-decisions/batch")
    assert r.status_code == 422 and fields(r) == ["requests[1].charge.charge_id"]
    assert_no_card_number(r.text)


@pytest.mark.parametrize("payload", [{"model": PAN}, {"model": FULL_WIDTH}, {PAN: "x"}])
def test_card_numbers_in_the_reload_body(served: Served, payload: dict[str, str]) -> None:
    r = post(served.url, payload, "/admin/reload")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] == "pan_rejected"
    assert_no_card_number(r.text)


def test_card_numbers_in_non_json_bodies(served: Served) -> None:
    r = post_raw(served.url, f"card={PAN}".encode())
    assert r.status_code == 422
    assert_no_card_number(r.text)


# --- 3. log injection --------------------------------------------------------------------------


def test_escape_control() -> None:
    assert escape_control("a\nb\r\x1b[31m\u2028c") == "a\\nb\\r\\x1b[31m\\u2028c"
    assert escape_control("plain text") == "plain text"
    import logging

    record = logging.LogRecord("x", logging.WARNING, "f", 1, "field %s", ("a\nFAKE",), None)
    assert "\n" not in EscapingFormatter("%(message)s").format(record)


def test_a_newline_in_a_key_cannot_forge_a_log_line(served: Served) -> None:
    fake = "2026-01-05 13:00:00,000 ERROR retryopt.serving FORGED admin login"
    b = body()
    b["charge"]["metadata"] = {f"x\n{fake}": {PAN: 1}}
    r = post(served.url, b)
    assert r.status_code == 422
    time.sleep(0.5)  # the log line is written before the answer; let the file catch up
    log = served.log()
    assert "request rejected: a card number was sent" in log
    assert not any(line.startswith(fake) for line in log.splitlines())
    assert "x\\n2026-01-05" in log


# --- 10. smaller: ISO lists, blank zone, no echoed values, strict numbers ----------------------


@pytest.mark.parametrize(
    ("where", "value", "field"),
    [
        ("charge.currency", "ZZZ", "charge.currency"),
        ("charge.currency", "Usd", "charge.currency"),
        ("charge.card.country", "ZZ", "charge.card.country"),
        ("charge.amount", True, "charge.amount"),
        ("charge.amount", "2500", "charge.amount"),
        ("charge.amount", 2500.0, "charge.amount"),
        ("charge.card.exp_month", False, "charge.card.exp_month"),
        ("charge.card.exp_year", 1975, "charge.card.exp_year"),  # the contract's 1980-2100
        ("charge.card.exp_year", 2150, "charge.card.exp_year"),
        ("attempts.0.attempted_at", 1767600000, "attempts[0].attempted_at"),
        ("attempts.0.attempted_at", "1767600000", "attempts[0].attempted_at"),
        ("charge.customer_timezone", "Mars/Olympus_Mons", "charge.customer_timezone"),
    ],
)
def test_values_the_contract_refuses_are_422(
    served: Served, where: str, value: Any, field: str
) -> None:
    r = post(served.url, _with(body(), where, value))
    assert r.status_code == 422, r.text
    assert fields(r) == [field]
    if isinstance(value, str):
        assert value not in r.text


def test_constraints_are_strict_numbers(served: Served) -> None:
    b = body()
    b["constraints"] = {"max_retries": True, "window_hours": True, "quiet_hours": [True, 7]}
    r = post(served.url, b)
    assert r.status_code == 422
    assert set(fields(r)) == {
        "constraints.max_retries",
        "constraints.window_hours",
        "constraints.quiet_hours[0]",
    }


@pytest.mark.parametrize("zone", ["", "   "])
def test_blank_customer_timezone_is_absent(served: Served, zone: str) -> None:
    a = post(served.url, _with(body(), "charge.customer_timezone", zone))
    b = body()
    del b["charge"]["customer_timezone"]
    b["charge"]["card"]["country"] = "US"
    c = post(served.url, b)
    assert a.status_code == 200 and a.json() == c.json()


def test_messages_never_echo_input_values(served: Served) -> None:
    secret = "Secret/Zone_x9"
    b = _with(body(), "charge.customer_timezone", secret)
    r = post(served.url, b)
    assert r.status_code == 422 and secret not in r.text
    two = post(
        served.url,
        {"requests": [body(charge_id="ch_dupe_x9"), body(charge_id="ch_dupe_x9")]},
        "/v1/retry-decisions/batch",
    )
    assert two.status_code == 422 and "ch_dupe_x9" not in two.text
    order = body(n_attempts=2)
    order["attempts"][1]["attempted_at"] = "2026-01-01T07:07:07Z"
    r = post(served.url, order)
    assert r.status_code == 422 and "07:07:07" not in r.text and "2026-01-0" not in r.text
    early = body(now=datetime(2026, 1, 1, 3, 3, 3, tzinfo=UTC))
    r = post(served.url, early)
    assert r.status_code == 422 and "03:03:03" not in r.text and "08:12" not in r.text


def test_decisions_are_idempotent(served: Served, model_url: str) -> None:
    """The same request gives the same decision: a client may safely retry it."""
    for url in (served.url, model_url):
        answers = {post(url, body()).text for _ in range(3)}
        assert len(answers) == 1


def test_the_served_log_holds_no_card_number(served: Served) -> None:
    """Every encoding, as a value and as a key, on every route: none reaches the log (nor
    does anything else this module sent: the server is shared)."""
    for pan in ENCODINGS:
        b = body(charge_id=pan)
        b["charge"]["metadata"] = {pan: pan}
        for path in ("/v1/retry-decisions", "/admin/reload"):
            assert post(served.url, b, path).status_code == 422
        batch = {"requests": [b]}
        assert post(served.url, batch, "/v1/retry-decisions/batch").status_code == 422
    time.sleep(0.5)
    log = served.log()
    assert "request rejected" in log
    assert_no_card_number(log)
