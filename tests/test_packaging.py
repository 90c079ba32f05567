"""What ``pip install retryopt`` puts into site-packages: one top-level import name.

``features/``, ``training/`` and ``serving/`` stay at the repository root and are linked into
the package (``retryopt/features`` -> ``../features``, ...); the wheel must carry them as
``retryopt.features``, ``retryopt.training`` and ``retryopt.serving`` and nothing else at the top.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINKED = ("features", "training", "serving")


def test_the_installed_distribution_has_one_top_level_name() -> None:
    top = metadata.distribution("retryopt").read_text("top_level.txt")
    assert top is not None
    assert top.split() == ["retryopt"]


def test_the_layers_are_linked_into_the_package() -> None:
    for name in LINKED:
        link = ROOT / "retryopt" / name
        assert link.is_symlink(), f"retryopt/{name} must link to the root folder {name}/"
        assert link.resolve() == (ROOT / name).resolve()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """A wheel built from the files git tracks (a copy of the tree, so the checkout stays clean)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to list the tracked files")
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    for raw in tracked:
        if not raw:
            continue
        rel = Path(raw.decode())
        if not (ROOT / rel).exists() and not (ROOT / rel).is_symlink():
            continue  # deleted in the working tree, not yet committed
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel, follow_symlinks=False)
    out = tmp_path_factory.mktemp("dist")
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=src, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    name = done.stdout.strip().splitlines()[-1]
    return zipfile.ZipFile(out / name)


def test_the_wheel_has_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"retryopt"}
    for name in LINKED:
        assert f"retryopt/{name}/__init__.py" in names
        assert f"retryopt/{name}/py.typed" in names
    assert "retryopt/training/simulate/default_world.toml" in names
    assert "retryopt/training/default_train.toml" in names
    assert not [n for n in names if n.startswith("retryopt/tests") or "/test_" in n]
    dist_info = next(t for t in top if t.endswith(".dist-info"))
    assert wheel.read(f"{dist_info}/top_level.txt").decode().split() == ["retryopt"]
