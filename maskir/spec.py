"""The spec language: a pattern written as a Python-like expression, read without ever running it.

``parse(text)`` parses ``text`` with ``ast.parse(..., mode="eval")`` and walks a whitelist:

    spec    := pattern
    pattern := Name(arg, ..., key=arg, ...)         Name a constructor in maskir.ir.NODES
             | pattern & pattern | pattern | pattern | pattern - pattern | ~pattern | (pattern)
    arg     := int | -int | True | False | 'str' | (arg, ...) | [arg, ...] | pattern

Lists become tuples. Every other construct (attributes, subscripts, lambdas, floats, ``**``, ...)
is a :class:`SpecError` pointing at the offending column. Nothing is evaluated: the only calls made
are to the IR constructors, with values built from literals. ``parse(str(p)) == p`` for every node
but ``Predicate``, whose Python callable has no text form.

A spec file (TOML, :func:`load_spec`) adds the canvases and the attention shape to a pattern.
"""

from __future__ import annotations

import ast
import inspect
import operator
import re
import reprlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from maskir.canvas import Canvas
from maskir.ir import NODES, Pattern, check_canvas

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MAX_LENGTH = 100_000
"""Longest spec text accepted, in characters."""
MAX_DEPTH = 200
"""Deepest expression accepted (each call, operator, tuple or list adds a level; parentheses do not)."""

_NO_TEXT_FORM = {
    "Predicate": "Predicate has no text form: build it in Python with maskir.Predicate(fn)",
    "And": "And is written a & b",
    "Or": "Or is written a | b",
    "Not": "Not is written ~a",
}
_PATTERN_OPERATORS = {ast.BitAnd: ("&", operator.and_), ast.BitOr: ("|", operator.or_), ast.Sub: ("-", operator.sub)}
_OTHER_OPERATORS = {
    ast.Add: "+",
    ast.Mult: "*",
    ast.Pow: "**",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitXor: "^",
}
_CONSTRUCTS = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings",
    ast.NamedExpr: "':=' assignments",
    ast.Compare: "comparisons",
    ast.BoolOp: "'and'/'or'",
    ast.Call: "the result of a call",
    ast.IfExp: "conditional expressions",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.Starred: "'*' unpacking",
}
_ALLOWED = "calls of pattern constructors, ints, bools, strings, tuples, lists and & | ~ -"


class SpecError(ValueError):
    """A spec that cannot be read. ``column`` (1-based, in characters; None when unknown) and ``line``
    point into the spec ``text``; ``source`` names where the text came from (a file and key), if anywhere."""

    def __init__(self, message: str, column: int | None = None, *, text: str = "", line: int = 1, source: str = ""):
        self.message, self.column, self.text, self.line, self.source = message, column, text, line, source
        where = [source] if source else []
        where += [f"line {line}"] if line > 1 else []
        where += [f"col {column}"] if column is not None else []
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def parse(text: str) -> Pattern:
    """Read spec text into a pattern; raise :class:`SpecError` with the column on anything else."""
    if not isinstance(text, str):
        raise TypeError(f"parse takes the spec text as a str, got {type(text).__name__}.")
    if len(text) > MAX_LENGTH:
        raise SpecError(f"spec text is {len(text)} characters long; the limit is {MAX_LENGTH}", text=text)
    return _Reader(text).pattern()


