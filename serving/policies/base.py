"""What every policy shares: settings, the decision, and the rules-first decision machinery.

:class:`_RulesPolicy` runs the network and merchant rules (:mod:`.rules`, :mod:`.grid`) on every
charge of a batch, turns their stops into decisions and hands the charges left open, with their
allowed candidate grids, to the policy's ``_choose``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import DecisionBatch, PolicyDecisions, RetryPolicy
from retryopt.serving.columnar import ColumnarBatch
from retryopt.serving.policies.charges import charge_states
from retryopt.serving.policies.explore import (
    DETERMINISTIC_PROPENSITY,
    NO_EXPLORATION,
    check_exploration,
)
from retryopt.serving.policies.grid import evaluate_rules_batch
from retryopt.serving.policies.rules import CardRef, RuleResult


@runtime_checkable
class StochasticPolicy(RetryPolicy, Protocol):
    """A :class:`features.decisions.RetryPolicy` that draws its retry times at random.

    It knows the probability of any retry time it could have chosen, which the backtest's
    importance ratios need (e.g. :class:`.baselines.UniformRandom`).
    """

    def action_probability(self, batch: DecisionBatch, retry_at: np.ndarray) -> np.ndarray:
        """Probability that :meth:`decide` retries each charge in the grid slot of ``retry_at``."""
        ...


@dataclass(frozen=True, kw_only=True)
class PlannerConfig:
    """Planner settings.

    Parameters
    ----------
    later_steps
        ``"model"``: a later planned retry is valued with the model's prediction for the state
        after the earlier planned retries failed (see :mod:`.planner`); ``"decay"``: with the
        next retry's probability times ``later_attempt_decay`` per failed retry in between (the
        planner before issue 14; also what a model that cannot score a shifted state gets).
    later_attempt_decay
        Success of each later retry relative to the next one, per failed retry in between
        (``later_steps="decay"`` only).
    planning_gap_hours
        Least spacing the plan assumes between a retry and the next one it plans (default 24 h).
        A failed retry is evidence the customer's funds are still short, so the next real chance
        is a later day, not the next hour; without it the plan values "retry at a peak, then an
        hour later at nearly the same odds" and pulls the first retry late. Only the plan uses
        it: the next retry may still come ``min_gap_hours`` after the last attempt.
    grid_hours
        Spacing of the candidate grid.
    n_alternatives
        Alternative times reported besides the chosen one.
    alternative_spacing_hours
        Minimum spacing between reported alternatives (and from the chosen time).
    fallback_ladder_hours
        Fallback schedule: hours after the first failure of retry 1, 2, ...
    search
        ``"hourly"`` scores every allowed grid point (exact); ``"coarse"`` scores every
        ``coarse_step``-th point plus the first ``dense_steps`` points, then every point within
        ``coarse_step - 1`` of the ``refine_top`` best coarse points (by planned value and by
        probability), and plans over the scored points only (see ``docs/serving.md``).
    coarse_step, dense_steps, refine_top
        Parameters of the coarse-to-fine search (grid steps).
    exploration_tolerance, exploration_share
        Safe exploration (:mod:`.explore`): with probability ``exploration_share`` the next
        retry is drawn uniformly among the allowed times whose planned value is within
        ``exploration_tolerance`` of the best, else it is the best; 0 = off (the argmax). The
        service turns it on (``RETRYOPT_EXPLORATION_SHARE`` / ``_TOLERANCE``, defaults
        :data:`.explore.DEFAULT_EXPLORATION_SHARE` / ``DEFAULT_EXPLORATION_TOLERANCE``).
    exploration_seed
        Mixed into the draw's hash (distinct draws per deployment or simulation run).
    """

    later_steps: str = "model"
    later_attempt_decay: float = 0.8
    planning_gap_hours: float = 24.0
    grid_hours: int = 1
    n_alternatives: int = 3
    alternative_spacing_hours: float = 6.0
    fallback_ladder_hours: tuple[float, ...] = (24.0, 72.0, 120.0, 168.0, 240.0, 336.0, 432.0)
    search: str = "hourly"
    coarse_step: int = 4
    dense_steps: int = 48
    refine_top: int = 4
    exploration_tolerance: float = 0.0
    exploration_share: float = 0.0
    exploration_seed: int = 0

    def __post_init__(self) -> None:
        check_exploration(self.exploration_tolerance, self.exploration_share)
        if self.later_steps not in ("model", "decay"):
            raise ValueError(f"later_steps must be 'model' or 'decay', got {self.later_steps!r}")
        if self.search not in ("hourly", "coarse"):
            raise ValueError(f"search must be 'hourly' or 'coarse', got {self.search!r}")
        if self.coarse_step < 1 or self.dense_steps < 0 or self.refine_top < 1:
            raise ValueError(
                "coarse_step and refine_top must be >= 1 and dense_steps >= 0, got "
                f"{self.coarse_step}, {self.refine_top}, {self.dense_steps}"
            )
        if not 0 < self.later_attempt_decay <= 1:
            raise ValueError(
                f"later_attempt_decay must be in (0, 1], got {self.later_attempt_decay}"
            )
        if self.grid_hours < 1:
            raise ValueError(f"grid_hours must be >= 1, got {self.grid_hours}")
        if not 0 <= self.planning_gap_hours <= 24 * 21:
            raise ValueError(
                f"planning_gap_hours must be in [0, 504], got {self.planning_gap_hours}"
            )


@dataclass(frozen=True, kw_only=True)
class Alternative:
    """Another candidate retry time and its predicted success probability."""

    retry_at: pd.Timestamp
    success_probability: float | None


@dataclass(frozen=True, kw_only=True)
class Decision:
    """A full retry decision for one charge (what the API returns)."""

    charge_id: str
    action: str  # "retry" | "stop"
    retry_at: pd.Timestamp | None
    success_probability: float | None
    reason: str
    source: str
    action_required: str | None
    alternatives: tuple[Alternative, ...]
    explanation: str
    model_version: str | None
    policy: str
    expected_value: float | None = None
    factors: tuple[str, ...] = field(default_factory=tuple)
    attempt_cost: float | None = None
    value_currency: str | None = None
    propensity: float = DETERMINISTIC_PROPENSITY
    exploration: str = NO_EXPLORATION


def _stop_decision(rule: RuleResult, *, policy: str, model_version: str | None) -> Decision:
    note = "; ".join(rule.notes)
    explanation = f"stop: {rule.reason}" + (f" ({note})" if note else "")
    explanation += f". Source: {rule.source}" if rule.source else ""
    return Decision(
        charge_id=rule.charge_id,
        action="stop",
        retry_at=None,
        success_probability=None,
        reason=rule.reason,
        source=rule.source,
        action_required=rule.action_required,
        alternatives=(),
        explanation=explanation,
        model_version=model_version,
        policy=policy,
    )


def _sub_batch(batch: DecisionBatch, keep: np.ndarray) -> DecisionBatch:
    """The charges of ``batch`` selected by the boolean mask ``keep``."""
    if keep.all():
        return batch
    ids = batch.charge_ids[keep]
    attempts = batch.attempts
    if len(attempts):
        wanted = set(ids.tolist())
        mask = np.asarray([x in wanted for x in attempts[c.CHARGE_ID].tolist()], dtype=bool)
        attempts = attempts[mask]
    return DecisionBatch(
        charge_ids=ids,
        now=batch.now[keep],
        attempts=attempts,
        history=batch.history,
        constraints=batch.constraints,
    )


def _amounts(batch: DecisionBatch, charge_ids: Sequence[str]) -> np.ndarray:
    """Each charge's amount (its last attempt's) in the objective's reporting currency.

    Converted with ``batch.constraints.objective`` (0 when the charge has no rows).
    """
    if isinstance(batch, ColumnarBatch):
        cols = batch.attempt_columns
        ids = list(cols.columns[c.CHARGE_ID])
        amounts = np.asarray(cols.columns[c.AMOUNT], dtype=np.float64)
        currencies = list(cols.columns[c.CURRENCY])
    elif not len(batch.attempts):
        return np.zeros(len(charge_ids))
    else:
        ids = batch.attempts[c.CHARGE_ID].tolist()
        amounts = batch.attempts[c.AMOUNT].to_numpy(dtype=np.float64, na_value=np.nan)
        currencies = batch.attempts[c.CURRENCY].tolist()
    last: dict[Any, tuple[float, Any]] = {}
    for cid, amount, currency in zip(ids, amounts.tolist(), currencies, strict=True):
        if amount == amount:  # groupby().last() skips missing values
            last[cid] = (amount, currency)
    pairs = [last.get(cid, (0.0, "usd")) for cid in charge_ids]
    return batch.constraints.objective.amounts(
        [a for a, _ in pairs], ["usd" if pd.isna(k) else k for _, k in pairs]
    )


class _RulesPolicy:
    """Shared machinery: rules per charge, then :meth:`_choose` on the survivors."""

    name = "base"

    def __init__(self, *, config: PlannerConfig | None = None) -> None:
        self.config = config or PlannerConfig()

    @property
    def model_version(self) -> str | None:
        return None

    def rules(
        self,
        batch: DecisionBatch,
        *,
        current_cards: Sequence[CardRef | None] | None = None,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[tuple[RuleResult, str]]:
        """The rules' verdict and the customer's zone for every charge of ``batch``.

        ``columns`` (or a :class:`serving.columnar.ColumnarBatch`) is read instead of the frames.
        """
        if columns is None and isinstance(batch, ColumnarBatch):
            columns = batch.columns
        states = charge_states(batch, current_cards=current_cards, columns=columns)
        results = evaluate_rules_batch(states, batch.constraints, grid_hours=self.config.grid_hours)
        return [(r, s.timezone) for r, s in zip(results, states, strict=True)]

    def decide_detailed(
        self,
        batch: DecisionBatch,
        *,
        current_cards: Sequence[CardRef | None] | None = None,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[Decision]:
        """Full decisions (with alternatives and explanation) for every charge of ``batch``.

        ``columns`` optionally holds ``batch.attempts`` and ``batch.history`` as
        :class:`features.columns.AttemptColumns` (same rows; the model's fast path reads them).
        """
        if columns is None and isinstance(batch, ColumnarBatch):
            columns = batch.columns
        verdicts = self.rules(batch, current_cards=current_cards, columns=columns)
        out: list[Decision | None] = [None] * len(verdicts)
        live = np.array([not r.stop for r, _ in verdicts], dtype=bool)
        for i, (r, _) in enumerate(verdicts):
            if r.stop:
                out[i] = _stop_decision(r, policy=self.name, model_version=self.model_version)
        if live.any():
            idx = np.flatnonzero(live)
            sub: DecisionBatch = batch
            if live.all():
                pass
            elif (
                isinstance(batch, ColumnarBatch)
                and columns is not None
                and columns[0] is batch.attempt_columns
            ):
                sub = batch.select(live)
                columns = (sub.attempt_columns, sub.history_columns)
            else:
                sub = _sub_batch(batch, live)
                if columns is not None:
                    wanted = set(batch.charge_ids[live].tolist())
                    own_ids = columns[0].columns[c.CHARGE_ID]
                    keep = np.asarray([x in wanted for x in own_ids], dtype=bool)
                    columns = (columns[0].take(keep), columns[1])
            chosen = self._choose(
                sub,
                [verdicts[i][0] for i in idx],
                [verdicts[i][1] for i in idx],
                columns=columns,
            )
            for i, d in zip(idx.tolist(), chosen, strict=True):
                out[i] = d
        return [d for d in out if d is not None]

    def decide(
        self, batch: DecisionBatch, *, current_cards: Sequence[CardRef | None] | None = None
    ) -> PolicyDecisions:
        """Decide every charge of ``batch`` (the :class:`RetryPolicy` protocol)."""
        decisions = self.decide_detailed(batch, current_cards=current_cards)
        retry_at = np.array(
            [
                np.datetime64("NaT", "ns")
                if d.retry_at is None
                else np.datetime64(d.retry_at.tz_convert("UTC").tz_localize(None).as_unit("ns"))
                for d in decisions
            ],
            dtype="datetime64[ns]",
        )
        return PolicyDecisions(
            retry_at=retry_at,
            propensity=np.array([d.propensity for d in decisions], dtype=np.float64),
            reason=np.array([d.reason for d in decisions], dtype=object),
        )

    def _choose(
        self,
        batch: DecisionBatch,
        rules: list[RuleResult],
        zones: list[str],
        *,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[Decision]:
        raise NotImplementedError


def _padded(rules: list[RuleResult]) -> tuple[np.ndarray, np.ndarray]:
    m = max(len(r.grid) for r in rules)
    grid = np.full((len(rules), m), np.datetime64("NaT", "ns"), dtype="datetime64[ns]")
    allowed = np.zeros((len(rules), m), dtype=bool)
    for i, r in enumerate(rules):
        grid[i, : len(r.grid)] = r.grid
        allowed[i, : len(r.grid)] = r.allowed
    return grid, allowed


def _padded_hours(rules: list[RuleResult], m: int) -> np.ndarray:
    """``(n, m)`` local hour of every grid slot (0 in the padding)."""
    hours = np.zeros((len(rules), m), dtype=np.int64)
    for i, r in enumerate(rules):
        hours[i, : len(r.local_hours)] = r.local_hours
    return hours
