"""The retry-decision HTTP API (FastAPI). Routes are thin: parse, check, decide, answer.

``create_app(settings)`` builds the app; ``create_app_from_env()`` is the uvicorn factory used by
``retryopt serve`` (settings from ``RETRYOPT_*`` environment variables).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    MutableMapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from retryopt.features.decisions import Constraints
from retryopt.serving.metrics import Metrics
from retryopt.serving.microbatch import MicroBatcher
from retryopt.serving.model_store import ModelLoadError, ModelStore
from retryopt.serving.policies import Decision, PlannerConfig
from retryopt.serving.schemas import (
    AlternativeOut,
    BatchDecisionOut,
    BatchDecisionRequest,
    DecisionOut,
    DecisionRequest,
    ErrorOut,
    FieldIssue,
    Limits,
    ModelOut,
    ReloadIn,
    RequestError,
    body_may_contain_pan,
    check_request,
    find_pan,
    to_batch,
)
from retryopt.serving.settings import Settings

log = logging.getLogger("retryopt.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong API key"},
    413: {"model": ErrorOut, "description": "body too large"},
    422: {"model": ErrorOut, "description": "malformed request (the field is named)"},
}


def _error(status: int, issues: Sequence[FieldIssue]) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={
            "detail": [{"field": i.field, "message": i.message, "type": i.type} for i in issues]
        },
    )


def _loc_to_field(loc: Sequence[int | str]) -> str:
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("function-after", "function-before", "function-wrap") or "[" in str(p):
            continue
        else:
            out += f".{p}" if out else str(p)
    return out or "body"


class MetricsMiddleware:
    """Times and counts every request; rejects bodies over the size limit before reading them."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                resp = _error(
                    413,
                    [FieldIssue("body", f"body over {self.max_body_bytes} bytes", "too_large")],
                )
                await resp(scope, receive, send)
                self._observe(scope, 413, started)
                return

        async def _send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            self._observe(scope, status["code"], started)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or (
            scope["path"] if scope["path"] in _KNOWN_PATHS else "other"
        )
        self.metrics.observe_request(
            route=path, method=scope["method"], status=status, seconds=time.perf_counter() - started
        )


_KNOWN_PATHS = frozenset(
    {
        "/v1/retry-decisions",
        "/v1/retry-decisions/batch",
        "/healthz",
        "/readyz",
        "/v1/model",
        "/metrics",
        "/admin/reload",
    }
)


try:  # orjson (optional, ``pip install orjson``) encodes the responses about 5x faster
    import orjson

    def _dumps(content: object) -> bytes:
        return orjson.dumps(content)

except ImportError:  # pragma: no cover - depends on the environment

    def _dumps(content: object) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class FastJSONResponse(JSONResponse):
    """JSON response rendered with orjson when installed (same JSON as ``JSONResponse``)."""

    def render(self, content: Any) -> bytes:
        """Encode ``content`` (plain JSON types only)."""
        return _dumps(content)


def _iso(t: Any) -> str | None:
    """``2026-01-05T13:00:00Z`` for a UTC timestamp (pydantic's rendering of aware UTC times)."""
    if t is None:
        return None
    ns = int(t.value)
    if ns % 1000 == 0 and t.tzinfo is not None:
        # Whole microseconds (always, on the hourly grid): datetime's isoformat, ~3x cheaper
        # than the pandas conversions, same text; memoised, since decisions repeat the same
        # few hundred grid hours.
        text = _ISO_TEXT.get(ns)
        if text is None:
            if len(_ISO_TEXT) >= _ISO_CACHE_MAX:
                _ISO_TEXT.clear()
            text = _ISO_TEXT[ns] = f"{(_EPOCH + timedelta(microseconds=ns // 1000)).isoformat()}Z"
        return text
    text = t.tz_convert("UTC").tz_localize(None).isoformat()
    return f"{text}Z"


_EPOCH = datetime(1970, 1, 1)
_ISO_CACHE_MAX = 1 << 16
_ISO_TEXT: dict[int, str] = {}


