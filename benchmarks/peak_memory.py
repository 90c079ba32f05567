"""Peak resident memory of the current process, its own only.

``getrusage(RUSAGE_SELF).ru_maxrss`` survives ``fork`` + ``exec`` on Linux: a benchmark child
started by a parent that had read a large dataset reports the parent's peak if it stayed below
it. ``VmHWM`` in ``/proc/self/status`` is the high-water mark of the process's own address space,
reset by ``exec``; it is used where it exists, ``ru_maxrss`` elsewhere.
"""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")


def peak_rss_gib() -> float:
    """The process's peak resident set size in GiB (``VmHWM``; ``ru_maxrss`` without /proc)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
