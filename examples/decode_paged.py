"""Generation over a paged KV cache with a sliding window and attention sinks (maskir.decode).

A vLLM / FlashInfer-style page pool [pages, page_size, Hkv, D] with a block table [B, max_pages]: each step
appends one token's K/V to its page and attends from it with the pattern the model trained with,
evaluated on absolute positions. Each step is checked against float64 attention over the whole sequence.
Runs on a GPU, or on a CPU in Triton's interpreter (tiny sizes): ``python examples/decode_paged.py``.
"""

import os

if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch

import maskir
from maskir import Causal, Sink, Window

PATTERN = (Window(31, 0) & Causal()) | Sink(4)  # 32-token sliding window plus 4 sinks
BATCH, HEADS, KV_HEADS, DIM, PAGE_SIZE, MAX_PAGES = 2, 4, 2, 32, 16, 16


def main(steps: int = 4) -> float:
    """Decode ``steps`` tokens after prompts of 100 and 37 tokens; returns the largest error vs float64."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    total = 100 + steps
    # the whole sequences, written into the cache token by token (a model would compute them)
    keys = torch.randn(BATCH, KV_HEADS, total, DIM, generator=g)
    values = torch.randn(BATCH, KV_HEADS, total, DIM, generator=g)
    queries = torch.randn(BATCH, HEADS, total, DIM, generator=g)
    pool_k = torch.zeros(BATCH * MAX_PAGES, PAGE_SIZE, KV_HEADS, DIM, dtype=dtype, device=device)
    pool_v = torch.zeros_like(pool_k)
    block_table = torch.randperm(BATCH * MAX_PAGES, generator=g).view(BATCH, MAX_PAGES).to(torch.int32)
    lens = torch.tensor([100, 37])

    def write(b: int, positions: torch.Tensor) -> None:
        pages, rows = block_table[b, positions // PAGE_SIZE].long(), positions % PAGE_SIZE
        pool_k[pages, rows] = keys[b, :, positions].transpose(0, 1).to(device, dtype)
        pool_v[pages, rows] = values[b, :, positions].transpose(0, 1).to(device, dtype)

    for b in range(BATCH):  # the prompts
        write(b, torch.arange(int(lens[b])))
    worst = 0.0
    for _ in range(steps):
        for b in range(BATCH):  # append this step's token
            write(b, lens[b : b + 1])
        lens += 1
        q = torch.stack([queries[b, :, int(lens[b]) - 1 : int(lens[b])] for b in range(BATCH)]).to(device, dtype)
        with torch.no_grad():
            out = maskir.decode(q, pool_k, pool_v, PATTERN, kv_lens=lens, block_table=block_table.to(device))
        for b in range(BATCH):  # float64 attention of the new token over its whole sequence
            n = int(lens[b])
            full = maskir.reference_attention(
                queries[b : b + 1, :, :n].double(), keys[b : b + 1, :, :n].double(), values[b : b + 1, :, :n].double(),
                PATTERN,
            )  # fmt: skip
            worst = max(worst, (out[b, :, 0].double().cpu() - full[0, :, -1]).abs().max().item())
    print(f"{steps} decode steps over a paged cache (page size {PAGE_SIZE}): max error vs float64 {worst:.1e}")
    return worst


if __name__ == "__main__":
    main()