class _Reader:
    """One parse: the text, and the walk over its syntax tree."""

    def __init__(self, text: str):
        self.text = text
        body = text.lstrip(" \t\r\n")
        skipped = text[: len(text) - len(body)]
        self.body = body
        self.line_shift = skipped.count("\n")
        self.column_shift = len(skipped) - (skipped.rfind("\n") + 1)

    def error(self, message: str, line: int | None = None, column: int | None = None) -> SpecError:
        """A SpecError at (line, 1-based column) of the stripped body, moved back into the text."""
        if line is not None:
            column = None if column is None else column + (self.column_shift if line == 1 else 0)
            line += self.line_shift
        return SpecError(message, column, text=self.text, line=line or 1)

    def error_at(self, node: ast.AST, message: str) -> SpecError:
        source_line = re.split("\r\n|\r|\n", self.body)[node.lineno - 1]
        column = len(source_line.encode()[: node.col_offset].decode(errors="replace")) + 1
        return self.error(message, node.lineno, column)

    def pattern(self) -> Pattern:
        if not self.body.strip():
            raise self.error("empty spec: write a pattern such as Causal() or Window(127, 0)")
        try:
            tree = ast.parse(self.body, mode="eval")
        except SyntaxError as err:
            column = err.offset if err.offset and err.offset > 0 else None  # 0 or None: Python knows no column
            raise self.error(f"invalid syntax: {err.msg}", err.lineno, column) from err
        except (RecursionError, MemoryError) as err:
            raise self.error(f"spec nested too deeply (limit {MAX_DEPTH} levels)") from err
        except ValueError as err:  # null bytes on Python 3.10
            raise self.error(f"invalid syntax: {err}") from err
        return self.expect_pattern(tree.body, 0, "a spec")

    def expect_pattern(self, node: ast.expr, depth: int, role: str) -> Pattern:
        value = self.value(node, depth)
        if not isinstance(value, Pattern):
            raise self.error_at(node, f"{role} must be a pattern, got {type(value).__name__} {reprlib.repr(value)}")
        return value

    def value(self, node: ast.expr, depth: int) -> Any:
        """The value of one whitelisted expression node."""
        if depth > MAX_DEPTH:
            raise self.error_at(node, f"spec nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, ast.Call):
            return self.call(node, depth + 1)
        if isinstance(node, ast.BinOp) and type(node.op) in _PATTERN_OPERATORS:
            symbol, combine = _PATTERN_OPERATORS[type(node.op)]
            left = self.expect_pattern(node.left, depth + 1, f"the left side of {symbol!r}")
            right = self.expect_pattern(node.right, depth + 1, f"the right side of {symbol!r}")
            return combine(left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return ~self.expect_pattern(node.operand, depth + 1, "the operand of '~'")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = node.operand
            if not (isinstance(operand, ast.Constant) and _is_int(operand.value)):
                raise self.error_at(node, "unary minus applies to int literals only, as in Causal(-1)")
            return -operand.value
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self.value(item, depth + 1) for item in node.elts)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, str)):  # bool is an int
                return node.value
            raise self.error_at(node, _not_allowed(f"{type(node.value).__name__} constants"))
        if isinstance(node, ast.Name):
            if node.id in NODES:
                raise self.error_at(node, f"{node.id} is a constructor: call it, as in {node.id}(...)")
            raise self.error_at(node, self.unknown_name(node.id))
        if isinstance(node, ast.BinOp):
            symbol = _OTHER_OPERATORS.get(type(node.op), type(node.op).__name__)
            raise self.error_at(node, _not_allowed(f"operator {symbol!r}"))
        if isinstance(node, ast.UnaryOp):
            raise self.error_at(node, _not_allowed("unary + and 'not'"))
        raise self.error_at(node, _not_allowed(_describe(node)))

    def unknown_name(self, name: str) -> str:
        if name in _NO_TEXT_FORM:
            return _NO_TEXT_FORM[name]
        return f"unknown name {name!r} (known: {', '.join(sorted(NODES))})"

    def call(self, node: ast.Call, depth: int) -> Pattern:
        """A constructor call: check the argument names and kinds, then build the node."""
        if not isinstance(node.func, ast.Name):
            raise self.error_at(
                node.func, f"only pattern constructors can be called, as in Causal(); got {_describe(node.func)}"
            )
        name = node.func.id
        if name not in NODES:
            raise self.error_at(node.func, self.unknown_name(name))
        parameters = _parameters(name)
        if len(node.args) > len(parameters):
            extra = node.args[len(parameters)]
            raise self.error_at(extra, f"{name} takes at most {len(parameters)} arguments, got {len(node.args)}")
        args = [self.argument(name, parameter, arg, depth) for parameter, arg in zip(parameters, node.args)]
        kwargs = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise self.error_at(keyword, _not_allowed("'**' unpacking"))
            if keyword.arg not in parameters:
                names = ", ".join(parameters) or "none"
                raise self.error_at(keyword, f"{name} has no argument {keyword.arg!r} (arguments: {names})")
            if keyword.arg in kwargs:
                raise self.error_at(keyword, f"{name} argument {keyword.arg!r} given twice")
            kwargs[keyword.arg] = self.argument(name, keyword.arg, keyword.value, depth)
        try:
            inspect.signature(NODES[name]).bind(*args, **kwargs)
        except TypeError as err:
            raise self.error_at(node, f"{name}: {err}") from err
        try:
            return NODES[name](*args, **kwargs)
        except (TypeError, ValueError) as err:
            raise self.error_at(node, str(err).rstrip(".")) from err

    def argument(self, name: str, parameter: str, node: ast.expr, depth: int) -> Any:
        """An argument's value; a pattern where a number belongs (or the reverse) points at itself."""
        if isinstance(node, ast.Starred):
            raise self.error_at(node, _not_allowed("'*' unpacking"))
        value = self.value(node, depth)
        takes_patterns = "Pattern" in _parameters(name)[parameter]
        self.check_kind(name, parameter, node, value, takes_patterns)
        return value

    def check_kind(self, name: str, parameter: str, node: ast.expr, value: Any, takes_patterns: bool) -> None:
        if isinstance(value, tuple) and isinstance(node, (ast.Tuple, ast.List)):
            for item_node, item in zip(node.elts, value):
                self.check_kind(name, parameter, item_node, item, takes_patterns)
        elif isinstance(value, Pattern) and not takes_patterns:
            raise self.error_at(node, f"{name} argument {parameter} does not take a pattern, got {value}")
        elif not isinstance(value, Pattern) and takes_patterns:
            raise self.error_at(node, f"{name} argument {parameter} takes patterns, got {reprlib.repr(value)}")


