"""Policies of the synthetic world (both implement ``features.decisions.RetryPolicy``).

- :class:`LoggingPolicy`: the world's logging policy (schedule mixed with exploration).
- :class:`OraclePolicy`: knows the ground truth and picks the best times under the budget.

The model-free baselines (fixed schedule, uniform random) are :mod:`serving.policies`'
``FixedSchedule`` and ``UniformRandom``, held to the same network rules as the planner.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retryopt.features import contract as C  # noqa: N812
from retryopt.features.decisions import Constraints, DecisionBatch, PolicyDecisions
from retryopt.features.localtime import NS_PER_HOUR
from retryopt.training.simulate.config import LoggingPolicyConfig
from retryopt.training.simulate.logging_policy import logging_retry_offsets
from retryopt.training.simulate.truth import (
    HistoryFeatures,
    crn_uniforms,
    failure_probabilities,
    history_features,
    success_from_failures,
)
from retryopt.training.simulate.world import SimulatedWorld

__all__ = ["LoggingPolicy", "OraclePolicy", "charge_progress"]

NAT = np.datetime64("NaT", "ns")


def _ns(values: pd.Series) -> np.ndarray:
    idx = pd.DatetimeIndex(values)
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    return idx.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def charge_progress(batch: DecisionBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-attempt time (ns), attempts so far and ``now`` (ns) per charge of ``batch``.

    Only rows with ``attempted_at <= now`` of their charge count. A charge without rows is
    treated as first attempted at ``now``.
    """
    now = np.asarray(batch.now).astype("datetime64[ns]").astype(np.int64)
    ids = pd.Index(np.asarray(batch.charge_ids, dtype=object))
    a = batch.attempts
    n = len(ids)
    if a is None or len(a) == 0:
        return now.copy(), np.zeros(n, dtype=np.int64), now
    where = ids.get_indexer(a[C.CHARGE_ID].to_numpy(dtype=object))
    t = _ns(a[C.ATTEMPTED_AT])
    keep = where >= 0
    where, t = where[keep], t[keep]
    keep = t <= now[where]
    where, t = where[keep], t[keep]
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, where, t)
    first = np.where(first == np.iinfo(np.int64).max, now, first)
    count = np.bincount(where, minlength=n).astype(np.int64)
    return first, count, now


def _charge_keys(charge_ids: np.ndarray) -> np.ndarray:
    """Stable 64-bit keys of charge ids (for per-charge random streams)."""
    return pd.util.hash_array(np.asarray(charge_ids, dtype=object)).astype(np.uint64)


class LoggingPolicy:
    """The world's logging policy (see :mod:`training.simulate.logging_policy`) as a policy.

    It ignores decline codes (stopping on hard declines is the world's history rule only).
    """

    def __init__(self, config: LoggingPolicyConfig, *, seed: int, name: str = "logging") -> None:
        self.config = config
        self.seed = seed
        self.name = name

    def decide(self, batch: DecisionBatch) -> PolicyDecisions:
        """Schedule time with probability ``1 - eps``, else a uniform grid hour."""
        first, count, now = charge_progress(batch)
        keys = _charge_keys(batch.charge_ids)
        u = crn_uniforms(self.seed, keys, count, 2)
        prev_offset = (now - first) / NS_PER_HOUR
        offset, prop = logging_retry_offsets(self.config, 1, prev_offset, u[:, 0], u[:, 1])
        # Retry number differs per charge: compute per distinct k.
        for k in np.unique(count):
            rows = count == k
            o, p = logging_retry_offsets(
                self.config, int(k), prev_offset[rows], u[rows, 0], u[rows, 1]
            )
            offset[rows], prop[rows] = o, p
        stop = np.isnan(offset) | ((count - 1) >= batch.constraints.max_retries)
        t = first + (np.nan_to_num(offset) * NS_PER_HOUR).astype(np.int64)
        retry_at = np.where(stop, NAT, t.astype("datetime64[ns]"))
        reason = np.where(stop, "schedule_done", "logging").astype(object)
        return PolicyDecisions(
            retry_at=retry_at, propensity=np.where(stop, 1.0, prop), reason=reason
        )


