"""The retry-decision HTTP API (FastAPI). Routes are thin: parse, check, decide, answer.

``create_app(settings)`` builds the app; ``create_app_from_env()`` is the uvicorn factory used by
``retryopt serve`` (settings from ``RETRYOPT_*`` environment variables).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import ipaddress
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
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from retryopt.features.card_numbers import (
    body_may_hold_card_number,
    contains_card_number,
    find_card_number,
)
from retryopt.serving.arms import ArmConfig, parse_arm_spec
from retryopt.serving.decision_log import (
    IDEMPOTENCY_HEADER,
    DecisionLog,
    check_idempotency_key,
)
from retryopt.serving.logs import configure_logging
from retryopt.serving.metrics import Metrics
from retryopt.serving.microbatch import MicroBatcher
from retryopt.serving.model_store import (
    REFUSED_MESSAGE,
    ModelLoadError,
    ModelStore,
    confine_model_path,
)
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
)
from retryopt.serving.service import (
    DecisionService,
    PreparedRequest,
    decision_json,
    field_issues,
    model_store_for,
)
from retryopt.serving.settings import Settings, load_settings
from retryopt.serving.store import StoreError, open_store
from retryopt.serving.workers import SharedState, WorkerSync

log = logging.getLogger("retryopt.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or wrong API key"},
    413: {"model": ErrorOut, "description": "body over the route's byte limit (named)"},
    422: {"model": ErrorOut, "description": "malformed request (the field is named)"},
}


def _error(status: int, issues: Sequence[FieldIssue]) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={
            "detail": [{"field": i.field, "message": i.message, "type": i.type} for i in issues]
        },
    )


BATCH_PATH = "/v1/retry-decisions/batch"
# Routes behind the API keys (when keys are configured): every /v1/ route, present and future,
# and /metrics (it names the model version and traffic, as /v1/model does). Admin routes have
# their own credential.
KEY_PREFIX = "/v1/"
KEY_PATHS = frozenset({"/metrics"})
ADMIN_PREFIX = "/admin/"


class BodyTooLarge(HTTPException):
    """The body streamed past the route's byte limit (raised from ``receive``)."""

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(413)
        self.limit = limit
        self.setting = setting

    def issue(self) -> FieldIssue:
        """The error naming the limit."""
        return FieldIssue(
            "body", f"body over {self.limit} bytes (RETRYOPT_{self.setting})", "too_large"
        )


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


def _matches_any(token: bytes | None, secrets: Sequence[str]) -> bool:
    """Constant-time check of ``token`` against every secret (no early exit)."""
    if token is None:
        return False
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(token, secret.encode("utf-8"))
    return found


def _is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False


def is_admin(scope: Scope, settings: Settings) -> bool:
    """An admin caller: the admin token as Bearer, or (no token configured) a loopback client."""
    if settings.admin_token is None:
        return _is_loopback(scope)
    return _matches_any(_bearer(scope), [settings.admin_token.get_secret_value()])


