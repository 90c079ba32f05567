"""Champion and challenger: which arm serves a customer, and what each arm serves.

A share of customers (``RETRYOPT_CHALLENGER_SHARE``) is served by a challenger
(``RETRYOPT_CHALLENGER``): another model bundle (directory or registry name), or a model-free
control group, ``fixed:H1,H2,...`` (retry ``k`` at ``H_k`` hours after the first failure) or
``fallback`` (the rules-only ladder). Everyone else is served by the champion (the model of
``RETRYOPT_MODEL`` and its reloads).

The arm is a pure function of the customer id and a salt (``RETRYOPT_AB_SALT``): the first 8
bytes of ``SHA-256(salt + U+001F + customer_id)``, read as a number in [0, 1), below the share
means challenger. The same customer lands in the same arm on every worker, after restarts and
in replays; every charge of a customer follows one arm. A new salt re-draws the assignment (a
new experiment).

:class:`Arms` holds what a worker serves (one reference, swapped whole): the challenger's
policy, and the champion's policy when a model-free challenger was promoted.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from retryopt.serving.model_store import LoadedModel, ModelStore
from retryopt.serving.policies import FallbackPolicy, FixedSchedule, PlannerConfig

log = logging.getLogger("retryopt.serving")

Arm = Literal["champion", "challenger"]
CHAMPION: Arm = "champion"
CHALLENGER: Arm = "challenger"
ARMS: tuple[Arm, ...] = (CHAMPION, CHALLENGER)
_HASH_SPAN = float(2**64)

BaselinePolicy = FixedSchedule | FallbackPolicy


def parse_schedule_hours(text: str) -> tuple[float, ...]:
    """Hours after the first failure from ``"72,120,168"`` (positive, increasing).

    Raises
    ------
    ValueError
        Saying what is wrong.
    """
    try:
        hours = tuple(float(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise ValueError(f"hours must be numbers, got {text!r}") from None
    if not hours:
        raise ValueError("give hours after the first failure, e.g. fixed:72,120,168,216")
    if any(not math.isfinite(h) or h <= 0 for h in hours) or any(
        b <= a for a, b in itertools.pairwise(hours)
    ):
        raise ValueError("hours must be positive and increasing")
    return hours


@dataclass(frozen=True)
class ArmSpec:
    """A parsed challenger (or promoted champion) spec."""

    spec: str
    kind: Literal["bundle", "fixed", "fallback"]
    hours: tuple[float, ...] = ()

    @property
    def is_policy(self) -> bool:
        """A model-free policy (no bundle to load)."""
        return self.kind != "bundle"


def parse_arm_spec(text: str) -> ArmSpec:
    """``fixed:H1,H2,...``, ``fallback``, or else a bundle directory / registry name.

    Raises
    ------
    ValueError
        On an empty spec or bad hours.
    """
    spec = text.strip()
    if not spec:
        raise ValueError("empty spec: give a bundle path, fixed:H1,H2,... or fallback")
    head, _, arg = spec.partition(":")
    if head.strip().lower() == "fixed":
        hours = parse_schedule_hours(arg)
        return ArmSpec(f"fixed:{','.join(f'{h:g}' for h in hours)}", "fixed", hours)
    if spec.lower() == "fallback":
        return ArmSpec("fallback", "fallback")
    return ArmSpec(spec, "bundle")


def assign_arm(customer_id: str, *, share: float, salt: str) -> Arm:
    """The arm of ``customer_id`` when a ``share`` of customers goes to the challenger."""
    if share <= 0.0:
        return CHAMPION
    digest = hashlib.sha256(f"{salt}\x1f{customer_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / _HASH_SPAN
    return CHALLENGER if u < share else CHAMPION


def baseline_policy(spec: ArmSpec, config: PlannerConfig) -> BaselinePolicy:
    """The model-free policy of a ``fixed:...`` or ``fallback`` spec."""
    if spec.kind == "fixed":
        return FixedSchedule(spec.hours, name=spec.spec, config=config)
    if spec.kind == "fallback":
        return FallbackPolicy(config=config)
    raise ValueError(f"{spec.spec!r} is a bundle, not a model-free policy")


@dataclass(frozen=True)
class ArmConfig:
    """What the arms serve; shared by the workers (``desired.json``, :mod:`.workers`).

    ``champion`` None means the model holder's model (``RETRYOPT_MODEL`` and its reloads); a
    policy spec there means a model-free challenger was promoted.
    """

    champion: str | None
    challenger: str | None
    share: float

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the shared state."""
        return {"champion": self.champion, "challenger": self.challenger, "share": self.share}

    @classmethod
    def from_json(cls, raw: object) -> ArmConfig | None:
        """The config of a stored JSON object (None when absent or malformed)."""
        if not isinstance(raw, dict):
            return None
        try:
            share = float(raw.get("share", 0.0))
            champion, challenger = raw.get("champion"), raw.get("challenger")
        except (TypeError, ValueError):
            return None
        if not 0.0 <= share <= 1.0:
            return None
        return cls(
            None if champion is None else str(champion),
            None if challenger is None else str(challenger),
            share,
        )


