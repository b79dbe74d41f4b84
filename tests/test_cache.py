"""The kernel cache: atomic entries, validation on read, rebuild of bad entries, safe under concurrency."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from maskir.runtime.cache import KernelCache, cache_key

FIELDS = {"pattern": "Window(3, 0)", "canvas": [64], "dtype": "fp32"}
SOURCE = "VALUE = 42\n"


def build_counter():
    calls = []

    def build():
        calls.append(1)
        return SOURCE, {"note": "test"}

    return build, calls


def test_miss_builds_and_writes_source_and_metadata(tmp_path):
    cache = KernelCache(tmp_path)
    build, calls = build_counter()
    entry = cache.get_or_build(FIELDS, build)
    assert calls == [1]
    assert entry.path.read_text() == SOURCE
    meta = json.loads((tmp_path / f"maskir-{entry.key}.json").read_text())
    assert meta["key"] == entry.key and meta["fields"] == FIELDS and meta["note"] == "test"


def test_hit_in_a_fresh_cache_object_reads_disk_without_building(tmp_path):
    KernelCache(tmp_path).get_or_build(FIELDS, build_counter()[0])
    build, calls = build_counter()
    entry = KernelCache(tmp_path).get_or_build(FIELDS, build)
    assert calls == [] and entry.source == SOURCE


def test_key_changes_with_any_field():
    assert cache_key(FIELDS) != cache_key({**FIELDS, "dtype": "bf16"})
    assert cache_key(FIELDS) == cache_key(dict(reversed(list(FIELDS.items()))))


@pytest.mark.parametrize(
    "damage",
    ["truncate_source", "corrupt_metadata", "empty_metadata", "foreign_key", "stale_versions", "tampered_source"],
)
def test_bad_entry_is_rebuilt_not_executed(tmp_path, damage):
    entry = KernelCache(tmp_path).get_or_build(FIELDS, build_counter()[0])
    meta_path = tmp_path / f"maskir-{entry.key}.json"
    meta = json.loads(meta_path.read_text())
    if damage == "truncate_source":
        entry.path.write_text(SOURCE[:4])
    elif damage == "corrupt_metadata":
        meta_path.write_text(meta_path.read_text()[:10])
    elif damage == "empty_metadata":
        meta_path.write_text("")
    elif damage == "foreign_key":
        meta_path.write_text(json.dumps({**meta, "key": "0" * 32}))
    elif damage == "stale_versions":
        meta_path.write_text(json.dumps({**meta, "versions": {**meta["versions"], "maskir": "0.0.0"}}))
    elif damage == "tampered_source":
        entry.path.write_text("raise SystemExit('executed an untrusted entry')\n")
    build, calls = build_counter()
    fresh = KernelCache(tmp_path)
    rebuilt = fresh.get_or_build(FIELDS, build)
    assert calls == [1]
    assert fresh.load_module(rebuilt).VALUE == 42


def test_load_module_imports_the_source_once(tmp_path):
    cache = KernelCache(tmp_path)
    entry = cache.get_or_build(FIELDS, build_counter()[0])
    assert cache.load_module(entry) is cache.load_module(entry)


def test_ls_and_clear(tmp_path):
    cache = KernelCache(tmp_path)
    cache.get_or_build(FIELDS, build_counter()[0])
    cache.get_or_build({**FIELDS, "dtype": "bf16"}, build_counter()[0])
    assert len(cache.entries()) == 2
    assert cache.clear() == 4
    assert cache.entries() == []


def test_two_processes_building_the_same_key_leave_one_valid_entry(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from maskir.runtime.cache import KernelCache
        def build():
            time.sleep(0.5)  # both processes miss, then both write
            return {SOURCE!r} * 2000, {{}}
        for _ in range(5):
            entry = KernelCache({str(tmp_path)!r}).get_or_build({FIELDS!r}, build)
            assert entry.source == {SOURCE!r} * 2000
        print("ok")
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and all("ok" in out for out in outputs)
    assert len(KernelCache(tmp_path).entries()) == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_unwritable_cache_folder_falls_back_to_a_private_temp_folder(tmp_path):
    """A read-only home must not stop attention: the entry goes to a 0700 temp folder, with a warning."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = KernelCache(blocker / "cache")  # mkdir under a regular file fails, even for root
    with pytest.warns(RuntimeWarning, match="cannot write the kernel cache"):
        entry = cache.get_or_build(FIELDS, build_counter()[0])
    assert entry.path.parent != blocker / "cache" and (entry.path.parent.stat().st_mode & 0o777) == 0o700
    assert cache.load_module(entry).VALUE == 42


def test_an_entry_that_is_not_the_expected_source_is_rebuilt(tmp_path):
    """The caller's generated text wins over a valid-looking entry holding other text."""
    KernelCache(tmp_path).get_or_build(FIELDS, build_counter()[0])
    build, calls = build_counter()
    entry = KernelCache(tmp_path).get_or_build(FIELDS, build, expected_source=SOURCE)
    assert calls == [] and entry.source == SOURCE  # same text: a hit, no build
    rebuilt = KernelCache(tmp_path).get_or_build(FIELDS, lambda: ("VALUE = 7\n", {}), expected_source="VALUE = 7\n")
    assert rebuilt.source == "VALUE = 7\n" and rebuilt.path.read_text() == "VALUE = 7\n"
