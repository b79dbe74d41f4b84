"""The spec language: text reads back to the pattern it came from, anything outside the whitelist is a
SpecError pointing at its column, nothing is ever evaluated, and TOML spec files load into a Spec. The
tuple tree torch.compile hands to the trace-time build reads back too."""

import ast
import inspect
from pathlib import Path

import pytest
from hypothesis import given, settings
from strategies import canvas_and_pattern

import maskir.spec
from maskir.canvas import Canvas
from maskir.ir import (
    NODES,
    And,
    Blocks,
    Causal,
    Columns,
    Dilated,
    Distance,
    Full,
    Global,
    Grid,
    Neighborhood,
    Not,
    Or,
    PerHead,
    Predicate,
    Prefix,
    Routing,
    Segments,
    Sink,
    Strided,
    Stripes,
    Window,
    check_canvas,
    is_dynamic,
    node_from_tree,
    node_tree,
)
from maskir.spec import MAX_DEPTH, MAX_LENGTH, Spec, SpecError, load_spec, parse

# -- what parses -----------------------------------------------------------------------------------

CATALOGUE = [
    ("Full()", Full()),
    ("Causal()", Causal()),
    ("Causal(-1)", Causal(-1)),
    ("Causal(offset=2, dim=1)", Causal(2, dim=1)),
    ("Window(3, 0)", Window(3, 0)),
    ("Window(left=1, right=2, dim=0)", Window(1, 2, 0)),
    ("SlidingWindow(8)", Window(7, 0)),
    ("SlidingWindow(size=8, causal=False)", Window(4, 4)),
    ("Dilated(window=2, dilation=3)", Dilated(2, 3)),
    ("Neighborhood(3)", Neighborhood(3)),
    ("Neighborhood(3, 2, 2, True)", Neighborhood(3, 2, 2, True)),
    (
        "Neighborhood(kernel=[3, 5], dilation=(1, 2), stride=2, causal=(True, False))",
        Neighborhood((3, 5), (1, 2), 2, (True, False)),
    ),
    ("Neighborhood((5,), causal=True)", Neighborhood((5,), causal=True)),
    ("Blocks(8)", Blocks(8)),
    ("Blocks(size=(4, 8), offset=[2, 4])", Blocks((4, 8), (2, 4))),
    ("Stripes(dim=1, width=4)", Stripes(1, 4)),
    ("Grid(size=(2, 4))", Grid((2, 4))),
    ("Strided(4, offset=1)", Strided(4, 1)),
    ("Strided(stride=4)", Strided(4)),
    ("Columns(stride=8, width=2)", Columns(8, 2)),
    ("Sink(n=4)", Sink(4)),
    ("Prefix(16)", Prefix(16)),
    ("Prefix(n=16)", Prefix(16)),
    ("Global(indices=[5, 0, 5])", Global((0, 5))),
    ("Segments()", Segments()),
    ("Distance(dim=0, lo=1, hi=3)", Distance(0, 1, 3)),
    ("Routing(64, 4)", Routing(64, 4)),
    ("Routing(block=64, topk=4, scorer='mean_qk')", Routing(64, 4)),
    ("PerHead([Causal(), Window(3, 0)])", PerHead((Causal(), Window(3, 0)))),
    ("PerHead(patterns=(Full(),))", PerHead((Full(),))),
    ("Causal() & Window(3, 0)", And(Causal(), Window(3, 0))),
    ("Sink(4) | Window(3, 0)", Or(Sink(4), Window(3, 0))),
    ("~Blocks(4)", Not(Blocks(4))),
    ("~~Full()", Not(Not(Full()))),
    ("Causal() - Sink(4)", And(Causal(), Not(Sink(4)))),
    ("Full() & Causal() | Sink(2)", Or(And(Full(), Causal()), Sink(2))),
    ("Full() & (Causal() | Sink(2))", And(Full(), Or(Causal(), Sink(2)))),
    ("  Causal()  ", Causal()),
    ("(Prefix(4)\n | Causal())", Or(Prefix(4), Causal())),
    ("Causal()  # a comment", Causal()),
]


