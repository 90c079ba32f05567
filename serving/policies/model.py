"""The success model the planner scores candidate times with, and its model-bundle adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from retryopt.features.advance import advance_after_failures
from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import DecisionBatch
from retryopt.features.encoder import CandidateEncoder
from retryopt.features.online import build_candidate_features
from retryopt.model.adjust import CODE_FEATURE, Adjustment


@dataclass(frozen=True, kw_only=True)
class CandidateScores:
    """Model output over a candidate grid.

    ``proba`` has shape ``(n_charges, n_candidates)`` with NaN at padding; ``features`` holds the
    raw features, one row per (charge, candidate) in row-major order, or None.
    """

    proba: np.ndarray
    features: pd.DataFrame | None = None


@runtime_checkable
class SuccessModel(Protocol):
    """A retry-success model over candidate times."""

    version: str

    def predict_candidates(
        self, batch: DecisionBatch, candidate_times: np.ndarray
    ) -> CandidateScores:
        """Score ``candidate_times`` (``datetime64[ns]``, ``(n_charges, n)``, NaT = padding)."""
        ...


CHUNK_ROWS = 4096


@dataclass(frozen=True, kw_only=True)
class PlanningKnobs:
    """What the planner reads from a bundle besides the model (fitted at training time).

    ``next_decline_code``: the most frequent decline code of the next failed attempt after each
    code (:func:`features.advance.fit_next_decline_codes`), stored in the bundle's
    ``metrics.json`` under ``planning``. Bundles written before it have none: every code then
    keeps its code after a hypothetical failure (the documented fallback).
    """

    next_decline_code: dict[str, str]


def planning_knobs(bundle: object) -> PlanningKnobs:
    """The :class:`PlanningKnobs` of ``bundle`` (empty for bundles written before them)."""
    metrics = getattr(bundle, "metrics", None)
    planning = metrics.get("planning") if isinstance(metrics, dict) else None
    raw = planning.get("next_decline_code") if isinstance(planning, dict) else None
    codes = (
        {str(k): str(v) for k, v in raw.items() if isinstance(v, str)}
        if isinstance(raw, dict)
        else {}
    )
    return PlanningKnobs(next_decline_code=codes)


ENGINES = ("lightgbm", "lleaves")


class BundleSuccessModel:
    """:class:`SuccessModel` backed by a trained model bundle (``model.bundle.ModelBundle``).

    Fast path (default, verified at load by :func:`serving.model_store.verify_policy`): the
    candidate features go straight into a float64 matrix
    (:meth:`features.encoder.CandidateEncoder.matrix`, categoricals as their codes in the spec's
    level order, exactly what LightGBM derives from the pandas frame) and are scored by the
    booster (``num_threads`` per call) or by a compiled engine (``engine``, e.g. lleaves), then
    calibrated. Slow path: :func:`features.online.build_candidate_features` and
    ``bundle.predict_proba`` on the pandas frame.

    Parameters
    ----------
    bundle
        The model bundle.
    fast_path
        Use the numpy fast path when the bundle exposes ``booster``, ``calibrator`` and
        ``feature_spec``.
    engine
        Optional compiled model with ``predict(X: ndarray) -> ndarray`` returning the same
        uncalibrated probabilities as ``bundle.booster.predict`` (checked at load).
    """

    def __init__(self, bundle: object, *, fast_path: bool = True, engine: Any = None) -> None:
        self.bundle = bundle
        self.version = str(getattr(bundle, "version", "unknown"))
        self.fast_path = fast_path and all(
            hasattr(bundle, a) for a in ("booster", "calibrator", "feature_spec")
        )
        self.engine = engine
        spec = getattr(bundle, "feature_spec", None)
        names = getattr(spec, "names", ()) if spec is not None else ()
        # The explanation reads payday-like raw features when the model has any.
        self._needs_raw = any("payday" in n.lower() or "pay_day" in n.lower() for n in names)
        self.next_decline_code = planning_knobs(bundle).next_decline_code
        # Learned at training time (retryopt.model.adjust): the rare-code bounds, applied to
        # every probability scored here (the next retry and the later steps alike), and the
        # timing shrinkage and gap support the planner applies per decision.
        adjustment = getattr(bundle, "adjustment", None)
        self.timing_shrinkage = (
            adjustment.timing_shrinkage if isinstance(adjustment, Adjustment) else 1.0
        )
        # Gap support: factor per whole hour since the previous attempt (None = none).
        self.gap_table = adjustment.gap_table() if isinstance(adjustment, Adjustment) else None
        table = getattr(bundle, "code_bound_table", None)
        self._code_table = table() if callable(table) else None
        self._code_column = list(names).index(CODE_FEATURE) if CODE_FEATURE in names else -1
        if self._code_column < 0:
            self._code_table = None

    @property
    def engine_name(self) -> str:
        """Scoring engine in use: ``lleaves``, ``lightgbm`` or ``bundle`` (slow path)."""
        if not self.fast_path:
            return "bundle"
        return "lightgbm" if self.engine is None else "lleaves"

    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        """Calibrated P(success) of model-matrix rows (as ``CandidateEncoder.matrix`` encodes)."""
        bundle: Any = self.bundle
        if X.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        if self.engine is not None:
            raw = self.engine.predict(X)
        else:
            raw = bundle.booster.predict(X, num_threads=getattr(bundle, "num_threads", 1))
        p = np.asarray(bundle.calibrator.apply(np.asarray(raw, dtype=np.float64)))
        if self._code_table is None:
            return p
        return Adjustment.bound_levels(p, X[:, self._code_column], self._code_table)

    def encoder(
        self,
        batch: DecisionBatch,
        *,
        attempts: AttemptColumns | None = None,
        history: AttemptColumns | None = None,
    ) -> CandidateEncoder | None:
        """A :class:`features.CandidateEncoder` of ``batch`` (None off the fast path).

        Build it once per batch, then score any (charge, time) rows with :meth:`score_rows`.
        """
        if not self.fast_path or self._needs_raw:
            return None
        bundle: Any = self.bundle
        return CandidateEncoder(batch, bundle.feature_spec, attempts=attempts, history=history)

    def state_encoder(
        self,
        batch: DecisionBatch,
        *,
        attempts: AttemptColumns | None = None,
        history: AttemptColumns | None = None,
    ) -> CandidateEncoder | None:
        """A :class:`features.CandidateEncoder` for scoring shifted states (any path).

        The planner's later steps (:meth:`score_rows_after_failures`) go through the model
        matrix on the fast and the reference path alike; None when the bundle exposes no
        ``booster``, ``calibrator`` and ``feature_spec``.
        """
        if not all(hasattr(self.bundle, a) for a in ("booster", "calibrator", "feature_spec")):
            return None
        bundle: Any = self.bundle
        return CandidateEncoder(batch, bundle.feature_spec, attempts=attempts, history=history)

    def score_rows(
        self, encoder: CandidateEncoder, dec: np.ndarray, times: np.ndarray
    ) -> np.ndarray:
        """Calibrated P(success) of charge ``dec[r]`` retried at ``times[r]`` (no NaT).

        Encoded and scored in blocks of at most ``4 * CHUNK_ROWS`` rows (bounded memory), as
        row-major blocks for both engines: lleaves needs them, the LightGBM booster reads them
        without a copy, and the encoder writes them in place (per-decision constant rows, then
        the candidate-dependent columns), which is cheaper than its column-major fill.
        """
        n = int(dec.size)
        if n == 0:
            return np.empty(0, dtype=np.float64)
        step = CHUNK_ROWS * 4
        parts = [
            self.predict_matrix(encoder.matrix(dec[k : k + step], times[k : k + step], order="C"))
            for k in range(0, n, step)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def score_rows_after_failures(
        self,
        encoder: CandidateEncoder,
        dec: np.ndarray,
        times: np.ndarray,
        *,
        failures: int,
        gap_hours: float | np.ndarray,
    ) -> np.ndarray:
        """``(failures, rows)`` calibrated P(success) after 1 .. ``failures`` planned failures.

        The rows are encoded once and advanced by
        :func:`features.advance.advance_after_failures` (retry number, attempt counts, hours
        since the previous attempt = ``gap_hours``, one or one per row, the likely next
        decline code).
        """
        bundle: Any = self.bundle
        out = np.empty((failures, int(dec.size)), dtype=np.float64)
        step = CHUNK_ROWS * 4
        gaps = np.asarray(gap_hours, dtype=np.float64)
        for k in range(0, int(dec.size), step):
            X = encoder.matrix(dec[k : k + step], times[k : k + step], order="C")
            gap = gaps if gaps.ndim == 0 else gaps[k : k + step]
            for s in range(1, failures + 1):
                Xs = advance_after_failures(
                    X,
                    bundle.feature_spec,
                    failures=s,
                    gap_hours=gap,
                    next_code=self.next_decline_code,
                )
                out[s - 1, k : k + step] = self.predict_matrix(Xs)
        return out

    def predict_rows(self, rows: pd.DataFrame) -> np.ndarray:
        """Calibrated P(success) of raw feature rows (``bundle.predict_proba``)."""
        bundle: Any = self.bundle
        if len(rows) == 0:
            return np.empty(0, dtype=np.float64)
        return np.asarray(bundle.predict_proba(rows), dtype=np.float64)

    def predict_candidates(
        self,
        batch: DecisionBatch,
        candidate_times: np.ndarray,
        *,
        attempts: AttemptColumns | None = None,
        history: AttemptColumns | None = None,
        encoder: CandidateEncoder | None = None,
    ) -> CandidateScores:
        """Score the candidate grid of every charge of ``batch``.

        ``attempts`` / ``history`` optionally hold the same rows as the batch's frames as
        :class:`features.AttemptColumns` (read instead of the frames on the fast path);
        ``encoder``, the batch's :class:`features.CandidateEncoder` when the caller already
        built one (the planner's later steps share it).
        """
        flat_valid = ~np.isnat(candidate_times.ravel())
        proba = np.full(candidate_times.size, np.nan)
        n_charges = len(batch.charge_ids)
        if self.fast_path and not self._needs_raw:
            # Only the valid (non-padding) rows are encoded and scored.
            dec, times = CandidateEncoder.grid_rows(candidate_times, n_charges)
            enc = encoder or self.encoder(batch, attempts=attempts, history=history)
            assert enc is not None
            valid_idx = np.flatnonzero(flat_valid)
            proba[valid_idx] = self.score_rows(enc, dec[valid_idx], times[valid_idx])
            return CandidateScores(proba=proba.reshape(candidate_times.shape), features=None)
        raw = build_candidate_features(batch, candidate_times)
        if flat_valid.any():
            sel = raw if flat_valid.all() else raw.iloc[np.flatnonzero(flat_valid)]
            # Scored in blocks of at most CHUNK_ROWS rows (bounds memory on big batches).
            parts = [
                self.predict_rows(sel.iloc[k : k + CHUNK_ROWS])
                for k in range(0, len(sel), CHUNK_ROWS)
            ]
            proba[flat_valid] = np.concatenate(parts)
        return CandidateScores(proba=proba.reshape(candidate_times.shape), features=raw)
