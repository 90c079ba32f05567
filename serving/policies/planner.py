"""The ``model`` policy (planner) and the ``greedy`` baseline over a success model.

- ``model`` (:class:`PlannerPolicy`): scores every allowed hourly candidate time with the model
  and chooses the next retry by dynamic programming over the remaining retry budget;
- ``greedy`` (:class:`GreedyPolicy`): the argmax of the success probability.

The planner (documented in ``docs/serving.md``). For a charge with ``R`` retries left, candidate
times ``t_1 < ... < t_m`` (allowed by the rules), amount ``A`` and cost per attempt ``c`` in the
objective's reporting currency, discount ``d(t)`` since the first failure (daily cancellation
hazard and time value of cash; :class:`features.objective.Objective`, the same objective the
backtests report) and planning gap ``g`` grid steps (the larger of the constraints' minimum gap
and ``PlannerConfig.planning_gap_hours``, 24 h by default: a failed retry means the funds are
still short, so the plan does not count on the next hour)::

    W_0(j) = 0
    val_k(j) = p_k(j) * A * d(j) - c + (1 - p_k(j)) * W_{k-1}(j)
    W_k(j)  = max(0, max_{j' >= j + g} val_k(j'))        (0 = stop after a failure at t_j)

and the next retry is ``argmax_j val_R(j)``; when that value is <= 0 no retry is worth its cost
and the decision is ``stop`` with reason ``not_worth_an_attempt``, the best expected value and
the cost. ``p_R`` is the model's probability for the next retry. ``p_k`` (a *later* retry, after
``s = R - k`` failed planned retries) is the model's own prediction in that state
(:func:`features.advance.advance_after_failures`: retry number + s, attempt counts + the planned
attempts, hours since the previous attempt = the planning gap, the likely next decline code
stored in the bundle). It is scored on the allowed points of every ``coarse_step``-th grid step
and interpolated linearly in between (later steps are replanned before they are taken, so a
4-hour resolution is enough for their value; carrying the fine curve's ratio instead invented
peaks where the state's effect changes within hours). A success model that cannot score a
shifted state (not a bundle on the fast path) falls back to
``p_k(j) = p_R(j) * later_attempt_decay ** (R - k)``. Later planned retries also respect what the
rules will demand after the planned failures: the gap ``g`` is at least the Mastercard advice
wait (24-30) of the last decline, and a retry after ``s`` planned failures is allowed only where
the networks' caps leave room for the ``s`` planned attempts (:func:`_later_allowed`). With a
bundle's timing shrinkage every charge's logits are pulled toward their mean by the fitted slope
first (:meth:`PlannerPolicy._shrink`, :mod:`retryopt.model.adjust`: the optimiser's curse). With
a guardrail ladder (:mod:`.guardrail`)
the next retry is chosen among times no later than the ladder's next step. The plan is
recomputed at every call, so only its first step is ever executed. With
``PlannerConfig.exploration_share`` > 0 the next retry is sometimes drawn among the allowed times
whose value is within ``exploration_tolerance`` of the best (:mod:`.explore`; never a stop).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from retryopt.features.advance import planned_within
from retryopt.features.columns import AttemptColumns
from retryopt.features.decisions import Constraints, DecisionBatch
from retryopt.features.encoder import CandidateEncoder
from retryopt.features.localtime import NS_PER_DAY, NS_PER_HOUR
from retryopt.model.adjust import Adjustment, shrink_timing
from retryopt.serving.policies.base import (
    Alternative,
    Decision,
    PlannerConfig,
    _amounts,
    _padded,
    _padded_hours,
    _RulesPolicy,
)
from retryopt.serving.policies.explain import (
    _NIGHT_TABLE,
    _alternative_picks,
    _night_means,
    _pick_alternatives,
    _timestamp,
    explanation_factors,
)
from retryopt.serving.policies.explore import near_best_draw, scheme, state_uniforms
from retryopt.serving.policies.guardrail import apply_guardrail, guardrail_deadlines
from retryopt.serving.policies.model import BundleSuccessModel, CandidateScores, SuccessModel
from retryopt.serving.policies.rules import Reason, RuleResult
from retryopt.serving.policies.values import plan_values


class PlannerPolicy(_RulesPolicy):
    """The ``model`` policy: rules, then dynamic programming over the remaining retries.

    Parameters
    ----------
    model
        Success model over candidate times (e.g. :class:`BundleSuccessModel`).
    config
        Planner settings.
    """

    name = "model"

    def __init__(
        self,
        model: SuccessModel,
        *,
        config: PlannerConfig | None = None,
        guardrail_hours: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__(config=config)
        self.model = model
        self.guardrail_hours = guardrail_hours

    def _guardrail(self, batch: DecisionBatch) -> tuple[float, ...] | None:
        """The ladder that floors this batch's retries (the policy's own, else the request's)."""
        return self.guardrail_hours or batch.constraints.guardrail_hours

    @property
    def model_version(self) -> str | None:
        return self.model.version

    def _values(
        self,
        proba: np.ndarray,
        allowed: np.ndarray,
        grid: np.ndarray,
        batch: DecisionBatch,
        rules: list[RuleResult],
        *,
        later: np.ndarray | None = None,
    ) -> np.ndarray:
        cons: Constraints = batch.constraints
        objective = cons.objective
        if objective.daily_factor == 1.0:
            discount = np.ones(grid.shape)  # 1.0 ** days, without the power
        else:
            first_ns = _first_failures(batch, rules)
            days = (grid.astype(np.int64) - first_ns[:, None]) / NS_PER_DAY
            discount = objective.discount(days)
        gaps = self._gap_hours(batch, rules)
        gap_steps = np.maximum(1, np.ceil(gaps / self.config.grid_hours)).astype(np.int64)
        return plan_values(
            proba,
            allowed,
            retries_left=np.array([r.retries_left for r in rules]),
            amount=_amounts(batch, [r.charge_id for r in rules]),
            discount=discount,
            cost=objective.cost_per_attempt,
            gap_steps=gap_steps,
            decay=self.config.later_attempt_decay,
            later_proba=later,
            later_allowed=_later_allowed(allowed, rules, gaps),
        )

    def _gap_hours(self, batch: DecisionBatch, rules: list[RuleResult]) -> np.ndarray:
        """``(n,)`` hours the plan assumes between two planned retries of each charge.

        The larger of the minimum gap, the planning gap and the Mastercard advice wait (24-30:
        1 h ... 10 days) that the likely next decline keeps (:attr:`RuleResult.advice_wait_hours`).
        """
        base = max(batch.constraints.min_gap_hours, self.config.planning_gap_hours)
        return np.array([max(base, r.advice_wait_hours) for r in rules], dtype=np.float64)

    def _state_encoder(
        self,
        batch: DecisionBatch,
        rules: list[RuleResult],
        columns: tuple[AttemptColumns, AttemptColumns | None] | None,
    ) -> CandidateEncoder | None:
        """The encoder of the later steps' shifted states (None when there is no later step)."""
        if (
            self.config.later_steps != "model"
            or not isinstance(self.model, BundleSuccessModel)
            or all(r.retries_left <= 1 for r in rules)
        ):
            return None
        return self.model.state_encoder(
            batch,
            attempts=None if columns is None else columns[0],
            history=None if columns is None else columns[1],
        )

    def _later_points(
        self,
        grid: np.ndarray,
        allowed: np.ndarray,
        proba: np.ndarray,
        batch: DecisionBatch,
        rules: list[RuleResult],
        encoder: CandidateEncoder | None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Model success after ``1 .. S`` failed planned retries on the later-step sub-grid.

        Scored on the allowed, scored points of every ``coarse_step``-th grid step. Returns
        the scored mask ``(n, m)`` and the probabilities ``(S, n, m)`` (0 elsewhere), or None
        (no later step, or a model that cannot score a shifted state: the decay is used).
        """
        depth = max((r.retries_left for r in rules), default=0) - 1
        if depth < 1 or encoder is None or not isinstance(self.model, BundleSuccessModel):
            return None
        m = grid.shape[1]
        sub = allowed & ~np.isnan(proba) & (np.arange(m) % self.config.coarse_step == 0)[None, :]
        rows, cols = np.nonzero(sub)
        gaps = self._gap_hours(batch, rules)
        gaps = np.where(gaps > 0, gaps, float(self.config.grid_hours))
        scored = self.model.score_rows_after_failures(
            encoder,
            rows,
            grid[rows, cols].view(np.int64),
            failures=depth,
            gap_hours=float(gaps[0]) if bool((gaps == gaps[0]).all()) else gaps[rows],
        )
        points = np.zeros((depth, *grid.shape))
        points[:, rows, cols] = scored
        return sub, points

    @staticmethod
    def _later_proba(points: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray | None:
        """``(S, n, m)`` later-step probabilities, linear between the scored sub-grid points.

        Constant before the first and after the last scored point of a row; the same function
        of the sub-grid whatever else was scored (the coarse search never sees more than the
        hourly one).
        """
        if points is None:
            return None
        sub, values = points
        m = sub.shape[1]
        j = np.arange(m)
        before = np.maximum.accumulate(np.where(sub, j[None, :], -1), axis=1)
        after = np.minimum.accumulate(np.where(sub, j[None, :], m)[:, ::-1], axis=1)[:, ::-1]
        lo = np.where(before >= 0, before, np.minimum(after, m - 1))
        hi = np.where(after < m, after, lo)
        span = np.maximum(hi - lo, 1)
        w = np.clip((j[None, :] - lo) / span, 0.0, 1.0)
        shape = values.shape
        v_lo = np.take_along_axis(values, np.broadcast_to(lo, shape), axis=2)
        v_hi = np.take_along_axis(values, np.broadcast_to(hi, shape), axis=2)
        return np.asarray(v_lo + w[None] * (v_hi - v_lo))

    def _adjust(
        self,
        proba: np.ndarray,
        later: np.ndarray | None,
        allowed: np.ndarray,
        grid: np.ndarray,
        batch: DecisionBatch,
        rules: list[RuleResult],
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's timing shrinkage, then its gap support (:mod:`retryopt.model.adjust`).

        Shrinkage: each charge's logits (next retry and every later step) are pulled toward
        their mean over the allowed points of the coarse sub-grid (the same points in both
        searches) by the slope fitted at training time against the optimiser's curse. Gap
        support: the next retry's probability is multiplied by the factor of its hours since
        the charge's last attempt, a later step's by the factor of the planned gap. Unchanged
        for a model without either.
        """
        beta = float(getattr(self.model, "timing_shrinkage", 1.0))
        if beta < 1.0:
            m = proba.shape[1]
            center = allowed & (np.arange(m) % self.config.coarse_step == 0)[None, :]
            proba = shrink_timing(proba, center, beta)
            later = None if later is None else shrink_timing(later, center, beta)
        table = getattr(self.model, "gap_table", None)
        if table is None or proba.size == 0:
            return proba, later
        last = _last_attempts(rules)
        gap = np.where(
            last[:, None] > 0, (grid.view(np.int64) - last[:, None]) / NS_PER_HOUR, np.nan
        )
        proba = proba * Adjustment.gap_factor(gap, table)
        if later is not None:
            planned = Adjustment.gap_factor(self._gap_hours(batch, rules), table)
            later = later * planned[None, :, None]
        return proba, later

    def _score(
        self,
        batch: DecisionBatch,
        grid: np.ndarray,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None,
        *,
        encoder: CandidateEncoder | None = None,
    ) -> CandidateScores:
        """Score the whole grid (``encoder``: the batch's encoder when already built)."""
        if isinstance(self.model, BundleSuccessModel):
            return self.model.predict_candidates(
                batch,
                grid,
                attempts=None if columns is None else columns[0],
                history=None if columns is None else columns[1],
                encoder=encoder,
            )
        return self.model.predict_candidates(batch, grid)

    def _score_subset(
        self,
        batch: DecisionBatch,
        grid: np.ndarray,
        select: np.ndarray,
        proba: np.ndarray,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None,
        encoder: CandidateEncoder | None = None,
    ) -> None:
        """Score the grid points ``select`` (``(n, m)`` bool) into ``proba`` (in place).

        With ``encoder`` (built once per batch) only the selected rows are encoded and scored.
        """
        if encoder is not None and isinstance(self.model, BundleSuccessModel):
            rows, cols = np.nonzero(select)
            if rows.size:
                proba[rows, cols] = self.model.score_rows(encoder, rows, grid[rows, cols])
            return
        counts = select.sum(axis=1)
        width = int(counts.max(initial=0))
        if width == 0:
            return
        compact = np.full((grid.shape[0], width), np.datetime64("NaT", "ns"), grid.dtype)
        rows, cols = np.nonzero(select)
        slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        compact[rows, slot] = grid[rows, cols]
        scored = self._score(batch, compact, columns).proba
        proba[rows, cols] = scored[rows, slot]

    def _coarse_to_fine(
        self,
        batch: DecisionBatch,
        grid: np.ndarray,
        allowed: np.ndarray,
        rules: list[RuleResult],
        columns: tuple[AttemptColumns, AttemptColumns | None] | None,
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """Probabilities on a coarse grid refined around its best points; the scored mask;
        the later steps' points (:meth:`_later_points`, scored once on the coarse points).

        The candidate-independent feature state is built once (one
        :class:`features.encoder.CandidateEncoder`); each pass encodes and scores only its rows.
        """
        cfg = self.config
        m = grid.shape[1]
        j = np.arange(m)
        coarse = allowed & ((j % cfg.coarse_step == 0) | (j < cfg.dense_steps))[None, :]
        proba = np.full(grid.shape, np.nan)
        encoder: CandidateEncoder | None = None
        if isinstance(self.model, BundleSuccessModel):
            encoder = self.model.encoder(
                batch,
                attempts=None if columns is None else columns[0],
                history=None if columns is None else columns[1],
            )
        self._score_subset(batch, grid, coarse, proba, columns, encoder)
        state_encoder = encoder if self.config.later_steps == "model" else None
        if state_encoder is None:
            state_encoder = self._state_encoder(batch, rules, columns)
        later_points = self._later_points(grid, coarse, proba, batch, rules, state_encoder)
        shrunk, later = self._adjust(
            proba, self._later_proba(later_points), allowed, grid, batch, rules
        )
        values = self._values(shrunk, coarse, grid, batch, rules, later=later)
        p_rank = np.where(coarse, np.nan_to_num(proba, nan=-1.0), -np.inf)
        k = min(cfg.refine_top, m)
        tops = [np.argsort(-values, axis=1)[:, :k], np.argsort(-p_rank, axis=1)[:, :k]]
        if later is not None:
            # The later steps' own peaks (their state can favour other times than the next).
            for step in later:
                later_rank = np.where(coarse, step, -np.inf)
                tops.append(np.argsort(-later_rank, axis=1)[:, :k])
        best = np.concatenate(tops, axis=1)
        near = np.zeros(grid.shape, dtype=bool)
        reach = cfg.coarse_step - 1
        for off in range(-reach, reach + 1):
            cols = np.clip(best + off, 0, m - 1)
            near[np.arange(grid.shape[0])[:, None], cols] = True
        fine = near & allowed & ~coarse
        self._score_subset(batch, grid, fine, proba, columns, encoder)
        return proba, coarse | fine, later_points

    def _choose(
        self,
        batch: DecisionBatch,
        rules: list[RuleResult],
        zones: list[str],
        *,
        columns: tuple[AttemptColumns, AttemptColumns | None] | None = None,
    ) -> list[Decision]:
        grid, allowed = _padded(rules)
        ladder = self._guardrail(batch)
        if ladder is not None:
            allowed = apply_guardrail(grid, allowed, guardrail_deadlines(rules, ladder))
        rule_allowed = allowed
        if self.config.search == "coarse" and grid.shape[1] > self.config.dense_steps:
            proba, scored, later_points = self._coarse_to_fine(batch, grid, allowed, rules, columns)
            scores = CandidateScores(proba=proba)
            allowed = allowed & scored
        else:
            state_encoder = self._state_encoder(batch, rules, columns)
            scores = self._score(batch, grid, columns, encoder=state_encoder)
            proba = scores.proba
            later_points = self._later_points(grid, allowed, proba, batch, rules, state_encoder)
        proba, later = self._adjust(
            proba, self._later_proba(later_points), rule_allowed, grid, batch, rules
        )
        values = self._values(proba, allowed, grid, batch, rules, later=later)
        spacing = max(1, round(self.config.alternative_spacing_hours / self.config.grid_hours))
        cost = batch.constraints.objective.cost_per_attempt
        currency = batch.constraints.objective.reporting_currency
        out: list[Decision] = []
        m = grid.shape[1]
        # Whole-batch work (one numpy call per step instead of one per charge): the chosen
        # index, the alternatives' indices and the explanation's best probabilities.
        chosen, propensity = self._draw(values, rules)
        prop_l = propensity.tolist()
        explored = scheme(self.config.exploration_tolerance, self.config.exploration_share)
        alt_picks = _alternative_picks(
            values, chosen, k=self.config.n_alternatives, spacing_steps=spacing
        )
        p_rules = np.where(rule_allowed, proba, np.nan)
        best_next_day = np.fmax.reduce(p_rules[:, :24], axis=1)
        best_window = np.fmax.reduce(p_rules, axis=1)
        hours = _padded_hours(rules, m)
        night_mean = _night_means(p_rules, _NIGHT_TABLE[hours] & rule_allowed)
        grid_ns = grid.view(np.int64)
        # The per-charge loop reads Python scalars gathered for the whole batch at once (a
        # numpy scalar access costs about a microsecond here, several per charge otherwise).
        at = (np.arange(len(rules)), chosen)
        val_at = values[at].tolist()
        p_at = proba[at].tolist()
        t_at = grid_ns[at].tolist()
        hour_at = hours[at].tolist()
        next_day_l = best_next_day.tolist()
        window_l = best_window.tolist()
        night_l = night_mean.tolist()
        alt_rows = [i for i, picks in enumerate(alt_picks) for _ in picks or ()]
        alt_cols = [j for picks in alt_picks for j in picks or ()]
        alt_t = iter(grid_ns[alt_rows, alt_cols].tolist())
        alt_p = iter(proba[alt_rows, alt_cols].tolist())
        for i, r in enumerate(rules):
            j = int(chosen[i])
            value = val_at[i]
            picks = alt_picks[i]
            alternatives = (
                ()
                if picks is None
                else tuple(
                    Alternative(
                        retry_at=_timestamp(t),
                        success_probability=None if pj != pj else round(pj, 4),
                    )
                    for t, pj in zip(
                        itertools.islice(alt_t, len(picks)),
                        itertools.islice(alt_p, len(picks)),
                        strict=True,
                    )
                )
            )
            if not math.isfinite(value) or value <= 0:
                out.append(self._not_worth(r, value, batch))
                continue
            p_row = proba[i]
            factors = explanation_factors(
                r,
                zones[i],
                p_row,
                j,
                scores.features,
                i * m + j,
                best_next_day=next_day_l[i],
                best_window=window_l[i],
                night_mean=night_l[i],
                p_at=p_at[i],
                t_ns=t_at[i],
                hour=hour_at[i],
            )
            out.append(
                Decision(
                    charge_id=r.charge_id,
                    action="retry",
                    retry_at=_timestamp(t_at[i]),
                    success_probability=round(p_at[i], 4),
                    reason=str(self._reason),
                    source="model",
                    action_required=None,
                    alternatives=(
                        alternatives
                        if picks is not None
                        else _pick_alternatives(
                            grid[i],
                            values[i],
                            p_row,
                            j,
                            k=self.config.n_alternatives,
                            spacing_steps=spacing,
                        )
                    ),
                    explanation="; ".join(factors),
                    model_version=self.model_version,
                    policy=self.name,
                    expected_value=round(value, 4),
                    factors=tuple(factors),
                    attempt_cost=cost,
                    value_currency=currency,
                    propensity=prop_l[i],
                    exploration=explored,
                )
            )
        return out

    def _draw(self, values: np.ndarray, rules: list[RuleResult]) -> tuple[np.ndarray, np.ndarray]:
        """The chosen grid index per charge and its propensity (:mod:`.explore`)."""
        tolerance, share = self.config.exploration_tolerance, self.config.exploration_share
        if tolerance <= 0 or share <= 0:
            return np.argmax(values, axis=1), np.ones(len(rules))
        uniforms = state_uniforms(
            [r.charge_id for r in rules],
            [r.retries_used for r in rules],
            _last_attempts(rules).tolist(),
            seed=self.config.exploration_seed,
        )
        return near_best_draw(values, uniforms, tolerance, share)

    def _not_worth(self, r: RuleResult, value: float, batch: DecisionBatch) -> Decision:
        """``stop`` with ``not_worth_an_attempt``: the best expected value and the cost."""
        objective = batch.constraints.objective
        cost = objective.cost_per_attempt
        currency = objective.reporting_currency.upper()
        gross = max(value + cost, 0.0) if math.isfinite(value) else 0.0
        return Decision(
            charge_id=r.charge_id,
            action="stop",
            retry_at=None,
            success_probability=None,
            reason=str(Reason.NOT_WORTH_AN_ATTEMPT),
            source="expected value of every allowed time <= cost per attempt",
            action_required=None,
            alternatives=(),
            explanation=(
                f"stop: the best allowed retry is worth {gross:.4f} {currency} in expectation "
                f"(success probability x amount x discount, with the retries after it), less "
                f"than its cost of {cost:.4f} {currency}"
            ),
            model_version=self.model_version,
            policy=self.name,
            expected_value=round(gross, 4),
            attempt_cost=cost,
            value_currency=objective.reporting_currency,
        )

    _reason = Reason.MODEL_OPTIMUM


def _last_attempts(rules: list[RuleResult]) -> np.ndarray:
    """``(n,)`` last attempt time per charge (int64 ns; 0 when unknown)."""
    return np.array(
        [
            0
            if r.last_attempt is None
            else int(r.last_attempt.astype("datetime64[ns]").view(np.int64))
            for r in rules
        ],
        dtype=np.int64,
    )


def _first_failures(batch: DecisionBatch, rules: list[RuleResult]) -> np.ndarray:
    """``(n,)`` first-failure time per charge (int64 ns; the decision time when unknown)."""
    now_ns = batch.now.astype("datetime64[ns]").astype(np.int64)
    return np.array(
        [
            int(now_ns[i])
            if r.first_failure is None
            else int(r.first_failure.astype("datetime64[ns]").astype(np.int64))
            for i, r in enumerate(rules)
        ],
        dtype=np.int64,
    )


def _later_allowed(
    allowed: np.ndarray, rules: list[RuleResult], gaps: np.ndarray
) -> np.ndarray | None:
    """``(S, n, m)``: where a retry after ``s = 1 .. S`` failed planned retries stays allowed.

    The networks' caps count the plan's own earlier retries as failed attempts on the card
    (each a Visa reattempt and a Mastercard decline): Visa at most 20 reattempts in 30 days,
    Mastercard at most 10 declines in 24 hours and 35 in 30 days (VISA_SOURCE /
    MASTERCARD_SOURCE, counted by :func:`.caps._charge_room`). The planned attempts are placed
    ``gaps`` apart before the retry (:func:`features.advance.planned_within`; a real plan is at
    least that far apart, so the count is an upper bound). None when no charge's caps can bind.
    """
    depth = max((r.retries_left for r in rules), default=0) - 1
    bound = [i for i, r in enumerate(rules) if r.cap_room_30d is not None]
    if depth < 1 or not bound:
        return None
    out = np.broadcast_to(allowed, (depth, *allowed.shape)).copy()
    for i in bound:
        r = rules[i]
        assert r.cap_room_24h is not None and r.cap_room_30d is not None
        size = r.cap_room_30d.size
        for s in range(1, depth + 1):
            in_24h = int(planned_within(s, gaps[i], NS_PER_DAY / NS_PER_HOUR))
            in_30d = int(planned_within(s, gaps[i], 30 * NS_PER_DAY / NS_PER_HOUR))
            out[s - 1, i, :size] &= (r.cap_room_24h > in_24h) & (r.cap_room_30d > in_30d)
    return out


class GreedyPolicy(PlannerPolicy):
    """The ``greedy`` baseline: the allowed time with the highest success probability."""

    name = "greedy"
    _reason = Reason.GREEDY_ARGMAX

    def _values(
        self,
        proba: np.ndarray,
        allowed: np.ndarray,
        grid: np.ndarray,
        batch: DecisionBatch,
        rules: list[RuleResult],
        *,
        later: np.ndarray | None = None,
    ) -> np.ndarray:
        amount = _amounts(batch, [r.charge_id for r in rules])
        p = np.nan_to_num(proba, nan=0.0)
        # Expected value of one attempt; argmax over time = argmax of p (earliest on ties).
        val = p * amount[:, None] - batch.constraints.objective.cost_per_attempt
        return np.where(allowed, val, -np.inf)
