"""The serving model holder: load, verify, swap atomically, keep the old model on failure."""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from retryopt.features.decisions import Constraints
from retryopt.features.encoder import CandidateEncoder
from retryopt.features.online import build_candidate_features
from retryopt.model.registry import resolve_model
from retryopt.serving.policies import (
    ENGINES,
    BundleSuccessModel,
    FallbackPolicy,
    GreedyPolicy,
    PlannerConfig,
    PlannerPolicy,
)
from retryopt.serving.schemas import DecisionRequest, to_batch

log = logging.getLogger("retryopt.serving")


class ModelLoadError(Exception):
    """A model could not be loaded or failed verification; the previous model keeps serving."""


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A verified model and the policies built on it (swapped as one reference)."""

    bundle: Any
    location: str
    loaded_at: datetime
    planner: PlannerPolicy
    greedy: GreedyPolicy

    @property
    def version(self) -> str:
        """The bundle's version."""
        return self.planner.model.version


def _verification_request(now: datetime) -> DecisionRequest:
    first = now - timedelta(minutes=5)
    return DecisionRequest.model_validate(
        {
            "charge": {
                "charge_id": "ch_verify",
                "customer_id": "cus_verify",
                "amount": 2500,
                "currency": "usd",
                "card": {
                    "brand": "visa",
                    "funding": "debit",
                    "country": "US",
                    "added_at": (now - timedelta(days=400)).isoformat(),
                    "exp_month": 12,
                    "exp_year": now.year + 3,
                },
                "customer_timezone": "America/New_York",
            },
            "attempts": [
                {
                    "attempted_at": first.isoformat(),
                    "outcome": "failed",
                    "decline_code": "insufficient_funds",
                }
            ],
            "now": now.isoformat(),
        }
    )


def verify_policy(planner: PlannerPolicy) -> None:
    """Run one synthetic decision through ``planner``; raise :class:`ModelLoadError` if broken."""
    now = datetime(2026, 1, 5, 8, 13, tzinfo=UTC)
    req = _verification_request(now)
    prep = to_batch([req], nows=[now], constraints=Constraints())
    grid = np.arange(
        np.datetime64("2026-01-05T09:00", "ns"),
        np.datetime64("2026-01-26T08:00", "ns"),
        np.timedelta64(1, "h"),
    )[None, :]
    scores = planner.model.predict_candidates(prep.batch, grid)
    p = scores.proba
    if p.shape != grid.shape or not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ModelLoadError(
            f"model verification failed: probabilities must be finite in [0, 1], got shape "
            f"{p.shape}, min {np.nanmin(p) if p.size else 'n/a'}, max "
            f"{np.nanmax(p) if p.size else 'n/a'}"
        )
    model = planner.model
    if isinstance(model, BundleSuccessModel) and model.fast_path:
        # The fast scoring path (numpy matrix, optional compiled engine) must reproduce the
        # bundle's own predictions on the pandas frame; otherwise it is switched off.

        raw = build_candidate_features(prep.batch, grid)
        slow = np.asarray(model.bundle.predict_proba(raw), dtype=np.float64)  # type: ignore[attr-defined]
        enc = CandidateEncoder(
            prep.batch,
            model.bundle.feature_spec,  # type: ignore[attr-defined]
            attempts=prep.columns[0] if prep.columns else None,
            history=prep.columns[1] if prep.columns else None,
        )
        X = enc.matrix(*CandidateEncoder.grid_rows(grid, enc.n_charges))
        if model.engine is not None:
            engine = model.engine
            model.engine = None
            reference = model.predict_matrix(X)
            model.engine = engine
            if not np.allclose(model.predict_matrix(X), reference, rtol=1e-9, atol=1e-12):
                log.warning("compiled engine disagrees with LightGBM; using LightGBM")
                model.engine = None
        if not np.allclose(model.predict_matrix(X), slow, rtol=1e-9, atol=1e-12):
            log.warning("fast scoring path disagrees with the bundle; using bundle.predict_proba")
            model.fast_path = False
    decision = planner.decide_detailed(prep.batch, current_cards=prep.current_cards)[0]
    if decision.action != "retry":
        raise ModelLoadError(f"model verification failed: decision {decision.reason}")


class LleavesEngine:
    """A LightGBM booster compiled to native code with lleaves (single-threaded calls)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Probabilities (the objective's transform applied, as ``Booster.predict``)."""
        return np.asarray(self.model.predict(np.ascontiguousarray(X), n_jobs=1))


def compile_lleaves(booster: Any) -> LleavesEngine:
    """Compile a LightGBM booster with lleaves (about 5 s for 196 trees on this machine).

    Raises
    ------
    ImportError
        lleaves is not installed (a core dependency of retryopt; the service then serves with
        LightGBM).
    """
    import lleaves

    with tempfile.TemporaryDirectory(prefix="retryopt-lleaves-") as tmp:
        path = Path(tmp) / "model.txt"
        booster.save_model(str(path))
        model = lleaves.Model(model_file=str(path))
        model.compile()
    return LleavesEngine(model)


