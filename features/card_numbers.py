"""Card numbers (PANs) never enter the project: one detector for decoded text and JSON values.

A string contains a card number when, after its digits are normalised and its separators
dropped, some run of 13-19 digits passes the Luhn check (ISO/IEC 7812: card numbers are 13-19
digits with a Luhn check digit). The text is looked at as the application sees it, after JSON
decoding, so escapes (``"\\u0034\\u0032..."``) and body encodings (UTF-8, UTF-16, UTF-32) change
nothing:

- **digits**: every Unicode digit counts as its value (full-width ``４``, Arabic-Indic ``٤``,
  superscripts ...; :func:`unicodedata.digit` after NFKC normalisation);
- **separators** between digits are ignored, any number of them: white space (incl. no-break
  spaces), dashes and hyphens (Unicode category Pd, U+2212 minus) and invisible format
  characters (category Cf: zero-width space/joiners U+200B-U+200D, word joiner U+2060,
  BOM U+FEFF, soft hyphen ...);
- digits grouped by separators: a card number is one or more whole consecutive groups totalling
  13-19 digits (``"4242 4242 4242 4242"`` is; a 30-digit identifier without separators is not).

Callers report *where* a card number was found, never the value: :func:`find_card_number`
returns a JSON path in which every key that itself holds a card number is replaced by
``<redacted>``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Final

__all__ = [
    "REDACTED",
    "body_may_hold_card_number",
    "contains_card_number",
    "find_card_number",
    "luhn_ok",
    "safe_key",
]

PAN_MIN_DIGITS: Final = 13
PAN_MAX_DIGITS: Final = 19
REDACTED: Final = "<redacted>"

# ASCII: digit runs joined by ASCII separators (white space and hyphens).
# (One simple character class: ~4x faster than a pattern with groups, which is tried at every
# digit of every timestamp; stretches with fewer than 13 digits are dismissed by the groups.)
_ASCII_RUN = re.compile(r"[0-9][0-9 \t\n\r\f\v\x1c-\x1f-]{11,}[0-9]")
_ASCII_GROUP = re.compile(r"[0-9]+")
_EXPONENT = re.compile(rb"[0-9][eE]")
_EXTRA_SEPARATORS = frozenset("\u2212")  # minus sign (Sm) is used as a dash


def luhn_ok(digits: str) -> bool:
    """Whether an ASCII digit string passes the Luhn check."""
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if k % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_separator(ch: str) -> bool:
    if ch.isspace() or ch in _EXTRA_SEPARATORS:
        return True
    return unicodedata.category(ch) in ("Zs", "Pd", "Cf")


def _ascii_form(text: str) -> str:
    """``text`` with every digit as an ASCII digit, every separator as a space, any other
    character as ``x`` (only called for non-ASCII text)."""
    out = []
    for ch in unicodedata.normalize("NFKC", text):
        if "0" <= ch <= "9":
            out.append(ch)
            continue
        d = unicodedata.digit(ch, None)
        if d is not None:
            out.append(chr(48 + d))
        elif _is_separator(ch):
            out.append(" ")
        else:
            out.append("x")
    return "".join(out)


def _groups_hold_pan(groups: list[str]) -> bool:
    for start in range(len(groups)):
        total = 0
        for end in range(start, len(groups)):
            total += len(groups[end])
            if total > PAN_MAX_DIGITS:
                break
            if total >= PAN_MIN_DIGITS and luhn_ok("".join(groups[start : end + 1])):
                return True
    return False


def contains_card_number(text: str) -> bool:
    """Whether ``text`` contains a card number (see the module docstring)."""
    if len(text) < PAN_MIN_DIGITS:
        return False
    if not text.isascii():
        text = _ascii_form(text)
    for run in _ASCII_RUN.finditer(text):
        if _groups_hold_pan(_ASCII_GROUP.findall(run.group())):
            return True
    return False


def _value_holds_pan(value: object) -> bool:
    if isinstance(value, str):
        return contains_card_number(value)
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) >= 10 ** (PAN_MIN_DIGITS - 1) and contains_card_number(str(abs(value)))
    if isinstance(value, float):
        return (
            value.is_integer()
            and 10 ** (PAN_MIN_DIGITS - 1) <= abs(value) < 10**PAN_MAX_DIGITS
            and contains_card_number(str(int(abs(value))))
        )
    return False


def body_may_hold_card_number(raw: bytes) -> bool:
    """Fast pre-check of a JSON body: False only when no decoded key or value holds a card
    number (then :func:`find_card_number` would find none).

    A body of printable ASCII without backslashes or NULs decodes to substrings of itself (no
    escapes; UTF-16/32 bodies hold NULs), and JSON's quotes, commas, colons and brackets are
    neither digits nor separators, so one scan of the raw text sees every string and number.
    Any other body is left to the decoded walk (True), as is one with a number in exponent
    notation (``4.242424242424242e15`` is a card number as an integer).
    """
    if not raw.isascii() or b"\\" in raw or b"\x00" in raw or _EXPONENT.search(raw):
        return True
    return contains_card_number(raw.decode("ascii"))


def safe_key(key: str) -> str:
    """``key`` for a field path: :data:`REDACTED` when it holds a card number."""
    return REDACTED if contains_card_number(key) else key


def _walk(obj: object, path: str) -> Iterator[tuple[str, bool]]:
    """(path, holds a card number) for every key and leaf value, depth first."""
    stack: list[tuple[object, str]] = [(obj, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
            for k, v in reversed(items):
                key = str(k)
                child = f"{where}.{safe_key(key)}" if where else safe_key(key)
                stack.append((v, child))
            for k, _ in items:
                key = str(k)
                if contains_card_number(key):
                    yield (f"{where}.{REDACTED}" if where else REDACTED), True
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                stack.append((node[i], f"{where}[{i}]"))
        else:
            yield where, _value_holds_pan(node)


def find_card_number(obj: object) -> str | None:
    """The JSON path of the first key or value of ``obj`` holding a card number, else None.

    ``obj`` is decoded JSON (dicts, lists, strings, numbers). The path names keys and list
    indices (``charge.metadata[2]``); keys holding a card number appear as :data:`REDACTED`.
    The value itself is never returned. Iterative, so any nesting depth is fine.
    """
    for where, found in _walk(obj, ""):
        if found:
            return where or "body"
    return None
