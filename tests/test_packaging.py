"""The distribution: maskir/ is ``maskir``, codegen/ is ``maskir.codegen``, runtime/ is ``maskir.runtime``,
from the repo root (editable install) and after a plain ``pip install .``.
"""

import os
import re
import shutil
import subprocess
import sys
from itertools import dropwhile, takewhile
from pathlib import Path

import maskir
import maskir.codegen
import maskir.runtime

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE_DIR = PYPROJECT["tool"]["setuptools"]["package-dir"]


def package_directories() -> dict[str, Path]:
    """Every directory with an ``__init__.py`` under the mapped roots, by its package name."""
    found = {}
    for package, directory in PACKAGE_DIR.items():
        for init in sorted((ROOT / directory).rglob("__init__.py")):
            parts = init.parent.relative_to(ROOT / directory).parts
            found.setdefault(".".join((package, *parts)), init.parent)
    return found


def test_package_dir_maps_codegen_and_runtime_into_maskir():
    assert PACKAGE_DIR == {"maskir": "maskir", "maskir.codegen": "codegen", "maskir.runtime": "runtime"}


def test_packages_lists_every_package_directory():
    """A subpackage missing from ``packages`` would be left out of a non-editable install."""
    assert sorted(package_directories()) == sorted(PYPROJECT["tool"]["setuptools"]["packages"])


def test_import_maskir_from_the_repo_root_uses_the_source_tree():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import maskir, maskir.codegen, maskir.runtime as r; print(maskir.__file__, r.__file__)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == [str(ROOT / "maskir" / "__init__.py"), str(ROOT / "runtime" / "__init__.py")]


def test_codegen_and_runtime_import_from_their_directories():
    """Fails when the editable install points at another checkout: run ``pip install -e .`` here."""
    assert Path(maskir.codegen.__file__).parent == ROOT / "codegen"
    assert Path(maskir.runtime.__file__).parent == ROOT / "runtime"


def test_console_script_runs_maskir_cli():
    assert PYPROJECT["project"]["scripts"] == {"maskir": "maskir.cli:main"}
    script = Path(sys.executable).parent / "maskir"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"maskir {maskir.__version__}"


def test_non_editable_install_holds_every_module(tmp_path):
    """``pip install .`` (here into a target dir, from a copy of the sources) installs every .py file of the
    three trees under maskir/, and ``maskir.codegen`` / ``maskir.runtime`` import from there."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__")
    for directory in PACKAGE_DIR.values():
        shutil.copytree(ROOT / directory, source / directory, ignore=ignore)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", target, source],
        check=True,
        capture_output=True,
    )
    expected = {
        Path(*package.split(".")[1:]) / path.relative_to(directory)
        for package, directory in ((p, source / d) for p, d in PACKAGE_DIR.items())
        for path in directory.rglob("*.py")
    }
    installed = {path.relative_to(target / "maskir") for path in (target / "maskir").rglob("*.py")}
    assert installed == expected
    probe = "import maskir.codegen, maskir.runtime; print(maskir.codegen.__file__, maskir.runtime.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == [
        str(target / "maskir" / "codegen" / "__init__.py"),
        str(target / "maskir" / "runtime" / "__init__.py"),
    ]


def test_readme_python_quickstart_runs():
    """The README's Python block runs as written (generated kernels on a GPU, Triton's interpreter on a CPU)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, "README.md", "exec"), {})


def _readme_table_names(heading_text: str) -> set[str]:
    """The names called in the first column of the first README table after ``heading_text``."""
    after = (ROOT / "README.md").read_text(encoding="utf-8").split(heading_text, 1)[1].splitlines()
    table = list(takewhile(lambda line: line.startswith("|"), dropwhile(lambda line: not line.startswith("|"), after)))
    return {name for row in table[2:] for name in re.findall(r"`(\w+)\(", row.split(" | ")[0])}


def test_readme_catalogue_lists_every_ir_node():
    from maskir.ir import NODES

    documented = _readme_table_names("The pattern catalogue")
    assert documented == set(NODES) - {"SlidingWindow"} | {"Predicate"}  # sugar in the Window row; Python only


def test_readme_lists_every_pattern_helper():
    import inspect

    from maskir import patterns

    helpers = {
        name
        for name, value in vars(patterns).items()
        if inspect.isfunction(value) and value.__module__ == patterns.__name__ and not name.startswith("_")
    }
    assert _readme_table_names("`maskir.patterns` builds") == helpers


def test_subpackages_are_attributes_after_a_plain_import():
    """``import maskir`` then ``maskir.reference.reference_mask(...)`` works, loading on first use."""
    result = subprocess.run(
        [sys.executable, "-c", "import maskir; print(maskir.reference.reference_mask(maskir.Causal(), 3).sum())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "6"
