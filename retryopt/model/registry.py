"""The MLflow tracking store and model registry: where models are found by name.

Default store: ``sqlite:///<cwd>/mlflow.db`` with run artifacts in ``<cwd>/mlartifacts`` (the
project folder). ``MLFLOW_TRACKING_URI`` (or an explicit URI) points it anywhere else; for any
other SQLite file the artifacts go to ``mlartifacts`` next to that file. Training logs runs into
this store (:mod:`retryopt.training.mlflow_tracking`); serving and backtests resolve registered
models from it (:func:`resolve_model`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from retryopt.model.bundle import BundleError, ModelBundle, find_bundle_dir, load_bundle

__all__ = [
    "artifact_location_for",
    "configure_tracking",
    "default_tracking_uri",
    "quiet_mlflow",
    "resolve_model",
    "tracking_uri",
]

DEFAULT_DB_FILE = "mlflow.db"
DEFAULT_ARTIFACTS_DIR = "mlartifacts"
_QUIET_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "urllib3", "git")


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """``sqlite:///<cwd>/mlflow.db``: the embedded store in the project folder."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    return f"sqlite:///{(base / DEFAULT_DB_FILE).resolve()}"


def tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI in effect: ``explicit``, else ``MLFLOW_TRACKING_URI``, else the default."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_location_for(uri: str) -> str | None:
    """Artifact root for new experiments: ``mlartifacts`` beside a SQLite file, else default."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_absolute():
            db = Path("/" + str(db)) if uri.startswith("sqlite:////") else db.resolve()
        return (db.parent / DEFAULT_ARTIFACTS_DIR).resolve().as_uri()
    return None


def configure_tracking(explicit: str | None = None) -> str:
    """Point MLflow (tracking and registry) at :func:`tracking_uri` and return the URI."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = tracking_uri(explicit)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's and alembic's INFO logs and warnings inside the block."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    previous = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def _registry_uri(name: str) -> str:
    if name.startswith("models:/"):
        return name
    parts = name.split("/")
    if len(parts) == 1:
        return f"models:/{parts[0]}/{_latest_version(parts[0])}"
    if len(parts) == 2 and parts[0] and parts[1]:
        return f"models:/{parts[0]}/{parts[1]}"
    raise BundleError(f"{name!r} is not a registered model name, 'name/version' or 'models:/' URI")


def _latest_version(name: str) -> str:
    from mlflow import MlflowClient

    versions = MlflowClient().search_model_versions(f"name = '{name}'")
    if not versions:
        raise BundleError(f"registered model {name!r} has no versions")
    return str(max(int(v.version) for v in versions))


def resolve_model(path_or_registry_name: str) -> ModelBundle:
    """Load a bundle by directory path, or from the MLflow model registry.

    Parameters
    ----------
    path_or_registry_name
        An existing bundle directory; otherwise ``models:/<name>/<version>`` (or an alias URI
        ``models:/<name>@<alias>``), ``<name>/<version>`` or ``<name>`` (latest version), looked
        up in the tracking store of :func:`configure_tracking`
        (``MLFLOW_TRACKING_URI`` or the project's embedded SQLite store). Registry artifacts are
        downloaded to a fresh temporary directory and verified by :func:`load_bundle`.
    """
    candidate = Path(path_or_registry_name)
    if candidate.exists():
        return load_bundle(candidate)
    configure_tracking()
    try:
        with quiet_mlflow():
            import mlflow

            uri = _registry_uri(path_or_registry_name)
            safe = re.sub(r"[^A-Za-z0-9._-]+", "-", uri.removeprefix("models:/"))
            dst = tempfile.mkdtemp(prefix=f"retryopt-model-{safe}-")
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst)
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(
            f"{path_or_registry_name!r} is neither an existing bundle directory nor a model in "
            f"the MLflow registry ({type(exc).__name__}: {exc})"
        ) from exc
    return load_bundle(find_bundle_dir(local))
