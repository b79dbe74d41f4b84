"""A tiny Llama trained on packed sequences with ``attn_implementation="maskir"`` (CPU, a few seconds).

Run ``python examples/transformers_packed.py`` (needs ``pip install maskir[transformers]``). Documents of
different lengths are packed into one row; ``position_ids`` restart at 0 at each document, so
transformers separates them (no attention across documents) and maskir runs that as
``Causal() & Segments()`` with the document ids, never building the N x N mask. The task: each document
counts up from a random start token (mod the vocabulary), so the loss falls within a few steps.
"""

import os

import torch

if not torch.cuda.is_available():  # Triton's interpreter must be chosen before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import maskir.integrations.transformers  # noqa: E402, F401 (registers attn_implementation="maskir")

VOCAB = 32
DOCUMENT_LENGTHS = (9, 5, 12, 6)
STEPS = 6


def packed_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids [1, N], position ids restarting per document, labels with -100 at document starts)."""
    ids, positions, labels = [], [], []
    for length in DOCUMENT_LENGTHS:
        start = int(torch.randint(0, VOCAB, (1,), generator=generator))
        document = (start + torch.arange(length)) % VOCAB
        ids.append(document)
        positions.append(torch.arange(length))
        labels.append(torch.cat([torch.tensor([-100]), document[1:]]))  # no target across documents
    return torch.cat(ids)[None], torch.cat(positions)[None], torch.cat(labels)[None]


def main() -> list[float]:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    model.set_attn_implementation("maskir")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in range(STEPS):
        ids, positions, labels = packed_batch(generator)
        # transformers shifts the labels itself; the -100 at each document's first token stops a target
        # from crossing a document boundary
        loss = model(ids, position_ids=positions, labels=labels, use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        print(f"step {step}: loss {loss.item():.4f}")
    return losses


if __name__ == "__main__":
    main()
