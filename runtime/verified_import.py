"""Import a module from a verified string, so that the bytes that were checked are the bytes that run.

``importlib`` imports from a file path would re-read the file (and may prefer a ``__pycache__/*.pyc``
planted beside it); ``inspect``/``linecache`` (which Triton's JIT and its interpreter use to get a kernel's
source) would re-read it again later. Here the module is compiled from the string itself under a virtual
file name of the form ``<...>``: ``linecache`` never reads such a name from disk, and the lines registered
for it are the verified string. No bytecode is read or written anywhere.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import linecache
import sys
from types import ModuleType


class VerifiedSourceLoader(importlib.abc.Loader):
    """A loader that executes, and serves as source, exactly one string."""

    def __init__(self, source: str, filename: str):
        self.source, self.filename = source, filename

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        exec(compile(self.source, self.filename, "exec", dont_inherit=True), module.__dict__)  # noqa: S102

    def get_source(self, name: str) -> str:
        return self.source


def virtual_filename(name: str, origin: str) -> str:
    """``<name from origin>``: a name ``linecache`` never reads from disk (it skips ``<...>`` names)."""
    return f"<{name} from {origin}>".replace("\n", " ")


def import_verified(name: str, source: str, origin: str) -> ModuleType:
    """Execute ``source`` as module ``name`` (registered in ``sys.modules``); ``origin`` (e.g. the cache
    file it was read from) appears only in the virtual file name shown by tracebacks."""
    filename = virtual_filename(name, origin)
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    loader = VerifiedSourceLoader(source, filename)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader, origin=filename))
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