def decision_json(d: Decision) -> dict[str, Any]:
    """The :class:`DecisionOut` JSON object of a decision, built without pydantic.

    Equal to ``DecisionOut.model_dump(mode="json")`` of :func:`_decision_out` (tested); the
    routes return it directly to skip a second validation of the response model.
    """
    return {
        "charge_id": d.charge_id,
        "action": d.action,
        "retry_at": _iso(d.retry_at),
        "success_probability": d.success_probability,
        "reason": d.reason,
        "action_required": d.action_required,
        "alternatives": [
            {"retry_at": _iso(a.retry_at), "success_probability": a.success_probability}
            for a in d.alternatives
        ],
        "explanation": d.explanation,
        "model_version": d.model_version,
        "policy": d.policy,
    }


def _decision_out(d: Decision) -> DecisionOut:
    return DecisionOut(
        charge_id=d.charge_id,
        action=d.action,  # type: ignore[arg-type]
        retry_at=None if d.retry_at is None else d.retry_at.to_pydatetime(),
        success_probability=d.success_probability,
        reason=d.reason,
        action_required=d.action_required,
        alternatives=[
            AlternativeOut(
                retry_at=a.retry_at.to_pydatetime(), success_probability=a.success_probability
            )
            for a in d.alternatives
        ],
        explanation=d.explanation,
        model_version=d.model_version,
        policy=d.policy,  # type: ignore[arg-type]
    )


