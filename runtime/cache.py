"""On-disk and in-memory cache of generated kernel sources.

An entry is two files under ``$MASKIR_CACHE_DIR`` (default ``~/.cache/maskir``): ``maskir-<key>.py`` (the
generated source, for users to open) and ``maskir-<key>.json`` (metadata: the key fields, versions,
sha256 of the source). Each file is written to a temp file in the same folder and ``os.replace``d, source
first, metadata last, so a reader sees a whole entry or none. A reader trusts an entry only if both files
are regular files of bounded size, the metadata parses, names the same key and versions, and the source
hashes to the recorded digest; anything else (truncated, corrupt, foreign, stale, a FIFO or a folder in
its place) is rebuilt. Nothing is pickled. The verified text itself is what runs (``verified_import``):
the file is never imported by path, so no bytecode is read or written and a later edit of the file is
not seen. Folder rules (names maskir owns, which folders it trusts): ``cache_folder``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from maskir.runtime.cache_folder import (
    ENTRY_NAME,
    LIBRARY_LIMIT,
    METADATA_LIMIT,
    SOURCE_LIMIT,
    TEMP_NAME,
    entry_paths,
    fallback_folders,
    folder_problem,
    library_path,
    make_fallback_folder,
    read_bounded,
    remove_maskir_files,
)
from maskir.runtime.verified_import import import_verified

FORMAT_VERSION = 2


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


def _write_atomic(path: Path, text: str | bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode() if isinstance(text, str) else text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _decode_metadata(data: bytes | None) -> dict[str, Any] | None:
    """The metadata object, or None for anything that is not a JSON object in UTF-8 (too deep included)."""
    if data is None:
        return None
    try:
        meta = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return meta if isinstance(meta, dict) else None


@dataclass(frozen=True)
class CacheEntry:
    """A validated entry: its key, source path, source text and metadata."""

    key: str
    path: Path
    source: str
    meta: dict[str, Any]


@dataclass
class CacheListing:
    """What a cache folder holds: maskir's valid entries (metadata plus ``path``, newest first), maskir's
    stale files (invalid entries, temp files left by an interrupted write) and the names of files that are
    not maskir's (never touched)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    stale: list[Path] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


