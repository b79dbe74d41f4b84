"""What maskir may read, write and delete in a kernel cache folder.

Names: maskir writes only ``maskir-<32 hex>.py`` / ``maskir-<32 hex>.json`` (an entry),
``maskir-<32 hex>.so`` / ``.json`` (a built library entry) and
``.maskir-<32 hex>.{py,so,json}.<random>.tmp`` (a write in progress); everything else in the folder is
someone else's and is never read, listed as maskir's, or deleted. Private fallback folders are
``$TMPDIR/maskir-fallback-<random>`` (mode 0700).

Reads are bounded: a file is opened without following a symlink and without blocking (a FIFO or a
device never hangs a call), must be a regular file, and is read up to a size limit; anything else
counts as a corrupt entry.

A folder is trusted as ssh trusts ``~/.ssh``: owned by this user and writable by nobody else.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

ENTRY_NAME = re.compile(r"maskir-(?P<key>[0-9a-f]{32})\.(?P<kind>py|so|json)")
TEMP_NAME = re.compile(r"\.maskir-[0-9a-f]{32}\.(py|so|json)\.[A-Za-z0-9_]+\.tmp")
FALLBACK_PREFIX = "maskir-fallback-"
FALLBACK_NAME = re.compile(re.escape(FALLBACK_PREFIX) + r"[A-Za-z0-9_]+")
METADATA_LIMIT = 1 << 20
"""Largest metadata file read (bytes); a bigger one is corrupt (maskir's are a few KiB)."""
SOURCE_LIMIT = 64 << 20
"""Largest kernel source read (bytes); generated modules are well under a MiB."""
LIBRARY_LIMIT = 256 << 20
"""Largest built library read (bytes); TVM's CPU kernels of a plan are a few MiB."""


def entry_paths(root: Path, key: str) -> tuple[Path, Path]:
    """(source, metadata) paths of the entry ``key`` in ``root``."""
    return root / f"maskir-{key}.py", root / f"maskir-{key}.json"


def library_path(root: Path, key: str) -> Path:
    """The shared library of the library entry ``key`` in ``root`` (its metadata: ``entry_paths``' second)."""
    return root / f"maskir-{key}.so"


def is_maskir_name(name: str) -> bool:
    """True for an entry file or a temp file maskir writes (the only files ``clear`` deletes)."""
    return bool(ENTRY_NAME.fullmatch(name) or TEMP_NAME.fullmatch(name))


def read_bounded(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (not a symlink) of at most ``limit`` bytes, else None.

    Opened with O_NONBLOCK and O_NOFOLLOW: a FIFO, a device or a symlink planted where an entry should
    be returns None at once instead of blocking or reading elsewhere."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks) if size <= limit else None
    except OSError:
        return None
    finally:
        os.close(fd)


def folder_problem(root: Path) -> str | None:
    """Why ``root`` must not hold kernels (another owner, writable by group or others), or None.

    A folder that does not exist yet is fine (maskir creates it with mode 0700); one that cannot be
    inspected or written fails on the write and falls back then."""
    try:
        info = os.stat(root)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None
    if info.st_uid != os.geteuid():
        return f"it is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"it is writable by its group or by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def make_fallback_folder() -> Path:
    """A new private (0700) folder in the temp dir that ``maskir cache clear`` recognises and removes."""
    return Path(tempfile.mkdtemp(prefix=FALLBACK_PREFIX))


def fallback_folders() -> list[Path]:
    """Fallback folders of this user in the temp dir (real folders, not symlinks, owned by this user)."""
    found = []
    temp = Path(tempfile.gettempdir())
    try:
        names = os.listdir(temp)
    except OSError:
        return []
    for name in names:
        if not FALLBACK_NAME.fullmatch(name):
            continue
        try:
            info = os.lstat(temp / name)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
            found.append(temp / name)
    return found


def remove_maskir_files(folder: Path) -> int:
    """Delete maskir's entry and temp files in ``folder`` (nothing else); return how many went."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if not is_maskir_name(name):
            continue
        path = folder / name
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                continue  # a folder under an entry's name is not maskir's
            path.unlink()
            removed += 1
        except OSError:
            continue
    return removed
