"""Baselines without a model, held to the same network rules as the planner.

Every baseline decides on the verdicts of the same rules code as the planner
(:meth:`.base._RulesPolicy.rules`): hard declines and never-retry codes stop the charge;
Mastercard advice-code waits, the minimum gap, quiet hours, the networks' reattempt caps, the
window and the retry budget shape the charge's allowed hourly grid. Only the choice among the
allowed grid times differs:

- ``fallback`` (:class:`FallbackPolicy`): a fixed ladder, served when no model is loaded;
- ``fixed`` (:class:`FixedSchedule`): retry ``k`` at the first allowed grid time at or after
  ``first failure + hours[k - 1]``;
- ``random`` (:class:`UniformRandom`): an allowed grid time drawn uniformly, with its exact
  propensity (``1 / number of allowed times``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import DecisionBatch, PolicyDecisions
from retryopt.features.keyed_random import keyed_uniforms
from retryopt.features.localtime import NAT_INT, NS_PER_HOUR
from retryopt.serving.policies.base import Decision, PlannerConfig, _RulesPolicy, _stop_decision
from retryopt.serving.policies.explain import _local_label
from retryopt.serving.policies.rules import CardRef, Reason, RuleResult

_NAT = np.datetime64("NaT", "ns")


class FallbackPolicy(_RulesPolicy):
    """The ``fallback`` policy used when no model is available.

    Rules first (exactly as the model policies), then a fixed ladder: retry ``k`` (1-based) at
    the first allowed hour at or after ``first failure + fallback_ladder_hours[k - 1]`` (the last
    ladder step repeats), or the last allowed hour of the window if none is later.
    """

    name = "fallback"

    def _choose(
        self,
        batch: DecisionBatch,
        rules: list[RuleResult],
        zones: list[str],
        *,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[Decision]:
        ladder = self.config.fallback_ladder_hours
        out: list[Decision] = []
        for r, zone in zip(rules, zones, strict=True):
            k = min(r.retries_used, len(ladder) - 1)
            assert r.first_failure is not None
            target = np.asarray(r.first_failure).astype("datetime64[ns]") + np.timedelta64(
                int(ladder[k] * 3600), "s"
            )
            ok = np.flatnonzero(r.allowed & (r.grid >= target))
            j = int(ok[0]) if ok.size else int(np.flatnonzero(r.allowed)[-1])
            out.append(
                Decision(
                    charge_id=r.charge_id,
                    action="retry",
                    retry_at=pd.Timestamp(r.grid[j]).tz_localize("UTC"),
                    success_probability=None,
                    reason=str(Reason.FALLBACK_SCHEDULE),
                    source="rule-based fallback schedule (no model loaded)",
                    action_required=None,
                    alternatives=(),
                    explanation=(
                        f"no model loaded: fixed schedule, retry {r.retries_used + 1} at "
                        f"{ladder[k]:g} h after the first failure; "
                        f"{_local_label(r.grid[j], zone, int(r.local_hours[j]))}"
                        + ("; " + "; ".join(r.notes) if r.notes else "")
                    ),
                    model_version=None,
                    policy=self.name,
                )
            )
        return out


class _GridBaseline(_RulesPolicy):
    """A baseline that picks one allowed grid time per charge from the rules' verdict.

    Subclasses implement :meth:`_pick`; :meth:`decide` (the protocol, vectorised output) and
    :meth:`decide_detailed` (full decisions, as the API returns them) both use it.
    """

    source = "baseline"

    def _pick(self, rule: RuleResult, u: float) -> tuple[int, float, str, str]:
        """``(grid index or -1 = stop, propensity, reason, explanation)`` of one open charge.

        ``u`` is the charge's uniform draw (:meth:`_draws`).
        """
        raise NotImplementedError

    def _draws(self, rules: Sequence[RuleResult]) -> np.ndarray:
        """One uniform in ``[0, 1)`` per charge (deterministic baselines: zeros)."""
        return np.zeros(len(rules))

    def verdicts(
        self, batch: DecisionBatch, *, current_cards: Sequence[CardRef | None] | None = None
    ) -> list[RuleResult]:
        """The rules' verdict on every charge of ``batch`` (in its order)."""
        return [r for r, _ in self.rules(batch, current_cards=current_cards)]

    def decide(
        self, batch: DecisionBatch, *, current_cards: Sequence[CardRef | None] | None = None
    ) -> PolicyDecisions:
        """Decide every charge of ``batch`` (the :class:`RetryPolicy` protocol)."""
        verdicts = self.verdicts(batch, current_cards=current_cards)
        n = len(verdicts)
        retry_at = np.full(n, _NAT, dtype="datetime64[ns]")
        propensity = np.ones(n)
        reason = np.empty(n, dtype=object)
        draws = self._draws(verdicts).tolist()
        for i, r in enumerate(verdicts):
            if r.stop:
                reason[i] = r.reason
                continue
            j, propensity[i], reason[i], _ = self._pick(r, draws[i])
            if j >= 0:
                retry_at[i] = r.grid[j]
            else:
                propensity[i] = 1.0
        return PolicyDecisions(retry_at=retry_at, propensity=propensity, reason=reason)

    def _choose(
        self,
        batch: DecisionBatch,
        rules: list[RuleResult],
        zones: list[str],
        *,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[Decision]:
        out: list[Decision] = []
        for r, zone, u in zip(rules, zones, self._draws(rules).tolist(), strict=True):
            j, _, reason, explanation = self._pick(r, u)
            if j < 0:
                stop = RuleResult(
                    charge_id=r.charge_id,
                    stop=True,
                    reason=reason,
                    source=self.source,
                    notes=(explanation,),
                    retries_used=r.retries_used,
                )
                out.append(_stop_decision(stop, policy=self.name, model_version=None))
                continue
            label = _local_label(r.grid[j], zone, int(r.local_hours[j]))
            out.append(
                Decision(
                    charge_id=r.charge_id,
                    action="retry",
                    retry_at=pd.Timestamp(r.grid[j]).tz_localize("UTC"),
                    success_probability=None,
                    reason=reason,
                    source=self.source,
                    action_required=None,
                    alternatives=(),
                    explanation="; ".join((explanation, label, *r.notes)),
                    model_version=None,
                    policy=self.name,
                )
            )
        return out


class FixedSchedule(_GridBaseline):
    """Retry ``k`` at the first allowed grid time at or after ``first failure + hours[k - 1]``.

    Stops where the rules stop, after ``len(hours)`` retries, and when no allowed grid time is
    left at or after the scheduled time.

    Parameters
    ----------
    hours
        Hours after the first failure of retries 1, 2, ... (positive, increasing).
    name
        Policy name (default ``fixed:H1,H2,...``).
    config
        Grid spacing (:attr:`PlannerConfig.grid_hours`).
    """

    source = "fixed schedule baseline"

    def __init__(
        self,
        hours: Sequence[float] = (72.0, 120.0, 168.0, 216.0),
        *,
        name: str | None = None,
        config: PlannerConfig | None = None,
    ) -> None:
        super().__init__(config=config)
        if (
            not hours
            or any(h <= 0 for h in hours)
            or any(b <= a for a, b in itertools.pairwise(hours))
        ):
            raise ValueError(f"hours must be positive and increasing, got {tuple(hours)}")
        self.hours = tuple(float(h) for h in hours)
        self.name = name or f"fixed:{','.join(f'{h:g}' for h in self.hours)}"

    def _pick(self, rule: RuleResult, u: float) -> tuple[int, float, str, str]:
        k = rule.retries_used
        if k >= len(self.hours):
            return -1, 1.0, str(Reason.SCHEDULE_DONE), f"the {len(self.hours)} retries are used"
        assert rule.first_failure is not None
        target = int(rule.first_failure.astype(np.int64)) + round(self.hours[k] * NS_PER_HOUR)
        grid_ns = rule.grid.view(np.int64)
        start = int(np.searchsorted(grid_ns, target, side="left"))
        ok = np.flatnonzero(rule.allowed[start:])
        if not ok.size:
            note = f"no allowed time at or after {self.hours[k]:g} h after the first failure"
            return -1, 1.0, str(Reason.WINDOW_EXHAUSTED), note
        note = f"fixed schedule: retry {k + 1} at {self.hours[k]:g} h after the first failure"
        return start + int(ok[0]), 1.0, str(Reason.FIXED_SCHEDULE), note


class UniformRandom(_GridBaseline):
    """An allowed grid time drawn uniformly; the propensity is ``1 / number of allowed times``.

    The draw of a charge depends only on (``seed``, charge id, retries so far): decisions do not
    depend on batching or on the order of calls.

    Parameters
    ----------
    seed
        Seed of the draws.
    name
        Policy name.
    config
        Grid spacing (:attr:`PlannerConfig.grid_hours`).
    """

    source = "uniform random baseline"

    def __init__(
        self, seed: int = 0, *, name: str = "random", config: PlannerConfig | None = None
    ) -> None:
        super().__init__(config=config)
        self.seed = int(seed)
        self.name = name

    def _draws(self, rules: Sequence[RuleResult]) -> np.ndarray:
        used = np.fromiter((r.retries_used for r in rules), dtype=np.int64, count=len(rules))
        return keyed_uniforms(self.seed, [r.charge_id for r in rules], used)

    def _pick(self, rule: RuleResult, u: float) -> tuple[int, float, str, str]:
        allowed = np.flatnonzero(rule.allowed)
        m = allowed.size
        j = int(allowed[min(int(u * m), m - 1)])
        return j, 1.0 / m, str(Reason.UNIFORM_RANDOM), f"drawn uniformly among {m} allowed times"

    def action_probability(self, batch: DecisionBatch, retry_at: np.ndarray) -> np.ndarray:
        """Probability that :meth:`decide` picks the grid slot ``[retry_at, retry_at + step)``.

        ``1 / number of allowed times`` when that slot holds an allowed grid time, else 0 (and 0
        where the rules stop or ``retry_at`` is NaT). Used for exact importance ratios.
        """
        at = np.asarray(retry_at, dtype="datetime64[ns]").view(np.int64)
        step = self.config.grid_hours * NS_PER_HOUR
        out = np.zeros(len(at))
        for i, r in enumerate(self.verdicts(batch)):
            t = int(at[i])
            if r.stop or t == NAT_INT:
                continue
            grid_ns = r.grid.view(np.int64)
            j = int(np.searchsorted(grid_ns, t, side="left"))
            if j < grid_ns.size and grid_ns[j] < t + step and r.allowed[j]:
                out[i] = 1.0 / int(np.count_nonzero(r.allowed))
        return out
