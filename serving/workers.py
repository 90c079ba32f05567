"""Reloads that reach every worker of ``retryopt serve --workers N``.

The workers share one state directory (``RETRYOPT_STATE_DIR``, created by ``retryopt serve``):

- ``desired.json``: the model every worker must serve, ``{"generation", "model", "version",
  "arms", "arms_only"}`` (``arms``: the champion/challenger config, :mod:`.arms`; ``arms_only``:
  the model is unchanged, only the arms), written atomically by the worker that accepted
  ``POST /admin/reload`` or ``POST /admin/promote``;
- ``workers/<pid>.json``: what each worker serves, ``{"pid", "generation", "version",
  "error"}``, written atomically by that worker after each load (and once at its start).

Each worker polls ``desired.json`` (one ``stat`` per :data:`POLL_S`) and loads a newer
generation; a (re)started worker loads the desired model instead of ``RETRYOPT_MODEL``. The
reloading worker answers success only once every live worker reports the new generation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("retryopt.serving")

POLL_S = 0.1  # a worker's look at desired.json (one stat call)
DESIRED_FILE = "desired.json"
WORKERS_DIR = "workers"
LOCK_FILE = "reload.lock"


@dataclass(frozen=True)
class Desired:
    """The model every worker must serve."""

    generation: int
    model: str
    version: str
    arms: dict[str, Any] | None = None  # None: the arms as configured
    arms_only: bool = False  # the model is the one served already; only the arms change


@dataclass(frozen=True)
class WorkerStatus:
    """What one worker serves (``generation`` -1: starting, nothing applied yet)."""

    pid: int
    generation: int
    version: str | None
    error: bool


def _write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(content, out)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (a zombie counts until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedState:
    """The state directory shared by the workers of one service.

    Parameters
    ----------
    root
        The directory (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / WORKERS_DIR).mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def desired(self) -> Desired | None:
        """The model the workers must serve (None: the configured one)."""
        raw = _read_json(self.root / DESIRED_FILE)
        if raw is None:
            return None
        try:
            arms = raw.get("arms")
            return Desired(
                int(raw["generation"]),
                str(raw["model"]),
                str(raw["version"]),
                arms if isinstance(arms, dict) else None,
                bool(raw.get("arms_only", False)),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def publish(
        self,
        *,
        model: str,
        version: str,
        arms: dict[str, Any] | None = None,
        arms_only: bool = False,
    ) -> Desired:
        """Make ``model`` (and ``arms``) what every worker serves; returns it with its new
        generation."""
        with self._locked():
            current = self.desired()
            generation = (current.generation if current else 0) + 1
            desired = Desired(generation, model, version, arms, arms_only)
            _write_json_atomic(
                self.root / DESIRED_FILE,
                {
                    "generation": generation,
                    "model": model,
                    "version": version,
                    "arms": arms,
                    "arms_only": arms_only,
                },
            )
        return desired

    def report(self, *, generation: int, version: str | None, error: bool = False) -> None:
        """Record what this worker serves now."""
        pid = os.getpid()
        _write_json_atomic(
            self.root / WORKERS_DIR / f"{pid}.json",
            {"pid": pid, "generation": generation, "version": version, "error": error},
        )

    def workers(self) -> list[WorkerStatus]:
        """The live workers' statuses (files of dead workers are removed)."""
        out = []
        for path in sorted((self.root / WORKERS_DIR).glob("*.json")):
            raw = _read_json(path)
            try:
                status = WorkerStatus(
                    int(raw["pid"]),  # type: ignore[index]
                    int(raw["generation"]),  # type: ignore[index]
                    None if raw["version"] is None else str(raw["version"]),  # type: ignore[index]
                    bool(raw.get("error", False)),  # type: ignore[union-attr]
                )
            except (KeyError, TypeError, ValueError):
                continue  # being replaced right now: os.replace makes this rare
            if pid_alive(status.pid):
                out.append(status)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        return out

    def wait_for(
        self,
        generation: int,
        *,
        timeout_s: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> list[int]:
        """Wait until every live worker serves ``generation``; returns the lagging pids.

        A worker that refused the model (``error``) lags at once: the wait ends without it.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = self.workers()
            lagging = [s.pid for s in statuses if s.generation < generation]
            failed = [s.pid for s in statuses if s.generation == generation and s.error]
            if failed:
                return sorted(failed + lagging)
            if not lagging or time.monotonic() >= deadline:
                return sorted(lagging)
            sleep(POLL_S)


class WorkerSync:
    """One worker's side: start from the desired model, follow later reloads.

    Parameters
    ----------
    state
        The shared state directory.
    load
        Loads, verifies and installs a model location; returns its version; raises on refusal
        (the worker then keeps its model and reports the error).
    current_version
        The version this worker serves now (None: the fallback).
    apply_arms
        Installs the champion/challenger config of a newer desired state (None: as
        configured); raises on refusal, like ``load``.
    """

    def __init__(
        self,
        state: SharedState,
        *,
        load: Callable[[str], str],
        current_version: Callable[[], str | None],
        apply_arms: Callable[[dict[str, Any] | None], None] | None = None,
    ) -> None:
        self.state = state
        self._load = load
        self._apply_arms = apply_arms
        self._current_version = current_version
        self.generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple[int, int] | None = None
        self._lock = threading.Lock()  # one load decision at a time (poll or local reload)

    def announce(self) -> None:
        """Report this worker as starting (so a reload in progress waits for it)."""
        self.state.report(generation=-1, version=None)

    def start_model(self) -> str | None:
        """The model location to start from: the last reload's, else None (the configured)."""
        desired = self.state.desired()
        if desired is None:
            return None
        self.generation = desired.generation
        return desired.model

    def start_arms(self) -> dict[str, Any] | None:
        """The arms to start from: the last reload's or promotion's, else None (configured)."""
        desired = self.state.desired()
        return None if desired is None else desired.arms

    def report(self, *, error: bool = False) -> None:
        """Report this worker's current generation and version."""
        self.state.report(generation=self.generation, version=self._current_version(), error=error)

    def adopt(
        self,
        *,
        model: str,
        version: str,
        arms: dict[str, Any] | None = None,
        arms_only: bool = False,
    ) -> Desired:
        """Publish the model (and arms) this worker has just installed as every worker's (a
        local reload or promotion)."""
        with self._lock:
            desired = self.state.publish(
                model=model, version=version, arms=arms, arms_only=arms_only
            )
            self.generation = desired.generation
            self.report()
        return desired

    def poll_once(self) -> None:
        """Apply a newer desired model if ``desired.json`` changed since the last look."""
        with self._lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        try:
            st = os.stat(self.state.root / DESIRED_FILE)
        except OSError:
            return
        seen = (st.st_ino, st.st_mtime_ns)
        if seen == self._seen:
            return
        self._seen = seen
        desired = self.state.desired()
        if desired is None or desired.generation <= self.generation:
            return
        try:
            if not desired.arms_only:
                self._load(desired.model)
            if self._apply_arms is not None:
                self._apply_arms(desired.arms)
        except Exception:  # the load logged why; this worker keeps its model
            self.generation = desired.generation
            self.report(error=True)
            return
        self.generation = desired.generation
        self.report()

    def start(self) -> None:
        """Follow reloads in a background thread."""
        self._thread = threading.Thread(target=self._run, name="retryopt-reload-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll_once()
            except Exception:  # never let the follower die (a full disk, a removed directory)
                log.exception("reload follower failed; retrying")

    def stop(self) -> None:
        """Stop following (at shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