class OraclePolicy:
    """Knows the ground truth; picks retry times maximising the decision objective.

    The objective is the constraints' :class:`features.objective.Objective`, the one the
    planner maximises and the backtest reports as ``discounted_value``: the charge's amount
    ``A`` in the reporting currency, discounted by ``d(t)`` from the first failure, minus the
    cost ``c`` of every attempt. For each charge it evaluates the true success probability on
    an hourly grid from ``now + min_gap`` to the end of the window. The next retry's time
    maximises

        ``p(t) A d(t) - c + (1 - p(t)) * V_1(t)``

    where ``p`` is exact (given the real attempt history: failures, gap, velocity) and ``V_1``
    is the value of the remaining budget computed by dynamic programming backwards over the
    grid, ``V_j(t) = max(0, max_{t' >= t + safe_gap} [q_j(t') A d(t') - c
    + (1 - q_j(t')) V_{j+1}(t')])`` (``0``: stop), with ``q_j`` the true probability after ``j``
    more failures and no recent attempt (the oracle keeps ``safe_gap_hours`` between its own
    retries so the gap and velocity effects vanish). It re-plans every round (receding horizon)
    and stops when no retry is worth its cost (with no cost and no discounting: when no time has
    a positive chance, e.g. hard declines, authentication required, an expired card never
    updated in the window). Under the money-only objective it maximises the expected recovered
    amount, as before the objective existed.
    """

    def __init__(
        self,
        world: SimulatedWorld,
        *,
        safe_gap_hours: int = 24,
        chunk: int = 1024,
        name: str = "oracle",
    ) -> None:
        self.world = world
        self.safe_gap_hours = int(safe_gap_hours)
        self.chunk = int(chunk)
        self.name = name

    def decide(self, batch: DecisionBatch) -> PolicyDecisions:
        """Best time per charge under the remaining budget (``NaT`` = no chance left)."""
        world = self.world
        ids = np.asarray(batch.charge_ids, dtype=object)
        n = ids.size
        pos = world.positions(ids)
        cons = batch.constraints
        now_h = world.to_hours(np.asarray(batch.now).astype("datetime64[ns]"))
        prev = _attempt_matrix(world, batch, ids, now_h)
        first_h = np.where(np.isnan(prev).all(axis=1), now_h, np.nanmin(prev, axis=1))
        n_prev = (~np.isnan(prev)).sum(axis=1)
        remaining = cons.max_retries - (np.maximum(n_prev, 1) - 1)
        objective = cons.objective
        cust = world.charge_customer[pos]
        amount = objective.amounts(
            world.customers.amount_minor[cust], world.truth["currency"].to_numpy()[pos]
        )
        retry_h = np.full(n, np.nan)
        best = np.zeros(n)
        for lo in range(0, n, self.chunk):
            sl = slice(lo, min(n, lo + self.chunk))
            retry_h[sl], best[sl] = self._plan(
                pos[sl], prev[sl], now_h[sl], first_h[sl], remaining[sl], amount[sl], cons
            )
        stop = np.isnan(retry_h) | (remaining <= 0) | (best <= 1e-9 * amount)
        retry_at = np.where(stop, NAT, world.from_hours(np.where(stop, 0.0, retry_h)))
        reason = np.where(stop, "no_chance", "oracle_optimum").astype(object)
        return PolicyDecisions(retry_at=retry_at, propensity=np.ones(n), reason=reason)

    def _plan(
        self,
        pos: np.ndarray,
        prev: np.ndarray,
        now_h: np.ndarray,
        first_h: np.ndarray,
        remaining: np.ndarray,
        amount: np.ndarray,
        cons: Constraints,
    ) -> tuple[np.ndarray, np.ndarray]:
        world = self.world
        objective = cons.objective
        cost = objective.cost_per_attempt
        n = pos.size
        g = int(np.floor(cons.window_hours)) + 1
        start = np.ceil(now_h + cons.min_gap_hours - 1e-9)
        times = start[:, None] + np.arange(g)[None, :]
        valid = times <= (first_h + cons.window_hours)[:, None] + 1e-9
        if cons.quiet_hours is not None:
            hod = world.local_hour_of_day(pos, times)
            a, b = cons.quiet_hours
            valid &= ~(np.mod(hod - a, 24.0) < (b - a) % 24)
        state = world.state.take(pos)
        p_now = success_from_failures(
            failure_probabilities(
                world.config, world.tables, state, times, history_features(prev, times)
            )
        )
        # value of collecting at each grid time: the amount discounted from the first failure
        worth = amount[:, None] * objective.discount((times - first_h[:, None]) / 24.0)
        n_prev = (~np.isnan(prev)).sum(axis=1)
        cont = np.zeros((n, g))  # value of the budget left after a failure at each grid time
        s = self.safe_gap_hours
        max_left = int(max(remaining.max(initial=0) - 1, 0))
        for j in range(max_left, 0, -1):
            hist = HistoryFeatures(
                n_failed=np.broadcast_to((n_prev + j)[:, None], times.shape).astype(np.float64),
                gap_hours=np.full(times.shape, np.inf),
                recent_24h=np.zeros(times.shape),
            )
            q = success_from_failures(
                failure_probabilities(world.config, world.tables, state, times, hist)
            )
            w = np.where(valid, q * worth - cost + (1.0 - q) * cont, 0.0)
            w = np.where((remaining - 1 >= j)[:, None], w, 0.0)
            suffix = np.maximum(np.maximum.accumulate(w[:, ::-1], axis=1)[:, ::-1], 0.0)
            cont = np.zeros((n, g))
            if s < g:
                cont[:, : g - s] = suffix[:, s:]
        score = np.where(valid, p_now * worth - cost + (1.0 - p_now) * cont, -np.inf)
        k = np.argmax(score, axis=1)
        best = score[np.arange(n), k]
        chosen = times[np.arange(n), k]
        return np.where(best > 0, chosen, np.nan), np.maximum(best, 0.0)


def _attempt_matrix(
    world: SimulatedWorld, batch: DecisionBatch, ids: np.ndarray, now_h: np.ndarray
) -> np.ndarray:
    """``(n, k)`` NaN-padded hours of each charge's attempts at or before ``now``."""
    a = batch.attempts
    n = ids.size
    if a is None or len(a) == 0:
        return np.full((n, 1), np.nan)
    where = pd.Index(ids).get_indexer(a[C.CHARGE_ID].to_numpy(dtype=object))
    t = world.to_hours(a[C.ATTEMPTED_AT])
    keep = (where >= 0) & (t <= now_h[np.maximum(where, 0)] + 1e-9)
    where, t = where[keep], t[keep]
    order = np.lexsort((t, where))
    where, t = where[order], t[order]
    counts = np.bincount(where, minlength=n)
    width = max(int(counts.max(initial=0)), 1)
    rank = np.arange(where.size) - np.repeat(np.cumsum(counts) - counts, counts)
    out = np.full((n, width), np.nan)
    out[where, rank] = t
    return out
