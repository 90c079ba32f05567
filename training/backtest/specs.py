"""Policy specs of ``retryopt backtest --policy SPEC`` and the small policies they name.

Specs: ``logged`` (what happened), ``fixed:72,120,168,216`` (hours after the first failure),
``random`` (uniform over the allowed window), ``greedy:MODEL`` and ``model:MODEL`` (the serving
policies over a bundle path or MLflow registry name) and, on simulated data only, ``oracle``.

:class:`FixedSchedule` and :class:`UniformRandom` apply the same hard-decline rule as the shipped
policies (never retry a hard decline; Visa category 1 and the Stripe never-retry codes, see
``features.taxonomy``), so "retries of hard declines" is zero for every policy we would ship.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from retryopt.features import contract as c
from retryopt.features.decisions import DecisionBatch, PolicyDecisions

HOUR = np.timedelta64(3600, "s").astype("timedelta64[ns]")


class SpecError(ValueError):
    """A ``--policy`` spec that cannot be parsed or used."""


@dataclass(frozen=True, kw_only=True)
class PolicySpec:
    """A parsed policy spec."""

    kind: str  # logged | fixed | random | greedy | model | oracle | fallback
    label: str
    hours: tuple[float, ...] = ()
    model: str | None = None


KINDS = ("logged", "fixed", "random", "greedy", "model", "oracle", "fallback")


def parse_spec(spec: str) -> PolicySpec:
    """Parse one ``--policy`` value.

    Parameters
    ----------
    spec
        ``logged``, ``random``, ``oracle``, ``fallback``, ``fixed:H1,H2,...`` or
        ``greedy:MODEL`` / ``model:MODEL``.

    Raises
    ------
    SpecError
        Naming the spec and what is wrong with it.
    """
    text = spec.strip()
    kind, _, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise SpecError(f"unknown policy spec {spec!r}: the kind must be one of {', '.join(KINDS)}")
    if kind == "fixed":
        try:
            hours = tuple(float(h) for h in arg.split(",") if h.strip())
        except ValueError as exc:
            raise SpecError(f"policy spec {spec!r}: hours must be numbers, got {arg!r}") from exc
        if not hours:
            raise SpecError(f"policy spec {spec!r}: give hours after the first failure")
        if any(h <= 0 for h in hours) or any(b <= a for a, b in itertools.pairwise(hours)):
            raise SpecError(f"policy spec {spec!r}: hours must be positive and increasing")
        return PolicySpec(
            kind=kind, label=f"fixed:{','.join(f'{h:g}' for h in hours)}", hours=hours
        )
    if kind in ("greedy", "model"):
        if not arg.strip():
            raise SpecError(f"policy spec {spec!r}: give a model bundle path or registry name")
        return PolicySpec(kind=kind, label=f"{kind}", model=arg.strip())
    if arg.strip():
        raise SpecError(f"policy spec {spec!r}: {kind} takes no argument")
    return PolicySpec(kind=kind, label=kind)


def unique_labels(specs: list[PolicySpec]) -> list[PolicySpec]:
    """Make labels unique (``model``, ``model#2``) when a kind appears several times."""
    seen: dict[str, int] = {}
    out = []
    for s in specs:
        n = seen.get(s.label, 0) + 1
        seen[s.label] = n
        out.append(s if n == 1 else PolicySpec(**{**s.__dict__, "label": f"{s.label}#{n}"}))
    return out


def _hard_last_decline(batch: DecisionBatch) -> np.ndarray:
    """Whether each charge's last decline is hard (never retry) per the taxonomy."""
    from retryopt.features.taxonomy import classify_codes

    att = batch.attempts
    if not len(att):
        return np.zeros(len(batch.charge_ids), dtype=bool)
    last = att.groupby(c.CHARGE_ID, sort=False).tail(1).set_index(c.CHARGE_ID)
    info = classify_codes(last[c.DECLINE_CODE], last[c.NETWORK_ADVICE_CODE])
    hard = pd.Series(
        info["hard"].to_numpy(dtype=bool) | (info["rule"].astype(str) != "retry").to_numpy(),
        index=last.index,
    )
    return hard.reindex(pd.Index(batch.charge_ids)).fillna(False).to_numpy(dtype=bool)


def _charge_times(batch: DecisionBatch) -> tuple[np.ndarray, np.ndarray]:
    """First-failure time and number of retries so far per charge of the batch."""
    att = batch.attempts
    g = att.groupby(c.CHARGE_ID, sort=False)[c.ATTEMPTED_AT]
    first = g.min().dt.tz_convert("UTC").dt.tz_localize(None)
    count = g.size()
    ids = pd.Index(batch.charge_ids)
    t0 = first.reindex(ids).to_numpy(dtype="datetime64[ns]")
    used = count.reindex(ids).fillna(1).to_numpy(dtype=np.int64) - 1
    return t0, used


class FixedSchedule:
    """Retry ``k`` at ``hours[k-1]`` after the first failure (later if the gap requires).

    Stops after a hard decline, when the schedule or the retry budget is used up, or when the
    time falls outside the window.
    """

    def __init__(self, hours: tuple[float, ...], *, name: str | None = None) -> None:
        self.hours = tuple(float(h) for h in hours)
        self.name = name or f"fixed:{','.join(f'{h:g}' for h in self.hours)}"

    def decide(self, batch: DecisionBatch) -> PolicyDecisions:
        """Decide every charge of ``batch``."""
        n = len(batch.charge_ids)
        t0, used = _charge_times(batch)
        cons = batch.constraints
        sched = np.asarray((*self.hours, np.inf))
        k = np.minimum(used, len(self.hours))
        offset = sched[k]
        now = np.asarray(batch.now, dtype="datetime64[ns]")
        gap = (cons.min_gap_hours * 3600 * 1e9) if cons.min_gap_hours else 0.0
        finite = np.isfinite(offset)
        at = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
        at[finite] = t0[finite] + (offset[finite] * 3600 * 1e9).astype("timedelta64[ns]")
        earliest = now + np.timedelta64(int(gap), "ns")
        at = np.where(finite & (at < earliest), earliest, at)
        end = t0 + np.timedelta64(int(cons.window_hours * 3600 * 1e9), "ns")
        stop = ~finite | (used >= cons.max_retries) | (at > end) | _hard_last_decline(batch)
        at = np.where(stop, np.datetime64("NaT"), at).astype("datetime64[ns]")
        reason = np.where(stop, "stop", "fixed_schedule").astype(object)
        return PolicyDecisions(retry_at=at, propensity=np.ones(n), reason=reason)


class UniformRandom:
    """Retry at a uniformly random hour between the minimum gap and the end of the window.

    Stops after a hard decline and when the budget is used up. Seeded.
    """

    def __init__(self, *, seed: int = 0, name: str = "random") -> None:
        self.name = name
        self._rng = np.random.default_rng(seed)

    def decide(self, batch: DecisionBatch) -> PolicyDecisions:
        """Decide every charge of ``batch``."""
        n = len(batch.charge_ids)
        t0, used = _charge_times(batch)
        cons = batch.constraints
        now = np.asarray(batch.now, dtype="datetime64[ns]")
        lo = (now - t0).astype(np.int64) / 3.6e12 + max(cons.min_gap_hours, 1.0)
        hi = np.full(n, cons.window_hours)
        span = np.maximum(0, np.floor(hi - lo))
        draw = lo + np.floor(self._rng.random(n) * (span + 1))
        stop = (span <= 0) | (used >= cons.max_retries) | _hard_last_decline(batch)
        at = t0 + (np.where(stop, 0, draw) * 3.6e12).astype("timedelta64[ns]")
        at = np.where(stop, np.datetime64("NaT"), at).astype("datetime64[ns]")
        prop = np.where(stop, 1.0, 1.0 / np.maximum(span + 1, 1))
        reason = np.where(stop, "stop", "uniform_random").astype(object)
        return PolicyDecisions(retry_at=at, propensity=prop, reason=reason)

    def action_probability(self, batch: DecisionBatch, retry_at: np.ndarray) -> np.ndarray:
        """Probability that :meth:`decide` picks the hourly slot of ``retry_at`` (per charge).

        ``1 / (span + 1)`` when ``retry_at`` is on the policy's grid ``lo + {0..span}`` hours,
        0 outside it or where the policy stops. Used for exact importance ratios.
        """
        n = len(batch.charge_ids)
        t0, used = _charge_times(batch)
        cons = batch.constraints
        now = np.asarray(batch.now, dtype="datetime64[ns]")
        lo = (now - t0).astype(np.int64) / 3.6e12 + max(cons.min_gap_hours, 1.0)
        hi = np.full(n, cons.window_hours)
        span = np.maximum(0, np.floor(hi - lo))
        stop = (span <= 0) | (used >= cons.max_retries) | _hard_last_decline(batch)
        h = (np.asarray(retry_at, dtype="datetime64[ns]") - t0).astype(np.int64) / 3.6e12
        off = h - lo
        on_grid = (off > -1e-6) & (off < span + 1e-6) & (np.abs(off - np.round(off)) < 1e-6)
        return np.where(~stop & on_grid, 1.0 / np.maximum(span + 1, 1), 0.0)


def build_policy(spec: PolicySpec, *, seed: int = 0, world: object | None = None) -> object:
    """Instantiate the :class:`~features.decisions.RetryPolicy` of a spec.

    ``logged`` has no policy object (the history is replayed); ``oracle`` needs the simulated
    world; ``greedy`` / ``model`` load the bundle (path or registry name) and wrap it in the
    serving policies.
    """
    if spec.kind == "fixed":
        return FixedSchedule(spec.hours, name=spec.label)
    if spec.kind == "random":
        return UniformRandom(seed=seed, name=spec.label)
    if spec.kind in ("greedy", "model", "fallback"):
        from retryopt.serving.policies import (
            BundleSuccessModel,
            FallbackPolicy,
            GreedyPolicy,
            PlannerPolicy,
        )

        if spec.kind == "fallback":
            return FallbackPolicy()
        from retryopt.training.bundle import resolve_model

        assert spec.model is not None
        bundle = resolve_model(spec.model)
        model = BundleSuccessModel(bundle)
        return GreedyPolicy(model) if spec.kind == "greedy" else PlannerPolicy(model)
    if spec.kind == "oracle":
        if world is None:
            raise SpecError("policy spec 'oracle' needs simulated data (--simulate)")
        from retryopt.training.simulate import OraclePolicy

        return OraclePolicy(world)  # type: ignore[arg-type]
    raise SpecError(f"policy spec {spec.label!r} has no policy object (it replays the history)")
