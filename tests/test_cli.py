"""The ``retryopt`` console command: every subcommand is registered and documented."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from retryopt import __version__
from retryopt.cli import COMMANDS, app

EXPECTED = {
    "validate",
    "import-stripe",
    "simulate",
    "train",
    "backtest",
    "suite",
    "serve",
    "demo",
    "export",
    "store",
    "ab-report",
    "decide",
}


def test_every_documented_subcommand_is_registered() -> None:
    assert {name for name, _ in COMMANDS} == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_subcommand_help(name: str) -> None:
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_console_entry_point_runs_as_module() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "retryopt", "--help"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr
    for name in EXPECTED:
        assert name in completed.stdout
