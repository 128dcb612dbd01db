"""Text for terminals: user-given strings made safe for one table cell, padded by display width.

A session name is the user's text: a newline in it would break a table's rows, and CJK
characters or emoji take two columns each, so padding by ``len`` misaligns the columns.
"""

from __future__ import annotations

import unicodedata

__all__ = ["cell", "ljust", "width"]


def cell(text: str) -> str:
    """``text`` with control and other non-printing characters escaped (``\\n``, ``\\x1b``)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        else:
            escaped = repr(ch)[1:-1]  # "\n", "\x1b", "\u200b"
            out.append(escaped if escaped != ch else f"\\u{ord(ch):04x}")
    return "".join(out)


def width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide and full-width characters count two,
    combining marks none."""
    total = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        total += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return total


def ljust(text: str, columns: int) -> str:
    """``text`` padded with spaces to ``columns`` display columns."""
    return text + " " * max(0, columns - width(text))
