"""Training examples: one point-in-time example per logged retry.

Each logged retry is a decision at ``now`` = the charge's previous attempt, with one candidate
time: the retry's. The whole log goes through the frame path at once (one :class:`_Log`, one
decision state, :func:`features.evaluate._candidate_features`), the same computations as
serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from retryopt.features import contract as ct
from retryopt.features.evaluate import _candidate_features, _decision_state, _frame
from retryopt.features.history import _Log

__all__ = ["TrainingExamples", "build_training_examples"]


@dataclass
class TrainingExamples:
    """One example per logged retry.

    Attributes
    ----------
    features
        Raw features (numeric float64, categoricals as ``str``), columns
        :data:`~features.registry.NUMERIC_FEATURES` then
        :data:`~features.registry.CATEGORICAL_FEATURES`.
    label
        int8, 1 when the retry succeeded.
    propensity
        float64 ``retry_propensity`` of the retry (NaN when absent).
    meta
        attempt_id, charge_id, customer_id, decision_time, retry_time, retry_number,
        decline_family, card_country, card_funding, card_brand, amount, currency.
    """

    features: pd.DataFrame
    label: np.ndarray
    propensity: np.ndarray
    meta: pd.DataFrame


def build_training_examples(attempts: pd.DataFrame) -> TrainingExamples:
    """Point-in-time training examples for every logged retry.

    Parameters
    ----------
    attempts
        Canonical contract frame (:func:`features.validation.validate_attempts`).

    Returns
    -------
    TrainingExamples
        One example per attempt that follows a failed first attempt of its charge while the
        charge was still unpaid (attempts after a success are not retry decisions). The
        decision time ``now`` is the previous attempt of the charge, the candidate time its
        retry; rows are ordered by retry time (then charge). Features use only the charge's
        attempts up to ``now`` and other rows with ``attempted_at < now``.

    Raises
    ------
    ValueError
        If a required column is missing or a key column has missing values.
    """
    log = _Log.from_frames([attempts])
    rows = np.flatnonzero((log.pos >= 1) & (log.succ_before() == 0))
    rows = rows[np.lexsort((log.charge[rows], log.t[rows]))]
    li = rows - 1
    now = log.t[li]
    st = _decision_state(log, li, now)
    dec = np.arange(rows.size, dtype=np.int64)
    columns = _candidate_features(log, st, dec, log.t[rows])
    features = _frame(columns, rows.size)

    src = log.order[rows]

    def src_col(name: str) -> np.ndarray | pd.api.extensions.ExtensionArray:
        return attempts[name].iloc[src].array

    def ts(values: np.ndarray) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(values.view("datetime64[ns]")).tz_localize("UTC")

    meta = pd.DataFrame(
        {
            "attempt_id": src_col(ct.ATTEMPT_ID),
            "charge_id": src_col(ct.CHARGE_ID),
            "customer_id": src_col(ct.CUSTOMER_ID),
            "decision_time": ts(now),
            "retry_time": ts(log.t[rows]),
            "retry_number": log.pos[rows].astype(np.int64),
            "decline_family": features["last_decline_family"].array,
            "card_country": features["card_country"].array,
            "card_funding": features["card_funding"].array,
            "card_brand": features["card_brand"].array,
            "amount": log.amount[li],
            "currency": features["currency"].array,
        },
        index=pd.RangeIndex(rows.size),
    )
    return TrainingExamples(
        features=features,
        label=log.succ[rows].astype(np.int8),
        propensity=log.propensity[rows].astype(np.float64),
        meta=meta,
    )
