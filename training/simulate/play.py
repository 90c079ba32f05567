"""Play a retry policy forward on failed charges of a world, with common random numbers.

Each charge starts from its logged first (failed) attempt. In batched rounds, every charge that
is still being collected is put in one :class:`~features.decisions.DecisionBatch`; the policy
answers with retry times; :func:`play` enforces the constraints and draws the outcomes from the
ground truth. The uniform that decides retry ``k`` of a charge depends only on (``seed``, charge,
``k``), and the charge's persistent hidden state is the world's, so two policies played with the
same seed are compared on the same luck.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features import contract as C  # noqa: N812
from retryopt.features.decisions import Constraints, DecisionBatch, RetryPolicy
from retryopt.training.simulate.config import CODE_NAMES
from retryopt.training.simulate.truth import crn_uniforms
from retryopt.training.simulate.world import SimulatedWorld

__all__ = ["PlayResult", "play", "play_seed"]


def play_seed(seed: int) -> int:
    """The common-random-number key of a play seed (distinct from the world's own history)."""
    return int(np.random.SeedSequence([seed, 0x91A7]).generate_state(1, np.uint64)[0])


@dataclass
class PlayResult:
    """Outcome of playing one policy.

    Attributes
    ----------
    policy
        The policy's name.
    charges
        One row per charge: ``charge_id``, ``customer_id``, ``amount``, ``currency``,
        ``amount_usd``, ``first_failed_at``, ``recovered``, ``recovered_at``, ``retries``,
        ``hours_to_recovery``, ``decline_codes`` (``|``-joined, first attempt included),
        ``stop_reason``.
    attempts
        Contract rows of the first attempts and every played retry (``retry_propensity`` = the
        policy's propensity).
    """

    policy: str
    charges: pd.DataFrame
    attempts: pd.DataFrame
    constraints: Constraints = field(default_factory=Constraints)

    def summary(self) -> dict[str, float]:
        """Recovery rate, recovered amount (USD), retries per charge, time to recovery."""
        ch = self.charges
        rec = ch["recovered"].to_numpy(dtype=bool)
        hours = ch.loc[rec, "hours_to_recovery"].to_numpy(dtype=np.float64)
        total_usd = float(ch["amount_usd"].sum())
        return {
            "charges": float(len(ch)),
            "recovered": float(rec.sum()),
            "recovery_rate": float(rec.mean()) if len(ch) else float("nan"),
            "recovered_amount_usd": float(ch.loc[rec, "amount_usd"].sum()),
            "recovered_amount_share": float(ch.loc[rec, "amount_usd"].sum() / total_usd)
            if total_usd > 0
            else float("nan"),
            "retries_per_charge": float(ch["retries"].mean()) if len(ch) else float("nan"),
            "retries_per_recovery": float(ch["retries"].sum() / rec.sum())
            if rec.any()
            else float("nan"),
            "median_hours_to_recovery": float(np.median(hours)) if hours.size else float("nan"),
            "p90_hours_to_recovery": float(np.quantile(hours, 0.9)) if hours.size else float("nan"),
        }


def _quiet_shift(local_hod: np.ndarray, quiet: tuple[int, int] | None) -> np.ndarray:
    """Hours to add so that a time in the quiet hours moves to their end (0 otherwise)."""
    if quiet is None:
        return np.zeros_like(local_hod)
    start, end = quiet
    span = (end - start) % 24
    inside = np.mod(local_hod - start, 24.0) < span
    return np.where(inside, np.mod(end - local_hod, 24.0), 0.0)


def play(
    policy: RetryPolicy,
    world: SimulatedWorld,
    charges: Any,
    constraints: Constraints,
    *,
    seed: int,
) -> PlayResult:
    """Replay ``charges`` from their first failure with ``policy`` choosing the retries.

    Parameters
    ----------
    policy
        Any :class:`~features.decisions.RetryPolicy`.
    world
        The world whose ground truth decides the outcomes.
    charges
        Charge ids whose first attempt failed (e.g. :meth:`SimulatedWorld.failed_charges`).
    constraints
        Budget and limits; :func:`play` enforces ``max_retries``, ``window_hours`` (retries
        after the window are dropped and end the charge), ``min_gap_hours`` (earlier retries are
        moved to ``now + min_gap``) and ``quiet_hours`` (moved to the end of the quiet period,
        customer-local time).
    seed
        Common-random-number seed: the same seed gives every policy the same uniform for the
        ``k``-th retry of each charge.

    Returns
    -------
    PlayResult

    Notes
    -----
    The batch's ``history`` is the world's logged attempts of all *other* charges (it contains
    rows after ``now``: policies must filter by ``attempted_at < now`` as the protocol says).
    """
    ids = np.asarray(
        pd.Index(np.atleast_1d(np.asarray(charges, dtype=object))).unique(), dtype=object
    )
    pos = world.positions(ids)
    first_failed = world.charge_outcome["first_failed"][pos]
    if not first_failed.all():
        bad = ids[~first_failed][:5].tolist()
        raise ValueError(
            f"play needs charges whose first attempt failed; these succeeded: {bad} "
            f"({int((~first_failed).sum())} in all)"
        )
    n = pos.size
    t0 = world.charge_first_h[pos]
    first_code = world.charge_outcome["first_code"][pos]
    first_advice = world.charge_outcome["first_advice"][pos]
    rows = [
        world.contract_rows(
            pos,
            np.zeros(n, dtype=np.int64),
            t0,
            np.zeros(n, dtype=bool),
            first_code,
            first_advice,
            np.full(n, np.nan),
            prefix="a",
        )
    ]
    history = world.attempts[~world.attempts[C.CHARGE_ID].isin(pd.Index(ids))]
    history = history.reset_index(drop=True)
    r_max = constraints.max_retries
    prev = np.full((n, r_max + 1), np.nan)
    prev[:, 0] = t0
    retries = np.zeros(n, dtype=np.int64)
    recovered = np.zeros(n, dtype=bool)
    recovered_h = np.full(n, np.nan)
    stopped = np.zeros(n, dtype=bool)
    stop_reason = np.full(n, "budget_exhausted", dtype=object)
    codes: list[list[int]] = [[int(c)] for c in first_code]
    key = play_seed(seed)
    window_end = t0 + constraints.window_hours
    for k in range(1, r_max + 1):
        active = np.flatnonzero(~recovered & ~stopped & (retries == k - 1))
        if active.size == 0:
            break
        now_h = prev[active, k - 1]
        so_far = pd.concat(rows, ignore_index=True)
        so_far = so_far[so_far[C.CHARGE_ID].isin(pd.Index(ids[active]))].reset_index(drop=True)
        batch = DecisionBatch(
            charge_ids=ids[active],
            now=world.from_hours(now_h),
            attempts=so_far,
            history=history,
            constraints=constraints,
        )
        decision = policy.decide(batch)
        retry_at = np.asarray(decision.retry_at)
        if retry_at.shape != (active.size,):
            raise ValueError(
                f"policy {policy.name!r} returned {retry_at.shape} retry times for "
                f"{active.size} charges"
            )
        t = world.to_hours(retry_at).astype(np.float64)
        propensity = np.asarray(decision.propensity, dtype=np.float64).reshape(-1)
        stop = np.isnan(t)
        stop_reason[active[stop]] = np.asarray(decision.reason, dtype=object).reshape(-1)[stop]
        t = np.maximum(t, now_h + constraints.min_gap_hours)
        hod = world.local_hour_of_day(pos[active], t[:, None])[:, 0]
        t = t + _quiet_shift(np.where(np.isnan(hod), 0.0, hod), constraints.quiet_hours)
        late = ~stop & (t > window_end[active] + 1e-9)
        stop_reason[active[late]] = "window_exceeded"
        stop = stop | late
        stopped[active[stop]] = True
        go = ~stop
        rows_go = active[go]
        if rows_go.size == 0:
            continue
        t_go = np.round(t[go] * 3600.0) / 3600.0
        u = crn_uniforms(key, pos[rows_go], np.full(rows_go.size, k), 4)
        success, code, advice, _ = world.sample_hours(pos[rows_go], prev[rows_go, :k], t_go, u)
        prev[rows_go, k] = t_go
        retries[rows_go] = k
        recovered[rows_go[success]] = True
        recovered_h[rows_go[success]] = t_go[success]
        for i, c in zip(rows_go[~success], code[~success], strict=True):
            codes[i].append(int(c))
        rows.append(
            world.contract_rows(
                pos[rows_go],
                np.full(rows_go.size, k),
                t_go,
                success,
                code,
                advice,
                propensity[go],
                prefix="p",
            )
        )
    stop_reason[recovered] = "recovered"
    attempts = pd.concat(rows, ignore_index=True)
    attempts = attempts.sort_values([C.ATTEMPTED_AT, C.ATTEMPT_ID], kind="mergesort")
    cust = world.charge_customer[pos]
    frame = pd.DataFrame(
        {
            "charge_id": pd.array(ids.astype(str), dtype="str"),
            "customer_id": pd.array(world.customer_ids[cust].astype(str), dtype="str"),
            "amount": world.customers.amount_minor[cust].astype(np.int64),
            "currency": pd.array(world.truth["currency"].to_numpy()[pos], dtype="str"),
            "amount_usd": world.customers.amount_usd[cust],
            "first_failed_at": pd.DatetimeIndex(world.from_hours(t0)).tz_localize("UTC"),
            "recovered": recovered,
            "recovered_at": pd.DatetimeIndex(world.from_hours(recovered_h)).tz_localize("UTC"),
            "retries": retries,
            "hours_to_recovery": recovered_h - t0,
            "decline_codes": pd.array(
                ["|".join(CODE_NAMES[c] for c in cs if c >= 0) for cs in codes], dtype="str"
            ),
            "stop_reason": pd.array(stop_reason.astype(str), dtype="str"),
        }
    )
    return PlayResult(
        policy=str(policy.name),
        charges=frame,
        attempts=attempts.reset_index(drop=True),
        constraints=constraints,
    )
