"""A backtest over customer partitions: the per-partition steps and their exact merge.

Point-in-time features and every random draw of a backtest depend on one customer's own
history and on keyed streams (:mod:`features.keyed_random`), so a backtest splits into steps that
run where a customer partition lives (one process holds one partition: the whole history; a Dask
cluster holds many, :mod:`training.cluster_backtest`) and steps over all charges on the driver
(the DM fit, the importance weights, the bootstrap). :class:`ChargeMerge` puts the partitions'
charges back in the canonical order (charge id), the order one process has, so the driver's
steps see exactly one process's arrays.

An :class:`Executor` runs a function on every partition: :class:`InProcess` calls it,
the cluster's executor submits it to the workers and keeps its results there until gathered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.currency import FxRates
from retryopt.features.decisions import Constraints, RetryPolicy
from retryopt.features.localtime import NS_PER_HOUR
from retryopt.features.taxonomy import classify_codes
from retryopt.serving.policies import SuccessModel
from retryopt.training.backtest.charges import (
    ChargeData,
    charges_in_months,
    chunks,
    member,
    prepare_charges,
    state_batch,
)
from retryopt.training.backtest.dm import retry_counts, split_customers
from retryopt.training.backtest.estimate import PolicyTerms, dr_terms, policy_terms
from retryopt.training.backtest.estimators import MetricSet, StepLog
from retryopt.training.backtest.metrics import rule_checks


class Executor(Protocol):
    """Runs functions on partitions (or on handles of earlier results) and gathers results."""

    def share(self, value: Any) -> Any:
        """``value`` made available to every partition's function (sent once)."""

    def map(self, fn: Callable[..., Any], *per_part: Sequence[Any], **common: Any) -> list[Any]:
        """Handles of ``fn(part_args..., **common)`` for every partition."""

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        """The results behind ``handles``."""


class InProcess:
    """The executor of one process: calls the function, the handles are the results."""

    def share(self, value: Any) -> Any:
        """``value`` itself."""
        return value

    def map(self, fn: Callable[..., Any], *per_part: Sequence[Any], **common: Any) -> list[Any]:
        """``fn`` called on every partition in turn."""
        return [fn(*args, **common) for args in zip(*per_part, strict=True)]

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        """The results themselves."""
        return list(handles)


@dataclass(frozen=True, kw_only=True)
class FailedPart:
    """A partition's failed charges to evaluate, and (when the DM is fitted) its candidates.

    ``evaluate``: charge ids; ``n_kept_apart``: failed charges of customers kept apart for the
    DM; ``dm_candidates``: logged retries per customer who may train the DM (not evaluated).
    """

    evaluate: np.ndarray
    n_kept_apart: int
    dm_candidates: pd.Series | None


def failed_part(
    attempts: pd.DataFrame,
    *,
    eval_charges: np.ndarray | None,
    eval_months: Sequence[str] | None,
    fx: FxRates,
    fit_dm: bool,
    dm_share: float,
    seed: int,
) -> FailedPart:
    """The partition's failed charges, split by customer (:func:`.dm.split_customers`).

    Evaluated: the failed charges (of ``eval_charges`` or first failing in ``eval_months`` when
    given) of customers outside the kept-apart ``dm_share``. The DM may learn from every other
    customer (the kept-apart ones and those without an evaluated failed charge).
    """
    wanted = eval_charges
    if eval_months is not None:
        wanted = charges_in_months(attempts, eval_months)
    failed = prepare_charges(attempts, charge_ids=wanted, keep_history=False, fx=fx)
    ids = failed.charge_ids
    if not fit_dm:
        return FailedPart(evaluate=ids, n_kept_apart=0, dm_candidates=None)
    customers = failed.attrs["customer_id"].to_numpy(dtype=object)
    apart = split_customers(customers, share=dm_share, seed=seed)
    evaluated = pd.Index(pd.unique(customers[~apart]))
    everyone = pd.unique(attempts[c.CUSTOMER_ID].astype(str).to_numpy(dtype=object))
    others = everyone[evaluated.get_indexer(everyone) < 0]
    return FailedPart(
        evaluate=ids[~apart],
        n_kept_apart=int(apart.sum()),
        dm_candidates=retry_counts(attempts, others),
    )


