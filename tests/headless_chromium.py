"""Render a local HTML page in headless Chromium (Debian's ``chromium``) as an analyst sees it.

:func:`measure` loads the page at a given window size and returns the document's scroll width
(read by a script added to a copy of the page, from the DOM Chromium dumps after the load);
:func:`screenshot` writes a PNG of the first screen.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_PROBE = (
    '<script>window.addEventListener("load",function(){document.body.setAttribute('
    '"data-scroll-width",String(document.documentElement.scrollWidth));});</script>'
)
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def chromium_path() -> str | None:
    """The Chromium executable, if installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(args: list[str], *, width: int, height: int) -> str:
    exe = chromium_path()
    assert exe is not None
    with tempfile.TemporaryDirectory(prefix="retryopt-chromium-") as profile:
        done = subprocess.run(
            [exe, *_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    return done.stdout


def measure(page: Path, *, width: int = 1280, height: int = 900) -> int:
    """The page's ``document.documentElement.scrollWidth`` in a ``width`` x ``height`` window."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"))
    try:
        dom = _run(
            ["--virtual-time-budget=5000", "--dump-dom", probe.resolve().as_uri()],
            width=width,
            height=height,
        )
    finally:
        probe.unlink()
    found = re.search(r'data-scroll-width="(\d+)"', dom)
    assert found is not None, "the page's load script did not run"
    return int(found.group(1))


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 900) -> Path:
    """A PNG of the page's first ``width`` x ``height`` screen."""
    _run([f"--screenshot={png}", page.resolve().as_uri()], width=width, height=height)
    return png
