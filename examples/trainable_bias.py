"""A Swin-style block whose relative-position bias table is learned, trained under ``torch.compile(fullgraph=True)``.

Run ``python examples/trainable_bias.py``: on a GPU the Triton kernels run compiled (bf16); on a CPU,
TVM's CPU kernels (fp32). The block holds a ``maskir.compile`` of shifted-window
attention whose score_mod (``maskir.score_mods.relative_position_bias``) reads the table, an
``nn.Parameter`` [heads, 2w - 1, 2w - 1]: the table reaches maskir's op as an input, so the backward that
gives dQ, dK and dV also gives d table (deterministically: per-program partial sums, no atomics), and the
optimizer's in-place step is read by the next call without recompiling. The script trains a few steps,
then compares the compiled block's gradients with eager mode's.
"""

import os

import torch

if not torch.cuda.is_available():  # Triton's interpreter must be chosen before torch.compile imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import maskir  # noqa: E402
from maskir import Blocks, Canvas  # noqa: E402
from maskir.score_mods import relative_position_bias  # noqa: E402

CANVAS = Canvas((8, 8))
WINDOW, SHIFT = 4, 2
HEADS, HEAD_DIM = 2, 16
STEPS = 4


class SwinBlock(torch.nn.Module):
    """x [B, N, C] -> x + proj(shifted-window attention + a learned bias per head and relative offset)."""

    def __init__(self, heads: int, head_dim: int, *, device: str, dtype: torch.dtype):
        super().__init__()
        width = heads * head_dim
        self.heads = heads
        self.qkv = torch.nn.Linear(width, 3 * width, bias=False, device=device, dtype=dtype)
        self.proj = torch.nn.Linear(width, width, bias=False, device=device, dtype=dtype)
        span = 2 * WINDOW - 1
        self.relative_position_bias_table = torch.nn.Parameter(
            torch.randn(heads, span, span, device=device, dtype=torch.float32)
        )
        self.attend = maskir.compile(
            Blocks(WINDOW, offset=WINDOW - SHIFT),  # Swin's shifted windows, without the roll
            CANVAS,
            heads=heads,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
            score_mod=relative_position_bias(self.relative_position_bias_table, CANVAS, convention="swin"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, width = x.shape
        q, k, v = self.qkv(x).view(batch, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.attend(q, k, v)
        return x + self.proj(out.transpose(1, 2).reshape(batch, n, width))


def train(steps: int = STEPS, compile_backend: str = "inductor") -> tuple[list[float], float, dict[str, float]]:
    """Losses of ``steps`` SGD steps of the compiled block, how far the bias table moved (largest change),
    then, per parameter, the largest difference between the compiled and the eager block's gradients of
    one more loss. ``compile_backend``: torch.compile's backend (the test takes "aot_eager": the same
    graph capture and autograd, without inductor's C++ build of the linear layers)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    block = SwinBlock(HEADS, HEAD_DIM, device=device, dtype=dtype)
    compiled = torch.compile(block, fullgraph=True, backend=compile_backend)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.2)
    x = torch.randn(2, CANVAS.size, HEADS * HEAD_DIM, device=device, dtype=dtype)
    target = torch.randn_like(x)
    table = block.relative_position_bias_table.detach().clone()
    losses = []
    for _ in range(steps):
        loss = (compiled(x) - target).float().square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    moved = (block.relative_position_bias_table.detach() - table).abs().max().item()
    gradients = {}
    for name, model in (("compiled", compiled), ("eager", block)):
        block.zero_grad()
        (model(x) - target).float().square().mean().backward()
        gradients[name] = {key: p.grad.clone() for key, p in block.named_parameters()}
    differences = {
        key: (gradients["compiled"][key] - gradients["eager"][key]).abs().max().item() for key in gradients["eager"]
    }
    return losses, moved, differences


def main() -> None:
    losses, moved, differences = train()
    for step, loss in enumerate(losses):
        print(f"step {step}: loss {loss:.4f}")
    print(f"the bias table moved by up to {moved:.2e}")
    for key, difference in differences.items():
        print(f"{key}: largest |compiled - eager| gradient difference {difference:.2e}")


if __name__ == "__main__":
    main()
