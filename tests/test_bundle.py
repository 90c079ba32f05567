"""Model bundle: atomic write, SHA-256 verification, tamper refusal, resolution by path/registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from retryopt.features.spec import encode_features, fit_feature_spec
from retryopt.model.bundle import (
    MANIFEST,
    REQUIRED_FILES,
    BundleError,
    ModelBundle,
    load_bundle,
    write_bundle,
)
from retryopt.model.calibration import Calibrator, fit_calibrator
from retryopt.model.registry import resolve_model


def _raw_features(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    family = rng.choice(["funds", "generic", "issuer_risk"], size=n, p=[0.5, 0.4, 0.1])
    hours = rng.uniform(1, 300, size=n)
    logit = -1.5 + np.where(family == "funds", 1.0, 0.0) - 0.004 * hours
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    frame = pd.DataFrame(
        {"hours_since_failure": hours, "decline_family": pd.array(family, dtype="str")}
    )
    return frame, y


@pytest.fixture(scope="module")
def trained() -> dict:
    raw, y = _raw_features(3_000, 0)
    spec = fit_feature_spec(raw, min_level_count=5)
    X = encode_features(raw, spec)
    booster = lgb.train(
        {
            "objective": "binary",
            "verbosity": -1,
            "num_threads": 1,
            "seed": 3,
            "deterministic": True,
        },
        lgb.Dataset(X, label=y),
        num_boost_round=15,
    )
    raw_p = booster.predict(X)
    calibrator = fit_calibrator(np.asarray(raw_p), y, method="platt")
    return {
        "raw": raw,
        "y": y,
        "spec": spec,
        "model_text": booster.model_to_string(),
        "calibrator": calibrator,
    }


def _write(trained: dict, out: Path, **kwargs: object) -> Path:
    return write_bundle(
        out,
        model_text=trained["model_text"],
        calibrator=trained["calibrator"],
        feature_spec=trained["spec"],
        metrics={"test": {"model": {"roc_auc": 0.7}}},
        data_fingerprint={"rows": 3_000, "sha256": "0" * 64},
        extra_files={"notes.csv": b"a,b\n1,2\n"},
        **kwargs,  # type: ignore[arg-type]
    )


def test_round_trip_predicts_calibrated_probabilities(trained: dict, tmp_path: Path) -> None:
    path = _write(trained, tmp_path / "models")
    bundle = load_bundle(path)
    assert isinstance(bundle, ModelBundle)
    assert bundle.path == path and bundle.version == path.name
    assert bundle.feature_spec.to_dict() == trained["spec"].to_dict()
    assert bundle.metrics["test"]["model"]["roc_auc"] == 0.7
    expected = trained["calibrator"].apply(
        lgb.Booster(model_str=trained["model_text"]).predict(
            encode_features(trained["raw"], trained["spec"])
        )
    )
    p = bundle.predict_proba(trained["raw"])
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-12)
    assert p.min() > 0 and p.max() < 1
    assert bundle.predict_proba(trained["raw"].iloc[:0]).shape == (0,)
    # unseen categorical levels are mapped, not refused
    odd = trained["raw"].head(3).copy()
    odd["decline_family"] = pd.array(["never_seen", None, "funds"], dtype="str")
    assert np.isfinite(bundle.predict_proba(odd)).all()


def test_layout_manifest_and_no_pickle(trained: dict, tmp_path: Path) -> None:
    path = _write(trained, tmp_path / "models", version="v1")
    names = {p.name for p in path.iterdir()}
    assert names == {*REQUIRED_FILES, MANIFEST, "notes.csv"}
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == names - {MANIFEST}
    assert json.loads((path / "calibration.json").read_text())["method"] == "platt"
    assert (path / "model.txt").read_text().startswith("tree")
    assert not any(p.suffix in {".pkl", ".pickle", ".joblib"} for p in path.iterdir())
    code = json.loads((path / "code_version.json").read_text())
    assert "retryopt" in code and "git_commit" in code


def test_write_is_atomic_and_never_overwrites(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models"
    _write(trained, out, version="v1")
    with pytest.raises(BundleError, match="already exists"):
        _write(trained, out, version="v1")

    def broken_rename(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", broken_rename)
    with pytest.raises(OSError, match="disk full"):
        _write(trained, out, version="v2")
    assert sorted(p.name for p in out.iterdir()) == ["v1"]  # no v2, no temp directory


def _tamper_flip(path: Path) -> str:
    data = bytearray((path / "model.txt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "model.txt").write_bytes(bytes(data))
    return "model.txt"


def _tamper_truncate(path: Path) -> str:
    data = (path / "calibration.json").read_bytes()
    (path / "calibration.json").write_bytes(data[: len(data) // 2])
    return "calibration.json"


def _tamper_delete(path: Path) -> str:
    (path / "feature_spec.json").unlink()
    return "feature_spec.json"


def _tamper_extra(path: Path) -> str:
    (path / "evil.pkl").write_bytes(b"\x80\x04")
    return "evil.pkl"


def _tamper_manifest(path: Path) -> str:
    (path / MANIFEST).unlink()
    return MANIFEST


def _tamper_consistent_but_garbage(path: Path) -> str:
    # Rewrite metrics.json *and* its manifest entry: hashes match, but the content is not JSON.
    import hashlib

    bad = b"{not json"
    (path / "metrics.json").write_bytes(bad)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"]["metrics.json"] = {"sha256": hashlib.sha256(bad).hexdigest(), "bytes": 9}
    (path / MANIFEST).write_text(json.dumps(manifest))
    return "metrics.json"


@pytest.mark.parametrize(
    "tamper",
    [
        _tamper_flip,
        _tamper_truncate,
        _tamper_delete,
        _tamper_extra,
        _tamper_manifest,
        _tamper_consistent_but_garbage,
    ],
)
def test_tampered_bundle_is_refused_naming_the_file(
    trained: dict, tmp_path: Path, tamper: object
) -> None:
    path = _write(trained, tmp_path / "models", version="v1")
    load_bundle(path)  # intact: loads
    name = tamper(path)  # type: ignore[operator]
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        load_bundle(path)


def test_missing_bundle_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="neither an existing bundle"):
        resolve_model("no-such-registered-model/3")


def test_resolve_by_path(trained: dict, tmp_path: Path) -> None:
    path = _write(trained, tmp_path / "models")
    assert resolve_model(str(path)).version == path.name


def test_identity_calibrator_bundle(trained: dict, tmp_path: Path) -> None:
    data = dict(trained, calibrator=Calibrator("identity"))
    bundle = load_bundle(_write(data, tmp_path / "m"))
    assert bundle.calibrator.method == "identity"


def test_registry_round_trip_and_pyfunc(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Log + register through MLflow, then resolve by name and serve through pyfunc."""
    import mlflow

    from retryopt.training.mlflow_tracking import log_training_run

    path = _write(trained, tmp_path / "models")
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = log_training_run(
        experiment="bundle-test",
        run_name=path.name,
        params={"training": {"seed": 3}},
        metrics={"test.model.roc_auc": 0.7, "nan_metric": float("nan")},
        data_fingerprint={"rows": 3_000, "sha256": "0" * 64},
        bundle_path=path,
        report_files={"plots": plot},
        registered_name="bundle-test-model",
        signature_example=trained["raw"].head(5),
        explicit_uri=uri,
    )
    assert tracked.registered_version == "1"
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts beside the SQLite store
    run = mlflow.MlflowClient(uri).get_run(tracked.run_id)
    assert run.data.params["training.seed"] == "3"
    assert run.data.metrics["test.model.roc_auc"] == 0.7
    assert run.data.tags["data.sha256"] == "0" * 64

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("bundle-test-model/1", "models:/bundle-test-model/1", "bundle-test-model"):
        assert resolve_model(name).version == path.name
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/bundle-test-model/1")
    out = model.predict(trained["raw"].head(50))
    np.testing.assert_allclose(
        out["p_success"].to_numpy(), load_bundle(path).predict_proba(trained["raw"].head(50))
    )
