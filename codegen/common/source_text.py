"""Text that goes into generated source: user-controlled strings only in escaped positions.

Pattern text (a ``Predicate``'s function name), canvases and anything else a user can name reach the
kernels' header comments. ``comment_lines`` writes each as one physical line of printable ASCII, every
other character escaped as ``ascii()`` escapes it, so no newline (``\\n``, ``\\r``, ``\\x0c``,
``\\u2028``, ...) can start a line of code. Identifiers in generated code are maskir's own
(``capture_0``, ``segments_q``); ``check_identifier`` refuses anything else before it is printed.
"""

from __future__ import annotations

import keyword
import re

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def comment_text(text: object) -> str:
    """``str(text)`` with every character outside printable ASCII escaped (``\\n`` -> ``\\\\n``)."""
    return "".join(ch if " " <= ch <= "~" else ascii(ch)[1:-1] for ch in str(text))


def comment_lines(lines: list[str]) -> str:
    """Header comment lines (each starting with ``#``) as source text, each escaped to one line."""
    for line in lines:
        assert line.startswith("#"), f"not a comment line: {line!r}"
    return "".join(comment_text(line) + "\n" for line in lines)


def check_identifier(name: str, what: str) -> str:
    """``name`` if it is a plain ASCII Python identifier (not a keyword), else a ValueError naming ``what``."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name) or keyword.iskeyword(name):
        raise ValueError(f"{what} must be an ASCII identifier to appear in generated kernels, got {name!r}.")
    return name
