"""The progress callback of long runs (training, simulation, backtests), declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

Progress: TypeAlias = Callable[[str], None]
"""Receives one human-readable progress line; the caller decides where it goes."""


def quiet(_message: str) -> None:
    """A :data:`Progress` that drops every line (the default of library functions)."""
    return None
