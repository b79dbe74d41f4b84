"""Kernel templates: ``string.Template`` text whose block placeholders keep their indentation."""

from __future__ import annotations

import re
from collections.abc import Mapping
from string import Template

_BLOCK = re.compile(r"^( *)\$(\w+)$\n?", re.MULTILINE)
"""A placeholder alone on its line (with the line's newline)."""


def fill(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``$name`` placeholders. One alone on a line takes that line's indentation to every line
    of its value, and an empty value drops the line; values may hold placeholders of their own."""

    def block(match: re.Match) -> str:
        indent, lines = match.group(1), values[match.group(2)].splitlines()
        return "".join(f"{indent}{line}\n" for line in lines)

    text = template
    while "$" in text:
        previous = None
        while text != previous:  # blocks first, to a fixed point: a block may hold placeholders of its own
            previous, text = text, _BLOCK.sub(block, text)
        text = Template(text).substitute(values)
    return text
