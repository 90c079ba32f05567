"""The model bundle: a self-describing, verifiable directory per model version.

Layout of ``models/<version>/`` (no pickle anywhere; every file is text):

==========================  ==================================================================
``model.txt``               the LightGBM booster in its native text format
``calibration.json``        the calibration map as plain data (isotonic thresholds or Platt a, b)
``feature_spec.json``       :meth:`features.spec.FeatureSpec.to_dict` (names, categorical levels)
``metrics.json``            training/validation/test metrics, baselines, calibration choice
``data_fingerprint.json``   rows, time range and SHA-256 of the canonical training frame
``code_version.json``       retryopt version, git commit (if available), library versions
``manifest.json``           format, version, and the SHA-256 and size of every other file
==========================  ==================================================================

Optional extra files (reports, plots) may be added; they are listed in the manifest too.

Writing is atomic: the files are written to a hidden temporary directory in the same parent and
renamed into place in one ``os.rename``, so a half-written bundle is never visible under its
version name. :func:`load_bundle` reads every file once, checks its size and SHA-256 against the
manifest, refuses missing, extra, truncated or modified files with a :class:`BundleError` naming
the file, and only then parses the bytes it verified.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retryopt.features.spec import FeatureSpec, encode_features
from retryopt.model.adjust import CODE_FEATURE, Adjustment
from retryopt.model.calibration import Calibrator
from retryopt.version import __version__

BUNDLE_FORMAT = "retryopt-model-bundle"
BUNDLE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.txt"
CALIBRATION_FILE = "calibration.json"
FEATURE_SPEC_FILE = "feature_spec.json"
METRICS_FILE = "metrics.json"
FINGERPRINT_FILE = "data_fingerprint.json"
CODE_VERSION_FILE = "code_version.json"
REQUIRED_FILES: tuple[str, ...] = (
    MODEL_FILE,
    CALIBRATION_FILE,
    FEATURE_SPEC_FILE,
    METRICS_FILE,
    FINGERPRINT_FILE,
    CODE_VERSION_FILE,
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class BundleError(Exception):
    """A model bundle is missing, incomplete, tampered with, or cannot be resolved."""


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def code_version() -> dict[str, Any]:
    """The retryopt version, the git commit of the source tree if available, library versions."""
    import lightgbm

    info: dict[str, Any] = {
        "retryopt": __version__,
        "python": sys.version.split()[0],
        "lightgbm": lightgbm.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "git_commit": None,
        "git_dirty": None,
    }
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
            )
            if status.returncode == 0:
                info["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _json_bytes(obj: Any) -> bytes:
    return (
        json.dumps(obj, indent=2, sort_keys=True, allow_nan=True, default=_json_default) + "\n"
    ).encode()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dt.datetime | pd.Timestamp):
        return obj.isoformat()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_bundle(
    out_dir: str | Path,
    *,
    model_text: str,
    calibrator: Calibrator,
    feature_spec: FeatureSpec | Mapping[str, Any],
    metrics: Mapping[str, Any],
    data_fingerprint: Mapping[str, Any],
    extra_files: Mapping[str, bytes] | None = None,
    version: str | None = None,
    code_info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle atomically to ``out_dir/<version>/`` and return its path.

    Parameters
    ----------
    out_dir
        The models directory (created if missing).
    model_text
        ``Booster.model_to_string()`` output.
    calibrator, feature_spec, metrics, data_fingerprint
        The bundle's contents (see the module docstring).
    extra_files
        Optional additional files (flat names), e.g. ``reliability.png``; listed in the manifest.
    version
        Version name; default ``<UTC timestamp>-<first 8 hex of the model's SHA-256>``.
    code_info
        Overrides :func:`code_version` (tests).
    """
    model_bytes = model_text.encode()
    if version is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        version = f"{stamp}-{sha256_bytes(model_bytes)[:8]}"
    if not _SAFE_NAME.match(version):
        raise BundleError(f"invalid bundle version name {version!r}")
    spec_dict = feature_spec.to_dict() if hasattr(feature_spec, "to_dict") else dict(feature_spec)
    files: dict[str, bytes] = {
        MODEL_FILE: model_bytes,
        CALIBRATION_FILE: _json_bytes(calibrator.to_dict()),
        FEATURE_SPEC_FILE: _json_bytes(spec_dict),
        METRICS_FILE: _json_bytes(dict(metrics)),
        FINGERPRINT_FILE: _json_bytes(dict(data_fingerprint)),
        CODE_VERSION_FILE: _json_bytes(
            dict(code_info) if code_info is not None else code_version()
        ),
    }
    for name, data in (extra_files or {}).items():
        if not _SAFE_NAME.match(name) or name in files or name == MANIFEST:
            raise BundleError(f"invalid or reserved extra bundle file name {name!r}")
        files[name] = data
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": {
            name: {"sha256": sha256_bytes(data), "bytes": len(data)}
            for name, data in sorted(files.items())
        },
    }
    files[MANIFEST] = _json_bytes(manifest)

    parent = Path(out_dir)
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / version
    if target.exists():
        raise BundleError(f"bundle {target} already exists; refusing to overwrite it")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=parent))
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.rename(tmp, target)  # atomic within one file system; fails if target is non-empty
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass(eq=False)
class ModelBundle:
    """A loaded, verified model bundle.

    Attributes
    ----------
    path
        The bundle directory.
    version
        The bundle's version name (from the manifest).
    feature_spec
        The :class:`retryopt.features.spec.FeatureSpec` the model was trained with.
    metrics
        Contents of ``metrics.json``.
    """

    path: Path
    version: str
    feature_spec: FeatureSpec
    metrics: dict[str, Any]
    booster: Any = field(repr=False)
    calibrator: Calibrator = field(repr=False)
    data_fingerprint: dict[str, Any] = field(default_factory=dict, repr=False)
    code_version: dict[str, Any] = field(default_factory=dict, repr=False)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)
    num_threads: int = 1
    adjustment: Adjustment = field(default_factory=Adjustment, repr=False)

    def encode(self, raw_features: pd.DataFrame) -> pd.DataFrame:
        """The model matrix for raw features (:func:`retryopt.features.spec.encode_features`)."""

        return encode_features(raw_features, self.feature_spec)

    def predict_raw(self, raw_features: pd.DataFrame) -> np.ndarray:
        """Uncalibrated LightGBM probabilities for raw feature rows."""
        if len(raw_features) == 0:
            return np.empty(0, dtype=np.float64)
        X = self.encode(raw_features)
        return np.asarray(self.booster.predict(X, num_threads=self.num_threads), dtype=np.float64)

    def code_bound_table(self) -> np.ndarray | None:
        """The rare-code bound per level index of ``last_decline_code`` (None: no bound)."""
        levels = self.feature_spec.levels.get(CODE_FEATURE)
        return None if levels is None else self.adjustment.level_bounds(levels)

    def predict_proba(self, raw_features: pd.DataFrame) -> np.ndarray:
        """Calibrated P(success) per row of raw features (as the feature registry builds them).

        Capped by the rare-code bounds (:mod:`retryopt.model.adjust`) like the fast path.
        """
        if len(raw_features) == 0:
            return np.empty(0, dtype=np.float64)
        X = self.encode(raw_features)
        raw = np.asarray(self.booster.predict(X, num_threads=self.num_threads), dtype=np.float64)
        p = self.calibrator.apply(raw)
        table = self.code_bound_table()
        if table is None:
            return p
        codes = np.asarray(X[CODE_FEATURE].cat.codes, dtype=np.float64)
        return Adjustment.bound_levels(p, codes, table)