class KernelCache:
    """Kernel sources by key: memory first, then disk (validated), else ``build()`` and store."""

    def __init__(self, root: Path | str | None = None):
        self._root = Path(root) if root is not None else None
        self._memory: dict[str, CacheEntry] = {}
        self._modules: dict[str, ModuleType] = {}
        self._libraries: dict[str, bytes] = {}
        self._lock = threading.RLock()
        self._fallback: Path | None = None
        self._warned: set[Path] = set()

    @property
    def root(self) -> Path:
        """The configured folder (``root`` or ``$MASKIR_CACHE_DIR`` at each use)."""
        return self._root if self._root is not None else cache_dir()

    def folder(self) -> Path:
        """Where entries are read and written now: the root, or this process's private fallback folder
        when the root is owned by someone else or writable by others (one warning per folder)."""
        root = self.root
        problem = folder_problem(root)
        if problem is None:
            return root
        return self._fallback_root(f"refusing the kernel cache at {root}: {problem}", root)

    def read(self, key: str, folder: Path | None = None) -> CacheEntry | None:
        """The disk entry for ``key`` if it is whole and valid, else None."""
        source_path, meta_path = entry_paths(self.folder() if folder is None else folder, key)
        meta = _decode_metadata(read_bounded(meta_path, METADATA_LIMIT))
        if meta is None or meta.get("key") != key or meta.get("versions") != versions():
            return None
        data = read_bounded(source_path, SOURCE_LIMIT)
        try:
            source = data.decode("utf-8") if data is not None else None
        except UnicodeDecodeError:
            return None
        if source is None or meta.get("sha256") != source_digest(source):
            return None
        return CacheEntry(key, source_path, source, meta)

    def write(self, key: str, source: str, meta: dict[str, Any]) -> CacheEntry:
        """Store an entry atomically (source, then metadata) and return it.

        When the cache folder cannot be written (a read-only home, a full disk), the entry goes to a
        private temporary folder of this process instead, with one warning: kernels still load, they are
        just rebuilt by the next process.
        """
        full_meta = {**meta, "key": key, "versions": versions(), "sha256": source_digest(source)}
        folder = self.folder()
        try:
            return self._store(folder, key, source, full_meta)
        except OSError as error:
            fallback = self._fallback_root(f"cannot write the kernel cache at {folder} ({error})", folder)
            return self._store(fallback, key, source, full_meta)

    def _store(self, root: Path, key: str, source: str, meta: dict[str, Any]) -> CacheEntry:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        source_path, meta_path = entry_paths(root, key)
        _write_atomic(source_path, source)
        _write_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True, default=str))
        return CacheEntry(key, source_path, source, meta)

    def _fallback_root(self, reason: str, root: Path) -> Path:
        """A folder only this process writes (mode 0700), made on first need; one warning per ``root``."""
        with self._lock:
            if self._fallback is None:
                self._fallback = make_fallback_folder()
            if root not in self._warned:
                self._warned.add(root)
                warnings.warn(
                    f"maskir: {reason}; using {self._fallback} for this process. Point MASKIR_CACHE_DIR at a "
                    "folder of your own that only you can write (chmod 700) to keep compiled kernels.",
                    RuntimeWarning,
                    stacklevel=5,
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

    def read_library(self, key: str, folder: Path | None = None) -> tuple[bytes, dict[str, Any]] | None:
        """The bytes and metadata of the library entry ``key`` if whole and valid (the bytes hash to the
        recorded sha256, same key and versions), else None."""
        folder = self.folder() if folder is None else folder
        meta = _decode_metadata(read_bounded(entry_paths(folder, key)[1], METADATA_LIMIT))
        if (
            meta is None
            or meta.get("kind") != "library"
            or meta.get("key") != key
            or meta.get("versions") != versions()
        ):
            return None
        data = read_bounded(library_path(folder, key), LIBRARY_LIMIT)
        if data is None or meta.get("sha256") != hashlib.sha256(data).hexdigest():
            return None
        return data, meta

    def get_or_build_library(self, fields: dict[str, Any], build: Callable[[], bytes]) -> bytes:
        """A built shared library for ``fields`` (which must name what it was built from: the source's
        digest, the target): verified bytes from memory or disk, else ``build()``'s, stored as
        ``maskir-<key>.so`` + metadata (sha256 of the bytes) like a source entry. The caller loads the
        returned bytes from a private copy, never the cache file itself, so what runs is what was hashed."""
        key = cache_key({**fields, "kind": "library"})
        with self._lock:
            data = self._libraries.get(key)
            if data is None:
                found = self.read_library(key)
                data = found[0] if found is not None else None
            if data is None:
                data = build()
                meta = {"kind": "library", "key": key, "versions": versions(), "fields": fields}
                meta["sha256"] = hashlib.sha256(data).hexdigest()
                folder = self.folder()
                try:
                    self._store_library(folder, key, data, meta)
                except OSError as error:
                    fallback = self._fallback_root(f"cannot write the kernel cache at {folder} ({error})", folder)
                    self._store_library(fallback, key, data, meta)
            self._libraries[key] = data
            return data

    def _store_library(self, root: Path, key: str, data: bytes, meta: dict[str, Any]) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomic(library_path(root, key), data)
        _write_atomic(entry_paths(root, key)[1], json.dumps(meta, indent=1, sort_keys=True, default=str))

    def load_module(self, entry: CacheEntry) -> ModuleType:
        """Execute an entry's verified source text as module ``maskir_kernels.k<key>`` (once per process)."""
        with self._lock:
            module = self._modules.get(entry.key)
            if module is None:
                module = import_verified(f"maskir_kernels.k{entry.key}", entry.source, str(entry.path))
                self._modules[entry.key] = module
            return module

    def scan(self, folder: Path | None = None) -> CacheListing:
        """Sort the files of ``folder`` (default: the root) into maskir's entries, maskir's stale files and
        files that are not maskir's. Reads only maskir's metadata and sources, bounded."""
        folder = self.root if folder is None else folder
        listing = CacheListing()
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return listing
        found = []
        for name in names:
            match = ENTRY_NAME.fullmatch(name)
            if match is None:
                (listing.stale.append(folder / name) if TEMP_NAME.fullmatch(name) else listing.foreign.append(name))
                continue
            entry = self.read(match["key"], folder)
            library = self.read_library(match["key"], folder) if entry is None else None
            if entry is None and library is None:
                listing.stale.append(folder / name)
            elif match["kind"] == "json":
                meta, path = (
                    (entry.meta, entry.path) if entry is not None else (library[1], library_path(folder, match["key"]))
                )
                found.append((_mtime(folder / name), {**meta, "path": str(path)}))
        listing.entries = [meta for _, meta in sorted(found, key=lambda item: item[0], reverse=True)]
        return listing

    def entries(self) -> list[dict[str, Any]]:
        """Metadata of every valid entry in the root folder, newest first."""
        return self.scan().entries

    def clear(self) -> int:
        """Delete maskir's entries and temp files in the root folder, and this user's fallback folders
        (maskir's files in them, then the folder when that leaves it empty); files that are not maskir's
        stay. Returns the number of files removed from the root folder."""
        with self._lock:
            self._memory.clear()
            self._libraries.clear()
            removed = remove_maskir_files(self.root)
            for folder in fallback_folders():
                remove_maskir_files(folder)
                try:
                    folder.rmdir()  # only when empty: anything else in it is not maskir's
                except OSError:
                    pass
            return removed


def _mtime(path: Path) -> float:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0.0


DEFAULT_CACHE = KernelCache()
"""The process-wide cache (root follows ``$MASKIR_CACHE_DIR`` at each use)."""
