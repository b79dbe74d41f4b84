"""A transformer block with 2-D neighborhood attention, trained under ``torch.compile(fullgraph=True)``.

Run ``python examples/compiled_block.py``: on a GPU the Triton kernels run compiled (bf16); on a CPU,
TVM's CPU kernels (fp32, a few seconds). The block builds its pattern and a relative-position
score_mod in ``forward``, as a model would: the first compiled call plans and builds the kernels while
torch.compile traces it, and every later step reuses them. Under torch.compile a score_mod may read
module-level tensors and Python numbers; one that closes over a tensor made inside the compiled
function (or over the module) cannot be handed to the build: hold ``maskir.compile(..., score_mod=...)``
in ``__init__`` for that.
"""

import os

import torch

if not torch.cuda.is_available():  # Triton's interpreter must be chosen before torch.compile imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import maskir  # noqa: E402
from maskir import Canvas  # noqa: E402

CANVAS = Canvas((8, 8))
HEADS, HEAD_DIM = 2, 16
STEPS = 3


class NeighborhoodBlock(torch.nn.Module):
    """x [B, N, C] -> x + proj(attention over a 5x5 neighborhood with a distance penalty per head)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(width, 3 * width, bias=False)
        self.proj = torch.nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, width = x.shape
        q, k, v = self.qkv(x).view(batch, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        pattern = maskir.Neighborhood(5)

        def distance_penalty(score, b, h, q_idx, kv_idx):  # ALiBi-like: slope 1/2 for head 0, 1/4 for head 1
            return score - (q_idx - kv_idx).abs() / (2.0 * (h + 1))

        out = maskir.attention(q, k, v, pattern, CANVAS, score_mod=distance_penalty)
        return x + self.proj(out.transpose(1, 2).reshape(batch, n, width))


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    block = NeighborhoodBlock(HEADS * HEAD_DIM, HEADS).to(device=device, dtype=dtype)
    compiled = torch.compile(block, fullgraph=True)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    x = torch.randn(2, CANVAS.size, HEADS * HEAD_DIM, device=device, dtype=dtype)
    target = torch.randn_like(x)
    for step in range(STEPS):
        loss = (compiled(x) - target).float().square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f}")
    eager = (block(x) - target).float().square().mean()
    compiled_loss = (compiled(x) - target).float().square().mean()
    print(f"compiled vs eager loss after training: {compiled_loss.item():.6f} vs {eager.item():.6f}")


if __name__ == "__main__":
    main()