def _load_json(name: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{name}: not valid JSON ({exc})") from exc


def load_bundle(path: str | Path) -> ModelBundle:
    """Load a bundle directory after verifying every file against its SHA-256 manifest.

    Raises
    ------
    BundleError
        The directory or a required file is missing, a file is not listed in the manifest, a
        file's size or SHA-256 differs from the manifest (tampered or truncated), or a file's
        contents do not parse. The message names the file.
    """
    import lightgbm as lgb

    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"model bundle {root} does not exist or is not a directory")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing manifest; not a retryopt model bundle")
    manifest = _load_json(f"{manifest_path}", manifest_path.read_bytes())
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path}: not a {BUNDLE_FORMAT} manifest")
    if manifest.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: unsupported bundle format_version "
            f"{manifest.get('format_version')!r} (expected {BUNDLE_FORMAT_VERSION})"
        )
    listed = manifest.get("files")
    version = manifest.get("version")
    if not isinstance(listed, dict) or not isinstance(version, str):
        raise BundleError(f"{manifest_path}: manifest needs 'files' and 'version'")
    for name in REQUIRED_FILES:
        if name not in listed:
            raise BundleError(f"{root / name}: required file not listed in the manifest")
    present = {p.name for p in root.iterdir()} - {MANIFEST}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise BundleError(
            f"{root / unlisted[0]}: file not listed in the manifest (tampered bundle)"
        )

    contents: dict[str, bytes] = {}
    for name, entry in listed.items():
        file = root / str(name)
        if not _SAFE_NAME.match(str(name)) or not isinstance(entry, dict):
            raise BundleError(f"{manifest_path}: invalid manifest entry {name!r}")
        if not file.is_file():
            raise BundleError(f"{file}: missing file listed in the manifest")
        data = file.read_bytes()
        if len(data) != entry.get("bytes"):
            raise BundleError(
                f"{file}: size {len(data)} bytes differs from the manifest's {entry.get('bytes')}"
                " (truncated or modified)"
            )
        digest = sha256_bytes(data)
        if digest != entry.get("sha256"):
            raise BundleError(
                f"{file}: SHA-256 {digest} differs from the manifest's {entry.get('sha256')}"
                " (modified)"
            )
        contents[str(name)] = data

    try:
        spec = FeatureSpec.from_dict(_load_json(FEATURE_SPEC_FILE, contents[FEATURE_SPEC_FILE]))
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"{root / FEATURE_SPEC_FILE}: invalid feature spec ({exc})") from exc
    try:
        calibrator = Calibrator.from_dict(_load_json(CALIBRATION_FILE, contents[CALIBRATION_FILE]))
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"{root / CALIBRATION_FILE}: invalid calibration ({exc})") from exc
    metrics = _load_json(METRICS_FILE, contents[METRICS_FILE])
    fingerprint = _load_json(FINGERPRINT_FILE, contents[FINGERPRINT_FILE])
    code_info = _load_json(CODE_VERSION_FILE, contents[CODE_VERSION_FILE])
    for name, obj in (
        (METRICS_FILE, metrics),
        (FINGERPRINT_FILE, fingerprint),
        (CODE_VERSION_FILE, code_info),
    ):
        if not isinstance(obj, dict):
            raise BundleError(f"{root / name}: expected a JSON object")
    try:
        adjustment = Adjustment.from_planning(metrics.get("planning"))
    except ValueError as exc:
        raise BundleError(f"{root / METRICS_FILE}: invalid planning section ({exc})") from exc
    try:
        booster = lgb.Booster(model_str=contents[MODEL_FILE].decode())
    except Exception as exc:
        raise BundleError(f"{root / MODEL_FILE}: not a valid LightGBM text model ({exc})") from exc
    if list(booster.feature_name()) != list(spec.names):
        raise BundleError(
            f"{root / MODEL_FILE}: model features {booster.feature_name()} do not match "
            f"{FEATURE_SPEC_FILE} names {list(spec.names)}"
        )
    return ModelBundle(
        path=root,
        version=version,
        feature_spec=spec,
        metrics=metrics,
        booster=booster,
        calibrator=calibrator,
        data_fingerprint=fingerprint,
        code_version=code_info,
        manifest=manifest,
        adjustment=adjustment,
    )


def find_bundle_dir(root: str | Path) -> Path:
    """The directory under ``root`` (inclusive) holding a bundle ``manifest.json``."""
    base = Path(root)
    candidates = sorted(
        (p.parent for p in base.rglob(MANIFEST)), key=lambda p: (len(p.parts), str(p))
    )
    for candidate in candidates:
        try:
            manifest = json.loads((candidate / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT:
            return candidate
    raise BundleError(f"no retryopt model bundle found under {base}")
