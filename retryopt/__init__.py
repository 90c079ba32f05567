"""retryopt: the open, self-hosted smart-retry optimizer for failed recurring card payments.

The public Python API, one call per task (see :mod:`retryopt.api`)::

    import retryopt

    attempts = retryopt.load_attempts("attempts.parquet")       # validated history
    run = retryopt.train("attempts.parquet", out="models")      # bundle + MLflow run
    bundle = retryopt.load_model(str(run.bundle_path))          # verified bundle
    decisions = retryopt.decide(requests, model=bundle)         # as the HTTP API answers
    result = retryopt.backtest(attempts, policies=["logged", f"model:{run.bundle_path}"])

The names are loaded on first use, so ``import retryopt`` (and the command line's ``--help``)
stays fast; the layers below are ``retryopt.features``, ``retryopt.model``,
``retryopt.training`` and ``retryopt.serving`` (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from retryopt.version import __version__

if TYPE_CHECKING:
    from retryopt.api import (
        backtest,
        decide,
        load_attempts,
        load_model,
        simulate,
        train,
    )

__all__ = [
    "__version__",
    "backtest",
    "decide",
    "load_attempts",
    "load_model",
    "simulate",
    "train",
]


def __getattr__(name: str) -> Any:
    """Load a public API function from :mod:`retryopt.api` on first use."""
    if name in __all__:
        value = getattr(importlib.import_module("retryopt.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'retryopt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
