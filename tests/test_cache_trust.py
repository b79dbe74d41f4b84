"""The kernel cache's trust model: only verified text runs, only maskir's files are touched, metadata
of any kind never hangs or crashes a call, and folders others can write are refused."""

import importlib._bootstrap_external as bootstrap
import importlib.util
import inspect
import json
import os
import stat
import tempfile
import textwrap
import threading
import warnings

import pytest
import torch

from maskir.cli import main
from maskir.runtime.cache import KernelCache
from maskir.runtime.cache_folder import METADATA_LIMIT, fallback_folders

FIELDS = {"pattern": "Window(3, 0)", "canvas": [64], "dtype": "fp32"}
SOURCE = "VALUE = 42\n\n\ndef answer():\n    return 42\n"
KERNEL = textwrap.dedent(
    """
    import triton
    import triton.language as tl


    @triton.jit
    def fill(out):
        tl.store(out, 1.0)
    """
)
LAUNCH = "\nLAUNCH_OPTIONS = {'fill_again': {}}\n"


def build():
    return SOURCE, {}


def fresh_entry(root, source=SOURCE):
    """An entry written by one cache object, validated by a fresh one (as the next process would)."""
    KernelCache(root).get_or_build(FIELDS, lambda: (source, {}))
    cache = KernelCache(root)
    return cache, cache.get_or_build(FIELDS, lambda: pytest.fail("a valid entry was rebuilt"))


# -- 1. the bytes that were hashed are the bytes that run ----------------------------------------------


def test_bytecode_planted_beside_a_valid_entry_never_runs(tmp_path):
    cache, entry = fresh_entry(tmp_path)
    info = entry.path.stat()
    planted = compile("VALUE = 666\n", str(entry.path), "exec")
    pyc = bootstrap._code_to_timestamp_pyc(planted, int(info.st_mtime), info.st_size)  # header matches the .py
    pyc_path = importlib.util.cache_from_source(str(entry.path))
    os.makedirs(os.path.dirname(pyc_path), exist_ok=True)
    with open(pyc_path, "wb") as handle:
        handle.write(pyc)
    assert cache.load_module(entry).VALUE == 42


def test_an_edit_after_validation_is_seen_by_neither_import_nor_inspect(tmp_path):
    cache, entry = fresh_entry(tmp_path)
    entry.path.write_text(SOURCE.replace("42", "666"))
    module = cache.load_module(entry)
    assert module.VALUE == 42 and module.answer() == 42
    assert inspect.getsource(module.answer) == "def answer():\n    return 42\n"


def test_no_bytecode_is_written_into_the_cache_folder(tmp_path):
    cache, entry = fresh_entry(tmp_path)
    cache.load_module(entry)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([entry.path.name, f"maskir-{entry.key}.json"])


def test_triton_interpreter_runs_the_verified_kernel_not_an_edited_file(tmp_path):
    """Triton's interpreter re-reads a kernel's source through inspect at its first launch."""
    cache, entry = fresh_entry(tmp_path, KERNEL)
    module = cache.load_module(entry)
    entry.path.write_text(KERNEL.replace("tl.store(out, 1.0)", "tl.store(out, 2000.0)"))
    out = torch.zeros(1)
    module.fill[(1,)](out)
    assert out.item() == 1.0


def test_triton_interpreter_runs_the_verified_kernel_after_linecache_is_cleared(tmp_path):
    import linecache

    from maskir.codegen.triton.interpreter_lock import run_kernel

    chained = "tl.store(out + tl.arange(0, 2), tl.where(0 < tl.arange(0, 2) < 2, 1.0, 3.0))"  # rewritten from source
    kernel = KERNEL.replace("def fill(out)", "def fill_again(out)").replace("tl.store(out, 1.0)", chained)
    cache, entry = fresh_entry(tmp_path, kernel + LAUNCH)
    module = cache.load_module(entry)
    entry.path.write_text("raise SystemExit('read from disk')\n")
    linecache.clearcache()
    out = torch.zeros(2)
    run_kernel(module, "fill_again", (1,), {"out": out})
    assert out.tolist() == [3.0, 1.0]


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o730], ids=lambda mode: f"{mode:o}")
def test_a_folder_others_can_write_is_refused_with_one_warning(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    cache = KernelCache(shared)
    with pytest.warns(RuntimeWarning, match="writable by its group or by others") as caught:
        first = cache.get_or_build(FIELDS, build)
        second = cache.get_or_build({**FIELDS, "dtype": "bf16"}, build)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert list(shared.iterdir()) == []
    assert first.path.parent == second.path.parent != shared
    assert stat.S_IMODE(first.path.parent.stat().st_mode) == 0o700
    assert cache.load_module(first).VALUE == 42


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_folder_owned_by_another_user_is_refused(tmp_path):
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    planted = KernelCache(tmp_path / "planted")  # a valid entry the other user could have put there
    entry = planted.get_or_build(FIELDS, lambda: ("VALUE = 666\n", {}))
    for path in (entry.path, entry.path.with_suffix(".json")):
        os.rename(path, other / path.name)
    with pytest.warns(RuntimeWarning, match="owned by uid 65534"):
        got = KernelCache(other).get_or_build(FIELDS, build)
    assert got.source == SOURCE and got.path.parent != other


# -- 2. cache ls | clear | info touch only maskir's files -------------------------------------------------

FOREIGN = ["train.py", "config.json", ".notes.tmp", "0123456789abcdef0123456789abcdef.py", "maskir-notes.json"]


def project_folder(tmp_path):
    """A user's project folder used as MASKIR_CACHE_DIR: their files, two maskir entries, a stale temp."""
    for name in FOREIGN:
        (tmp_path / name).write_text("user data\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.json").write_text("{}")
    cache = KernelCache(tmp_path)
    entries = [cache.get_or_build(FIELDS, build), cache.get_or_build({**FIELDS, "dtype": "bf16"}, build)]
    (tmp_path / f".maskir-{entries[0].key}.py.abc_123.tmp").write_text("half")
    return cache, entries


def test_clear_deletes_only_maskirs_entries_and_temp_files(tmp_path):
    cache, entries = project_folder(tmp_path)
    assert cache.clear() == 5
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*FOREIGN, "data"])
    assert all((tmp_path / name).read_text() == "user data\n" for name in FOREIGN)
    assert (tmp_path / "data" / "x.json").exists()


