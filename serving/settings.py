"""Service settings: one typed object read from ``RETRYOPT_*`` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from retryopt.features.decisions import Constraints


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
        default=(), description="accepted Bearer keys (empty = no authentication)"
    )
    admin_api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="keys for /admin/* (empty = the api_keys)"
    )
    policy: Literal["model", "greedy"] = "model"
    # Default constraints (a request's ``constraints`` override them field by field).
    max_retries: int = Field(default=4, ge=0, le=50)
    window_hours: float = Field(default=504.0, gt=0)
    min_gap_hours: float = Field(default=1.0, ge=0)
    quiet_hours: Annotated[tuple[int, ...] | None, NoDecode] = None
    cost_per_attempt: float = Field(default=0.0, ge=0)
    daily_discount: float = Field(default=0.0, ge=0, lt=1)
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
    max_batch: int = Field(default=1000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    model_threads: int = Field(default=1, ge=1, description="LightGBM threads per prediction")
    # Decision log and outcomes (docs/serving.md, "Decision log and outcomes").
    store_url: str | None = Field(
        default=None,
        description="sqlite:///PATH or postgresql://...: where decisions and reported outcomes "
        "are stored (unset: no log; `retryopt serve` defaults to sqlite:///retryopt-store.db "
        "in its working directory)",
    )

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

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
            cost_per_attempt=self.cost_per_attempt,
            daily_discount=self.daily_discount,
        )


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
