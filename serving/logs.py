"""The service's log format: one line per record, control characters escaped.

A request can carry text that ends up in a log message (a field path naming a client's key, a
model location); a newline in it would forge a log line. :class:`EscapingFormatter` escapes
every control character of the message (``\\n`` -> ``\\\\n``, ``\\x1b`` -> ``\\\\x1b``, the
Unicode line and paragraph separators ...), so one record is always one line; a traceback that
the service itself attaches (``log.exception``) follows on its own lines as usual.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Final

__all__ = ["LOG_FORMAT", "EscapingFormatter", "configure_logging", "escape_control"]

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """``text`` with control characters (Unicode categories Cc, Zl, Zp) escaped."""
    if text.isprintable():
        return text
    return "".join(
        _escape_char(ch) if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text
    )


class EscapingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose messages never span lines (see the module)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        """The formatted record with ``record.message`` escaped."""
        record.message = escape_control(record.message)
        return super().formatMessage(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr through :class:`EscapingFormatter` (the service's workers call this)."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