@dataclass(frozen=True)
class Served:
    """One consistent view of the arms (swapped as one reference)."""

    config: ArmConfig
    champion_policy: BaselinePolicy | None  # a promoted model-free champion
    challenger_model: LoadedModel | None
    challenger_policy: BaselinePolicy | None

    @property
    def has_challenger(self) -> bool:
        """A challenger serves its share."""
        active = self.challenger_model is not None or self.challenger_policy is not None
        return active and self.config.share > 0.0


class Arms:
    """The arms a worker serves.

    Parameters
    ----------
    configured
        The arms as configured (``RETRYOPT_CHALLENGER``, ``RETRYOPT_CHALLENGER_SHARE``).
    salt
        The assignment's salt (``RETRYOPT_AB_SALT``).
    model_store
        Builds the model holder of a challenger bundle (same planner options and engine as
        the champion's).
    config
        Planner options of the model-free policies.
    """

    def __init__(
        self,
        *,
        configured: ArmConfig,
        salt: str,
        model_store: Callable[[str], ModelStore],
        config: PlannerConfig,
    ) -> None:
        self.configured = configured
        self.salt = salt
        self._model_store = model_store
        self._config = config
        self._lock = threading.Lock()
        self.served = Served(ArmConfig(None, None, 0.0), None, None, None)
        if configured.challenger is None or parse_arm_spec(configured.challenger).is_policy:
            self.served = self._build(configured)  # no bundle to load: ready at once

    def arm_of(self, customer_id: str) -> Arm:
        """The arm serving ``customer_id`` now (champion when no challenger serves)."""
        served = self.served
        if not served.has_challenger:
            return CHAMPION
        return assign_arm(customer_id, share=served.config.share, salt=self.salt)

    def _build(self, config: ArmConfig) -> Served:
        champion = None
        if config.champion is not None:
            champion = baseline_policy(parse_arm_spec(config.champion), self._config)
        model = policy = None
        if config.challenger is not None:
            spec = parse_arm_spec(config.challenger)
            if spec.is_policy:
                policy = baseline_policy(spec, self._config)
            else:
                # ModelLoadError: the caller decides
                model = self._model_store(spec.spec).load(spec.spec)
        return Served(config, champion, model, policy)

    def apply(self, config: ArmConfig) -> Served:
        """Build and install ``config`` (a challenger bundle is loaded and verified first).

        Raises
        ------
        ModelLoadError
            The challenger bundle was refused; the arms served so far stay.
        """
        with self._lock:
            served = self._build(config)
            self.served = served  # the atomic swap
        log.info(
            "arms: champion %s, challenger %s at share %g",
            config.champion or "model",
            config.challenger or "none",
            config.share,
        )
        return served

    def describe(self) -> dict[str, Any]:
        """What the arms serve now (``GET /v1/model``; no path beyond the configured spec)."""
        served = self.served
        model = served.challenger_model
        return {
            "champion": served.config.champion,
            "challenger": served.config.challenger if served.has_challenger else None,
            "challenger_version": None if model is None else model.version,
            "share": served.config.share if served.has_challenger else 0.0,
        }

    def promoted(self) -> ArmConfig:
        """The config after promoting the challenger (raises ValueError without one)."""
        current = self.served.config
        if current.challenger is None or not self.served.has_challenger:
            raise ValueError("no challenger is serving")
        spec = parse_arm_spec(current.challenger)
        return ArmConfig(spec.spec if spec.is_policy else None, None, 0.0)
