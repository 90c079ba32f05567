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
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from retryopt.serving.decision_log import (
    IDEMPOTENCY_HEADER,
    DecisionLog,
    check_idempotency_key,
)
from retryopt.serving.metrics import Metrics
from retryopt.serving.microbatch import MicroBatcher
from retryopt.serving.model_store import ModelLoadError, ModelStore
from retryopt.serving.outcomes import AttemptOutcomesIn
from retryopt.serving.policies import Decision
from retryopt.serving.schemas import (
    BatchDecisionOut,
    BatchDecisionRequest,
    DecisionOut,
    DecisionRequest,
    ErrorOut,
    FieldIssue,
    ModelOut,
    ReloadIn,
    RequestError,
    body_may_contain_pan,
    find_pan,
)
from retryopt.serving.service import (
    DecisionService,
    PreparedRequest,
    decision_json,
    field_issues,
    model_store_for,
)
from retryopt.serving.settings import Settings
from retryopt.serving.store import StoreError, open_store

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
        "/v1/attempt-outcomes",
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
    store = store or model_store_for(settings)
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

    # The decision log (RETRYOPT_STORE_URL; opened and migrated now: no log, no service).
    decision_log: DecisionLog | None = None
    if settings.store_url:
        decision_log = DecisionLog(
            store=open_store(settings.store_url), service=service, metrics=metrics
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
        if decision_log is not None:
            decision_log.store.close()

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

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> JSONResponse:
        # Nothing was answered nor half written (one transaction): the client retries.
        log.error("store failure, request refused with 503: %s", exc)
        metrics.observe_store_error()
        return _error(
            503,
            [FieldIssue("store", "the decision log is unavailable; retry", "store_unavailable")],
        )

    async def _decide_logged(
        dlog: DecisionLog, requests: list[DecisionRequest], request: Request, *, batch: bool
    ) -> list[dict[str, Any]]:
        """Fill, decide and log; the answers (stored ones for idempotent repeats)."""
        key = check_idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))
        prefixes = [f"requests[{i}]." for i in range(len(requests))] if batch else [""]
        pending = await run_in_threadpool(
            functools.partial(dlog.begin, requests, prefixes=prefixes, key=key, batch=batch)
        )
        if batcher is not None and len(pending.items) == 1:
            decisions = [await batcher.submit(pending.items[0])]
        else:
            decisions = await asyncio.get_running_loop().run_in_executor(
                batch_pool(), service.decide_prepared, pending.items
            )
        return await run_in_threadpool(dlog.commit, pending, decisions)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the input back (it may hold personal data).
        return _error(422, field_issues(exc.errors()))

    @app.post(
        "/v1/retry-decisions",
        response_model=DecisionOut,
        responses=_ERRORS,
        dependencies=[Depends(require_key), Depends(reject_pan)],
        tags=["decisions"],
    )
    async def retry_decision(body: DecisionRequest, request: Request) -> FastJSONResponse:
        """Decide when to retry one failed charge, or to stop."""
        if decision_log is not None:
            return FastJSONResponse(
                (await _decide_logged(decision_log, [body], request, batch=False))[0]
            )
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
    async def retry_decisions_batch(
        body: BatchDecisionRequest, request: Request
    ) -> FastJSONResponse:
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
        if decision_log is not None:
            logged = await _decide_logged(decision_log, list(body.requests), request, batch=True)
            return FastJSONResponse({"decisions": logged})
        prefixes = [f"requests[{i}]." for i in range(len(body.requests))]
        # One batch at a time per worker, in its own thread (the loop keeps parsing the next
        # request): two batches deciding in two threads of one process only trade the GIL
        # (measured: ~10 % more CPU per decision with 4 clients on 2 workers).
        decisions = await asyncio.get_running_loop().run_in_executor(
            batch_pool(), functools.partial(service.decide_json, body.requests, prefixes=prefixes)
        )
        return FastJSONResponse({"decisions": decisions})

    @app.post(
        "/v1/attempt-outcomes",
        responses={**_ERRORS, 503: {"model": ErrorOut, "description": "no store"}},
        dependencies=[Depends(require_key), Depends(reject_pan)],
        tags=["outcomes"],
    )
    async def attempt_outcomes(body: AttemptOutcomesIn) -> JSONResponse:
        """Report attempts the billing service made (idempotent per charge and time)."""
        if decision_log is None:
            raise RequestError(
                [FieldIssue("store", "no store configured (RETRYOPT_STORE_URL)", "no_store")],
                status_code=503,
            )
        return JSONResponse(await run_in_threadpool(decision_log.record_outcomes, body))

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
