"""attn_implementation="maskir" in transformers: tiny random models from configs (no downloads) against "eager".

Families: Llama (GQA, causal), Mistral (sliding window on every layer), Gemma2 (logit soft-capping, sliding and
global layers alternating, query_pre_attn_scalar scaling), Phi3 (head dim 8, sliding window). For each: logits and the gradients of every
parameter equal eager's (and sdpa's where it applies), with left padding, and with packed sequences
(position_ids restarting, no mask, no cache); greedy generate() gives eager's tokens; maskir's kernels
(Triton, in the interpreter) were really called; no N x N tensor is built on the path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

transformers = pytest.importorskip("transformers")

from transformers import AttentionInterface  # noqa: E402
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface  # noqa: E402

import maskir.integrations.transformers as integration  # noqa: E402 (after the importorskip)

ROOT = Path(__file__).resolve().parents[1]
VOCAB, LENGTH = 64, 16
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    attention_dropout=0.0,
)
FAMILIES = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON)),
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**COMMON, sliding_window=6)),
    "gemma2": lambda: transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(
            **COMMON,
            sliding_window=6,
            attn_logit_softcapping=3.0,
            final_logit_softcapping=None,
            query_pre_attn_scalar=8,
        )
    ),
    "phi3": lambda: transformers.Phi3ForCausalLM(  # head dim 32 / 4 = 8: zero-padded to the kernels' 16
        transformers.Phi3Config(
            **{k: v for k, v in COMMON.items() if k != "head_dim"}, sliding_window=6, pad_token_id=0
        )
    ),
}
CALLS: list[int] = []


def _spy(module, *args, **kwargs):
    """maskir's attention function, counting its calls (registered as "maskir_spy")."""
    CALLS.append(module.layer_idx)
    return _MASKIR(module, *args, **kwargs)


_MASKIR = integration.make_attention("auto")
AttentionInterface.register("maskir_spy", _spy)
AttentionMaskInterface.register("maskir_spy", integration.maskir_mask)


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family]()


def _inputs(kind: str) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """(input ids [2, LENGTH], forward keywords, positions whose logits count)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, LENGTH), generator=generator)
    real = torch.ones(2, LENGTH, dtype=torch.bool)
    if kind == "padded":
        real[1, :5] = False  # left padding
        return ids, {"attention_mask": real.long()}, real
    if kind == "packed":
        positions = torch.cat([torch.arange(7), torch.arange(4), torch.arange(LENGTH - 11)])
        return ids, {"position_ids": positions[None].expand(2, -1), "use_cache": False}, real
    return ids, {}, real


def _logits_and_grads(model, implementation: str, ids, keywords, real):
    model.set_attn_implementation(implementation)
    model.zero_grad()
    logits = model(ids, **keywords).logits[real]
    logits.float().pow(2).mean().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_and_gradients_equal_eager(family, kind):
    model = _model(family)
    ids, keywords, real = _inputs(kind)
    expected_logits, expected_grads = _logits_and_grads(model, "eager", ids, keywords, real)
    CALLS.clear()
    logits, grads = _logits_and_grads(model, "maskir_spy", ids, keywords, real)
    assert sorted(set(CALLS)) == list(range(model.config.num_hidden_layers)), "maskir was not called on every layer"
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_llama_logits_equal_sdpa_with_padding():
    model = _model("llama")
    ids, keywords, real = _inputs("padded")
    expected, _ = _logits_and_grads(model, "sdpa", ids, keywords, real)
    logits, _ = _logits_and_grads(model, "maskir", ids, keywords, real)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_greedy_generate_gives_eager_tokens(family):
    """Left-padded prompts, decoding past the sliding window: the KV cache path (q shorter than kv)."""
    model = _model(family).eval()
    ids, keywords, _ = _inputs("padded")
    tokens = {}
    for implementation in ("eager", "maskir_spy"):
        model.set_attn_implementation(implementation)
        CALLS.clear()
        with torch.no_grad():
            tokens[implementation] = model.generate(
                ids[:, :12],
                attention_mask=keywords["attention_mask"][:, :12],
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=0,
            )
    assert len(CALLS) == model.config.num_hidden_layers * 4
    assert torch.equal(tokens["maskir_spy"], tokens["eager"])


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


def test_no_n_by_n_tensor_is_built():
    """At N = 192 every activation is smaller than N^2 elements; eager's scores are not (so the check bites)."""
    n = 192
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        **{**COMMON, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
    )
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, VOCAB, (1, n))
    mask = torch.ones(1, n, dtype=torch.long)
    mask[0, :3] = 0
    largest = {}
    for implementation in ("eager", "maskir"):
        model.set_attn_implementation(implementation)
        with torch.no_grad(), LargestTensor() as spy:
            model(ids, attention_mask=mask)
        largest[implementation] = spy.largest
    assert largest["eager"] >= n * n
    assert largest["maskir"] < n * n


def test_import_registers_maskir_in_both_interfaces():
    assert "maskir" in AttentionInterface._global_mapping
    assert ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["maskir"] is integration.maskir_mask


def test_a_prepared_4d_mask_is_refused_naming_the_argument():
    model = _model("llama")
    model.set_attn_implementation("maskir")
    ids = torch.randint(0, VOCAB, (1, 8))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.zeros(1, 1, 8, 8))


def test_attention_dropout_is_refused():
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**COMMON, "attention_dropout": 0.1})).train()
    model.set_attn_implementation("maskir")
    with pytest.raises(ValueError, match="dropout=0.1"):
        model(torch.randint(0, VOCAB, (1, 8)))


def test_chunked_attention_is_expressed_as_documents():
    """Llama4-style chunked causal attention is causal attention over chunk "documents": planned as such."""
    from transformers.masking_utils import chunked_causal_mask_function

    chunked = chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long))
    description = integration.maskir_mask(1, 10, 10, mask_function=chunked)
    assert description.documents.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 2, 2]]


def test_a_mask_maskir_cannot_express_is_refused():
    """An or_mask_function overlay (bidirectional blocks of 5 tokens over causal) is not described: refused."""
    from transformers.masking_utils import causal_mask_function, or_masks

    overlay = or_masks(causal_mask_function, lambda b, h, q, kv: q // 5 == kv // 5)
    with pytest.raises(ValueError, match="cannot express"):
        integration.maskir_mask(1, 16, 16, mask_function=overlay)


def test_packed_training_example_lowers_the_loss_through_maskir():
    """examples/transformers_packed.py: a tiny Llama trained for a few steps on packed documents."""
    spec = importlib.util.spec_from_file_location("transformers_packed", ROOT / "examples" / "transformers_packed.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    AttentionInterface.register("maskir", _spy)  # count the calls of the name the example uses
    try:
        CALLS.clear()
        losses = example.main()
    finally:
        integration.register()
    assert len(CALLS) == 2 * example.STEPS
    assert losses[-1] < 0.85 * losses[0]
