"""Built TVM libraries in the kernel cache: stored once, loaded by the next process from verified bytes only.

A library entry is ``maskir-<key>.so`` plus metadata holding the bytes' sha256; a reader that finds the
bytes changed (or the metadata foreign) rebuilds, and the runtime loads the verified bytes from a private
copy, never the cache file.
"""

import pytest
import torch

import maskir
from maskir.ir import Window
from maskir.runtime.cache import KernelCache
from maskir.runtime.compiled import CompiledAttention

FIELDS = {"pattern": "Window(3, 0)", "canvas": [64], "source_sha256": "ab" * 32, "target": {"kind": "llvm"}}
LIBRARY = b"\x7fELF pretend shared library bytes"


def test_a_stored_library_is_served_to_the_next_process_without_a_build(tmp_path):
    assert KernelCache(tmp_path).get_or_build_library(FIELDS, lambda: LIBRARY) == LIBRARY
    assert [p.suffix for p in sorted(tmp_path.iterdir())] == [".json", ".so"]
    fresh = KernelCache(tmp_path)
    assert fresh.get_or_build_library(FIELDS, lambda: pytest.fail("a valid library was rebuilt")) == LIBRARY
    assert [entry["kind"] for entry in fresh.entries()] == ["library"]


@pytest.mark.parametrize("tamper", ["bytes", "truncated", "metadata_digest", "missing"])
def test_a_changed_library_is_never_served_and_is_rebuilt(tmp_path, tamper):
    KernelCache(tmp_path).get_or_build_library(FIELDS, lambda: LIBRARY)
    library = next(tmp_path.glob("maskir-*.so"))
    meta = library.with_suffix(".json")
    if tamper == "bytes":
        library.write_bytes(b"\x7fELF evil" + LIBRARY[9:])
    elif tamper == "truncated":
        library.write_bytes(LIBRARY[:5])
    elif tamper == "metadata_digest":  # a consistent forgery needs the digest of the new bytes: changed alone, refused
        meta.write_text(meta.read_text().replace('"sha256": "', '"sha256": "0'))
    else:
        library.unlink()
    rebuilt = b"\x7fELF rebuilt"
    assert KernelCache(tmp_path).get_or_build_library(FIELDS, lambda: rebuilt) == rebuilt
    assert KernelCache(tmp_path).get_or_build_library(FIELDS, lambda: pytest.fail("rebuilt twice")) == rebuilt


def test_clear_removes_library_entries(tmp_path):
    KernelCache(tmp_path).get_or_build_library(FIELDS, lambda: LIBRARY)
    assert KernelCache(tmp_path).clear() == 2
    assert list(tmp_path.iterdir()) == []


def test_a_second_compile_loads_the_cached_library_and_computes_the_same(tmp_path, monkeypatch):
    pytest.importorskip("tvm")
    from maskir.codegen.tvm import launch

    canvas = maskir.Canvas(64)
    options = dict(heads=2, kv_heads=2, head_dim=16, dtype=torch.float32, device="cpu", backend="tvm", quiet=True)
    q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))

    def compiled():  # a fresh cache object: what the next process sees
        return CompiledAttention(Window(3, 0), canvas, canvas, cache=KernelCache(tmp_path), **options)

    first = compiled()(q, k, v)
    assert len(list(tmp_path.glob("maskir-*.so"))) == 1
    monkeypatch.setattr(launch, "build", lambda *a, **kw: pytest.fail("the cached library was rebuilt"))
    assert torch.equal(compiled()(q, k, v), first)