def rows_of_customers(attempts: pd.DataFrame, customers: np.ndarray) -> pd.DataFrame:
    """The partition's attempts of ``customers``."""
    return attempts[member(attempts[c.CUSTOMER_ID].astype(str), customers)]


@dataclass(frozen=True, kw_only=True)
class EvalPart:
    """A partition's evaluated charges (kept where the partition lives)."""

    data: ChargeData
    hard_state: np.ndarray  # per logged retry: the decline before it is hard


def eval_part(attempts: pd.DataFrame, failed: FailedPart, *, fx: FxRates) -> EvalPart:
    """Prepare the partition's evaluated charges, their customers' history as features."""
    data = prepare_charges(attempts, charge_ids=failed.evaluate, fx=fx)
    return EvalPart(data=data, hard_state=_hard_states(data))


@dataclass(frozen=True, kw_only=True)
class PartShape:
    """What the merge needs of a partition: its charges, their attributes and logged retries."""

    charge_ids: np.ndarray
    attrs: pd.DataFrame
    steps: StepLog


def part_shape(part: EvalPart) -> PartShape:
    """The partition's charge ids, attributes and logged retries."""
    return PartShape(charge_ids=part.data.charge_ids, attrs=part.data.attrs, steps=part.data.steps)


def policy_part(
    part: EvalPart,
    label: str,
    policy: RetryPolicy,
    *,
    metrics: MetricSet,
    constraints: Constraints,
    model: SuccessModel | None,
) -> tuple[PolicyTerms, dict[str, int]]:
    """The policy's per-charge terms on the partition and its rule checks (counts)."""
    terms = policy_terms(
        part.data, label, policy, metrics=metrics, constraints=constraints, model=model
    )
    return terms, _rules_for(part.data, part.hard_state, terms.target)


def dr_part(
    part: EvalPart,
    rows: np.ndarray,
    policy: RetryPolicy,
    model: SuccessModel,
    *,
    metrics: MetricSet,
    constraints: Constraints,
) -> tuple[np.ndarray, np.ndarray]:
    """DR's model terms at the partition's logged retries ``rows`` (:func:`.estimate.dr_terms`)."""
    return dr_terms(part.data, policy, model, rows, metrics=metrics, constraints=constraints)


def calibration_part(part: EvalPart, model: SuccessModel) -> np.ndarray:
    """Per logged retry: the DM's success probability at the first logged retries (else NaN)."""
    data = part.data
    steps = data.steps
    out = np.full(len(steps.step), np.nan)
    rows = np.flatnonzero(steps.step == 1)
    ch = steps.charge[rows]
    at = data.first_failure[ch] + (steps.logged_hours[rows] * NS_PER_HOUR).astype("timedelta64[ns]")
    for block in chunks(len(rows), 5000):
        batch = state_batch(
            data, ch[block], np.zeros(len(block), dtype=np.int64), constraints=Constraints()
        )
        proba = model.predict_candidates(batch, at[block][:, None]).proba
        out[rows[block]] = np.asarray(proba)[:, 0]
    return out