class DecisionService:
    """Checks requests and runs the policies (the part of the API that is not HTTP)."""

    def __init__(self, *, settings: Settings, store: ModelStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.defaults = settings.default_constraints()
        self.limits = Limits(
            max_attempts=settings.max_attempts,
            max_history_rows=settings.max_history_rows,
            max_batch=settings.max_batch,
        )

    def decide(
        self, requests: Sequence[DecisionRequest], *, prefixes: Sequence[str]
    ) -> list[DecisionOut]:
        """Decide every request; raise :class:`RequestError` naming the bad fields."""
        return [_decision_out(d) for d in self.decide_raw(requests, prefixes=prefixes)]

    def decide_json(
        self, requests: Sequence[DecisionRequest], *, prefixes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """:meth:`decide` as JSON objects (:func:`decision_json`), the routes' fast path."""
        return [decision_json(d) for d in self.decide_raw(requests, prefixes=prefixes)]

    def decide_raw(
        self, requests: Sequence[DecisionRequest], *, prefixes: Sequence[str]
    ) -> list[Decision]:
        """The policies' decisions for every request (checks as :meth:`decide`)."""
        return self.decide_prepared(self.prepare(requests, prefixes=prefixes))

    def prepare(
        self,
        requests: Sequence[DecisionRequest],
        *,
        prefixes: Sequence[str],
        server_now: datetime | None = None,
    ) -> list[PreparedRequest]:
        """Check every request and resolve its ``now`` and constraints.

        Raises
        ------
        RequestError
            Naming every bad field (of every request; ``prefixes`` prefix the field paths).
        """
        server_now = server_now or datetime.now(UTC)
        issues: list[FieldIssue] = []
        out: list[PreparedRequest] = []
        seen: dict[str, int] = {}
        for i, (r, prefix) in enumerate(zip(requests, prefixes, strict=True)):
            now = r.now or server_now
            issues += check_request(r, now=now, limits=self.limits, prefix=prefix)
            cid = r.charge.charge_id
            if cid in seen:
                issues.append(
                    FieldIssue(
                        f"{prefix}charge.charge_id",
                        f"charge {cid!r} appears twice (requests {seen[cid] + 1} and {i + 1})",
                        "duplicate",
                    )
                )
            seen[cid] = i
            try:
                cons = (
                    self.defaults if r.constraints is None else r.constraints.resolve(self.defaults)
                )
            except ValueError as exc:
                issues.append(FieldIssue(f"{prefix}constraints", str(exc)))
                cons = self.defaults
            out.append(PreparedRequest(request=r, now=now, constraints=cons))
        if issues:
            raise RequestError(issues)
        return out

    def decide_prepared(self, items: Sequence[PreparedRequest]) -> list[Decision]:
        """Decisions for checked requests (:meth:`prepare`) with distinct charge ids.

        Requests are grouped by constraints; the model is read once for the whole call (a
        reload never mixes models); every decision is counted in the metrics.
        """
        groups: dict[Constraints, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.constraints, []).append(i)
        out: list[Decision | None] = [None] * len(items)
        loaded = self.store.current
        for cons, idx in groups.items():
            prep = to_batch(
                [items[i].request for i in idx],
                nows=[items[i].now for i in idx],
                constraints=cons,
            )
            decisions: list[Decision]
            if loaded is None:
                decisions = self.store.fallback.decide_detailed(
                    prep.batch, current_cards=prep.current_cards
                )
            else:
                policy = loaded.greedy if self.settings.policy == "greedy" else loaded.planner
                try:
                    decisions = policy.decide_detailed(
                        prep.batch, current_cards=prep.current_cards, columns=prep.columns
                    )
                except Exception:
                    log.exception("model policy failed; answering from the fallback")
                    self.metrics.observe_model_error()
                    decisions = self.store.fallback.decide_detailed(
                        prep.batch, current_cards=prep.current_cards
                    )
            for i, d in zip(idx, decisions, strict=True):
                self.metrics.observe_decision(action=d.action, reason=d.reason, policy=d.policy)
                out[i] = d
        return [d for d in out if d is not None]


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A checked decision request with its effective ``now`` and resolved constraints."""

    request: DecisionRequest
    now: datetime
    constraints: Constraints

    def conflict_keys(self) -> list[tuple[str, str]]:
        """Keys that must not share a combined (micro-batched) call.

        A batch pools the attempts and history of its charges by customer and by charge, so
        two requests of the same customer (or naming the same charge) are decided apart: each
        gets exactly the answer it gets alone.
        """
        r = self.request
        keys = [("customer", r.charge.customer_id), ("charge", r.charge.charge_id)]
        for h in r.customer_history or ():
            keys.append(("charge", h.charge_id))
        return keys


def performance_options(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Scoring engine and planner search from ``RETRYOPT_ENGINE`` / ``RETRYOPT_PLANNER_SEARCH``.

    The service reads them as :attr:`Settings.engine` / :attr:`Settings.planner_search`; this
    helper parses an explicit mapping the same way (benchmarks, tests).

    ``RETRYOPT_ENGINE``: ``lleaves`` (default; compiled, verified at load, falls back to
    LightGBM) or ``lightgbm``. ``RETRYOPT_PLANNER_SEARCH``: ``hourly`` (default, exact) or
    ``coarse`` (coarse-to-fine, see docs/serving.md).

    Raises
    ------
    ValueError
        On any other value (naming the variable).
    """
    env = os.environ if env is None else env
    engine = env.get("RETRYOPT_ENGINE", "lleaves").strip().lower() or "lleaves"
    search = env.get("RETRYOPT_PLANNER_SEARCH", "hourly").strip().lower() or "hourly"
    if engine not in ("lightgbm", "lleaves"):
        raise ValueError(f"RETRYOPT_ENGINE must be 'lightgbm' or 'lleaves', got {engine!r}")
    if search not in ("hourly", "coarse"):
        raise ValueError(f"RETRYOPT_PLANNER_SEARCH must be 'hourly' or 'coarse', got {search!r}")
    return engine, search


def create_app(settings: Settings | None = None, *, store: ModelStore | None = None) -> FastAPI:
    """Build the API.

    Parameters
    ----------
    settings
        Service settings (default: read from the environment).
    store
        Model holder (default: one for ``settings.model``, loaded at startup; a model that fails
        to load leaves the service on the rule-based fallback).
    """
    settings = settings or Settings()
    metrics = Metrics()
    store = store or ModelStore(
        location=settings.model,
        config=PlannerConfig(
            later_attempt_decay=settings.later_attempt_decay,
            planning_gap_hours=settings.planning_gap_hours,
            search=settings.planner_search,
        ),
        model_threads=settings.model_threads,
        engine=settings.engine,
    )
    service = DecisionService(settings=settings, store=store, metrics=metrics)
    batcher: MicroBatcher[PreparedRequest, Decision] | None = None
    if settings.microbatch_max_size > 1:
        batcher = MicroBatcher(
            service.decide_prepared,
            keys=PreparedRequest.conflict_keys,
            max_batch=settings.microbatch_max_size,
            max_wait_s=settings.microbatch_max_wait_ms / 1000.0,
            executor=settings.microbatch_executor,
            on_batch=metrics.observe_microbatch,
        )

    # The batch route's decision thread (created on first use, closed with the lifespan).
    batch_pools: list[ThreadPoolExecutor] = []

    def batch_pool() -> ThreadPoolExecutor:
        if not batch_pools:
            batch_pools.append(
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="retryopt-batch")
            )
        return batch_pools[0]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if store.current is None and store.location:
            try:
                await run_in_threadpool(store.load)
                metrics.observe_reload(outcome="ok")
            except ModelLoadError:
                metrics.observe_reload(outcome="refused")
        store.install_sighup()
        yield
        if batcher is not None:
            await batcher.aclose()
        while batch_pools:
            batch_pools.pop().shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="retryopt",
        version="1",
        summary="When to retry a failed recurring card payment, if at all.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.metrics = metrics
    app.state.settings = settings
    app.add_middleware(
        MetricsMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
    )

    def _check_key(request: Request, keys: Sequence[str]) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in keys:
            raise RequestError(
                [
                    FieldIssue(
                        "headers.authorization",
                        "missing or unknown API key (Authorization: Bearer <key>)",
                        "unauthorized",
                    )
                ],
                status_code=401,
            )

    async def require_key(request: Request) -> None:
        _check_key(request, settings.api_keys)

    async def require_admin(request: Request) -> None:
        _check_key(request, settings.admin_api_keys or settings.api_keys)

    async def reject_pan(request: Request) -> None:
        raw = await request.body()
        if raw and body_may_contain_pan(raw):
            try:
                where = find_pan(json.loads(raw))
            except ValueError:
                where = "body"
            log.warning("request rejected: a card number was sent (field %s)", where)
            raise RequestError(
                [
                    FieldIssue(
                        where or "body",
                        "looks like a card number (13-19 digits passing the Luhn check); card "
                        "numbers are never accepted, send card metadata only",
                        "pan_rejected",
                    )
                ]
            )

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        resp = _error(exc.status_code, exc.issues)
        if exc.status_code == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the input back (it may hold personal data).
        issues = [
            FieldIssue(
                _loc_to_field(e.get("loc", ())), str(e.get("msg", "")), str(e.get("type", ""))
            )
            for e in exc.errors()
        ]
        return _error(422, issues)

    @app.post(
        "/v1/retry-decisions",
        response_model=DecisionOut,
        responses=_ERRORS,
        dependencies=[Depends(require_key), Depends(reject_pan)],
        tags=["decisions"],
    )
    async def retry_decision(body: DecisionRequest) -> FastJSONResponse:
        """Decide when to retry one failed charge, or to stop."""
        item = service.prepare([body], prefixes=[""])[0]  # 4xx stays per request
        if batcher is None:
            decision = service.decide_prepared([item])[0]
        else:
            # Concurrent requests are coalesced into one planner call (docs/serving.md).
            decision = await batcher.submit(item)
        return FastJSONResponse(decision_json(decision))

    @app.post(
        "/v1/retry-decisions/batch",
        response_model=BatchDecisionOut,
        responses=_ERRORS,
        dependencies=[Depends(require_key), Depends(reject_pan)],
        tags=["decisions"],
    )
    async def retry_decisions_batch(body: BatchDecisionRequest) -> FastJSONResponse:
        """Decide many failed charges in one call (answers in request order)."""
        if len(body.requests) > service.limits.max_batch:
            raise RequestError(
                [
                    FieldIssue(
                        "requests",
                        f"{len(body.requests)} requests, at most {service.limits.max_batch}",
                        "too_long",
                    )
                ]
            )
        prefixes = [f"requests[{i}]." for i in range(len(body.requests))]
        # One batch at a time per worker, in its own thread (the loop keeps parsing the next
        # request): two batches deciding in two threads of one process only trade the GIL
        # (measured: ~10 % more CPU per decision with 4 clients on 2 workers).
        decisions = await asyncio.get_running_loop().run_in_executor(
            batch_pool(), functools.partial(service.decide_json, body.requests, prefixes=prefixes)
        )
        return FastJSONResponse({"decisions": decisions})

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "no model"}})
    async def readyz() -> JSONResponse:
        """Readiness: a verified model is serving (503 while on the rule-based fallback)."""
        loaded = store.current
        if loaded is None:
            return JSONResponse(
                status_code=503,
                content={"status": "fallback", "policy": "fallback", "error": store.last_error},
            )
        return JSONResponse(content={"status": "ready", "model_version": loaded.version})

    @app.get(
        "/v1/model",
        response_model=ModelOut,
        dependencies=[Depends(require_key)],
        responses=_ERRORS,
        tags=["operations"],
    )
    async def model_info() -> ModelOut:
        """The serving model: version, training metrics, feature spec."""
        loaded = store.current
        if loaded is None:
            return ModelOut(
                loaded=False,
                policy="fallback",
                version=None,
                path=None,
                metrics={},
                feature_spec=None,
                loaded_at=None,
            )
        spec = getattr(loaded.bundle, "feature_spec", None)
        return ModelOut(
            loaded=True,
            policy=settings.policy,
            version=loaded.version,
            path=str(getattr(loaded.bundle, "path", loaded.location)),
            metrics=dict(getattr(loaded.bundle, "metrics", {}) or {}),
            feature_spec=spec.to_dict() if spec is not None else None,
            loaded_at=loaded.loaded_at,
        )

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def prometheus() -> PlainTextResponse:
        """Prometheus metrics (text format)."""
        loaded = store.current
        text = metrics.render(
            model_loaded=loaded is not None,
            model_version=None if loaded is None else loaded.version,
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post(
        "/admin/reload",
        dependencies=[Depends(require_admin)],
        responses={**_ERRORS, 409: {"model": ErrorOut, "description": "model refused"}},
        tags=["operations"],
    )
    async def reload_model(body: ReloadIn | None = None) -> JSONResponse:
        """Load a model (default: the configured location); a broken one is refused."""
        try:
            loaded = await run_in_threadpool(store.load, body.model if body else None)
        except ModelLoadError as exc:
            metrics.observe_reload(outcome="refused")
            current = store.current
            resp = _error(409, [FieldIssue("model", str(exc), "model_refused")])
            resp.headers["X-Model-Version"] = current.version if current else "fallback"
            return resp
        metrics.observe_reload(outcome="ok")
        return JSONResponse(content={"loaded": True, "model_version": loaded.version})

    return app


def create_app_from_env() -> FastAPI:
    """Uvicorn factory: settings from ``RETRYOPT_*`` environment variables."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return create_app(Settings())


class BackgroundServer:
    """Run an app with uvicorn in a background thread (tests, notebooks, benchmarks).

    Use as a context manager; :attr:`url` is the base URL once started. Signal handlers are
    not installed (uvicorn only installs them in the main thread).

    Parameters
    ----------
    app
        The ASGI app.
    host
        Interface (loopback by default).
    port
        TCP port; 0 picks a free one.
    """

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket
        import threading

        import uvicorn

        if port == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="retryopt-api", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start on {self.url}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
