"""Reference encodings the serving encoder is pinned to (test helpers, not the package API).

:func:`encode_candidate_matrix` encodes a whole candidate grid by the frame path: the registry's
computations evaluated as columns (:func:`features.evaluate._candidate_features`, card counts
without the batch card counter) and filled into a matrix one feature at a time
(:func:`features.encoder._model_matrix`). :class:`~features.encoder.CandidateEncoder` builds
its rows another way (per decision and local day, in place); the parity tests compare the two.
"""

from __future__ import annotations

import numpy as np

from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import DecisionBatch
from retryopt.features.encoder import _model_matrix
from retryopt.features.online import _online_columns
from retryopt.features.spec import FeatureSpec


def encode_candidate_matrix(
    batch: DecisionBatch,
    candidate_times: np.ndarray,
    spec: FeatureSpec,
    *,
    attempts: AttemptColumns | None = None,
    history: AttemptColumns | None = None,
) -> np.ndarray:
    """Model matrix of every (charge, candidate) of ``batch`` by the frame path.

    Parameters
    ----------
    batch, candidate_times
        As for :func:`features.online.build_candidate_features`.
    spec
        The spec fixed at training time.
    attempts, history
        Optional :class:`AttemptColumns` holding the same rows as the batch's frames.

    Returns
    -------
    numpy.ndarray
        ``(n_charges * n_candidates, len(spec.names))`` float64, C-contiguous, categoricals as
        their codes in ``spec.levels``.
    """
    columns, n = _online_columns(batch, candidate_times, attempts=attempts, history=history)
    return _model_matrix(columns, spec, n)
