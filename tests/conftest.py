"""Test environment: Triton's interpreter when there is no GPU, a private kernel cache, hypothesis settings.

The environment variables are set here, at conftest import, before any test module imports triton
(``TRITON_INTERPRET`` is read when triton is first imported). Values already set by the caller win,
except ``MASKIR_CACHE_DIR``: tests never touch the user's cache.
"""

import os

import pytest
import torch
from hypothesis import settings

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns on every compile when unset

settings.register_profile("ci", deadline=None)  # a 2-core CI machine makes timings noisy
settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def maskir_cache_dir(tmp_path_factory):
    """Every test session gets its own empty ``MASKIR_CACHE_DIR``."""
    path = tmp_path_factory.mktemp("maskir-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MASKIR_CACHE_DIR", str(path))
        yield path


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped, with the reason, on a machine without CUDA."""
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
