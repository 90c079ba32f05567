"""Guardrail mode: a merchant's static schedule as a floor under the planner (issue 14).

With a ladder ``L_1 < L_2 < ...`` (hours after the first failure, e.g. ``72,120,168,216``) the
next retry comes no later than the ladder's first step after the charge's last attempt: the
planner may pull a retry earlier than the schedule, never later. A step the planner did not use
(because it retried earlier) stays a deadline for later, so a retry pulled forward adds a retry
instead of consuming a step (the retry budget, ``Constraints.max_retries``, still bounds the
count). This is how Hyperswitch's adaptive retries augment a static ladder. When the rules
allow no time at or before the deadline (quiet hours, an advice-code wait, a network cap), the
earliest allowed time is the only candidate, which is where the schedule itself would retry.
After the ladder's last step the planner plans freely within the window. Stops (hard declines,
rules, ``not_worth_an_attempt``) are unchanged: the floor is on timing, not on spending.
"""

from __future__ import annotations

import numpy as np

from retryopt.features.localtime import NS_PER_HOUR
from retryopt.serving.policies.rules import RuleResult

NO_DEADLINE = np.iinfo(np.int64).max


def guardrail_deadlines(rules: list[RuleResult], ladder_hours: tuple[float, ...]) -> np.ndarray:
    """``(n,)`` latest allowed retry time per charge (int64 ns; ``NO_DEADLINE`` = none).

    The deadline is the first ladder step strictly after the charge's last attempt.
    """
    steps = np.round(np.asarray(ladder_hours, dtype=np.float64) * NS_PER_HOUR).astype(np.int64)
    out = np.full(len(rules), NO_DEADLINE, dtype=np.int64)
    for i, r in enumerate(rules):
        if r.first_failure is None or r.last_attempt is None:
            continue
        first = int(r.first_failure.astype("datetime64[ns]").astype(np.int64))
        last = int(r.last_attempt.astype("datetime64[ns]").astype(np.int64))
        later = first + steps[first + steps > last]
        if later.size:
            out[i] = int(later[0])
    return out


def apply_guardrail(grid: np.ndarray, allowed: np.ndarray, deadline: np.ndarray) -> np.ndarray:
    """``allowed`` restricted to times at or before each row's ``deadline``.

    A row with no allowed time by its deadline keeps only its earliest allowed time.
    """
    grid_ns = grid.astype("datetime64[ns]").view(np.int64)
    early = allowed & (grid_ns <= deadline[:, None])
    out = early.copy()
    none = ~early.any(axis=1) & allowed.any(axis=1)
    if none.any():
        rows = np.flatnonzero(none)
        first = np.argmax(allowed[rows], axis=1)
        out[rows, first] = True
    return out
