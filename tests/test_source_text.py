"""Generated source holds user-controlled text only in escaped positions: a function name, pattern text
or canvas can never start a line of code, in either backend's kernels."""

import ast

import pytest
import torch

from maskir import Canvas, Causal, Predicate, Window
from maskir.codegen.common.lowered import source_title
from maskir.codegen.common.source_text import check_identifier, comment_text
from maskir.codegen.triton.emit import generate_source
from maskir.planner import plan

BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


def hostile_predicate(separator):
    def allowed(b, h, q, kv):
        return (q * kv) % 5 != 1  # not affine: the plan keeps the Predicate (and its name)

    allowed.__name__ = f"allowed{separator}INJECTED = __import__('os').getpid(){separator}"
    allowed.__qualname__ = allowed.__name__
    return Predicate(allowed)


def assert_only_comments_mention(source, needle="INJECTED"):
    """Every line holding ``needle`` is a comment, whichever line breaks a reader uses: Python's compiler
    (``\\n``, ``\\r``), ``str.splitlines`` (what ``linecache`` and so Triton's source reader use) or an editor."""
    assert source.splitlines() == source.split("\n")[:-1], "a line break other than \\n in generated source"
    assert needle in source, "the name never reached the source: this test would prove nothing"
    for line in source.splitlines():
        if needle in line:
            assert line.lstrip().startswith("#"), f"user text outside a comment: {line!r}"


def sources(pattern):
    canvas = Canvas(64)
    planned = plan(pattern, canvas, block_q=32, block_kv=32)
    found = {"triton": generate_source(planned, head_dim=16, dtype=torch.float32, interpret=True).source}
    tvm_emit = pytest.importorskip("maskir.codegen.tvm.emit", exc_type=ImportError)
    found["tvm"] = tvm_emit.generate_tvm_source(planned, head_dim=16, dtype=torch.float32).source
    return found


@pytest.mark.parametrize("separator", BREAKS, ids=[ascii(s) for s in BREAKS])
@pytest.mark.parametrize("compose", [lambda p: p, lambda p: p | Window(2, 2)], ids=["alone", "in a union"])
def test_a_function_name_with_a_line_break_cannot_inject_code(separator, compose):
    for backend, source in sources(compose(hostile_predicate(separator))).items():
        assert_only_comments_mention(source)
        if backend == "triton":
            tree = ast.parse(source)
            names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}
            assert "INJECTED" not in names


def test_comment_text_escapes_every_character_outside_printable_ascii():
    hostile = "a\nb\rc\x00d\u2028e\x1bf\u00e9"
    escaped = comment_text(hostile)
    assert escaped == "a\\nb\\rc\\x00d\\u2028e\\x1bf\\xe9"
    assert escaped.isprintable() and escaped.isascii() and comment_text(escaped) == escaped


def test_the_title_line_of_every_backend_is_one_escaped_line():
    planned = plan(hostile_predicate("\n") & Causal(), Canvas(64), block_q=32, block_kv=32)
    title = source_title(planned, head_dim=16, dtype_name="fp32", kv_heads=1)
    assert "\n" not in title and title.startswith("# maskir") and "allowed\\nINJECTED" in title


@pytest.mark.parametrize("name", ["a\nb", "x-y", "", "class", "é", "a b", 3])
def test_tensor_names_printed_into_kernels_must_be_identifiers(name):
    with pytest.raises(ValueError, match="identifier"):
        check_identifier(name, "a tensor name")
