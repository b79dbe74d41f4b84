"""Context parallelism: a 2-D neighborhood attention layer split over 2 CPU processes (gloo).

Run ``python examples/context_parallel.py``. ``maskir.distributed.shard`` balances the plan's q tiles over
the ranks by computed work and lists the key/value rows each rank must fetch; each process then holds
only its tokens of the hidden states, computes q, k, v from them, and ``maskir.distributed.attention``
fetches just the rows its tiles need (one all_to_all) and runs its sub-plan through maskir's Triton
kernels (the interpreter on a CPU; compiled, with NCCL, on GPUs) on compact buffers: the rank's own k/v
rows are computed with while the fetched ones travel, and the two parts merge by log-sum-exp. The
backward sends dK/dV back to the rows' owners. The script checks the layer's output and weight gradient
against one process running ``maskir.attention`` on all tokens.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

if not torch.cuda.is_available():  # Triton's interpreter is chosen before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import maskir  # noqa: E402
from maskir import Canvas  # noqa: E402
from maskir.distributed import attention, gather, scatter, shard  # noqa: E402

PATTERN, CANVAS = maskir.Neighborhood(5), Canvas((8, 12))
WORLD, HEADS, HEAD_DIM = 2, 2, 16
WIDTH = HEADS * HEAD_DIM
TILES = {"block_q": 16, "block_kv": 16}
BACKEND = "triton"


def layer(x: torch.Tensor, weight: torch.Tensor, attend) -> torch.Tensor:
    """x [B, n, C] -> attention over q, k, v = split(x @ weight), heads first, back to [B, n, C]."""
    batch, n, _ = x.shape
    q, k, v = (x @ weight).view(batch, n, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)
    return attend(q, k, v).transpose(1, 2).reshape(batch, n, WIDTH)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The same hidden states and weights in every process."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, CANVAS.size, WIDTH, generator=generator)
    return x, (torch.randn(WIDTH, 3 * WIDTH, generator=generator) / WIDTH**0.5)


def rank_main(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    cp_plan = shard(PATTERN, CANVAS, WORLD, heads=HEADS, **TILES)
    x, weight = inputs()
    weight.requires_grad_()
    local_x = scatter(x, cp_plan, rank, dim=1)  # this rank's tokens (its k/v tokens too: self-attention)
    out = layer(local_x, weight, lambda q, k, v: attention(q, k, v, cp_plan, backend=BACKEND))
    (out**2).sum().backward()
    dist.all_reduce(weight.grad)  # data-parallel style: the weight's gradient summed over the ranks
    whole = gather(out, cp_plan, dim=1)

    if rank == 0:
        expected_weight = weight.detach().clone().requires_grad_()
        expected = layer(
            x, expected_weight, lambda q, k, v: maskir.attention(q, k, v, PATTERN, CANVAS, backend=BACKEND)
        )
        (expected**2).sum().backward()
        print(f"pattern: {PATTERN} on {CANVAS}, {WORLD} processes")
        print(cp_plan.describe())
        print(f"max |output - one process|: {(whole - expected).abs().max().item():.2e}")
        print(f"max |weight grad - one process|: {(weight.grad - expected_weight.grad).abs().max().item():.2e}")
    dist.destroy_process_group()


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(port,), nprocs=WORLD, join=True)


if __name__ == "__main__":
    main()
