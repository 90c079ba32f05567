"""MLflow pyfunc wrapper around a retryopt model bundle ("models from code": no pickle).

``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"bundle": <bundle dir>})`` stores
this file's source, the bundle directory and the project packages (``code_paths``). At load time
MLflow runs this file, which declares the model with :func:`mlflow.models.set_model`; the
bundle is verified against its SHA-256 manifest by :func:`retryopt.model.bundle.load_bundle`.

Input: a DataFrame of raw feature rows (as the feature registry builds them). Output: a
DataFrame with one column ``p_success`` (calibrated probability that the retry succeeds).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class BundlePythonModel(PythonModel):
    """Serve a verified model bundle's calibrated P(success) through MLflow pyfunc."""

    def load_context(self, context: Any) -> None:
        """Load and verify the bundle from the model's ``bundle`` artifact."""
        from retryopt.model.bundle import find_bundle_dir, load_bundle

        self.bundle = load_bundle(find_bundle_dir(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """Calibrated P(success) for each row of raw features."""
        frame = pd.DataFrame(model_input)
        return pd.DataFrame({"p_success": self.bundle.predict_proba(frame)}, index=frame.index)


set_model(BundlePythonModel())
