"""Service settings: one typed object read from ``RETRYOPT_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from retryopt.features.decisions import Constraints
from retryopt.features.objective import (
    DEFAULT_ANNUAL_INTEREST_RATE,
    DEFAULT_COST_PER_ATTEMPT,
    DEFAULT_DAILY_CANCEL_HAZARD,
    Objective,
)
from retryopt.serving.arms import ArmConfig, parse_arm_spec
from retryopt.serving.policies.explore import (
    DEFAULT_EXPLORATION_SHARE,
    DEFAULT_EXPLORATION_TOLERANCE,
)
from retryopt.serving.schemas import MAX_BATCH_ITEMS

# A typical decision request is 1-2 KiB (a few attempts, no history); 16 KiB per item leaves
# room for a long attempt list while a 1,000-item batch stays under 16 MiB.
BATCH_ITEM_BYTES = 16 * 1024


class Settings(BaseSettings):
    """Settings of the retry-decision service.

    Every field reads ``RETRYOPT_<FIELD>`` (e.g. ``RETRYOPT_MODEL``, ``RETRYOPT_API_KEYS``).
    List fields take comma-separated values.
    """

    model_config = SettingsConfigDict(env_prefix="RETRYOPT_", extra="ignore", frozen=True)

    model: str | None = Field(
        default=None, description="bundle directory or MLflow registry name[/version]"
    )
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="accepted Bearer keys, comma-separated (unset = no authentication; an "
        "empty or malformed list such as ',' refuses to start)",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the admin routes (/admin/*, /readyz details); unset = "
        "admin routes answer loopback clients only",
    )
    models_root: str | None = Field(
        default=None,
        description="/admin/reload loads only bundle directories under this folder (default: "
        "the folder of RETRYOPT_MODEL when it is a directory; none = only the configured model)",
    )
    state_dir: str | None = Field(
        default=None,
        description="folder shared by the workers of one `retryopt serve` (the reloaded model "
        "and each worker's version); set by `retryopt serve`, unset = one process",
    )
    reload_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="/admin/reload waits this long for every worker to serve the new version",
    )
    policy: Literal["model", "greedy"] = "model"
    # Default constraints (a request's ``constraints`` override them field by field).
    max_retries: int = Field(default=4, ge=0, le=50)
    window_hours: float = Field(default=504.0, gt=0)
    min_gap_hours: float = Field(default=1.0, ge=0)
    quiet_hours: Annotated[tuple[int, ...] | None, NoDecode] = None
    # The objective's defaults (sources: features/objective.py, docs/serving.md).
    cost_per_attempt: float = Field(default=DEFAULT_COST_PER_ATTEMPT, ge=0)
    daily_cancel_hazard: float = Field(default=DEFAULT_DAILY_CANCEL_HAZARD, ge=0, lt=1)
    annual_interest_rate: float = Field(default=DEFAULT_ANNUAL_INTEREST_RATE, ge=0, le=1)
    # Planner and scoring (performance switches, see docs/serving.md).
    later_attempt_decay: float = Field(default=0.8, gt=0, le=1)
    planning_gap_hours: float = Field(
        default=24.0,
        ge=0,
        le=504,
        description="least spacing the plan assumes between a retry and the next one it plans",
    )
    engine: Literal["lightgbm", "lleaves"] = Field(
        default="lleaves",
        description="scoring engine: 'lleaves' (default: the booster compiled to native code at "
        "load, ~5 s per worker for 200 trees; used only if it reproduces LightGBM's "
        "probabilities, else LightGBM serves) or 'lightgbm'",
    )
    planner_search: Literal["hourly", "coarse"] = Field(
        default="hourly",
        description="'hourly' scores every allowed hour (exact); 'coarse' scores a coarse grid "
        "refined around its best points (within 2 % of the hourly optimum)",
    )
    exploration_share: float = Field(
        default=DEFAULT_EXPLORATION_SHARE,
        ge=0,
        le=1,
        description="safe exploration: share of decisions whose retry time is drawn uniformly "
        "among the allowed times within exploration_tolerance of the best planned value, the "
        "rest take the best; the propensity is returned and logged (0 = off; docs/serving.md, "
        "'Safe exploration')",
    )
    exploration_tolerance: float = Field(
        default=DEFAULT_EXPLORATION_TOLERANCE,
        ge=0,
        lt=1,
        description="relative planned-value tolerance of the near-best times (0 = off)",
    )
    # Dynamic micro-batching of the single-decision route (see docs/serving.md).
    microbatch_max_size: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="most concurrent single requests decided in one planner call (1 = off)",
    )
    microbatch_max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="after the first request, wait at most this long for more (0 = only "
        "take the requests already received)",
    )
    microbatch_executor: Literal["loop", "thread"] = Field(
        default="loop",
        description="run the combined decision on the event loop or in one worker thread",
    )
    # HTTP stack of ``retryopt serve`` (uvicorn).
    http: Literal["auto", "httptools", "h11"] = Field(
        default="auto",
        description="HTTP parser: 'auto' = httptools (C) when installed, else h11 (pure Python)",
    )
    loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto", description="event loop: 'auto' = uvloop when installed, else asyncio"
    )
    reuse_port: bool = Field(
        default=True,
        description="with several workers, give each its own SO_REUSEPORT socket so the kernel "
        "spreads connections over them (false: uvicorn's one shared socket)",
    )
    # Limits.
    max_attempts: int = Field(default=1000, ge=1)
    max_history_rows: int = Field(default=100_000, ge=0)
    max_batch: int = Field(
        default=MAX_BATCH_ITEMS,
        ge=1,
        le=MAX_BATCH_ITEMS,
        description="most charges per batch call (at most the API's 1,000)",
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="most bytes of a request body (counted as streamed, chunked included)",
    )
    max_batch_body_bytes: int = Field(
        default=MAX_BATCH_ITEMS * BATCH_ITEM_BYTES,
        ge=1024,
        description="most bytes of a /v1/retry-decisions/batch body (default 1,000 items x 16 KiB)",
    )
    model_threads: int = Field(default=1, ge=1, description="LightGBM threads per prediction")
    # Decision log and outcomes (docs/serving.md, "Decision log and outcomes").
    store_url: str | None = Field(
        default=None,
        description="sqlite:///PATH or postgresql://...: where decisions and reported outcomes "
        "are stored (unset: no log; `retryopt serve` defaults to sqlite:///retryopt-store.db "
        "in its working directory)",
    )
    # Champion and challenger (docs/serving.md, "Champion and challenger").
    challenger: str | None = Field(
        default=None,
        description="served to a share of customers next to the champion: a bundle directory "
        "or registry name, or a model-free control group 'fixed:H1,H2,...' or 'fallback'",
    )
    challenger_share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="share of customers (by a hash of customer_id) served by the challenger",
    )
    ab_salt: str = Field(
        default="retryopt-ab",
        min_length=1,
        description="salt of the customer hash; a new salt draws a new assignment",
    )

    @field_validator("challenger")
    @classmethod
    def _check_challenger(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return parse_arm_spec(value).spec

    def arm_config(self) -> ArmConfig:
        """The arms as configured (no promoted champion)."""
        return ArmConfig(None, self.challenger, self.challenger_share if self.challenger else 0.0)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            # Set but empty or malformed is refused: a typo must not leave the service open
            # (unset = no authentication, the documented choice).
            keys = tuple(k.strip() for k in value.split(","))
            if any(not k or any(c.isspace() for c in k) for k in keys):
                raise ValueError(
                    "RETRYOPT_API_KEYS must be comma-separated non-empty keys without spaces "
                    f"(got {len(keys)} entries, {sum(not k for k in keys)} empty; unset the "
                    "variable to run without authentication)"
                )
            return keys
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for key in value:
            if not key or any(c.isspace() for c in key):
                raise ValueError("API keys must be non-empty and contain no whitespace")
        return value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _check_admin_token(cls, value: object) -> object:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError(
                "RETRYOPT_ADMIN_TOKEN must be non-empty and contain no whitespace (unset it "
                "to keep admin routes on loopback)"
            )
        return value

    def admin_models_root(self) -> Path | None:
        """The folder /admin/reload may load from (None: only the configured model)."""
        if self.models_root:
            return Path(self.models_root).resolve()
        if self.model and Path(self.model).is_dir():
            return Path(self.model).resolve().parent
        return None

    @field_validator("engine", "planner_search", mode="before")
    @classmethod
    def _lower(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str):
            default = "lleaves" if info.field_name == "engine" else "hourly"
            return value.strip().lower() or default  # empty variable = the default
        return value

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _split_hours(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.replace("-", ",").split(",") if p.strip()]
            return tuple(int(p) for p in parts) if parts else None
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _check_hours(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (len(value) != 2 or not all(0 <= h <= 23 for h in value)):
            raise ValueError("quiet_hours must be two hours 0-23, e.g. '22,7'")
        return value

    def server_stack(self) -> tuple[str, str]:
        """The uvicorn ``(http, loop)`` implementations to run.

        ``auto`` picks httptools / uvloop (``pip install 'uvicorn[standard]'``) when they
        import, else h11 / asyncio.

        Raises
        ------
        ValueError
            When ``http`` or ``loop`` names an implementation that is not installed.
        """
        return (
            _pick(self.http, "httptools", "h11", "RETRYOPT_HTTP"),
            _pick(self.loop, "uvloop", "asyncio", "RETRYOPT_LOOP"),
        )

    def default_constraints(self) -> Constraints:
        """The default :class:`Constraints` of requests without their own."""
        quiet = None if self.quiet_hours is None else (self.quiet_hours[0], self.quiet_hours[1])
        return Constraints(
            max_retries=self.max_retries,
            window_hours=self.window_hours,
            min_gap_hours=self.min_gap_hours,
            quiet_hours=quiet,
            objective=Objective(
                cost_per_attempt=self.cost_per_attempt,
                daily_cancel_hazard=self.daily_cancel_hazard,
                annual_interest_rate=self.annual_interest_rate,
            ),
        )


def load_settings() -> Settings:
    """:class:`Settings` from the environment.

    Raises
    ------
    ValueError
        Naming each invalid ``RETRYOPT_*`` variable and why, never its value (keys are secret).
    """
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"RETRYOPT_{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise ValueError(f"invalid settings: {problems}") from None


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _pick(choice: str, fast: str, portable: str, variable: str) -> str:
    if choice == "auto":
        return fast if _installed(fast) else portable
    if choice == fast and not _installed(fast):
        raise ValueError(
            f"{variable}={fast} but {fast} is not installed (pip install 'uvicorn[standard]')"
        )
    return choice