REFUSED_MESSAGE = (
    "model refused: not a verified bundle directory under the models root "
    "(RETRYOPT_MODELS_ROOT); the server log says why"
)


def confine_model_path(requested: str, root: Path | None) -> str | None:
    """The bundle directory ``requested`` names under ``root``, or None.

    Relative paths are taken under ``root``; symbolic links and ``..`` are resolved first, so
    only a directory strictly inside ``root`` passes. Files, missing paths, paths outside the
    root and unreadable names all give None: the caller answers them alike (one message,
    no path echoed).
    """
    if root is None:
        return None
    try:
        candidate = Path(requested)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        inside = root in resolved.parents and resolved.is_dir()
    except (OSError, ValueError, RuntimeError):  # NUL bytes, symlink loops, too long
        return None
    return str(resolved) if inside else None


class ModelStore:
    """Holds the serving model; reloads are serialised, verified and atomic.

    Readers take :attr:`current` once per request (a single reference read), so a reload never
    mixes two models inside one decision and never blocks a request.

    Parameters
    ----------
    location
        Default model location (bundle directory or MLflow registry name).
    config
        Planner settings for the policies.
    loader
        Function loading a bundle from a location (default ``model.registry.resolve_model``).
    model_threads
        LightGBM threads per prediction.
    engine
        ``"lightgbm"`` (this class's default; the service's setting defaults to ``"lleaves"``)
        or ``"lleaves"``: compile the booster with lleaves; it is used only when it reproduces
        LightGBM's predictions on the verification grid, else the service falls back to
        LightGBM.
    """

    def __init__(
        self,
        *,
        location: str | None = None,
        config: PlannerConfig | None = None,
        loader: Callable[[str], Any] | None = None,
        model_threads: int = 1,
        engine: str = "lightgbm",
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine
        self.location = location
        self.config = config or PlannerConfig()
        self._loader = loader
        self._model_threads = model_threads
        self._current: LoadedModel | None = None
        self._reload_lock = threading.Lock()
        self.fallback = FallbackPolicy(config=self.config)
        self.last_error: str | None = None

    @property
    def current(self) -> LoadedModel | None:
        """The model serving now (None = fallback)."""
        return self._current

    def load(self, location: str | None = None) -> LoadedModel:
        """Load, verify and install a model; on any failure keep the current one and raise.

        Raises
        ------
        ModelLoadError
            No location configured, the bundle is broken (see ``retryopt.model.bundle.BundleError``)
            or it failed verification.
        """
        where = location or self.location
        if not where:
            raise ModelLoadError("no model location configured (RETRYOPT_MODEL or --model)")
        with self._reload_lock:
            try:
                loader = self._loader
                if loader is None:
                    loader = resolve_model
                bundle = loader(where)
                if hasattr(bundle, "num_threads"):
                    bundle.num_threads = self._model_threads
                model = BundleSuccessModel(bundle, engine=self._compile(bundle))
                planner = PlannerPolicy(model, config=self.config)
                verify_policy(planner)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("model %s refused: %s", where, self.last_error)
                raise ModelLoadError(f"model {where!r} refused: {self.last_error}") from exc
            loaded = LoadedModel(
                bundle=bundle,
                location=where,
                loaded_at=datetime.now(UTC),
                planner=planner,
                greedy=GreedyPolicy(model, config=self.config),
            )
            self._current = loaded  # the atomic swap
            self.location = where
            self.last_error = None
            log.info("model %s version %s serving", where, loaded.version)
            return loaded

    def _compile(self, bundle: Any) -> Any:
        """A compiled engine for ``bundle`` (lleaves), or None (LightGBM)."""
        if self.engine != "lleaves" or not hasattr(bundle, "booster"):
            return None
        try:
            return compile_lleaves(bundle.booster)
        except Exception as exc:  # missing extra, compiler failure: LightGBM still serves
            log.warning(
                "lleaves engine unavailable (%s: %s); using LightGBM", type(exc).__name__, exc
            )
            return None

    def reload_quietly(self) -> bool:
        """Reload the configured location; log instead of raising. Returns success."""
        try:
            self.load()
        except ModelLoadError:
            return False
        return True

    def install_sighup(self, on_reload: Callable[[bool], None] | None = None) -> bool:
        """Reload on SIGHUP (in a background thread). Only possible from the main thread.

        ``on_reload(ok)`` is called after each such reload (metrics, the workers' shared state).
        """
        if threading.current_thread() is not threading.main_thread() or not hasattr(
            signal, "SIGHUP"
        ):
            return False

        def _reload() -> None:
            ok = self.reload_quietly()
            if on_reload is not None:
                on_reload(ok)

        def _handler(signum: int, frame: object) -> None:
            threading.Thread(target=_reload, name="retryopt-reload", daemon=True).start()

        signal.signal(signal.SIGHUP, _handler)
        return True
