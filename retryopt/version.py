"""The installed retryopt version (``0.0.0+unknown`` when run from an uninstalled source tree)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("retryopt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
