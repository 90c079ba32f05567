"""The decision service: the part of the API that is not HTTP.

:class:`DecisionService` checks decision requests and runs the policies on them; the HTTP routes
(:mod:`retryopt.serving.app`), the public Python API (:func:`retryopt.api.decide`) and offline
batch decisions all call it, so they answer alike.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from retryopt.features.card_numbers import safe_key
from retryopt.features.decisions import Constraints
from retryopt.features.localtime import TIMESTAMP_RANGE_TEXT, in_valid_range
from retryopt.model.bundle import ModelBundle
from retryopt.serving.arms import CHALLENGER, CHAMPION, Arm, Arms
from retryopt.serving.metrics import Metrics
from retryopt.serving.model_store import ModelStore
from retryopt.serving.policies import Decision, PlannerConfig
from retryopt.serving.schemas import (
    AlternativeOut,
    DecisionOut,
    DecisionRequest,
    FieldIssue,
    Limits,
    RequestError,
    check_request,
    to_batch,
)
from retryopt.serving.settings import Settings, load_settings

log = logging.getLogger("retryopt.serving")


def planner_config(settings: Settings) -> PlannerConfig:
    """The planner options that ``settings`` describe."""
    return PlannerConfig(
        later_attempt_decay=settings.later_attempt_decay,
        planning_gap_hours=settings.planning_gap_hours,
        search=settings.planner_search,
        exploration_tolerance=settings.exploration_tolerance,
        exploration_share=settings.exploration_share,
    )


def model_store_for(settings: Settings, location: str | None = None) -> ModelStore:
    """The model holder that ``settings`` describe (location, planner options, engine)."""
    return ModelStore(
        location=location or settings.model,
        config=planner_config(settings),
        model_threads=settings.model_threads,
        engine=settings.engine,
    )


def arms_for(settings: Settings) -> Arms:
    """The champion and challenger arms that ``settings`` describe (a challenger bundle is
    loaded by :meth:`Arms.apply`, at the app's start)."""
    return Arms(
        configured=settings.arm_config(),
        salt=settings.ab_salt,
        model_store=lambda location: model_store_for(settings, location),
        config=planner_config(settings),
    )


def field_issues(errors: Sequence[Mapping[str, Any]]) -> list[FieldIssue]:
    """Pydantic validation errors as :class:`FieldIssue` (the field named, the input never
    echoed: it may hold personal data)."""
    return [
        FieldIssue(_field_path(e.get("loc", ())), str(e.get("msg", "")), str(e.get("type", "")))
        for e in errors
    ]


def _field_path(loc: Sequence[int | str]) -> str:
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("function-after", "function-before", "function-wrap") or "[" in str(p):
            continue
        else:
            key = safe_key(str(p))
            out += f".{key}" if out else key
    return out or "body"


def _iso(t: Any) -> str | None:
    """``2026-01-05T13:00:00Z`` for a UTC timestamp (pydantic's rendering of aware UTC times)."""
    if t is None:
        return None
    ns = int(t.value)
    if ns % 1000 == 0 and t.tzinfo is not None:
        # Whole microseconds (always, on the hourly grid): datetime's isoformat, ~3x cheaper
        # than the pandas conversions, same text; memoised, since decisions repeat the same
        # few hundred grid hours.
        text = _ISO_TEXT.get(ns)
        if text is None:
            if len(_ISO_TEXT) >= _ISO_CACHE_MAX:
                _ISO_TEXT.clear()
            text = _ISO_TEXT[ns] = f"{(_EPOCH + timedelta(microseconds=ns // 1000)).isoformat()}Z"
        return text
    text = t.tz_convert("UTC").tz_localize(None).isoformat()
    return f"{text}Z"


_EPOCH = datetime(1970, 1, 1)
_ISO_CACHE_MAX = 1 << 16
_ISO_TEXT: dict[int, str] = {}


def decision_json(d: Decision, *, arm: Arm = CHAMPION) -> dict[str, Any]:
    """The :class:`DecisionOut` JSON object of a decision served by ``arm``, built without
    pydantic.

    Equal to ``DecisionOut.model_dump(mode="json")`` of :func:`_decision_out` (tested); the
    routes return it directly to skip a second validation of the response model.
    """
    return {
        "charge_id": d.charge_id,
        "action": d.action,
        "retry_at": _iso(d.retry_at),
        "success_probability": d.success_probability,
        "reason": d.reason,
        "action_required": d.action_required,
        "alternatives": [
            {"retry_at": _iso(a.retry_at), "success_probability": a.success_probability}
            for a in d.alternatives
        ],
        "explanation": d.explanation,
        "model_version": d.model_version,
        "policy": d.policy,
        "expected_value": d.expected_value,
        "attempt_cost": d.attempt_cost,
        "value_currency": d.value_currency,
        "decision_id": None,
        "propensity": d.propensity,
        "exploration": d.exploration,
        "arm": arm,
    }


def _decision_out(d: Decision, *, arm: Arm = CHAMPION) -> DecisionOut:
    return DecisionOut(
        charge_id=d.charge_id,
        action=d.action,  # type: ignore[arg-type]
        retry_at=None if d.retry_at is None else d.retry_at.to_pydatetime(),
        success_probability=d.success_probability,
        reason=d.reason,
        action_required=d.action_required,
        alternatives=[
            AlternativeOut(
                retry_at=a.retry_at.to_pydatetime(), success_probability=a.success_probability
            )
            for a in d.alternatives
        ],
        explanation=d.explanation,
        model_version=d.model_version,
        policy=d.policy,
        expected_value=d.expected_value,
        attempt_cost=d.attempt_cost,
        value_currency=d.value_currency,
        arm=arm,
        propensity=d.propensity,
        exploration=d.exploration,
    )


class DecisionService:
    """Checks requests and runs the policies (the part of the API that is not HTTP)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: ModelStore,
        metrics: Metrics,
        arms: Arms | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.arms = arms or arms_for(settings)
        self.defaults = settings.default_constraints()
        self.limits = Limits(
            max_attempts=settings.max_attempts,
            max_history_rows=settings.max_history_rows,
            max_batch=settings.max_batch,
        )

    def decide(
        self, requests: Sequence[DecisionRequest], *, prefixes: Sequence[str]
    ) -> list[DecisionOut]:
        """Decide every request; raise :class:`RequestError` naming the bad fields."""
        items = self.prepare(requests, prefixes=prefixes)
        decisions = self.decide_prepared(items)
        return [_decision_out(d, arm=i.arm) for i, d in zip(items, decisions, strict=True)]

    def decide_json(
        self, requests: Sequence[DecisionRequest], *, prefixes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """:meth:`decide` as JSON objects (:func:`decision_json`), the routes' fast path."""
        items = self.prepare(requests, prefixes=prefixes)
        decisions = self.decide_prepared(items)
        return [decision_json(d, arm=i.arm) for i, d in zip(items, decisions, strict=True)]

    def decide_raw(
        self, requests: Sequence[DecisionRequest], *, prefixes: Sequence[str]
    ) -> list[Decision]:
        """The policies' decisions for every request (checks as :meth:`decide`)."""
        return self.decide_prepared(self.prepare(requests, prefixes=prefixes))

    def prepare(
        self,
        requests: Sequence[DecisionRequest],
        *,
        prefixes: Sequence[str],
        server_now: datetime | None = None,
    ) -> list[PreparedRequest]:
        """Check every request and resolve its ``now`` and constraints.

        Raises
        ------
        RequestError
            Naming every bad field (of every request; ``prefixes`` prefix the field paths).
        """
        server_now = server_now or datetime.now(UTC)
        if server_now.tzinfo is None or not in_valid_range(server_now):
            # Only reachable from the Python API's ``now`` (the clock is in range until 2099).
            raise RequestError(
                [
                    FieldIssue(
                        "now",
                        f"now must be an aware datetime {TIMESTAMP_RANGE_TEXT}",
                        "out_of_range",
                    )
                ]
            )
        issues: list[FieldIssue] = []
        out: list[PreparedRequest] = []
        seen: dict[str, int] = {}
        for i, (r, prefix) in enumerate(zip(requests, prefixes, strict=True)):
            now = r.now or server_now
            issues += check_request(r, now=now, limits=self.limits, prefix=prefix)
            cid = r.charge.charge_id
            if cid in seen:
                issues.append(
                    FieldIssue(
                        f"{prefix}charge.charge_id",
                        f"the same charge_id appears twice (requests {seen[cid] + 1} and {i + 1})",
                        "duplicate",
                    )
                )
            seen[cid] = i
            try:
                cons = (
                    self.defaults if r.constraints is None else r.constraints.resolve(self.defaults)
                )
            except ValueError as exc:
                issues.append(FieldIssue(f"{prefix}constraints", str(exc)))
                cons = self.defaults
            currency = r.charge.currency.lower()
            if currency not in cons.objective.fx.units_per_usd:
                # No rate for this currency (the reference rates cover 33 of ISO 4217's codes):
                # decide in the charge's own currency, without an attempt cost (docs/serving.md).
                cons = replace(cons, objective=cons.objective.in_own_currency(currency))
            out.append(
                PreparedRequest(
                    request=r,
                    now=now,
                    constraints=cons,
                    arm=self.arms.arm_of(r.charge.customer_id),
                )
            )
        if issues:
            raise RequestError(issues)
        return out

    def decide_prepared(self, items: Sequence[PreparedRequest]) -> list[Decision]:
        """Decisions for checked requests (:meth:`prepare`) with distinct charge ids.

        Requests are grouped by arm and constraints; the model and the arms are read once for
        the whole call (a reload or a promotion never mixes models); every decision is counted
        in the metrics.
        """
        groups: dict[tuple[Arm, Constraints], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((item.arm, item.constraints), []).append(i)
        out: list[Decision | None] = [None] * len(items)
        loaded = self.store.current
        served = self.arms.served
        for (arm, cons), idx in groups.items():
            prep = to_batch(
                [items[i].request for i in idx],
                nows=[items[i].now for i in idx],
                constraints=cons,
            )
            decisions: list[Decision]
            model, baseline = loaded, served.champion_policy
            if arm == CHALLENGER and served.has_challenger:
                model, baseline = served.challenger_model, served.challenger_policy
            if baseline is not None:
                decisions = baseline.decide_detailed(prep.batch, current_cards=prep.current_cards)
            elif model is None:
                decisions = self.store.fallback.decide_detailed(
                    prep.batch, current_cards=prep.current_cards
                )
            else:
                policy = model.greedy if self.settings.policy == "greedy" else model.planner
                try:
                    decisions = policy.decide_detailed(
                        prep.batch, current_cards=prep.current_cards, columns=prep.columns
                    )
                except Exception:
                    log.exception("model policy failed; answering from the fallback")
                    self.metrics.observe_model_error()
                    decisions = self.store.fallback.decide_detailed(
                        prep.batch, current_cards=prep.current_cards
                    )
            for i, d in zip(idx, decisions, strict=True):
                self.metrics.observe_decision(action=d.action, reason=d.reason, policy=d.policy)
                out[i] = d
        return [d for d in out if d is not None]


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A checked decision request with its effective ``now`` and resolved constraints."""

    request: DecisionRequest
    now: datetime
    constraints: Constraints
    arm: Arm = CHAMPION

    def conflict_keys(self) -> list[tuple[str, str]]:
        """Keys that must not share a combined (micro-batched) call.

        A batch pools the attempts and history of its charges by customer and by charge, so
        two requests of the same customer (or naming the same charge) are decided apart: each
        gets exactly the answer it gets alone.
        """
        r = self.request
        keys = [("customer", r.charge.customer_id), ("charge", r.charge.charge_id)]
        for h in r.customer_history or ():
            keys.append(("charge", h.charge_id))
        return keys


def service_for(
    model: ModelBundle | str | None,
    *,
    policy: Literal["model", "greedy"] = "model",
    settings: Settings | None = None,
) -> DecisionService:
    """A decision service outside HTTP (:func:`retryopt.decide`, offline batch decisions).

    Parameters
    ----------
    model
        A loaded bundle, a bundle folder or registry name, or None for the rules-only fallback.
    policy
        ``"model"`` (the planner) or ``"greedy"``.
    settings
        Server settings (default: the environment's, as ``retryopt serve`` reads them).
    """
    base = (settings or load_settings()).model_copy(update={"policy": policy})
    store = model_store_for(base)
    if isinstance(model, ModelBundle):
        loaded = model
        store = ModelStore(
            location=str(model.path),
            config=store.config,
            loader=lambda _location: loaded,
            engine=base.engine,
        )
        store.load()
    elif model is not None:
        store.load(str(model))
    return DecisionService(settings=base, store=store, metrics=Metrics())


def decide_requests(
    service: DecisionService,
    requests: Sequence[Mapping[str, Any]],
    *,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Decisions for requests in the API's JSON shape, exactly as the batch route answers.

    Raises
    ------
    RequestError
        When a request is invalid; ``issues`` names every bad field (``requests[i].<field>``).
    """
    prefixes = [f"requests[{i}]." for i in range(len(requests))]
    parsed: list[DecisionRequest] = []
    issues: list[FieldIssue] = []
    for prefix, raw in zip(prefixes, requests, strict=True):
        try:
            parsed.append(DecisionRequest.model_validate(raw))
        except ValidationError as exc:
            issues += [replace(i, field=prefix + i.field) for i in field_issues(exc.errors())]
    if issues:
        raise RequestError(issues)
    prepared = service.prepare(parsed, prefixes=prefixes, server_now=now)
    decisions = service.decide_prepared(prepared)
    return [decision_json(d, arm=i.arm) for i, d in zip(prepared, decisions, strict=True)]