class GuardMiddleware:
    """Authentication from the headers before any body byte is read, then the body limit on
    the bytes actually streamed (``Content-Length`` or chunked)."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope["path"]).rstrip("/") or "/"
        refusal = self._refusal(scope, path)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if path == BATCH_PATH:
            limit, setting = self.settings.max_batch_body_bytes, "MAX_BATCH_BODY_BYTES"
        else:
            limit, setting = self.settings.max_body_bytes, "MAX_BODY_BYTES"
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _error(413, [BodyTooLarge(limit, setting).issue()])(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        started = False

        async def _send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, _send)
        except BodyTooLarge as exc:  # raised outside the routes' exception handlers
            if started:
                raise
            await _error(413, [exc.issue()])(scope, receive, send)

    def _refusal(self, scope: Scope, path: str) -> JSONResponse | None:
        if path.startswith(ADMIN_PREFIX.rstrip("/")) and not is_admin(scope, self.settings):
            if self.settings.admin_token is None:
                return _error(
                    403,
                    [
                        FieldIssue(
                            "client",
                            "admin routes answer loopback clients only unless "
                            "RETRYOPT_ADMIN_TOKEN is set",
                            "forbidden",
                        )
                    ],
                )
            return _unauthorized("missing or wrong admin token (Authorization: Bearer <token>)")
        keys = self.settings.api_keys
        if (
            (path.startswith(KEY_PREFIX) or path in KEY_PATHS)
            and keys
            and not _matches_any(_bearer(scope), keys)
        ):
            return _unauthorized("missing or unknown API key (Authorization: Bearer <key>)")
        return None


def _unauthorized(message: str) -> JSONResponse:
    resp = _error(401, [FieldIssue("headers.authorization", message, "unauthorized")])
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


class MetricsMiddleware:
    """Times and counts every request."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

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
        "/admin/promote",
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
    settings = settings or load_settings()
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

    def load_counted(location: str) -> str:
        """Load ``location``, counted in ``retryopt_model_reloads_total``; returns the version."""
        try:
            version = store.load(location).version
        except ModelLoadError:
            metrics.observe_reload(outcome="refused")
            raise
        metrics.observe_reload(outcome="ok")
        return version

    arms = service.arms

    def apply_arms(raw: dict[str, Any] | None) -> None:
        """Install the shared arms config (None: as configured) unless already served."""
        config = ArmConfig.from_json(raw) or arms.configured
        if config != arms.served.config:
            arms.apply(config)

    sync: WorkerSync | None = None
    if settings.state_dir:
        sync = WorkerSync(
            SharedState(settings.state_dir),
            load=load_counted,
            current_version=lambda: None if store.current is None else store.current.version,
            apply_arms=apply_arms,
        )

    def after_sighup(ok: bool) -> None:
        metrics.observe_reload(outcome="ok" if ok else "refused")
        if sync is not None:
            sync.report(error=not ok)

    async def load_at_start() -> bool:
        """Load the last reloaded model (several workers), else the configured one; False when
        the last reloaded model was refused (the worker then reports the error)."""
        start = (sync.start_model() or None) if sync is not None else None
        configured = store.location if store.current is None else None
        for location in (start, configured):
            if not location:
                continue
            try:
                await run_in_threadpool(load_counted, location)
            except ModelLoadError:
                continue
            return location == start or start is None
        return start is None

    async def arms_at_start() -> bool:
        """Install the last promotion's arms (several workers), else the configured ones;
        False when a challenger bundle was refused (its customers then get the champion)."""
        try:
            await run_in_threadpool(apply_arms, sync.start_arms() if sync is not None else None)
        except ModelLoadError:
            log.error("challenger refused: every customer is served by the champion")
            return False
        return True

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if sync is not None:
            sync.announce()  # a reload in progress now waits for this worker too
        ok = await load_at_start()
        ok = await arms_at_start() and ok
        if sync is not None:
            sync.report(error=not ok)
            sync.start()
        store.install_sighup(after_sighup)
        yield
        if sync is not None:
            sync.stop()
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
    # Outermost last: metrics see every answer, including the guard's 401/403/413.
    app.add_middleware(GuardMiddleware, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    models_root = settings.admin_models_root()

    async def reject_pan(request: Request) -> None:
        # Scans the decoded body (FastAPI has already parsed it and caches the result): keys
        # and values, JSON escapes and UTF-16/32 bodies included (features/card_numbers.py).
        raw = await request.body()
        if not raw or not body_may_hold_card_number(raw):
            return
        try:
            where = find_card_number(await request.json())
        except ValueError:  # not JSON: its validation answers 422, unless it holds a number
            text = raw.decode("utf-8", errors="replace")
            where = "body" if contains_card_number(text) else None
        if where is None:
            return
        log.warning("request rejected: a card number was sent (field %s)", where)
        raise RequestError(
            [
                FieldIssue(
                    where,
                    "looks like a card number (13-19 digits passing the Luhn check); card "
                    "numbers are never accepted, send card metadata only",
                    "pan_rejected",
                )
            ]
        )

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return _error(413, [exc.issue()])

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        resp = _error(exc.status_code, exc.issues)
        if exc.status_code == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 400:  # a body FastAPI could not parse (e.g. nested too deep)
            issue = FieldIssue("body", "the body could not be parsed as JSON", "body_unparseable")
            return _error(400, [issue])
        return await http_exception_handler(request, exc)

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

        async def decide() -> list[Decision]:
            if batcher is not None and len(pending.items) == 1:
                return [await batcher.submit(pending.items[0])]
            return await asyncio.get_running_loop().run_in_executor(
                batch_pool(), service.decide_prepared, pending.items
            )

        # The lookup of repeats runs while the model decides (its round trip hides behind it).
        _, decisions = await asyncio.gather(run_in_threadpool(dlog.lookup, pending), decide())
        return await run_in_threadpool(dlog.commit, pending, decisions)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Never echo the input back (it may hold personal data).
        return _error(422, field_issues(exc.errors()))

    @app.post(
        "/v1/retry-decisions",
        response_model=DecisionOut,
        responses=_ERRORS,
        dependencies=[Depends(reject_pan)],
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
        return FastJSONResponse(decision_json(decision, arm=item.arm))

    @app.post(
        "/v1/retry-decisions/batch",
        response_model=BatchDecisionOut,
        responses=_ERRORS,
        dependencies=[Depends(reject_pan)],
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
        dependencies=[Depends(reject_pan)],
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
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: a verified model is serving (503 while on the rule-based fallback).

        The load error is shown to admin callers only (it may name paths)."""
        loaded = store.current
        if loaded is None:
            content: dict[str, Any] = {"status": "fallback", "policy": "fallback"}
            if is_admin(request.scope, settings):
                content["error"] = store.last_error
            return JSONResponse(status_code=503, content=content)
        return JSONResponse(content={"status": "ready", "model_version": loaded.version})

    @app.get(
        "/v1/model",
        response_model=ModelOut,
        responses=_ERRORS,
        tags=["operations"],
    )
    async def model_info() -> ModelOut:
        """The serving model: version, training metrics, feature spec, and the A/B arms."""
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
                arms=arms.describe(),
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
            arms=arms.describe(),
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

    def refused() -> JSONResponse:
        metrics.observe_reload(outcome="refused")
        current = store.current
        resp = _error(409, [FieldIssue("model", REFUSED_MESSAGE, "model_refused")])
        resp.headers["X-Model-Version"] = current.version if current else "fallback"
        return resp

    @app.post(
        "/admin/reload",
        dependencies=[Depends(reject_pan)],
        responses={
            **_ERRORS,
            403: {"model": ErrorOut, "description": "not loopback and no admin token set"},
            409: {"model": ErrorOut, "description": "model refused (one message for any cause)"},
            503: {"model": ErrorOut, "description": "some workers did not switch in time"},
        },
        tags=["operations"],
    )
    async def reload_model(body: ReloadIn | None = None) -> JSONResponse:
        """Load a model (default: the configured location) in every worker; a broken one is
        refused and the old model keeps serving."""
        location = store.location
        if body is not None and body.model is not None:
            location = confine_model_path(body.model, models_root)
            if location is None:
                log.warning("reload refused: not a bundle directory under the models root")
                return refused()
        if not location:
            return refused()
        try:
            loaded = await run_in_threadpool(store.load, location)
        except ModelLoadError:
            return refused()
        metrics.observe_reload(outcome="ok")
        current = arms.served.config
        if current.champion is not None:  # a model-free champion gives way to the model
            await run_in_threadpool(arms.apply, dataclasses.replace(current, champion=None))
        if sync is None:
            return JSONResponse(content={"loaded": True, "model_version": loaded.version})
        lagging = await publish_and_wait(location, loaded.version, arms_only=False)
        if lagging:
            return _lagging(f"model {loaded.version}", lagging, "reload")
        workers = len(sync.state.workers())
        return JSONResponse(
            content={"loaded": True, "model_version": loaded.version, "workers": workers}
        )

    async def publish_and_wait(location: str, version: str, *, arms_only: bool) -> list[int]:
        """Publish this worker's model and arms to every worker; the pids that lag."""
        assert sync is not None
        desired = await run_in_threadpool(
            functools.partial(
                sync.adopt,
                model=location,
                version=version,
                arms=arms.served.config.to_json(),
                arms_only=arms_only,
            )
        )
        return await run_in_threadpool(
            sync.state.wait_for, desired.generation, timeout_s=settings.reload_timeout_s
        )

    def _lagging(what: str, lagging: list[int], action: str) -> JSONResponse:
        pids = ", ".join(str(p) for p in lagging)
        return _error(
            503,
            [
                FieldIssue(
                    "workers",
                    f"{what} published, but workers {pids} did not serve it within "
                    f"RETRYOPT_RELOAD_TIMEOUT_S={settings.reload_timeout_s:g} s (they keep "
                    f"trying; retry the {action} or check their log)",
                    f"{action}_incomplete",
                )
            ],
        )

    @app.post(
        "/admin/promote",
        responses={
            **_ERRORS,
            403: {"model": ErrorOut, "description": "not loopback and no admin token set"},
            409: {"model": ErrorOut, "description": "no challenger, or its bundle was refused"},
            503: {"model": ErrorOut, "description": "some workers did not switch in time"},
        },
        tags=["operations"],
    )
    async def promote() -> JSONResponse:
        """Make the challenger the champion of every customer, in every worker."""
        try:
            promoted = arms.promoted()
        except ValueError:
            return _error(
                409,
                [FieldIssue("challenger", "no challenger is serving", "no_challenger")],
            )
        challenger = parse_arm_spec(str(arms.served.config.challenger))
        location = store.location or ""
        if not challenger.is_policy:
            try:
                await run_in_threadpool(store.load, challenger.spec)
            except ModelLoadError:
                return refused()
            metrics.observe_reload(outcome="ok")
            location = challenger.spec
        await run_in_threadpool(arms.apply, promoted)
        version = store.current.version if store.current is not None else "fallback"
        champion = challenger.spec if challenger.is_policy else version
        content = {"promoted": challenger.spec, "champion": champion}
        if sync is None:
            return JSONResponse(content={**content, "workers": 1})
        lagging = await publish_and_wait(location, version, arms_only=challenger.is_policy)
        if lagging:
            return _lagging(f"champion {champion}", lagging, "promote")
        return JSONResponse(content={**content, "workers": len(sync.state.workers())})

    return app


def create_app_from_env() -> FastAPI:
    """Uvicorn factory: settings from ``RETRYOPT_*`` environment variables."""
    configure_logging()
    return create_app(load_settings())


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
