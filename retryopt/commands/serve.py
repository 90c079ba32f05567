"""``retryopt serve``: the retry-decision API (uvicorn)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from types import FrameType

import typer

APP_FACTORY = "retryopt.serving.app:create_app_from_env"
# A worker that exits within this many seconds of its start failed to start (e.g. port taken):
# the service stops instead of restarting it in a loop.
STARTUP_GRACE_S = 30.0
# The decision log of `retryopt serve` when neither --store nor RETRYOPT_STORE_URL is given.
DEFAULT_STORE_URL = "sqlite:///retryopt-store.db"


def command(
    model: str = typer.Option(
        None,
        "--model",
        help="Model bundle directory or MLflow registry name[/version] (RETRYOPT_MODEL). "
        "Without a model the service answers from the rule-based fallback.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(
        2, "--workers", min=1, help="uvicorn worker processes (one per core is a good start)."
    ),
    policy: str = typer.Option(
        None, "--policy", help="'model' (planner, default) or 'greedy' (RETRYOPT_POLICY)."
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    store: str = typer.Option(
        None,
        "--store",
        help="Decision log and outcomes store (RETRYOPT_STORE_URL): sqlite:///PATH or "
        f"postgresql://...; default {DEFAULT_STORE_URL} (created in the working directory); "
        "'off' serves without a log.",
    ),
) -> None:
    """Serve retry decisions over HTTP (POST /v1/retry-decisions; see docs/serving.md)."""
    import uvicorn

    from retryopt.serving.settings import load_settings

    if log_level.lower() not in uvicorn.config.LOG_LEVELS:
        raise typer.BadParameter(
            f"must be one of {', '.join(uvicorn.config.LOG_LEVELS)}", param_hint="--log-level"
        )
    log_level = log_level.lower()
    if model is not None:
        os.environ["RETRYOPT_MODEL"] = model
    if policy is not None:
        os.environ["RETRYOPT_POLICY"] = policy
    store_url = store or os.environ.get("RETRYOPT_STORE_URL") or DEFAULT_STORE_URL
    if store_url.strip().lower() == "off":
        os.environ.pop("RETRYOPT_STORE_URL", None)
    else:
        from retryopt.serving.store import StoreError, open_store, redact_url

        try:  # create and migrate it once, before the workers open it
            open_store(store_url).close()
        except (ValueError, StoreError) as exc:
            raise typer.BadParameter(f"store {redact_url(store_url)}: {exc}") from exc
        os.environ["RETRYOPT_STORE_URL"] = store_url
        typer.echo(f"retryopt serve: decision log in {redact_url(store_url)}", err=True)
    try:
        # Fail fast on bad RETRYOPT_* values (API keys included), before forking workers;
        # the message names the variable, never its value.
        settings = load_settings()
        http, loop = settings.server_stack()
    except ValueError as exc:
        typer.echo(f"retryopt serve: {exc}", err=True)
        raise typer.Exit(2) from None
    if not settings.api_keys and not _is_loopback(host):
        typer.echo(
            f"retryopt serve: WARNING: listening on {host} without RETRYOPT_API_KEYS: anyone "
            "who reaches the port gets decisions, /v1/model and /metrics",
            err=True,
        )
    balance = workers > 1 and settings.reuse_port and reuse_port_supported()
    typer.echo(
        f"retryopt serve: http={http} loop={loop} workers={workers}"
        + (" (one SO_REUSEPORT socket per worker)" if balance else ""),
        err=True,
    )
    # The workers share one state directory: /admin/reload reaches all of them, and a
    # restarted worker starts from the last reloaded model (serving/workers.py).
    own_state = settings.state_dir is None
    if own_state:
        os.environ["RETRYOPT_STATE_DIR"] = tempfile.mkdtemp(prefix="retryopt-serve-")
    try:
        if balance:
            raise typer.Exit(
                serve_reuse_port(
                    host=host, port=port, workers=workers, http=http, loop=loop, log_level=log_level
                )
            )
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,
            http=http,
            loop=loop,
        )
    finally:
        if own_state:
            shutil.rmtree(os.environ.pop("RETRYOPT_STATE_DIR"), ignore_errors=True)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reuse_port_supported() -> bool:
    """True where sockets accept ``SO_REUSEPORT`` (Linux, BSD, macOS)."""
    return hasattr(socket, "SO_REUSEPORT")


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` with ``SO_REUSEPORT`` set.

    Every worker binds its own: the kernel then spreads new connections over the workers
    (by a hash of the connection), instead of the first worker to wake accepting a burst of
    connections from the one shared socket.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _worker(host: str, port: int, http: str, loop: str, log_level: str) -> None:
    """One worker process: its own SO_REUSEPORT socket, one uvicorn server."""
    import uvicorn

    # Until the app installs its reload handler, a SIGHUP must not kill a starting worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sock = bind_reuse_port(host, port)
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        log_level=log_level,
        access_log=False,
        http=http,
        loop=loop,
    )
    uvicorn.Server(config).run(sockets=[sock])


def serve_reuse_port(
    *, host: str, port: int, workers: int, http: str, loop: str, log_level: str
) -> int:
    """Run ``workers`` uvicorn processes, each on its own ``SO_REUSEPORT`` socket.

    The supervisor forwards SIGTERM / SIGINT (graceful stop) and SIGHUP (each worker reloads
    its model, see docs/serving.md) to the workers and restarts a worker that dies after its
    start-up; a worker that fails to start stops the service (exit code 1).

    Returns
    -------
    int
        Exit code.
    """
    # The port must be free (or shared only through SO_REUSEPORT): fail before forking.
    try:
        bind_reuse_port(host, port).close()
    except OSError as exc:
        print(f"retryopt serve: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    ctx = multiprocessing.get_context("spawn")
    args = (host, port, http, loop, log_level)
    procs: list[tuple[multiprocessing.process.BaseProcess, float]] = []
    stopping = False

    def start() -> tuple[multiprocessing.process.BaseProcess, float]:
        proc = ctx.Process(target=_worker, args=args, name="retryopt-worker")
        proc.start()
        return proc, time.monotonic()

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for proc, _ in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM if signum != signal.SIGHUP else signal.SIGHUP)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    procs = [start() for _ in range(workers)]
    code = 0
    while not stopping:
        time.sleep(0.2)
        for k, (proc, started) in enumerate(procs):
            if proc.is_alive() or stopping:
                continue
            failed = proc.exitcode is not None and proc.exitcode > 0  # not killed by a signal
            if failed and time.monotonic() - started < STARTUP_GRACE_S:
                print(
                    f"retryopt serve: worker {proc.pid} failed to start (exit {proc.exitcode})",
                    file=sys.stderr,
                )
                code = 1
                forward(signal.SIGTERM, None)
                break
            print(
                f"retryopt serve: worker {proc.pid} exited ({proc.exitcode}); restarting",
                file=sys.stderr,
            )
            procs[k] = start()
    for proc, _ in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return code
