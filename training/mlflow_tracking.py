"""MLflow tracking for training runs: an embedded store by default, quiet, no server.

Default store: ``sqlite:///<cwd>/mlflow.db`` with run artifacts in ``<cwd>/mlartifacts`` (the
project folder). ``MLFLOW_TRACKING_URI`` (or an explicit ``tracking_uri``) points it anywhere else;
for any other SQLite file the artifacts go to ``mlartifacts`` next to that file.

Each run logs the parameters, the data fingerprint (rows, time range, SHA-256), the metrics, the
plots and reports, the bundle directory (``bundle/``), and a pyfunc model (``model/``) registered
in the model registry, so ``mlflow models serve -m models:/<name>/<version>`` can serve it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retryopt import version
from retryopt.model.registry import (
    artifact_location_for,
    configure_tracking,
    quiet_mlflow,
    tracking_uri,
)

DEFAULT_EXPERIMENT = "retryopt"
DEFAULT_REGISTERED_NAME = "retryopt-retry-success"


def _experiment_id(name: str, uri: str) -> str:
    import mlflow

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            mlflow.MlflowClient().restore_experiment(existing.experiment_id)
        return str(existing.experiment_id)
    return str(mlflow.create_experiment(name, artifact_location=artifact_location_for(uri)))


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), value, out)
    else:
        out[prefix] = obj


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested config -> ``{"section.key": "value"}`` with values cut to MLflow's 6000 chars."""
    flat: dict[str, Any] = {}
    _flatten("", params, flat)
    return {k: str(v)[:6000] for k, v in flat.items()}


@dataclass(frozen=True)
class TrackedRun:
    """Where a training run went in MLflow."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    model_uri: str
    registered_name: str | None
    registered_version: str | None


def _code_paths() -> list[str]:
    """The project package the pyfunc model needs at load time (copied into the model)."""
    return [str(Path(version.__file__).resolve().parent)]


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    names = ("lightgbm", "numpy", "pandas", "scikit-learn", "scipy", "pyarrow", "mlflow")
    return [f"{n}=={version(n)}" for n in names]


def _signature(example: Any) -> Any:
    """A model signature from raw feature rows, or None if MLflow cannot infer one."""
    if example is None:
        return None
    try:
        import numpy as np
        import pandas as pd
        from mlflow.models import infer_signature

        frame = example.copy()
        for column in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[column]):
                frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        output = pd.DataFrame({"p_success": np.zeros(len(frame), dtype=np.float64)})
        return infer_signature(frame, output)
    except Exception:
        return None


def log_training_run(
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    data_fingerprint: Mapping[str, Any],
    bundle_path: Path,
    report_files: Mapping[str, Path],
    registered_name: str | None,
    signature_example: Any = None,
    explicit_uri: str | None = None,
) -> TrackedRun:
    """Log one training run and register its pyfunc model.

    Parameters
    ----------
    experiment
        Experiment name (created with the store's artifact root if missing).
    run_name
        Run name (the bundle version).
    params
        Nested configuration, flattened to ``section.key`` parameters.
    metrics
        Flat numeric metrics (non-finite values are skipped).
    data_fingerprint
        Logged as ``data_fingerprint.json`` and as ``data.*`` tags.
    bundle_path
        The written bundle directory, logged under ``bundle/`` and wrapped by the pyfunc model.
    report_files
        Artifact sub-folder -> file (plots, CSV reports).
    registered_name
        Registered model name; ``None`` logs the model without registering it.
    signature_example
        Raw feature rows to infer the pyfunc signature from.
    """
    import math

    configure_tracking(explicit_uri)
    uri = tracking_uri(explicit_uri)
    with quiet_mlflow():
        import mlflow

        experiment_id = _experiment_id(experiment, uri)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            mlflow.log_params(flatten_params(params))
            mlflow.set_tags(
                {
                    "retryopt.bundle_version": run_name,
                    "data.sha256": str(data_fingerprint.get("sha256")),
                    "data.rows": str(data_fingerprint.get("rows")),
                    "data.time_min": str(data_fingerprint.get("time_min")),
                    "data.time_max": str(data_fingerprint.get("time_max")),
                }
            )
            mlflow.log_dict(dict(data_fingerprint), "data_fingerprint.json")
            finite = {
                k: float(v)
                for k, v in metrics.items()
                if isinstance(v, int | float) and math.isfinite(float(v))
            }
            mlflow.log_metrics(finite)
            for folder, file in report_files.items():
                mlflow.log_artifact(str(file), artifact_path=folder)
            mlflow.log_artifacts(str(bundle_path), artifact_path="bundle")
            model_file = Path(__file__).resolve().parent / "pyfunc_model.py"
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(model_file),
                artifacts={"bundle": str(bundle_path)},
                code_paths=_code_paths(),
                pip_requirements=_pip_requirements(),
                signature=_signature(signature_example),
                registered_model_name=registered_name,
                await_registration_for=60,
            )
            version = info.registered_model_version
            return TrackedRun(
                tracking_uri=uri,
                experiment_id=experiment_id,
                run_id=run.info.run_id,
                model_uri=(
                    f"models:/{registered_name}/{version}"
                    if registered_name and version is not None
                    else info.model_uri
                ),
                registered_name=registered_name,
                registered_version=None if version is None else str(version),
            )
