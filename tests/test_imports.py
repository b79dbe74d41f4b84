"""Modules point one way: ir -> planner -> codegen -> runtime; sim reads plans; nothing imports backwards.

Every ``import`` in maskir/, codegen/ (maskir.codegen) and runtime/ (maskir.runtime), at module level or
inside a function, is an edge; ``from maskir import name`` counts as an edge to the module that
``maskir.__init__`` loads ``name`` from. A module in group G may import its own group and:

| group                                    | may also import                                       |
|------------------------------------------|-------------------------------------------------------|
| maskir (package), maskir.ir              | maskir.canvas                                         |
| maskir.canvas                            | nothing                                               |
| maskir.reference, maskir.patterns        | maskir (package), maskir.canvas, maskir.ir            |
| maskir.score_mods                        | maskir.canvas                                         |
| maskir.spec                              | those, and maskir.patterns                            |
| maskir.planner                           | those, and maskir.reference, maskir.patterns, maskir.spec, maskir.sim.cost, maskir.sim.target |
| maskir.sim.{hardware,schedule}           | nothing (numpy only)                                  |
| maskir.sim.cost                          | maskir.sim.hardware, maskir.sim.schedule              |
| maskir.sim.target                        | maskir.sim.hardware                                   |
| maskir.sim                               | maskir (package), maskir.canvas, maskir.ir, maskir.planner, the four above |
| maskir.codegen, maskir.codegen.common    | maskir (package), maskir.canvas, maskir.ir, maskir.planner, maskir.sim.target, maskir.codegen.common |
| maskir.codegen.{triton,tvm,flex}         | the same and maskir.codegen.backend (the interface): backends never import each other |
| maskir.runtime                           | everything but maskir.reference (the float64 oracle), maskir.viz and maskir.cli |
| maskir.runtime.reference_backend         | the runtime and maskir.reference: ``backend="reference"`` runs the oracle |
| maskir.distributed                       | the runtime and everything it may import              |
| maskir.viz                               | maskir (package), maskir.canvas, maskir.ir, maskir.planner |
| maskir.nn (layers, above the runtime)    | maskir.reference/patterns/spec, maskir.planner, maskir.runtime, maskir.score_mods |
| maskir.integrations (transformers, ...)  | those, and maskir.nn                                  |
| maskir.bench (what `maskir bench` runs)  | the runtime and everything it may import              |
| maskir.cli, maskir.__main__              | everything; nothing imports maskir.cli                |

No module imports the ``benchmarks`` folder (a script directory, not installed): what an installed
module needs from it lives in ``maskir.bench``.

The planner ranks layouts and blocks with the simulator's cost model (``maskir.planner.cost`` calls
``maskir.sim.cost``), and the rest of ``sim`` reads plans. The pair stays acyclic because the cost model
(``sim.cost`` with ``sim.hardware`` and ``sim.schedule``) is a leaf: it prices tile counts and never
imports a plan, the planner, or the simulator front end.

Third-party rules from STYLE.md: no ``triton`` or ``tvm`` in codegen/common; the Triton and flex
backends do not import tvm and the TVM backend does not import triton.
"""

import ast
import subprocess
import sys
import textwrap
from collections.abc import Collection
from pathlib import Path

import pytest

import maskir

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = {"maskir": ROOT / "maskir", "maskir.codegen": ROOT / "codegen", "maskir.runtime": ROOT / "runtime"}

ROOT_PACKAGE = "maskir.__init__"
"""How this test names the ``maskir`` package itself (``import maskir``): it loads canvas and ir only."""

_BASE = ("maskir.canvas",)
_IR = (ROOT_PACKAGE, *_BASE, "maskir.ir")
_FIRST = (*_IR, "maskir.reference", "maskir.patterns", "maskir.spec")
_NO_ORACLE = (*_IR, "maskir.patterns", "maskir.spec")
_TARGET = "maskir.sim.target"
_INTERFACE = "maskir.codegen.backend"
"""The Backend protocol and registry: the one module of maskir.codegen above common that backends import."""
_REFERENCE_BACKEND = "maskir.runtime.reference_backend"
_CODEGEN = (*_IR, "maskir.planner", _TARGET, "maskir.codegen.common")
ALLOWED: dict[str, tuple[str, ...]] = {
    ROOT_PACKAGE: (*_BASE, "maskir.ir"),
    "maskir.canvas": (),
    "maskir.ir": _BASE,
    "maskir.reference": _IR,
    "maskir.patterns": _IR,
    "maskir.score_mods": _BASE,
    "maskir.spec": (*_IR, "maskir.patterns"),
    "maskir.planner": (*_FIRST, "maskir.sim.cost", "maskir.sim.target"),
    "maskir.sim.hardware": (),
    "maskir.sim.schedule": (),
    "maskir.sim.cost": ("maskir.sim.hardware", "maskir.sim.schedule"),
    "maskir.sim.target": ("maskir.sim.hardware",),
    "maskir.sim": (*_IR, "maskir.planner", "maskir.sim.cost", "maskir.sim.hardware", "maskir.sim.schedule", _TARGET),
    "maskir.codegen": _CODEGEN,
    "maskir.codegen.common": _CODEGEN,
    "maskir.codegen.triton": (*_CODEGEN, _INTERFACE),
    "maskir.codegen.tvm": (*_CODEGEN, _INTERFACE),
    "maskir.codegen.flex": (*_CODEGEN, _INTERFACE),
    "maskir.runtime": (*_NO_ORACLE, "maskir.planner", "maskir.sim", "maskir.codegen", _REFERENCE_BACKEND),
    _REFERENCE_BACKEND: (*_FIRST, "maskir.planner", "maskir.sim", "maskir.codegen", "maskir.runtime"),
    "maskir.viz": (*_IR, "maskir.planner"),
    "maskir.distributed": (*_FIRST, "maskir.planner", "maskir.sim", "maskir.codegen", "maskir.runtime"),
    "maskir.nn": (*_FIRST, "maskir.planner", "maskir.runtime", "maskir.score_mods"),
    "maskir.integrations": (*_FIRST, "maskir.planner", "maskir.runtime", "maskir.score_mods", "maskir.nn"),
    "maskir.bench": (*_FIRST, "maskir.planner", "maskir.sim", "maskir.codegen", "maskir.runtime"),
}
"""Group (longest matching prefix of a module name) -> modules it may import besides its own group."""
ALLOWED["maskir.cli"] = tuple(ALLOWED)
ALLOWED["maskir.__main__"] = (*ALLOWED, "maskir.cli")

