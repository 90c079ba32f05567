"""The trained model as an artifact: the bundle format, its calibration, loading and verification.

Training writes bundles (:func:`write_bundle`); serving and backtests load and verify them
(:func:`load_bundle`, :func:`resolve_model` for a path or an MLflow registry name). Both layers
import this package; it imports neither of them.
"""

from retryopt.model.bundle import (
    BundleError,
    ModelBundle,
    find_bundle_dir,
    load_bundle,
    write_bundle,
)
from retryopt.model.calibration import Calibrator
from retryopt.model.registry import resolve_model

__all__ = [
    "BundleError",
    "Calibrator",
    "ModelBundle",
    "find_bundle_dir",
    "load_bundle",
    "resolve_model",
    "write_bundle",
]