def test_ls_lists_foreign_files_as_not_maskirs_and_never_as_entries(tmp_path, capsys, monkeypatch):
    cache, entries = project_folder(tmp_path)
    listing = cache.scan()
    assert sorted(entry["key"] for entry in listing.entries) == sorted(entry.key for entry in entries)
    assert sorted(listing.foreign) == sorted([*FOREIGN, "data"])
    assert [path.name for path in listing.stale] == [f".maskir-{entries[0].key}.py.abc_123.tmp"]
    monkeypatch.setenv("MASKIR_CACHE_DIR", str(tmp_path))
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert "not maskir's (left alone): " in out and "train.py" in out and "config.json" in out
    assert main(["cache", "clear"]) == 0 and "removed 5 files" in capsys.readouterr().out
    assert (tmp_path / "train.py").exists() and (tmp_path / "config.json").exists()


def test_clear_removes_the_fallback_folders_maskir_made(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = KernelCache(blocker / "cache")
    with pytest.warns(RuntimeWarning, match="cannot write the kernel cache"):
        entry = cache.get_or_build(FIELDS, build)
    assert entry.path.parent in fallback_folders()
    user_folder = tmp_path / "tmp" / "maskir-fallback-mine"  # a user's folder under the same name: not emptied
    user_folder.mkdir()
    (user_folder / "notes.txt").write_text("keep")
    cache.clear()
    assert not entry.path.parent.exists()
    assert (user_folder / "notes.txt").read_text() == "keep"


# -- 3. metadata of any kind is a corrupt entry, read within bounds --------------------------------------


def damage(kind, meta_path, source_path):
    if kind == "fifo":
        meta_path.unlink()
        os.mkfifo(meta_path)
    elif kind == "source_fifo":
        source_path.unlink()
        os.mkfifo(source_path)
    elif kind == "directory":
        meta_path.unlink()
        meta_path.mkdir()
    elif kind == "device":
        meta_path.unlink()
        meta_path.symlink_to("/dev/zero")
    elif kind == "not_utf8":
        meta_path.write_bytes(b'{"key": "\xff\xfe"}')
    elif kind == "huge":
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "padding": "x" * METADATA_LIMIT}))
    elif kind == "deep":
        meta_path.write_text("[" * 200_000 + "]" * 200_000)
    elif kind == "deep_object":
        meta_path.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    elif kind == "huge_number":
        meta_path.write_text('{"key": ' + "9" * 100_000 + "}")
    elif kind == "not_an_object":
        meta_path.write_text('"maskir"')


@pytest.mark.parametrize(
    "kind",
    ["fifo", "source_fifo", "directory", "device", "not_utf8", "huge", "deep", "deep_object", "huge_number"]
    + ["not_an_object"],
)
def test_irregular_or_hostile_metadata_is_rebuilt_without_hanging(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a fallback folder would go
    entry = KernelCache(tmp_path).get_or_build(FIELDS, build)
    damage(kind, tmp_path / f"maskir-{entry.key}.json", entry.path)
    results = {}

    def use_the_cache():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a folder in the way sends the write elsewhere
            calls = []
            cache = KernelCache(tmp_path)
            rebuilt = cache.get_or_build(FIELDS, lambda: calls.append(1) or build())
            results["value"] = cache.load_module(rebuilt).VALUE, calls
            results["listed"] = KernelCache(tmp_path).scan()

    worker = threading.Thread(target=use_the_cache, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), f"the cache hung on metadata of kind {kind}"
    assert results["value"] == (42, [1])
    assert isinstance(results["listed"].entries, list)