@cache
def _parameters(name: str) -> dict[str, str]:
    """A constructor's parameters: name -> annotation text (``from __future__`` keeps it a string)."""
    return {p.name: str(p.annotation) for p in inspect.signature(NODES[name]).parameters.values()}


def _not_allowed(what: str) -> str:
    return f"{what} not allowed in a spec (allowed: {_ALLOWED})"


def _describe(node: ast.expr) -> str:
    """What a rejected construct is, in words."""
    return _CONSTRUCTS.get(type(node), f"{type(node).__name__} expressions")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- spec files ------------------------------------------------------------------------------------

DTYPES = ("fp16", "bf16", "fp32")


@dataclass(frozen=True)
class Spec:
    """A pattern on its q (and optional kv) canvas, with the attention shape; the pattern fits the canvas."""

    pattern: Pattern
    canvas: Canvas
    kv_canvas: Canvas | None = None
    heads: int = 1
    head_dim: int = 64
    dtype: str = "bf16"

    def __post_init__(self):
        if not isinstance(self.pattern, Pattern):
            raise TypeError(f"Spec pattern must be a Pattern, got {self.pattern!r}.")
        for name in ("canvas", "kv_canvas"):
            value = getattr(self, name)
            if not isinstance(value, Canvas) and (name == "canvas" or value is not None):
                raise TypeError(f"Spec {name} must be a Canvas, got {value!r}.")
        for name in ("heads", "head_dim"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"Spec {name} must be an int >= 1, got {name}={value!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"Spec dtype must be one of {', '.join(DTYPES)}, got dtype={self.dtype!r}.")
        check_canvas(self.pattern, self.canvas, self.kv_canvas)


_FILE_KEYS = ("pattern", "canvas", "kv_canvas", "heads", "head_dim", "dtype")
_REQUIRED_KEYS = ("pattern", "canvas")


def load_spec(path: str | Path) -> Spec:
    """Read a TOML spec file: ``pattern`` (spec text) and ``canvas`` (an int or a list of ints) are
    required; ``kv_canvas``, ``heads``, ``head_dim`` and ``dtype`` are optional (defaults as in Spec)."""
    source = str(path)
    try:
        table = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"invalid TOML: {err}", source=source) from err
    valid = ", ".join(_FILE_KEYS)
    for key in table:
        if key not in _FILE_KEYS:
            raise SpecError(f"unknown key {key!r} (valid keys: {valid})", source=source)
    for key in _REQUIRED_KEYS:
        if key not in table:
            raise SpecError(f"missing key {key!r} (valid keys: {valid})", source=source)
    text = table["pattern"]
    if not isinstance(text, str):
        raise SpecError(f"key 'pattern' must be a string of spec text, got {text!r}", source=source)
    try:
        pattern = parse(text)
    except SpecError as err:
        raise SpecError(err.message, err.column, text=text, line=err.line, source=f"{source}, key 'pattern'") from err
    canvases = {key: _canvas(table[key], key, source) for key in ("canvas", "kv_canvas") if key in table}
    attention = {key: table[key] for key in ("heads", "head_dim", "dtype") if key in table}
    try:
        return Spec(pattern, **canvases, **attention)
    except (TypeError, ValueError) as err:
        raise SpecError(str(err).rstrip("."), source=source) from err


def _canvas(value: Any, key: str, source: str) -> Canvas:
    if not (_is_int(value) or isinstance(value, list) and all(_is_int(v) for v in value)):
        raise SpecError(f"key {key!r} must be an int or a list of ints, got {value!r}", source=source)
    try:
        return Canvas(value)
    except ValueError as err:
        raise SpecError(f"key {key!r}: {err}".rstrip("."), source=source) from err
