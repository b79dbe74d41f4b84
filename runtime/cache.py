"""On-disk and in-memory cache of generated kernel sources.

An entry is two files under ``$MASKIR_CACHE_DIR`` (default ``~/.cache/maskir``): ``<key>.py`` (the
generated source, importable so Triton can read it and users can open it) and ``<key>.json`` (metadata:
the key fields, versions, sha256 of the source). Each file is written to a temp file in the same folder and
``os.replace``d, source first, metadata last, so a reader sees a whole entry or none. A reader trusts an
entry only if its metadata parses, names the same key and versions, and the source hashes to the recorded
digest; anything else (truncated, corrupt, foreign, stale) is rebuilt. Nothing is pickled; only sources
maskir generated for that key are imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

FORMAT_VERSION = 1


def cache_dir() -> Path:
    """The cache folder: ``$MASKIR_CACHE_DIR`` or ``~/.cache/maskir``."""
    return Path(os.environ.get("MASKIR_CACHE_DIR") or Path.home() / ".cache" / "maskir")


def versions() -> dict[str, str]:
    """Versions that change generated code or its meaning: part of every key."""
    import torch

    import maskir

    found = {"maskir": maskir.__version__, "torch": torch.__version__, "format": str(FORMAT_VERSION)}
    for name, package in (("triton", "triton"), ("tvm", "apache-tvm")):
        try:  # read from the metadata: importing triton here would fix its interpreter setting too early
            found[name] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[name] = "none"
    return found


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the key fields plus ``versions()`` (first 32 hex digits)."""
    text = json.dumps({"fields": fields, "versions": versions()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def source_digest(text: str) -> str:
    """sha256 hex digest of a kernel source (recorded in its metadata, and part of the runtime's key)."""
    return hashlib.sha256(text.encode()).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class CacheEntry:
    """A validated entry: its key, source path, source text and metadata."""

    key: str
    path: Path
    source: str
    meta: dict[str, Any]


class KernelCache:
    """Kernel sources by key: memory first, then disk (validated), else ``build()`` and store."""

    def __init__(self, root: Path | str | None = None):
        self._root = Path(root) if root is not None else None
        self._memory: dict[str, CacheEntry] = {}
        self._modules: dict[str, ModuleType] = {}
        self._lock = threading.Lock()
        self._fallback: Path | None = None

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else cache_dir()

    def _paths(self, key: str, root: Path | None = None) -> tuple[Path, Path]:
        root = self.root if root is None else root
        return root / f"{key}.py", root / f"{key}.json"

    def read(self, key: str) -> CacheEntry | None:
        """The disk entry for ``key`` if it is whole and valid, else None."""
        source_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            source = source_path.read_text(encoding="utf-8")
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        valid = (
            isinstance(meta, dict)
            and meta.get("key") == key
            and meta.get("versions") == versions()
            and meta.get("sha256") == source_digest(source)
        )
        return CacheEntry(key, source_path, source, meta) if valid else None

    def write(self, key: str, source: str, meta: dict[str, Any]) -> CacheEntry:
        """Store an entry atomically (source, then metadata) and return it.

        When the cache folder cannot be written (a read-only home, a full disk), the entry goes to a
        private temporary folder of this process instead, with one warning: kernels still load, they are
        just rebuilt by the next process.
        """
        full_meta = {**meta, "key": key, "versions": versions(), "sha256": source_digest(source)}
        try:
            return self._store(self.root, key, source, full_meta)
        except OSError as error:
            return self._store(self._fallback_root(error), key, source, full_meta)

    def _store(self, root: Path, key: str, source: str, meta: dict[str, Any]) -> CacheEntry:
        root.mkdir(parents=True, exist_ok=True)
        source_path, meta_path = self._paths(key, root)
        _write_atomic(source_path, source)
        _write_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True, default=str))
        return CacheEntry(key, source_path, source, meta)

    def _fallback_root(self, error: OSError) -> Path:
        """A folder only this process writes (mode 0700), made on the first failed write."""
        if self._fallback is None:
            self._fallback = Path(tempfile.mkdtemp(prefix="maskir-cache-"))
            warnings.warn(
                f"maskir: cannot write the kernel cache at {self.root} ({error}); using {self._fallback} for "
                "this process. Set MASKIR_CACHE_DIR to a writable folder to keep compiled kernels.",
                RuntimeWarning,
                stacklevel=4,
            )
        return self._fallback

    def get_or_build(
        self,
        fields: dict[str, Any],
        build: Callable[[], tuple[str, dict[str, Any]]],
        *,
        expected_source: str | None = None,
    ) -> CacheEntry:
        """The entry for ``fields``; ``build() -> (source, meta)`` runs only on a miss or a bad entry.

        ``expected_source``: the text the caller generated; an entry holding any other text (edited on
        disk with its metadata to match, or written by another maskir build) counts as bad and is rebuilt.
        """
        key = cache_key(fields)
        with self._lock:
            entry = self._memory.get(key) or self.read(key)
            if entry is None or (expected_source is not None and entry.source != expected_source):
                source, meta = build()
                entry = self.write(key, source, {**meta, "fields": fields})
            self._memory[key] = entry
            return entry

    def load_module(self, entry: CacheEntry) -> ModuleType:
        """Import an entry's source as module ``maskir_kernels.k<key>`` (once per process)."""
        with self._lock:
            module = self._modules.get(entry.key)
            if module is None:
                name = f"maskir_kernels.k{entry.key}"
                spec = importlib.util.spec_from_file_location(name, entry.path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
                self._modules[entry.key] = module
            return module

    def entries(self) -> list[dict[str, Any]]:
        """Metadata of every valid entry on disk, newest first."""
        if not self.root.is_dir():
            return []
        found = []
        for meta_path in sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            entry = self.read(meta_path.stem)
            if entry is not None:
                found.append({**entry.meta, "path": str(entry.path)})
        return found

    def clear(self) -> int:
        """Delete every maskir entry (and stray temp files); return the number of files removed."""
        self._memory.clear()
        if not self.root.is_dir():
            return 0
        removed = 0
        for path in [*self.root.glob("*.py"), *self.root.glob("*.json"), *self.root.glob(".*.tmp")]:
            path.unlink(missing_ok=True)
            removed += 1
        return removed


DEFAULT_CACHE = KernelCache()
"""The process-wide cache (root follows ``$MASKIR_CACHE_DIR`` at each use)."""