FORBIDDEN_THIRD_PARTY = {
    "maskir.codegen.common": ("triton", "tvm"),
    "maskir.codegen.triton": ("tvm",),
    "maskir.codegen.tvm": ("triton",),
    "maskir.codegen.flex": ("tvm",),
}


def _module_name(path: Path) -> str:
    """The name a file is imported as (``ROOT_PACKAGE`` for maskir/__init__.py)."""
    for package, directory in SOURCE_DIRS.items():
        if path.is_relative_to(directory):
            parts = path.relative_to(directory).with_suffix("").parts
            if parts == ("__init__",):
                return ROOT_PACKAGE if package == "maskir" else package
            return ".".join((package, *parts)).removesuffix(".__init__")
    raise AssertionError(f"{path} is outside the source dirs")


def source_modules() -> dict[str, Path]:
    """Every module of the three source trees, by the name it is imported as."""
    return {
        _module_name(path): path
        for directory in SOURCE_DIRS.values()
        for path in sorted(directory.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def imports_of(name: str, path: Path, modules: Collection[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, relative imports resolved;
    ``modules`` are the known module names (``from pkg import sub`` is an import of pkg.sub)."""
    package = "maskir" if name == ROOT_PACKAGE else name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, ROOT_PACKAGE if alias.name == "maskir" else alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            found += [(node.lineno, _from_target(base, alias.name, modules)) for alias in node.names]
    return found


def _from_target(base: str, name: str, modules: Collection[str]) -> str:
    """The module ``from base import name`` depends on: a submodule, a lazy export's module, or base."""
    if f"{base}.{name}" in modules:
        return f"{base}.{name}"
    if base == "maskir":
        return maskir._LAZY.get(name, ROOT_PACKAGE)
    return base


def _covers(prefix: str, module: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def group_of(module: str) -> str:
    """The longest group name in ALLOWED that is ``module`` or a package above it."""
    matches = [group for group in ALLOWED if _covers(group, module)]
    assert matches, f"{module} belongs to no group: add it to ALLOWED in {__file__}"
    return max(matches, key=len)


def violations() -> list[tuple[str, str, str, str]]:
    """Every import the rules above forbid, as (file:line, module, imported module, rule)."""
    found = []
    modules = source_modules()
    for name, path in modules.items():
        group = group_of(name)
        for line, target in imports_of(name, path, modules):
            where = f"{path}:{line}"
            top = target.split(".")[0]
            if top == "benchmarks":
                found.append(
                    (where, name, target, "benchmarks/ is a script folder: move what is needed to maskir.bench")
                )
            if top in FORBIDDEN_THIRD_PARTY.get(group, ()):
                found.append((where, name, target, f"no {top} in {group}"))
            if top != "maskir" or group_of(target) == group:
                continue
            if not any(_covers(allowed, target) for allowed in ALLOWED[group]):
                found.append((where, name, target, f"{group} may import only {', '.join(ALLOWED[group]) or 'itself'}"))
    return found


def import_cycles(modules: dict[str, Path]) -> list[list[str]]:
    """The strongly connected components of more than one module in the graph of imports between
    ``modules`` (deferred imports inside functions included): each is an import loop."""
    known = source_modules()
    graph = {
        name: {t for _, t in imports_of(name, path, known) if t in modules and t != name}
        for name, path in modules.items()
    }
    order, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's algorithm
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in order:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], order[target])
        if low[node] == order[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in order:
            visit(node)
    return cycles


BELOW_THE_RUNTIME = ("maskir.ir", "maskir.canvas", "maskir.planner", "maskir.sim", "maskir.codegen")


def test_no_import_loop_below_the_runtime():
    """ir, planner, sim and codegen import as a DAG, even counting imports deferred into functions (the
    planner's build and union once imported each other: both now take candidates from single_part)."""
    below = {name: path for name, path in source_modules().items() if any(_covers(p, name) for p in BELOW_THE_RUNTIME)}
    assert import_cycles(below) == []


def test_checker_finds_a_deferred_import_loop(tmp_path, monkeypatch):
    planner = _fake_tree(tmp_path, monkeypatch) / "maskir" / "planner"
    planner.mkdir()
    (planner / "build.py").write_text("def plan():\n    from maskir.planner.union import split\n")
    (planner / "union.py").write_text("from maskir.planner.build import plan\n")
    (planner / "plan.py").write_text("import maskir.planner.build\n")
    assert import_cycles(source_modules()) == [["maskir.planner.build", "maskir.planner.union"]]


def test_every_source_module_belongs_to_a_group():
    for name in source_modules():
        group_of(name)


def test_no_module_imports_backwards():
    assert violations() == []


def _fake_tree(tmp_path: Path, monkeypatch) -> Path:
    """Point the checker at empty maskir/, codegen/ and runtime/ dirs under tmp_path."""
    for package in SOURCE_DIRS:
        directory = tmp_path / SOURCE_DIRS[package].name
        directory.mkdir()
        monkeypatch.setitem(SOURCE_DIRS, package, directory)
    return tmp_path


def test_checker_reports_a_backward_relative_import(tmp_path, monkeypatch):
    """The checker itself: a planner module importing the runtime is reported; ir (relative) and maskir are fine."""
    planner = _fake_tree(tmp_path, monkeypatch) / "maskir" / "planner"
    planner.mkdir()
    bad = planner / "bad.py"
    bad.write_text("import maskir.runtime\nfrom ..ir import Window\nimport maskir\n")
    assert imports_of("maskir.planner.bad", bad, source_modules()) == [
        (1, "maskir.runtime"),
        (2, "maskir.ir"),
        (3, ROOT_PACKAGE),
    ]
    assert [(name, target) for _, name, target, _ in violations()] == [("maskir.planner.bad", "maskir.runtime")]


def test_checker_reports_imports_of_benchmarks_and_of_the_cli(tmp_path, monkeypatch):
    maskir_dir = _fake_tree(tmp_path, monkeypatch) / "maskir"
    (maskir_dir / "bench").mkdir()
    (maskir_dir / "bench" / "run.py").write_text("from benchmarks.catalogue import Case\n")
    (maskir_dir / "cli.py").write_text("def main():\n    pass\n")
    (maskir_dir / "viz.py").write_text("def show():\n    from maskir import cli\n")
    assert sorted((name, target) for _, name, target, _ in violations()) == [
        ("maskir.bench.run", "benchmarks.catalogue"),
        ("maskir.viz", "maskir.cli"),
    ]


def test_checker_reports_a_backend_importing_another(tmp_path, monkeypatch):
    codegen = _fake_tree(tmp_path, monkeypatch) / "codegen"
    for backend in ("triton", "tvm"):
        (codegen / backend).mkdir()
    (codegen / "backend.py").write_text("class Backend:\n    pass\n")
    (codegen / "tvm" / "emit.py").write_text("def emit():\n    pass\n")
    (codegen / "triton" / "launch.py").write_text(
        "from maskir.codegen.backend import Backend\nfrom maskir.codegen.tvm.emit import emit\n"
    )
    assert [(name, target) for _, name, target, _ in violations()] == [
        ("maskir.codegen.triton.launch", "maskir.codegen.tvm.emit")
    ]


def test_checker_reports_triton_in_codegen_common(tmp_path, monkeypatch):
    common = _fake_tree(tmp_path, monkeypatch) / "codegen" / "common"
    common.mkdir()
    (common / "expr.py").write_text("def render():\n    import triton.language as tl\n")
    assert [(name, target) for _, name, target, _ in violations()] == [
        ("maskir.codegen.common.expr", "triton.language")
    ]


_FRESH_IMPORTS = textwrap.dedent(
    """
    import importlib, os, sys, traceback
    import numpy, torch, triton  # third-party state shared by the forked children; no maskir module yet
    for heavy in ("tvm", "transformers", "diffusers", "natten", "matplotlib.pyplot"):  # optional extras
        try:
            importlib.import_module(heavy)
        except ImportError:
            pass
    failed = []
    for name in sys.argv[1:]:
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        if os.waitpid(pid, 0)[1] != 0:
            failed.append(name)
    print("failed:", " ".join(failed))
    """
)


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imports on its own, before any other maskir module: no import cycle, no missing file."""
    names = [name.removesuffix(".__init__") for name in source_modules() if not name.endswith("__main__")]
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_IMPORTS, *names], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "failed:", result.stderr


@pytest.mark.parametrize("module", ["maskir", "maskir.cli"])
def test_import_loads_no_heavy_dependency(module):
    """``import maskir`` does no work, and ``maskir --help`` starts fast: torch, triton, tvm, matplotlib
    load only when a command or function needs them."""
    probe = f"import sys, {module}; print(sorted({{'torch', 'triton', 'tvm', 'matplotlib'}} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
