"""The public Python API: one call per task, for data scientists, notebooks and scripts.

Each function takes typed keyword arguments and returns a typed result; the ``retryopt``
command line is a thin layer over these calls. Import them from the package root::

    import retryopt

    attempts = retryopt.load_attempts("attempts.parquet")
    run = retryopt.train("attempts.parquet", out="models", mlflow=False)
    bundle = retryopt.load_model(str(run.bundle_path))
    decisions = retryopt.decide([request], model=bundle)
    result = retryopt.backtest(attempts, policies=["logged", f"model:{run.bundle_path}"])

Everything here is a wrapper over the layers below (``retryopt.features``, ``retryopt.model``,
``retryopt.training``, ``retryopt.serving``); nothing in those layers imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from retryopt.features.validation import load_attempts as _load_attempts
from retryopt.model.bundle import ModelBundle
from retryopt.model.registry import resolve_model
from retryopt.serving.policies import BundleSuccessModel
from retryopt.serving.service import decide_requests, service_for
from retryopt.serving.settings import Settings
from retryopt.training.backtest.config import BacktestConfig
from retryopt.training.backtest.result import BacktestResult
from retryopt.training.backtest.runner import run_backtest
from retryopt.training.backtest.specs import build_policies
from retryopt.training.cluster import connect
from retryopt.training.cluster_backtest import backtest_on_cluster
from retryopt.training.cluster_train import check_cluster_config, run_training_on_cluster
from retryopt.training.mlflow_tracking import DEFAULT_EXPERIMENT, DEFAULT_REGISTERED_NAME
from retryopt.training.progress import Progress, quiet
from retryopt.training.simulate import SimulatedWorld, WorldConfig, simulate_world
from retryopt.training.train import TrainingRun, run_training
from retryopt.training.train_config import TrainConfig, load_config

__all__ = [
    "backtest",
    "decide",
    "load_attempts",
    "load_model",
    "simulate",
    "train",
]


def load_attempts(path: str | Path, *, drop_invalid: bool = False) -> pd.DataFrame:
    """Read a payment-attempt history (CSV or Parquet) and validate it against the contract.

    Parameters
    ----------
    path
        The history file.
    drop_invalid
        Drop the rows that break the contract instead of raising.

    Returns
    -------
    pandas.DataFrame
        The canonical frame (UTC timestamps, typed columns, every optional column present).

    Raises
    ------
    retryopt.features.validation.ContractError
        When the history breaks the contract (strict mode); its ``report`` names every issue.
    """
    return _load_attempts(path, drop_invalid=drop_invalid)


def simulate(
    *,
    customers: int,
    months: int,
    seed: int,
    config: WorldConfig | str | Path | None = None,
    progress: Progress | None = None,
) -> SimulatedWorld:
    """Generate a synthetic payment world with known ground truth.

    ``config`` is a :class:`~retryopt.training.simulate.WorldConfig`, a TOML/JSON file, or None
    for the documented defaults. The world's ``attempts`` follow the data contract.
    """
    world_config = (
        config
        if isinstance(config, WorldConfig)
        else WorldConfig.from_file(config)
        if config is not None
        else WorldConfig()
    )
    return simulate_world(
        world_config, customers=customers, months=months, seed=seed, progress=progress
    )


def train(
    data: str | Path,
    *,
    out: str | Path = "models",
    config: TrainConfig | str | Path | None = None,
    seed: int | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    registered_name: str | None = DEFAULT_REGISTERED_NAME,
    mlflow: bool = True,
    progress: Progress | None = None,
    dask: str | None = None,
) -> TrainingRun:
    """Train, calibrate and evaluate the retry-success model and write a verified bundle.

    Parameters
    ----------
    data
        The attempt history (CSV or Parquet, the data contract).
    out
        The models folder; the bundle goes to ``<out>/<version>/``.
    config
        A :class:`~retryopt.training.train_config.TrainConfig`, a TOML file overriding the packaged
        defaults, or None for the defaults.
    seed
        Overrides the configuration's seed.
    experiment, registered_name
        MLflow experiment and registered model name (None: do not register).
    mlflow
        Log the run (and register the model) in MLflow.
    progress
        Called with one line per long step.
    dask
        Train on a Dask cluster (``pip install 'retryopt[cluster]'``): a scheduler address or
        ``local[:N]``; ``data`` may then be a partitioned Parquet folder, glob or fsspec URL.

    Returns
    -------
    TrainingRun
        The bundle's path, the metrics and the MLflow run (None without ``mlflow``).
    """
    if isinstance(config, TrainConfig):
        cfg = config if seed is None else replace(config, seed=seed)
    else:
        cfg = load_config(config, seed=seed)
    if dask is not None:
        check_cluster_config(cfg)
        with connect(dask) as client:
            return run_training_on_cluster(
                client,
                data,
                out,
                config=cfg,
                experiment=experiment,
                registered_name=registered_name if mlflow else None,
                track=mlflow,
                progress=progress,
            )
    return run_training(
        data,
        out,
        config=cfg,
        experiment=experiment,
        registered_name=registered_name if mlflow else None,
        track=mlflow,
        progress=progress,
    )


def load_model(path_or_registry_name: str | Path) -> ModelBundle:
    """Load and verify a model bundle from a folder or the MLflow registry (``name[/version]``)."""
    return resolve_model(str(path_or_registry_name))


def decide(
    requests: Sequence[Mapping[str, Any]],
    *,
    model: ModelBundle | str | Path | None = None,
    policy: Literal["model", "greedy"] = "model",
    now: datetime | None = None,
    settings: Settings | None = None,
) -> list[dict[str, Any]]:
    """Decide when to retry each failed charge, exactly as ``POST /v1/retry-decisions/batch``.

    Parameters
    ----------
    requests
        Decision requests in the API's JSON shape (``charge``, ``attempts``, optional
        ``customer_history``, ``now`` and ``constraints``); see docs/serving.md.
    model
        A loaded bundle, a bundle folder or registry name, or None for the rules-only fallback.
    policy
        ``"model"`` (the planner) or ``"greedy"``.
    now
        The decision time of requests that give none (default: the clock).
    settings
        Server settings (default constraints, limits, planner options); default: the
        environment's, as ``retryopt serve`` reads them.

    Returns
    -------
    list of dict
        One decision per request, in order, in the API's JSON shape.

    Raises
    ------
    retryopt.serving.schemas.RequestError
        (a ``ValueError``) When a request is invalid; ``issues`` names every bad field, as the
        API's 422 answer does.
    """
    service = service_for(
        model if isinstance(model, ModelBundle | None) else str(model),
        policy=policy,
        settings=settings,
    )
    return decide_requests(service, requests, now=now)


def backtest(
    attempts: pd.DataFrame | str | Path,
    *,
    policies: Sequence[str],
    config: BacktestConfig | None = None,
    dm_model: ModelBundle | str | Path | None = None,
    world: SimulatedWorld | None = None,
    progress: Progress | None = None,
    dask: str | None = None,
) -> BacktestResult:
    """Compare retry policies on logged history with DM, IPS, SNIPS and DR and 95 % intervals.

    Parameters
    ----------
    attempts
        The history: a canonical frame (:func:`load_attempts`) or a file to load.
    policies
        Policy specs, as ``retryopt backtest --policy``: ``logged``, ``fixed:72,120,168,216``,
        ``random``, ``fallback``, ``greedy:MODEL``, ``model:MODEL`` and, with ``world``,
        ``oracle``. Every policy obeys the same network rules as the planner.
    config
        The backtest's options (:class:`~retryopt.training.backtest.config.BacktestConfig`:
        bootstrap, seed, bandwidth, DM fit, constraints, ...); default: its defaults.
    dm_model
        Bundle for the direct method, trained apart from the evaluated policies' data; default:
        the backtest fits its own on customers kept apart.
    world
        The simulated world of ``attempts`` (for the ``oracle`` policy).
    progress
        Called with one line per long step.
    dask
        Run on a Dask cluster (``pip install 'retryopt[cluster]'``): a scheduler address or
        ``local[:N]``; ``attempts`` is then a path every worker reads (a file, a partitioned
        Parquet folder, a glob or an fsspec URL). The result equals the one-process result for
        the same seed (every month evaluated, as without ``dask``; no ``world``).

    Returns
    -------
    BacktestResult
        Estimates with intervals per policy and estimator (``headline()`` for the summary);
        ``retryopt.training.backtest.report.write_outputs`` writes the HTML report.
    """
    cfg = config or BacktestConfig()
    bundle = load_model(dm_model) if isinstance(dm_model, str | Path) else dm_model
    if dask is not None:
        if isinstance(attempts, pd.DataFrame) or world is not None:
            raise ValueError(
                "dask: give the history's path (the workers read it), not a frame or a world"
            )
        with connect(dask) as client:
            result, _ = backtest_on_cluster(
                client,
                attempts,
                policies,
                config=replace(cfg, holdout=False),
                dm_model=None if bundle is None else BundleSuccessModel(bundle),
                progress=progress or quiet,
            )
            return result
    frame = attempts if isinstance(attempts, pd.DataFrame) else load_attempts(attempts)
    _, built = build_policies(policies, seed=cfg.seed, world=world)
    return run_backtest(
        frame,
        built,
        config=cfg,
        dm_model=None if bundle is None else BundleSuccessModel(bundle),
        progress=progress or quiet,
    )
