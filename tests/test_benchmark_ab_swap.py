"""benchmarks/ab_swap.py: the two dK/dV variants it times differ in the step's orientation only."""

import difflib

import pytest
import torch

from benchmarks.ab_swap import main, narrow_entries, variants
from maskir import Blocks, Canvas
from maskir.planner import plan


def test_the_variants_differ_only_in_the_dkdv_orientation_and_its_q_chunk(tmp_path):
    planned = plan(Blocks(8), Canvas((64, 64)), heads=2, block_q=64, block_kv=32)
    kernels = variants(planned, tmp_path, (9, 0))
    assert [k.module.DKDV_SWAP_AB for k in kernels.values()] == [False, True]
    kv_major, swapped = (k.generated.source.splitlines() for k in kernels.values())
    changed = [line for line in difflib.ndiff(kv_major, swapped) if line[:1] in "+-"]
    assert {line[2:].split(" = ")[0].split(";")[0] for line in changed if not line[2:].startswith("#")} == {
        "DKDV_CHUNK_M",
        "DKDV_CHUNKS",
        "DKDV_SWAP_AB",
    }


def test_the_default_entries_are_those_with_kv_tiles_narrower_than_64():
    assert narrow_entries() == ["na3d_16x32x32_k5_9_9", "swin_128x128_w8", "fixed_local256_cols128"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_without_cuda_it_says_it_needs_a_gpu(capsys):
    assert main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
