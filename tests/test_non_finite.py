"""Non-finite inputs follow the contract in the README ("Non-finite inputs"): a NaN or inf in q row i
reaches output row i only; one in k or v row j reaches only the rows allowed to attend to key j (the
reference exactly; the tile kernels of Triton and TVM may also spread a non-finite v row to the other rows
of each q tile that visits its kv tile; TVM's max may drop a NaN score instead of propagating it). Every other row
is exactly what it is without the bad value."""

import pytest
import torch

import maskir
from maskir import Window

N, D, BAD = 64, 16, 40
PATTERN = Window(5, 0)  # row i attends to keys i - 5 .. i


def qkv():
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(1, 2, N, D, generator=generator) for _ in range(3)]


def attends_to(j):
    """Rows allowed to attend to key j under PATTERN."""
    rows = torch.zeros(N, dtype=torch.bool)
    rows[j : j + 6] = True
    return rows


def tile_rows(j, backend):
    """Rows of the q tiles whose kv list holds the tile of key j (tile kernels multiply v tiles whole)."""
    compiled = maskir.compile(PATTERN, N, heads=2, head_dim=D, dtype=torch.float32, device="cpu", backend=backend)
    plan = compiled.plan
    (part,) = plan.parts
    q_tile, kv_tile, _ = part.tables[0].pairs()
    rows = torch.zeros(N, dtype=torch.bool)
    for tile in q_tile[kv_tile == j // plan.block_kv]:
        rows[int(tile) * plan.block_q : (int(tile) + 1) * plan.block_q] = True
    return rows


@pytest.mark.parametrize("backend", ["reference", "tvm", "triton"])
@pytest.mark.parametrize(
    "side, value",
    [("q", float("nan")), ("k", float("nan")), ("v", float("nan")), ("k", float("inf")), ("v", float("-inf"))],
    ids=["nan q", "nan k", "nan v", "inf k", "-inf v"],
)
def test_a_non_finite_input_reaches_only_the_rows_the_contract_allows(backend, side, value):
    if backend == "tvm":
        pytest.importorskip("tvm")
    tensors = qkv()
    clean = maskir.attention(*tensors, PATTERN, backend=backend)
    tensors["qkv".index(side)][0, 1, BAD, 3] = value
    out = maskir.attention(*tensors, PATTERN, backend=backend)
    if side == "q":
        reach = torch.arange(N) == BAD
    elif side == "v" and backend != "reference":
        reach = attends_to(BAD) | tile_rows(BAD, backend)
    else:
        reach = attends_to(BAD)
    torch.testing.assert_close(out[:, 1, ~reach], clean[:, 1, ~reach], atol=0, rtol=0)
    torch.testing.assert_close(out[:, 0], clean[:, 0], atol=0, rtol=0)  # the other head never sees it
    if value != value and not (backend == "tvm" and side in "qk"):  # TVM's max may drop a NaN score
        hit = (torch.arange(N) == BAD) if side == "q" else attends_to(BAD)
        assert torch.isnan(out[0, 1, hit]).any(-1).all()
