"""retryopt: open smart-retry optimizer for failed recurring card payments."""

from retryopt.version import __version__

__all__ = ["__version__"]
