"""Policy specs of ``retryopt backtest --policy SPEC``: the only place spec strings are parsed.

Specs: ``logged`` (what happened), ``fixed:72,120,168,216`` (hours after the first failure),
``random`` (uniform over the allowed grid times), ``greedy:MODEL`` and ``model:MODEL`` (the
serving policies over a bundle path or MLflow registry name), ``model:MODEL@guardrail=72,120``
(the planner in guardrail mode: the static schedule is a floor, :mod:`serving.policies.guardrail`;
labelled ``model+guardrail``), ``model:MODEL@explore=SHARE,TOLERANCE`` (e.g.
``@explore=0.3,0.05``, also for ``greedy``: the service's safe exploration,
:mod:`serving.policies.explore`; labelled ``model+explore``), ``fallback`` (the rules-only
fallback) and, on simulated data only, ``oracle``.

Every policy but ``logged`` and ``oracle`` is one of :mod:`serving.policies`, so the baselines
obey the same network rules, through the same code, as the planner they are compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retryopt.features.decisions import RetryPolicy
from retryopt.model.registry import resolve_model
from retryopt.serving.arms import parse_schedule_hours
from retryopt.serving.policies import (
    BundleSuccessModel,
    FallbackPolicy,
    FixedSchedule,
    GreedyPolicy,
    PlannerConfig,
    PlannerPolicy,
    UniformRandom,
)
from retryopt.training.simulate import OraclePolicy, SimulatedWorld


class SpecError(ValueError):
    """A ``--policy`` spec that cannot be parsed or used."""


@dataclass(frozen=True, kw_only=True)
class PolicySpec:
    """A parsed policy spec."""

    kind: str  # logged | fixed | random | greedy | model | oracle | fallback
    label: str
    hours: tuple[float, ...] = ()
    model: str | None = None
    guardrail: tuple[float, ...] | None = None
    explore: tuple[float, float] = (0.0, 0.0)  # (share, tolerance)


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
        hours = _hours(spec, arg)
        return PolicySpec(
            kind=kind, label=f"fixed:{','.join(f'{h:g}' for h in hours)}", hours=hours
        )
    if kind in ("greedy", "model"):
        model, _, option = arg.partition("@")
        if not model.strip():
            raise SpecError(f"policy spec {spec!r}: give a model bundle path or registry name")
        if not option:
            return PolicySpec(kind=kind, label=f"{kind}", model=model.strip())
        name, _, value = option.partition("=")
        name = name.strip().lower()
        if name == "explore":
            return PolicySpec(
                kind=kind,
                label=f"{kind}+explore",
                model=model.strip(),
                explore=_exploration(spec, value),
            )
        if kind != "model" or name != "guardrail":
            raise SpecError(
                f"policy spec {spec!r}: the only options are model:MODEL@guardrail=H1,H2,... and "
                "model:MODEL@explore=SHARE,TOLERANCE (or greedy:MODEL@explore=...)"
            )
        return PolicySpec(
            kind=kind,
            label="model+guardrail",
            model=model.strip(),
            guardrail=_hours(spec, value),
        )
    if arg.strip():
        raise SpecError(f"policy spec {spec!r}: {kind} takes no argument")
    return PolicySpec(kind=kind, label=kind)


def _hours(spec: str, arg: str) -> tuple[float, ...]:
    """Positive increasing hours after the first failure, from ``"72,120,..."``."""
    try:
        return parse_schedule_hours(arg)
    except ValueError as exc:
        raise SpecError(f"policy spec {spec!r}: {exc}") from None


def _exploration(spec: str, arg: str) -> tuple[float, float]:
    """``(share, tolerance)`` from ``"0.3,0.05"``: share in (0, 1], tolerance in (0, 1)."""
    try:
        share, tolerance = (float(x) for x in arg.split(","))
    except ValueError as exc:
        raise SpecError(
            f"policy spec {spec!r}: explore= takes SHARE,TOLERANCE (e.g. 0.3,0.05), got {arg!r}"
        ) from exc
    if not (0 < share <= 1 and 0 < tolerance < 1):
        raise SpecError(
            f"policy spec {spec!r}: explore= needs 0 < share <= 1 and 0 < tolerance < 1"
        )
    return share, tolerance


def unique_labels(specs: list[PolicySpec]) -> list[PolicySpec]:
    """Make labels unique (``model``, ``model#2``) when a kind appears several times."""
    seen: dict[str, int] = {}
    out = []
    for s in specs:
        n = seen.get(s.label, 0) + 1
        seen[s.label] = n
        out.append(s if n == 1 else PolicySpec(**{**s.__dict__, "label": f"{s.label}#{n}"}))
    return out


def build_policy(
    spec: PolicySpec, *, seed: int = 0, world: SimulatedWorld | None = None
) -> RetryPolicy:
    """Instantiate the :class:`~features.decisions.RetryPolicy` of a spec.

    ``logged`` has no policy object (the history is replayed); ``oracle`` needs the simulated
    world; ``greedy`` / ``model`` load the bundle (path or registry name) and wrap it in the
    serving policies.
    """
    if spec.kind == "fixed":
        return FixedSchedule(spec.hours, name=spec.label)
    if spec.kind == "random":
        return UniformRandom(seed=seed, name=spec.label)
    if spec.kind == "fallback":
        return FallbackPolicy()
    if spec.kind in ("greedy", "model"):
        assert spec.model is not None
        bundle = resolve_model(spec.model)
        model = BundleSuccessModel(bundle)
        config = PlannerConfig(
            exploration_share=spec.explore[0],
            exploration_tolerance=spec.explore[1],
            exploration_seed=seed,
        )
        if spec.kind == "greedy":
            return GreedyPolicy(model, config=config)
        return PlannerPolicy(model, config=config, guardrail_hours=spec.guardrail)
    if spec.kind == "oracle":
        if world is None:
            raise SpecError("policy spec 'oracle' needs simulated data (--simulate)")
        return OraclePolicy(world)
    raise SpecError(f"policy spec {spec.label!r} has no policy object (it replays the history)")


def build_policies(
    specs: Sequence[str], *, seed: int = 0, world: SimulatedWorld | None = None
) -> tuple[list[PolicySpec], dict[str, RetryPolicy | None]]:
    """Parse ``specs`` and build their policies, labelled uniquely (``None`` = ``logged``).

    Policy ``i`` gets the seed ``seed + i`` (the random baseline's draws).
    """
    parsed = unique_labels([parse_spec(s) for s in specs])
    policies: dict[str, RetryPolicy | None] = {
        spec.label: None
        if spec.kind == "logged"
        else build_policy(spec, seed=seed + i, world=world)
        for i, spec in enumerate(parsed)
    }
    return parsed, policies
