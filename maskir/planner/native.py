"""A mask_mod compiled to a vectorised C loop that counts its allowed pairs per 16 x 16 cell (CPU).

The mask_mod is called once with symbolic ``q`` and ``kv`` (``b`` is 0 and ``h`` the head, both constants):
the ops it applies build an expression tree of int and bool nodes (``+ - *``, ``//`` and ``%`` with
Python's floor semantics, comparisons, ``& | ^ ~``, ``torch.where``, min/max, ``abs``, and lookups in
captured integer or bool tensors, read when planning like captured 0-d tensors and Python ints). Interval
arithmetic over the canvases (q in [0, Nq), kv in [0, Nkv), a table through its min and max) bounds every
node: when all fit in int32 the loop computes in int32, which GCC vectorises (``(q * kv) % 65537 == 1`` at
16K tokens: 24 ms on this project's 2-core CPU, against 110 ms for ``torch.compile(create_block_mask)``'s
int64 loop); otherwise in int64, when every node fits there (C's signed overflow is never reached). A
division by an interval holding 0, an index range outside its table, floats, shifts, Python control flow on
q or kv, or anything else unmodelled: ``counter`` returns None and the caller counts with torch instead.

The C text is generated here from the tree (numbers and fixed operators only, never the user's text),
compiled with the system C compiler (``cc -x c -O3 -march=native -fopenmp``; else gcc, g++ or clang) into a
per-process temporary directory that is removed at exit, and loaded with ctypes; one shared object per
distinct text (about 0.1 s to build).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import logging
import operator
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskir.ir import Predicate

CELL = 16
"""Cell side in tokens (as ``cells.CELL``): each output entry counts a 16 x 16 block of pairs."""
LOGGER = logging.getLogger("maskir.planner")
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class UnsupportedError(Exception):
    """The mask_mod does something this compiler does not model."""


class _UnsupportedAttributeError(UnsupportedError, AttributeError):
    """A tensor attribute the tracer does not model (an AttributeError too, so ``hasattr`` answers False)."""


@dataclass(frozen=True)
class Node:
    """One value of the traced mask_mod: ``op`` over ``args`` (nodes, or ints for "const", a table number for
    "load"); ``kind`` "int" or "bool"."""

    op: str
    args: tuple
    kind: str


ARITHMETIC = {"add": "+", "sub": "-", "mul": "*"}
COMPARISONS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
LOGICAL = {"and": "&", "or": "|", "xor": "^"}
UNARY = {"neg": "-", "not": "!", "invert": "~"}
ALIASES = {
    "less": "lt",
    "less_equal": "le",
    "greater": "gt",
    "greater_equal": "ge",
    "not_equal": "ne",
    "remainder": "mod",
    "floor_divide": "floordiv",
    "bitwise_and": "and",
    "bitwise_or": "or",
    "bitwise_xor": "xor",
    "logical_and": "and",
    "logical_or": "or",
    "logical_xor": "xor",
    "bitwise_not": "invert",
    "logical_not": "invert",
    "negative": "neg",
    "minimum": "min",
    "maximum": "max",
}


class Traced:
    """A symbolic value of the traced mask_mod (the tracer's proxy for a tensor)."""

    def __init__(self, node: Node, tracer: Tracer):
        self.node, self.tracer = node, tracer

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if kwargs:
            raise UnsupportedError(f"{func} with keywords")
        tracer = next(a.tracer for a in _flat(args) if isinstance(a, Traced))
        name = getattr(func, "__name__", "").strip("_")
        return tracer.apply(ALIASES.get(name, name), args)

    def __getattr__(self, name):  # tensor methods: q.abs(), q.eq(kv), m.logical_and(...)
        op = ALIASES.get(name, name)
        if op in (*ARITHMETIC, *COMPARISONS, *LOGICAL, "floordiv", "mod", "min", "max", "abs", "neg", "invert"):
            return lambda *args: self.tracer.apply(op, (self, *args))
        raise _UnsupportedAttributeError(f"tensor attribute {name}")

    def __bool__(self):
        raise UnsupportedError("Python control flow on q or kv")

    def __index__(self):
        raise UnsupportedError("a traced value used as a Python int")


def _flat(args):
    for a in args:
        if isinstance(a, (tuple, list)):
            yield from _flat(a)
        else:
            yield a


def _install_operators() -> None:
    binary = {**ARITHMETIC, **COMPARISONS, **LOGICAL, "floordiv": "", "mod": ""}
    for name in binary:
        setattr(Traced, f"__{name}__", (lambda n: lambda self, other: self.tracer.apply(n, (self, other)))(name))
        if name not in COMPARISONS:
            setattr(Traced, f"__r{name}__", (lambda n: lambda self, other: self.tracer.apply(n, (other, self)))(name))
    for name in ("neg", "abs", "invert"):
        setattr(Traced, f"__{name}__", (lambda n: lambda self: self.tracer.apply(n, (self,)))(name))


_install_operators()


class Tracer:
    """Builds the expression tree of one mask_mod call; ``tables`` holds the tensors it looks up."""

    def __init__(self):
        self.tables: list[torch.Tensor] = []

    def lift(self, x) -> Node:
        """A node for an operand: a traced value, a Python int or bool, a captured 0-d int or bool tensor."""
        if isinstance(x, Traced):
            return x.node
        if isinstance(x, torch.Tensor) and x.ndim == 0:
            if x.is_floating_point() or x.is_complex():
                raise UnsupportedError("a float tensor")
            x = x.item()
        if isinstance(x, bool):
            return Node("const", (int(x),), "bool")
        if isinstance(x, int):
            return Node("const", (x,), "int")
        raise UnsupportedError(f"an operand of type {type(x).__name__}")

    def apply(self, op: str, args) -> Traced:
        if op == "getitem" and len(args) == 2:
            return Traced(self._load(*args), self)
        if op == "where" and len(args) == 3:
            condition, a, b = (self.lift(x) for x in args)
            kind = "bool" if a.kind == b.kind == "bool" else "int"
            return Traced(Node("where", (_as_bool(condition), a, b), kind), self)
        nodes = tuple(self.lift(x) for x in args)
        if len(nodes) == 2 and op in (*ARITHMETIC, "floordiv", "mod", "min", "max"):
            if nodes[0].kind == nodes[1].kind == "bool":  # torch keeps bool + bool a bool (an or), C counts
                raise UnsupportedError(f"{op} of two bools")
            return Traced(Node(op, nodes, "int"), self)
        if len(nodes) == 2 and op in COMPARISONS:
            return Traced(Node(op, nodes, "bool"), self)
        if len(nodes) == 2 and op in LOGICAL:
            kind = "bool" if nodes[0].kind == nodes[1].kind == "bool" else "int"
            return Traced(Node(op, nodes, kind), self)
        if len(nodes) == 1 and op in ("neg", "abs"):
            return Traced(Node(op, nodes, "int"), self)
        if len(nodes) == 1 and op == "invert":
            return Traced(Node("not" if nodes[0].kind == "bool" else "invert", nodes, nodes[0].kind), self)
        raise UnsupportedError(f"{op} of {len(nodes)} operands")

    def _load(self, table, index) -> Node:
        """table[index] for a captured int or bool tensor, one index per dimension (traced or constant)."""
        if not isinstance(table, torch.Tensor) or isinstance(table, Traced):
            raise UnsupportedError("indexing something other than a captured tensor")
        if table.is_floating_point() or table.is_complex() or table.ndim == 0:
            raise UnsupportedError("a float or 0-d table")
        indices = index if isinstance(index, tuple) else (index,)
        if len(indices) != table.ndim:
            raise UnsupportedError("a table indexed by fewer indices than dimensions")
        self.tables.append(table.detach().to("cpu").contiguous())
        number = len(self.tables) - 1
        kind = "bool" if table.dtype == torch.bool else "int"
        return Node("load", (number, *(self.lift(i) for i in indices)), kind)


def _as_bool(node: Node) -> Node:
    return node if node.kind == "bool" else Node("ne", (node, Node("const", (0,), "int")), "bool")


def trace(predicate: Predicate, head: int) -> tuple[Node, list[torch.Tensor]]:
    """The mask_mod's expression tree (a bool node) with symbolic q and kv, and the tables it reads."""
    tracer = Tracer()
    q, kv = Traced(Node("q", (), "int"), tracer), Traced(Node("kv", (), "int"), tracer)
    result = predicate.fn(0, head, q, kv)
    return _as_bool(tracer.lift(result)), tracer.tables


def intervals(root: Node, tables: list[torch.Tensor], n_q: int, n_kv: int) -> dict[Node, tuple[int, int]]:
    """[lo, hi] of every node over q in [0, n_q), kv in [0, n_kv) (Python ints: exact, never overflowing);
    UnsupportedError for a division by an interval holding 0 or an index range outside its table."""
    ranges: dict[Node, tuple[int, int]] = {}

    def visit(node: Node) -> tuple[int, int]:
        if node in ranges:
            return ranges[node]
        args = [visit(a) if isinstance(a, Node) else a for a in node.args]
        ranges[node] = result = _interval(node, args, tables, n_q, n_kv)
        return result

    visit(root)
    return ranges


def _interval(node: Node, args: list, tables, n_q: int, n_kv: int) -> tuple[int, int]:
    op = node.op
    if op == "const":
        return args[0], args[0]
    if op in ("q", "kv"):
        return 0, (n_q if op == "q" else n_kv) - 1
    if op in COMPARISONS or node.kind == "bool" and op in (*LOGICAL, "not", "where", "load"):
        if op == "load":
            _check_index(tables[args[0]], args[1:])
        return 0, 1
    if op in ("add", "sub", "mul"):
        (a, b), (c, d) = args
        f = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}[op]
        values = [f(x, y) for x in (a, b) for y in (c, d)]
        return min(values), max(values)
    if op in ("floordiv", "mod"):
        (a, b), (c, d) = args
        if c <= 0 <= d:
            raise UnsupportedError("a division by a value that may be 0")
        if op == "floordiv":
            values = [x // y for x in (a, b) for y in (c, d)]
            return min(values), max(values)
        return (0, d - 1) if c > 0 else (c + 1, 0)
    if op in ("min", "max"):
        (a, b), (c, d) = args
        return (min(a, c), min(b, d)) if op == "min" else (max(a, c), max(b, d))
    if op == "neg":
        return -args[0][1], -args[0][0]
    if op == "abs":
        a, b = args[0]
        return (0 if a <= 0 <= b else min(abs(a), abs(b))), max(abs(a), abs(b))
    if op == "where":
        return min(args[1][0], args[2][0]), max(args[1][1], args[2][1])
    if op == "load":
        table = tables[args[0]]
        _check_index(table, args[1:])
        return int(table.min()), int(table.max())
    if op in LOGICAL or op == "invert":  # bitwise on ints: non-negative operands only
        if any(a < 0 for a, _ in args):
            raise UnsupportedError("a bitwise operation on a value that may be negative")
        top = max(b for _, b in args)
        return (-top - 1, -1) if op == "invert" else (0, (1 << top.bit_length()) - 1)
    raise UnsupportedError(op)


def _check_index(table: torch.Tensor, index_ranges: list) -> None:
    for (lo, hi), size in zip(index_ranges, table.shape):
        if lo < 0 or hi >= size:
            raise UnsupportedError("an index range outside its table")


def _c_type(ranges: dict[Node, tuple[int, int]]) -> str | None:
    """int32_t when every node fits in int32, int64_t when every node fits in int64, else None."""
    for ctype, (lo, hi) in (("int32_t", INT32), ("int64_t", INT64)):
        if all(lo <= a and b <= hi for a, b in ranges.values()):
            return ctype
    return None


def emit(node: Node, ctype: str, ranges: dict[Node, tuple[int, int]], shapes: list[tuple[int, ...]]) -> str:
    """The C expression of ``node`` in ``ctype`` (bools as 0 / 1), with Python's floor ``//`` and ``%``;
    table k is the array ``t<k>`` of shape ``shapes[k]``, row-major."""
    e = [emit(a, ctype, ranges, shapes) if isinstance(a, Node) else a for a in node.args]
    op = node.op
    if op == "const":
        return f"(({ctype}){e[0]}LL)"
    if op in ("q", "kv"):
        return op
    if op in ARITHMETIC or op in COMPARISONS or op in LOGICAL:
        symbol = {**ARITHMETIC, **COMPARISONS, **LOGICAL}[op]
        return f"({e[0]} {symbol} {e[1]})"
    if op in ("floordiv", "mod"):
        plain = ranges[node.args[0]][0] >= 0 and ranges[node.args[1]][0] > 0  # C's truncation is the floor
        if plain:
            return f"({e[0]} {'/' if op == 'floordiv' else '%'} {e[1]})"
        return f"{op}_{ctype}({e[0]}, {e[1]})"
    if op in ("min", "max", "abs"):  # the helpers of HELPERS
        return f"{op}_{ctype}({', '.join(e)})"
    if op in UNARY:
        return f"({UNARY[op]}{e[0]})"
    if op == "where":
        return f"({e[0]} ? {e[1]} : {e[2]})"
    if op == "load":
        table, indices, stride, flat = e[0], e[1:], 1, []
        for index, size in reversed(list(zip(indices, shapes[table]))):
            flat.append(f"(int64_t){index} * {stride}LL")
            stride *= size
        return f"(({ctype})t{table}[{' + '.join(flat)}])"
    raise UnsupportedError(op)


HELPERS = """
static inline {t} floordiv_{t}({t} a, {t} b) {{ {t} q = a / b; return q - ((a % b != 0) & ((a < 0) != (b < 0))); }}
static inline {t} mod_{t}({t} a, {t} b) {{ {t} r = a % b; return r + b * ((r != 0) & ((r < 0) != (b < 0))); }}
static inline {t} min_{t}({t} a, {t} b) {{ return a < b ? a : b; }}
static inline {t} max_{t}({t} a, {t} b) {{ return a > b ? a : b; }}
static inline {t} abs_{t}({t} a) {{ return a < 0 ? -a : a; }}
"""

KERNEL = """
#include <stdint.h>
#include <stdlib.h>
{helpers}
/* Allowed pairs per 16 x 16 cell of chunks: chunk c covers q in [origins[2c], + side_q), kv in
   [origins[2c + 1], + side_kv); pairs past n_q or n_kv are not counted. out: [chunks, side_q / 16, side_kv / 16]. */
void count_cells(const int64_t* origins, int64_t chunks, int64_t side_q, int64_t side_kv, int64_t n_q,
                 int64_t n_kv, const void* const* tables, int16_t* out, int threads)
{{
{tables}
    const int64_t rows = side_q / 16, cells = side_kv / 16;
    #pragma omp parallel num_threads(threads)
    {{
        uint8_t* acc = (uint8_t*)malloc(side_kv);
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < chunks * rows; ++task) {{
            const int64_t c = task / rows, r = task % rows, q_first = origins[2 * c] + 16 * r, kv0 = origins[2 * c + 1];
            const int64_t width = n_kv - kv0 < side_kv ? n_kv - kv0 : side_kv;
            for (int64_t k = 0; k < side_kv; ++k) acc[k] = 0;
            for (int64_t i = 0; i < 16 && q_first + i < n_q; ++i) {{
                const {t} q = ({t})(q_first + i);
                #pragma omp simd
                for (int64_t k = 0; k < width; ++k) {{
                    const {t} kv = ({t})(kv0 + k);
                    acc[k] += (uint8_t)(({expression}) != 0);
                }}
            }}
            int16_t* row = out + (c * rows + r) * cells;
            for (int64_t j = 0; j < cells; ++j) {{
                int s = 0;
                for (int k = 0; k < 16; ++k) s += acc[16 * j + k];
                row[j] = (int16_t)s;
            }}
        }}
        free(acc);
    }}
}}

/* Allowed pairs of listed tiles, run by run: run r pairs q tile runs[3r] with the kv tiles [runs[3r + 1],
   runs[3r + 2]); a side's tile t holds the tokens [first[t], first[t + 1]) of its token list, so a run's kv
   tokens are one contiguous list, evaluated against each q token with full vectors (short tiles fill them)
   into a count per kv token, then summed per kv tile. out[out_first[r] + t] is the run's t-th tile pair. */
void count_tiles(const int64_t* runs, int64_t n_runs, const {t}* q_tokens, const int64_t* q_first,
                 const {t}* kv_tokens, const int64_t* kv_first, const int64_t* out_first, int64_t widest,
                 const void* const* tables, int64_t* out, int threads)
{{
{tables}
    #pragma omp parallel num_threads(threads)
    {{
        uint16_t* acc = (uint16_t*)malloc(sizeof(uint16_t) * (widest > 0 ? widest : 1));
        #pragma omp for schedule(dynamic, 1)
        for (int64_t r = 0; r < n_runs; ++r) {{
            const int64_t q_tile = runs[3 * r], c0 = runs[3 * r + 1], c1 = runs[3 * r + 2];
            const int64_t base = kv_first[c0], width = kv_first[c1] - base;
            const {t}* kv_list = kv_tokens + base;
            for (int64_t k = 0; k < width; ++k) acc[k] = 0;
            for (int64_t i = q_first[q_tile]; i < q_first[q_tile + 1]; ++i) {{
                const {t} q = q_tokens[i];
                #pragma omp simd
                for (int64_t k = 0; k < width; ++k) {{
                    const {t} kv = kv_list[k];
                    acc[k] += (uint16_t)(({expression}) != 0);
                }}
            }}
            for (int64_t c = c0; c < c1; ++c) {{
                int64_t total = 0;
                for (int64_t k = kv_first[c] - base; k < kv_first[c + 1] - base; ++k) total += acc[k];
                out[out_first[r] + c - c0] = total;
            }}
        }}
        free(acc);
    }}
}}
"""


def source(predicate: Predicate, head: int, n_q: int, n_kv: int) -> tuple[str, list[torch.Tensor], np.dtype]:
    """The C text of the counters for ``predicate`` at ``head`` on these canvases, its tables (as the C type's
    arrays, in argument order) and the C type as a numpy dtype; UnsupportedError when the mask_mod is outside
    the model."""
    root, tables = trace(predicate, head)
    ranges = intervals(root, tables, n_q, n_kv)
    ctype = _c_type(ranges)
    if ctype is None:
        raise UnsupportedError("a value outside int64")
    dtype = torch.int32 if ctype == "int32_t" else torch.int64
    arrays = [t.to(torch.uint8 if t.dtype == torch.bool else dtype).contiguous() for t in tables]
    element = {torch.uint8: "uint8_t", torch.int32: "int32_t", torch.int64: "int64_t"}
    declarations = "".join(
        f"    const {element[a.dtype]}* t{k} = (const {element[a.dtype]}*)tables[{k}];\n" for k, a in enumerate(arrays)
    )
    text = KERNEL.format(
        helpers=HELPERS.format(t=ctype),
        tables=declarations,
        t=ctype,
        expression=emit(root, ctype, ranges, [tuple(t.shape) for t in tables]),
    )
    return text, arrays, np.dtype(np.int32 if ctype == "int32_t" else np.int64)


def _remove(directory: Path, owner: int) -> None:
    """At exit: the temporary directory, by the process that made it only (never a forked child's exit)."""
    if os.getpid() == owner:
        shutil.rmtree(directory, ignore_errors=True)


class Compiler:
    """Shared objects built from generated C text, one per distinct text, in a temporary directory of this
    process (removed at exit: only this directory, only what it built). Thread-safe."""

    def __init__(self):
        self.directory: Path | None = None
        self.built: dict[str, object] = {}
        self.lock = threading.Lock()
        found = [shutil.which(name) for name in ("cc", "gcc", "g++", "clang")]
        self.compiler = next((path for path in found if path), None)

    def load(self, text: str):
        """The library built from ``text`` (its ``count_cells`` and ``count_tiles`` typed), or None when there is
        no C compiler or it fails."""
        with self.lock:
            if text not in self.built:
                self.built[text] = self._build(text)
            return self.built[text]

    def _build(self, text: str):
        if self.compiler is None:
            return None
        try:
            if self.directory is None or not self.directory.is_dir():
                self.directory = Path(tempfile.mkdtemp(prefix="maskir-native-"))
                atexit.register(_remove, self.directory, os.getpid())
            name = hashlib.sha256(text.encode()).hexdigest()[:24]
            c_file, library = self.directory / f"{name}.c", self.directory / f"{name}.so"
            c_file.write_text(text)
            flags = ["-x", "c", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
            done = subprocess.run(
                [self.compiler, *flags, "-o", str(library), str(c_file)], capture_output=True, text=True, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            LOGGER.debug("maskir plan: could not build a mask_mod counter: %s", error)
            return None
        if done.returncode != 0:
            LOGGER.debug("maskir plan: the C compiler failed on a mask_mod counter: %s", done.stderr[-2000:])
            return None
        built = ctypes.CDLL(str(library))
        pointer, size = ctypes.c_void_p, ctypes.c_int64
        built.count_cells.restype = built.count_tiles.restype = None
        built.count_cells.argtypes = [pointer, *[size] * 5, pointer, pointer, ctypes.c_int]
        built.count_tiles.argtypes = [pointer, size, *[pointer] * 5, size, pointer, pointer, ctypes.c_int]
        return built


COMPILER = Compiler()


class Counter:
    """Allowed pairs of one traced mask_mod: per cell of token ranges (``count``), or per pair of listed tiles
    (``count_tiles``)."""

    def __init__(self, library, tables: list[torch.Tensor], n_q: int, n_kv: int, token_dtype: np.dtype):
        self.library, self.tables, self.n_q, self.n_kv = library, tables, n_q, n_kv
        self.token_dtype = token_dtype
        """The C type's integer dtype, which ``count_tiles`` reads tokens as."""
        self.pointers = (ctypes.c_void_p * max(1, len(tables)))(*[t.data_ptr() for t in tables])

    def count(self, origins: np.ndarray, q_side: int, kv_side: int) -> torch.Tensor:
        """Cell counts, int16 [chunks, q_side / 16, kv_side / 16], of chunks whose first q and kv tokens are
        the rows of ``origins``."""
        origins = np.ascontiguousarray(origins, dtype=np.int64)
        out = torch.empty((origins.shape[0], q_side // CELL, kv_side // CELL), dtype=torch.int16)
        self.library.count_cells(
            origins.ctypes.data,
            origins.shape[0],
            q_side,
            kv_side,
            self.n_q,
            self.n_kv,
            ctypes.cast(self.pointers, ctypes.c_void_p),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        return out

    def count_tiles(self, jobs: np.ndarray, q_tokens: np.ndarray, q_count: np.ndarray, kv_tokens, kv_count):
        """Allowed pairs (int64 [jobs]) of q tile jobs[j, 0] with kv tile jobs[j, 1], where tile t of a side
        holds the first count[t] tokens of row t of its token matrix [tiles, block] (every one inside the
        canvas; the rest of the row is not read). Jobs sorted by q tile whose kv tiles follow one another
        form a run (one C loop over their tokens, ``count_tiles`` in the C text); a q tile holds fewer than
        2^16 tokens."""
        jobs = np.asarray(jobs, dtype=np.int64).reshape(-1, 2)
        assert int(np.max(q_count, initial=0)) < 1 << 16, "per-kv-token counts are uint16"
        if not jobs.shape[0]:
            return np.zeros(0, dtype=np.int64)
        q_list, q_first = self._token_list(q_tokens, q_count)
        kv_list, kv_first = self._token_list(kv_tokens, kv_count)
        rows, cols = jobs[:, 0], jobs[:, 1]
        starts = np.flatnonzero(np.append(True, (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1] + 1)))
        stops = np.append(starts[1:], rows.size)
        runs = np.ascontiguousarray(np.stack([rows[starts], cols[starts], cols[stops - 1] + 1], axis=1))
        widest = int((kv_first[runs[:, 2]] - kv_first[runs[:, 1]]).max())
        out = np.empty(rows.size, dtype=np.int64)
        self.library.count_tiles(
            runs.ctypes.data,
            runs.shape[0],
            q_list.ctypes.data,
            q_first.ctypes.data,
            kv_list.ctypes.data,
            kv_first.ctypes.data,
            np.ascontiguousarray(starts).ctypes.data,
            widest,
            ctypes.cast(self.pointers, ctypes.c_void_p),
            out.ctypes.data,
            torch.get_num_threads(),
        )
        return out

    def _token_list(self, tokens: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tiles' tokens one after another (``token_dtype``) and where each tile's start (int64 [tiles + 1])."""
        count = np.asarray(count, dtype=np.int64)
        listed = np.asarray(tokens)[np.arange(tokens.shape[1]) < count[:, None]]
        first = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
        return np.ascontiguousarray(listed, dtype=self.token_dtype), first


def counter(predicate: Predicate, head: int, n_q: int, n_kv: int) -> Counter | None:
    """The compiled cell counter of ``predicate``, or None when it is outside the model or cannot be built."""
    try:
        text, tables, token_dtype = source(predicate, head, n_q, n_kv)
    except (UnsupportedError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:
        LOGGER.debug("maskir plan: %s is not compiled to C (%s)", predicate, error)
        return None
    library = COMPILER.load(text)
    return None if library is None else Counter(library, tables, n_q, n_kv, token_dtype)
