"""The shape of a retry decision, shared by simulation, serving policies and backtests.

A policy decides, for a batch of failed charges at once, when to retry each one (or to stop).
Batching keeps both paths fast: serving passes a batch of one charge, backtests and the
synthetic world's :func:`play` pass every charge that is still being collected.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from retryopt.features.objective import Objective


@dataclass(frozen=True, kw_only=True)
class Constraints:
    """Merchant constraints on retries of one charge.

    Parameters
    ----------
    max_retries
        Retries allowed after the first failed attempt.
    window_hours
        Retries must happen within this many hours after the first failure.
    min_gap_hours
        Minimum time between two attempts of the charge.
    quiet_hours
        Optional ``(start_hour, end_hour)`` in the customer's local time during which no retry
        is scheduled (``(22, 7)`` wraps midnight).
    objective
        What collecting the charge is worth: reporting currency, cost per attempt, daily
        cancellation hazard and time value of cash (:class:`features.objective.Objective`, whose
        defaults carry their sources).
    guardrail_hours
        Optional static schedule (hours after the first failure, increasing) that acts as a
        floor: the next retry comes no later than the schedule's first step after the last
        attempt (a step the planner pulled earlier stays available for later). ``None`` = off.
    """

    max_retries: int = 4
    window_hours: float = 504.0
    min_gap_hours: float = 1.0
    quiet_hours: tuple[int, int] | None = None
    objective: Objective = field(default_factory=Objective)
    guardrail_hours: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.window_hours <= 0:
            raise ValueError(f"window_hours must be > 0, got {self.window_hours}")
        if self.min_gap_hours < 0:
            raise ValueError(f"min_gap_hours must be >= 0, got {self.min_gap_hours}")
        if self.quiet_hours is not None and not all(0 <= h <= 23 for h in self.quiet_hours):
            raise ValueError(f"quiet_hours must be hours 0-23, got {self.quiet_hours}")
        if self.guardrail_hours is not None:
            hours = self.guardrail_hours
            if not hours or any(not math.isfinite(h) or h <= 0 for h in hours):
                raise ValueError(f"guardrail_hours must be positive hours, got {hours}")
            if any(b <= a for a, b in itertools.pairwise(hours)):
                raise ValueError(f"guardrail_hours must be increasing, got {hours}")


@dataclass(kw_only=True)
class DecisionBatch:
    """Failed charges awaiting a retry decision.

    Parameters
    ----------
    charge_ids
        The charges to decide, one entry per decision.
    now
        Decision time per charge (``datetime64[ns]``, UTC, naive numpy values).
    attempts
        Canonical contract rows (see :mod:`features.contract`) of every attempt so far of these
        charges, all with ``attempted_at <= now`` of their charge.
    history
        Canonical contract rows of the customers' other charges. May contain rows after a
        decision's ``now``: consumers must only use rows with ``attempted_at < now``.
    constraints
        Merchant constraints, the same for the whole batch.
    """

    charge_ids: np.ndarray
    now: np.ndarray
    attempts: pd.DataFrame
    history: pd.DataFrame | None = None
    constraints: Constraints = field(default_factory=Constraints)


@dataclass(kw_only=True)
class PolicyDecisions:
    """A policy's answer, aligned with :attr:`DecisionBatch.charge_ids`.

    Parameters
    ----------
    retry_at
        ``datetime64[ns]`` (UTC, naive) per charge; ``NaT`` means stop.
    propensity
        Probability with which the policy chose this time (1.0 for deterministic policies).
    reason
        Machine-readable reason per charge (e.g. ``model_optimum``, ``hard_decline``).
    """

    retry_at: np.ndarray
    propensity: np.ndarray
    reason: np.ndarray


@runtime_checkable
class RetryPolicy(Protocol):
    """Anything that decides retry times for a batch of failed charges."""

    name: str

    def decide(self, batch: DecisionBatch) -> PolicyDecisions:
        """Return when to retry each charge of ``batch``, or stop."""
        ...