class ChargeMerge:
    """The partitions' charges and logged retries in the canonical order of one process.

    Charges are ordered by id (``prepare_charges`` orders one process's charges so), logged
    retries by charge then retry number; :meth:`charges` and :meth:`rows` reorder per-partition
    arrays, :meth:`split_rows` sends global rows back to their partitions.
    """

    def __init__(self, shapes: Sequence[PartShape]) -> None:
        empty = [np.zeros(0, dtype=np.int64)]
        ids = np.concatenate([np.asarray(s.charge_ids, dtype=object) for s in shapes] or empty)
        self.charge_order = np.argsort(ids.astype(str), kind="stable")
        position = np.empty(len(ids), dtype=np.int64)
        position[self.charge_order] = np.arange(len(ids))
        offsets = np.cumsum([0] + [len(s.charge_ids) for s in shapes])
        charge = np.concatenate(
            [position[offsets[i] + s.steps.charge] for i, s in enumerate(shapes)] or empty
        ).astype(np.int64)
        step = np.concatenate([s.steps.step for s in shapes] or empty).astype(np.int64)
        self.row_order = np.lexsort((step, charge))
        self.row_offsets = np.cumsum([0] + [len(s.steps.step) for s in shapes])
        self.charge_ids = ids[self.charge_order]
        self.attrs = pd.concat([s.attrs for s in shapes], ignore_index=True).iloc[self.charge_order]
        self.attrs = self.attrs.reset_index(drop=True)
        fields = ("logged_hours", "success", "propensity", "target_hours", "amount")
        self.steps = StepLog(
            charge=charge[self.row_order],
            step=step[self.row_order],
            **{f: self.rows([getattr(s.steps, f) for s in shapes]) for f in fields},
        )

    @property
    def n(self) -> int:
        """Number of evaluated charges."""
        return len(self.charge_ids)

    def charges(self, arrays: Sequence[np.ndarray], *, axis: int = 0) -> np.ndarray:
        """Per-charge arrays of the partitions (charges along ``axis``) in canonical order."""
        return np.take(np.concatenate(arrays, axis=axis), self.charge_order, axis=axis)

    def rows(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Per-logged-retry arrays of the partitions (rows first) in canonical order."""
        return np.concatenate(arrays, axis=0)[self.row_order]

    def split_rows(self, rows: np.ndarray) -> list[np.ndarray]:
        """Global rows -> each partition's local rows (in the order of ``rows``)."""
        source = self.row_order[rows]
        part = np.searchsorted(self.row_offsets, source, side="right") - 1
        return [source[part == p] - self.row_offsets[p] for p in range(len(self.row_offsets) - 1)]

    def place_rows(self, rows: np.ndarray, results: Sequence[np.ndarray]) -> np.ndarray:
        """Per-partition results at :meth:`split_rows` ``(rows)`` -> results in ``rows``' order."""
        source = self.row_order[rows]
        part = np.searchsorted(self.row_offsets, source, side="right") - 1
        first = next((r for r in results if len(r)), None)
        shape = (len(rows), *(() if first is None else np.shape(first)[1:]))
        out = np.full(shape, np.nan)
        for p, res in enumerate(results):
            out[part == p] = res
        return out


def _hard_states(data: ChargeData) -> np.ndarray:
    """Per logged retry row: whether the decline before it is hard (never retry)."""
    att = data.attempts
    info = classify_codes(att[c.DECLINE_CODE], att[c.NETWORK_ADVICE_CODE])
    hard = info["hard"].to_numpy(dtype=bool) & (att[c.OUTCOME].astype(str) == c.FAILED).to_numpy()
    key = att["_charge"].to_numpy().astype(np.int64) * 1000 + att["_step"].to_numpy()
    lookup = pd.Series(hard, index=key)
    want = data.steps.charge.astype(np.int64) * 1000 + data.steps.step - 1
    return lookup.reindex(want).fillna(False).to_numpy(dtype=bool)


def _rules_for(data: ChargeData, hard_state: np.ndarray, target: np.ndarray) -> dict[str, int]:
    steps = data.steps
    k_max = int(steps.step.max()) if len(steps.step) else 0
    hours = np.full((data.n, k_max + 1), np.nan)
    hours[:, 0] = 0.0  # the first failure
    hours[steps.charge, steps.step] = steps.logged_hours
    prior = hours[steps.charge]
    prior[np.arange(k_max + 1)[None, :] >= steps.step[:, None]] = np.nan  # attempts before it
    return rule_checks(hard_state=hard_state, target_hours=target, attempt_hours_by_row=prior)