@pytest.mark.parametrize(("text", "expected"), CATALOGUE, ids=[text for text, _ in CATALOGUE])
def test_catalogue_spec_parses_to_the_pattern_built_in_python(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("pattern", [expected for _, expected in CATALOGUE], ids=str)
def test_catalogue_pattern_text_round_trips(pattern):
    assert parse(str(pattern)) == pattern
    assert str(parse(str(pattern))) == str(pattern)


def test_catalogue_calls_every_constructor_and_every_keyword():
    called = set()
    for text, _ in CATALOGUE:
        for node in ast.walk(ast.parse(text.strip(), mode="eval")):
            if isinstance(node, ast.Call):
                called |= {(node.func.id, keyword.arg) for keyword in node.keywords} | {(node.func.id, None)}
    for name in NODES:
        assert (name, None) in called, name
        for keyword in inspect.signature(NODES[name]).parameters:
            assert (name, keyword) in called, f"{name}({keyword}=...)"


@settings(max_examples=300)
@given(canvas_and_pattern())
def test_random_pattern_text_round_trips(canvas_pattern):
    _, pattern = canvas_pattern
    assert parse(str(pattern)) == pattern
    assert str(parse(str(pattern))) == str(pattern)


@settings(max_examples=300)
@given(canvas_and_pattern())
def test_random_pattern_round_trips_through_its_tuple_tree(canvas_pattern):
    """node_tree is the form torch.compile hands to the trace-time build (plain nested tuples)."""
    _, pattern = canvas_pattern
    assert node_from_tree(node_tree(pattern)) == pattern


@pytest.mark.parametrize("pattern", [expected for _, expected in CATALOGUE], ids=str)
def test_catalogue_pattern_round_trips_through_its_tuple_tree(pattern):
    tree = node_tree(pattern)
    assert node_from_tree(tree) == pattern
    flat = [tree]
    while flat:  # nothing but tuples, strings, numbers, None and (for Predicate) a callable
        item = flat.pop()
        if isinstance(item, tuple):
            flat.extend(item)
        else:
            assert item is None or isinstance(item, (str, int, float)) or callable(item), item


def test_predicate_round_trips_through_its_tuple_tree_with_the_same_callable():
    def mask_mod(b, h, q, kv):
        return q >= kv

    pattern = Predicate(mask_mod) & Window(3, 0)
    assert node_from_tree(node_tree(pattern)) == pattern


@pytest.mark.parametrize(
    "tree", [("maskir.node", "Popen", ()), ("other", "Window", (1, 0, None)), ("maskir.node", "__class__", ())]
)
def test_a_tree_naming_no_maskir_node_is_refused(tree):
    with pytest.raises(ValueError, match="Not a maskir pattern tree"):
        node_from_tree(tree)


# -- the shared strategies -------------------------------------------------------------------------


@settings(max_examples=100)
@given(canvas_and_pattern())
def test_strategy_patterns_fit_their_canvas_and_are_static_by_default(canvas_pattern):
    canvas, pattern = canvas_pattern
    assert canvas.size <= 96
    check_canvas(pattern, canvas)
    assert not is_dynamic(pattern)


def test_strategies_draw_every_node_and_every_canvas_rank():
    drawn_nodes, drawn_ranks = set(), set()

    @settings(max_examples=300, derandomize=True)
    @given(canvas_and_pattern(dynamic=True))
    def draw(canvas_pattern):
        canvas, pattern = canvas_pattern
        drawn_ranks.add(canvas.ndim)
        drawn_nodes.update(type(node) for node in pattern.walk())

    draw()
    assert drawn_ranks == {1, 2, 3}
    assert drawn_nodes == {cls for cls in NODES.values() if isinstance(cls, type)} | {Not, And, Or}


# -- what is rejected ------------------------------------------------------------------------------

REJECTED = [
    # (spec text, message fragment, 1-based column or None)
    # code injection
    ("__import__('os').system('ls')", "got attribute access", 1),
    ("__import__('os')", "unknown name '__import__'", 1),
    ("Causal().__class__", "attribute access", 1),
    ("Causal().__class__.__bases__[0].__subclasses__()", "only pattern constructors can be called", 1),
    ("open('x')", "unknown name 'open'", 1),
    ("eval('1')", "unknown name 'eval'", 1),
    ("exec('import os')", "unknown name 'exec'", 1),
    ("(lambda: Full())()", "got lambda", 2),
    ("Full() | (lambda: 1)", "lambda not allowed", 11),
    ("[x for x in ()]", "comprehensions", 1),
    ("Global([x for x in (1, 2)])", "comprehensions", 8),
    ("Causal().offset", "attribute access", 1),
    ("maskir.ir.Full()", "got attribute access", 1),
    ("Causal()[0]", "subscripts", 1),
    ("Full()()", "got the result of a call", 1),
    ("f'{Full()}'", "f-strings", 1),
    ("(x := Full())", "':=' assignments", 2),
    # names
    ("os", "unknown name 'os' (known: Blocks, Causal, ", 1),
    ("Full() | os", "unknown name 'os'", 10),
    ("Global(range(3))", "unknown name 'range'", 8),
    ("Causal", "Causal is a constructor: call it", 1),
    ("Predicate(f)", "Predicate has no text form", 1),
    ("And(Full(), Causal())", "And is written a & b", 1),
    ("Not(Full())", "Not is written ~a", 1),
    # wrong types
    ("Window('a', 1)", "argument left must be an int", 1),
    ("Window(1.5, 1)", "float constants not allowed", 8),
    ("Causal(True)", "argument offset must be an int", 1),
    ("Causal(None)", "NoneType constants not allowed", 8),
    ("Global(b'ab')", "bytes constants not allowed", 8),
    ("Causal(1j)", "complex constants not allowed", 8),
    ("Causal() & 3", "the right side of '&' must be a pattern, got int 3", 12),
    ("3 | Causal()", "the left side of '|' must be a pattern", 1),
    ("Causal() - 'x'", "the right side of '-' must be a pattern", 12),
    ("~5", "the operand of '~' must be a pattern", 2),
    ("Neighborhood(Causal())", "Neighborhood argument kernel does not take a pattern, got Causal()", 14),
    ("Blocks((2, Full()))", "Blocks argument size does not take a pattern", 12),
    ("PerHead([Causal(), 1])", "PerHead argument patterns takes patterns, got 1", 20),
    ("PerHead(Causal())", "PerHead takes a non-empty list of patterns", 1),
    ("Neighborhood(3, causal=1)", "causal must be a bool", 1),
    ("-Causal()", "unary minus applies to int literals only", 1),
    ("Causal(--1)", "unary minus applies to int literals only", 8),
    ("5", "a spec must be a pattern, got int 5", 1),
    ("'Causal()'", "a spec must be a pattern, got str", 1),
    ("(Full(), Causal())", "a spec must be a pattern, got tuple", 1),
    # operators and other Python
    ("Causal() ** 2", "operator '**' not allowed", 1),
    ("Causal() + Full()", "operator '+' not allowed", 1),
    ("Full() and Causal()", "'and'/'or' not allowed", 1),
    ("not Full()", "unary + and 'not' not allowed", 1),
    ("+Full()", "unary + and 'not' not allowed", 1),
    ("Full() == Full()", "comparisons not allowed", 1),
    ("Full() if 1 else Causal()", "conditional expressions not allowed", 1),
    ("{Full()}", "sets not allowed", 1),
    ("{'a': Full()}", "dicts not allowed", 1),
    # bad values
    ("Neighborhood(0)", "kernel must be >= 1, got kernel=0", 1),
    ("Window(-1, 2)", "left must be >= 0, got left=-1", 1),
    ("Strided(0)", "stride must be >= 1", 1),
    ("Dilated(3, 0)", "dilation must be >= 1", 1),
    ("Columns(4, 8)", "width <= stride", 1),
    ("Distance(0, 5, 2)", "lo < hi", 1),
    ("Routing(0, 2)", "block must be >= 1", 1),
    ("Routing(64, 4, scorer='max')", "scorer must be one of", 1),
    ("Global([])", "must not be empty", 1),
    ("PerHead([])", "non-empty list of patterns", 1),
    ("Blocks((2, 2, 2, 2))", "one value or one per dim (1 to 3)", 1),
    ("Full() | Sink(0)", "n must be >= 1", 10),
    ("Routing(4, 2, scorer=Full())", "Routing argument scorer does not take a pattern", 22),
    # arguments
    ("Window(1, 2, foo=3)", "Window has no argument 'foo' (arguments: left, right, dim)", 14),
    ("Causal(size=2)", "Causal has no argument 'size'", 8),
    ("Window(1, 2, 0, 4)", "Window takes at most 3 arguments, got 4", 17),
    ("Full(1)", "Full takes at most 0 arguments", 6),
    ("Window(1)", "missing a required argument: 'right'", 1),
    ("Window(1, left=2)", "multiple values for argument 'left'", 1),
    ("Causal(**{'offset': 1})", "'**' unpacking not allowed", 8),
    ("Global(*[1])", "'*' unpacking not allowed", 8),
    # text
    ("", "empty spec", None),
    ("  \n\t ", "empty spec", None),
    ("Causal(", "invalid syntax: '(' was never closed", 7),
    ("Causal() |", "invalid syntax", None),
    ("Full() +* 2", "invalid syntax", 9),
    ("Full() )", "unmatched ')'", 8),
    ("Causal(dim=0, dim=1)", "Causal argument 'dim' given twice", 15),
    ("Causal()\x00", "invalid syntax", None),
    ("9" * 5000, "invalid syntax", None),
    ("Full() | " * 12_500 + "Full()", f"the limit is {MAX_LENGTH}", None),
    ("~" * (MAX_DEPTH + 50) + "Full()", f"nested deeper than {MAX_DEPTH} levels", MAX_DEPTH + 2),
    ("(" * 250 + "Full()" + ")" * 250, "too many nested parentheses", 201),
    ("Full() | " * 9_000 + "Full()", "nested", None),
]


@pytest.mark.parametrize(("text", "fragment", "column"), REJECTED, ids=[text[:40] for text, _, _ in REJECTED])
def test_spec_rejects_text_outside_the_whitelist(text, fragment, column):
    with pytest.raises(SpecError) as caught:
        parse(text)
    assert isinstance(caught.value, ValueError)
    assert fragment in caught.value.message
    assert caught.value.column == column
    assert caught.value.text == text


def test_spec_error_message_starts_with_the_column():
    with pytest.raises(SpecError) as caught:
        parse("Causal() | os")
    assert str(caught.value).startswith("col 12: unknown name 'os' (known: Blocks, Causal, ")


def test_spec_error_counts_columns_in_characters_not_bytes():
    with pytest.raises(SpecError) as caught:
        parse("Global(('ä', Full()))")
    assert caught.value.column == 14


def test_spec_error_points_at_the_line_of_a_multiline_spec():
    with pytest.raises(SpecError) as caught:
        parse("(Causal()\n  | nope())")
    assert (caught.value.line, caught.value.column) == (2, 5)
    assert str(caught.value).startswith("line 2, col 5: unknown name 'nope'")


def test_spec_error_columns_count_the_stripped_leading_whitespace():
    with pytest.raises(SpecError) as caught:
        parse("\n   Causal() | nope()")
    assert (caught.value.line, caught.value.column) == (2, 15)


def test_constructor_errors_are_chained_to_the_spec_error():
    with pytest.raises(SpecError) as caught:
        parse("Columns(4, 8)")
    assert isinstance(caught.value.__cause__, ValueError)
    assert not isinstance(caught.value.__cause__, SpecError)


def test_predicate_text_does_not_parse_back():
    def mask_mod(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    with pytest.raises(SpecError, match="no text form"):
        parse(str(Predicate(mask_mod) | Causal()))


def test_parse_takes_only_strings():
    with pytest.raises(TypeError, match="str"):
        parse(b"Causal()")


def test_spec_nested_exactly_max_depth_parses():
    expected = Full()
    for _ in range(MAX_DEPTH):
        expected = Not(expected)
    assert parse("~" * MAX_DEPTH + "Full()") == expected
    with pytest.raises(SpecError, match="nested deeper"):
        parse("~" * (MAX_DEPTH + 1) + "Full()")


def test_spec_module_never_calls_eval_exec_or_compile():
    tree = ast.parse(Path(maskir.spec.__file__).read_text(encoding="utf-8"))
    forbidden = {"eval", "exec", "compile", "__import__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            assert name not in forbidden, f"spec.py line {node.lineno} calls {name}"


# -- spec files ------------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_spec_reads_every_key(tmp_path):
    path = _write(
        tmp_path,
        'pattern = "Neighborhood(3) | Global([0])"\ncanvas = [4, 6]\nkv_canvas = [4, 6]\n'
        'heads = 8\nhead_dim = 128\ndtype = "fp16"\n',
    )
    expected = Spec(Neighborhood(3) | Global((0,)), Canvas((4, 6)), Canvas((4, 6)), 8, 128, "fp16")
    assert load_spec(path) == expected


def test_load_spec_fills_defaults(tmp_path):
    spec = load_spec(_write(tmp_path, 'pattern = "Causal()"\ncanvas = 16\n'))
    assert spec == Spec(Causal(), Canvas((16,)), kv_canvas=None, heads=1, head_dim=64, dtype="bf16")


def test_load_spec_reads_a_2d_canvas(tmp_path):
    spec = load_spec(_write(tmp_path, 'pattern = "Neighborhood((3, 5))"\ncanvas = [8, 16]\n'))
    assert spec.canvas == Canvas((8, 16))
    assert spec.kv_canvas is None


def test_load_spec_reads_a_multiline_pattern(tmp_path):
    spec = load_spec(_write(tmp_path, 'pattern = """\n  (Sink(4)\n   | Window(7, 0))\n"""\ncanvas = 64\n'))
    assert spec.pattern == Sink(4) | Window(7, 0)


def test_load_spec_rejects_an_unknown_key_naming_the_valid_ones(tmp_path):
    with pytest.raises(SpecError, match=r"unknown key 'head' \(valid keys: pattern, canvas, kv_canvas, heads"):
        load_spec(_write(tmp_path, 'pattern = "Causal()"\ncanvas = 16\nhead = 4\n'))


def test_load_spec_rejects_a_missing_canvas(tmp_path):
    with pytest.raises(SpecError, match="missing key 'canvas'"):
        load_spec(_write(tmp_path, 'pattern = "Causal()"\n'))


def test_load_spec_rejects_a_bad_dtype(tmp_path):
    with pytest.raises(SpecError, match="dtype must be one of fp16, bf16, fp32, got dtype='fp8'"):
        load_spec(_write(tmp_path, 'pattern = "Causal()"\ncanvas = 16\ndtype = "fp8"\n'))


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('canvas = "16"', "key 'canvas' must be an int or a list of ints"),
        ("canvas = [4, 4.5]", "key 'canvas' must be an int or a list of ints"),
        ("canvas = [1, 2, 3, 4]", "key 'canvas': Canvas shape must be"),
        ("canvas = 16\nkv_canvas = true", "key 'kv_canvas' must be an int or a list of ints"),
        ('canvas = 16\nheads = "8"', "heads must be an int >= 1"),
        ("canvas = 16\nhead_dim = 0", "head_dim must be an int >= 1"),
    ],
)
def test_load_spec_rejects_wrong_types(tmp_path, line, fragment):
    with pytest.raises(SpecError, match=fragment.replace("[", r"\[")):
        load_spec(_write(tmp_path, f'pattern = "Causal()"\n{line}\n'))


def test_load_spec_rejects_a_pattern_that_is_not_text(tmp_path):
    with pytest.raises(SpecError, match="key 'pattern' must be a string"):
        load_spec(_write(tmp_path, "pattern = 3\ncanvas = 16\n"))


def test_load_spec_reports_the_file_and_column_of_a_bad_pattern(tmp_path):
    path = _write(tmp_path, 'pattern = "Causal() | os"\ncanvas = 16\n')
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.column == 12
    assert str(caught.value).startswith(f"{path}, key 'pattern', col 12: unknown name 'os'")


def test_load_spec_rejects_invalid_toml(tmp_path):
    with pytest.raises(SpecError, match="invalid TOML"):
        load_spec(_write(tmp_path, "pattern = Causal()\n"))


def test_load_spec_rejects_a_pattern_that_does_not_fit_the_canvas(tmp_path):
    with pytest.raises(ValueError, match="kernel \\* dilation = 9 exceeds the canvas extent 8"):
        load_spec(_write(tmp_path, 'pattern = "Neighborhood(9)"\ncanvas = 8\n'))


def test_spec_checks_the_pattern_against_both_canvases():
    with pytest.raises(ValueError, match="n must be <= the number of kv tokens 8"):
        Spec(Sink(12), Canvas((16,)), kv_canvas=Canvas((8,)))


def test_spec_needs_canvas_objects():
    with pytest.raises(TypeError, match="Spec canvas must be a Canvas"):
        Spec(Causal(), 16)
