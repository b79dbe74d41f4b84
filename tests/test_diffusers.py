"""maskir.integrations.diffusers on tiny random Wan (video) and Flux (image) transformers built from configs.

Full() must give diffusers' default processors' output; another pattern the output of the same model in
float64 with a dense masked softmax (text tokens see and are seen by all, canvas tokens follow the pattern).
"""

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import FluxTransformer2DModel, WanTransformer3DModel  # noqa: E402

from maskir import Blocks, Canvas, Full, Neighborhood, patterns  # noqa: E402
from maskir.integrations.diffusers import (  # noqa: E402
    FluxMaskedAttnProcessor,
    WanMaskedAttnProcessor,
    apply_pattern,
    canvas_attention,
)
from maskir.reference import reference_mask  # noqa: E402

WAN_CANVAS = Canvas((3, 4, 4))  # latent frames 3, 8 x 8 pixels of latent, patch (1, 2, 2)
FLUX_CANVAS = Canvas((4, 6))
TEXT_TOKENS = 5


def dense_masked_attention(query, key, value, pattern, canvas):
    """softmax(q k^T / sqrt(D) masked) v in float64, [B, N, H, D]; text tokens (before the canvas) unmasked."""
    n, text = query.shape[1], query.shape[1] - canvas.size
    allowed = torch.ones(n, n, dtype=torch.bool)
    allowed[text:, text:] = torch.from_numpy(reference_mask(pattern, canvas))
    q, k, v = (t.double().transpose(1, 2) for t in (query, key, value))
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    out = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return out.transpose(1, 2).to(query.dtype)


class FluxDense(FluxMaskedAttnProcessor):
    def attend(self, query, key, value):
        return dense_masked_attention(query, key, value, self.pattern, self.canvas)


class WanDense(WanMaskedAttnProcessor):
    def attend(self, query, key, value):
        return dense_masked_attention(query, key, value, self.pattern, self.canvas)


def wan_model():
    torch.manual_seed(0)
    config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4)
    config |= dict(text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, qk_norm="rms_norm_across_heads")
    model = WanTransformer3DModel(**config, cross_attn_norm=True, rope_max_seq_len=32).eval()
    latents = torch.randn(1, 4, 3, 8, 8)
    inputs = dict(hidden_states=latents, timestep=torch.tensor([10]), encoder_hidden_states=torch.randn(1, 5, 32))
    return model, inputs


def flux_model():
    torch.manual_seed(0)
    config = dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16)
    config |= dict(num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    model = FluxTransformer2DModel(**config).eval()
    h, w = FLUX_CANVAS.shape
    rows, cols = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3)
    inputs = dict(
        hidden_states=torch.randn(1, h * w, 4),
        encoder_hidden_states=torch.randn(1, TEXT_TOKENS, 32),
        pooled_projections=torch.randn(1, 32),
        timestep=torch.tensor([1.0]),
        img_ids=image_ids,
        txt_ids=torch.zeros(TEXT_TOKENS, 3),
    )
    return model, inputs


def run(model, inputs, dtype=torch.float32):
    model.to(dtype)
    with torch.no_grad():
        out = model(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}, return_dict=False)
    return out[0]


CASES = [
    (wan_model, WanMaskedAttnProcessor, WanDense, WAN_CANVAS, Neighborhood((3, 3, 3))),
    (wan_model, WanMaskedAttnProcessor, WanDense, Canvas((3, 16)), patterns.radial(3, 16, 4)),  # frames x tokens
    (flux_model, FluxMaskedAttnProcessor, FluxDense, FLUX_CANVAS, Blocks(2)),
]


@pytest.mark.parametrize(
    "build, processor",
    [(wan_model, WanMaskedAttnProcessor), (flux_model, FluxMaskedAttnProcessor)],
    ids=["wan", "flux"],
)
def test_full_pattern_equals_the_default_processor(build, processor):
    model, inputs = build()
    expected = run(model, inputs)
    canvas = WAN_CANVAS if processor is WanMaskedAttnProcessor else FLUX_CANVAS
    apply_pattern(model, processor(Full(), canvas))
    assert any(isinstance(p, processor) for p in model.attn_processors.values())
    torch.testing.assert_close(run(model, inputs), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "build, processor, dense, canvas, pattern", CASES, ids=[f"{c[0].__name__}-{c[4]}" for c in CASES]
)
def test_pattern_equals_a_float64_masked_reference(build, processor, dense, canvas, pattern):
    model, inputs = build()
    full = run(model, inputs)
    apply_pattern(model, dense(pattern, canvas))
    expected = run(model, inputs, torch.float64)
    apply_pattern(model, processor(pattern, canvas))
    got = run(model, inputs)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)
    assert (got - full).abs().max() > 1e-2  # the pattern changes what the model computes


def test_apply_pattern_keeps_wan_cross_attention_and_checks_the_model():
    model, _ = wan_model()
    apply_pattern(model, WanMaskedAttnProcessor(Neighborhood(3), WAN_CANVAS))
    kinds = {name.split(".")[-2]: type(p).__name__ for name, p in model.attn_processors.items()}
    assert kinds == {"attn1": "WanMaskedAttnProcessor", "attn2": "WanAttnProcessor"}
    with pytest.raises(TypeError, match="needs a WanMaskedAttnProcessor"):
        apply_pattern(model, FluxMaskedAttnProcessor(Full(), FLUX_CANVAS))
    with pytest.raises(TypeError, match="apply_pattern knows"):
        apply_pattern(torch.nn.Linear(2, 2), FluxMaskedAttnProcessor(Full(), FLUX_CANVAS))


def test_canvas_attention_checks_the_canvas():
    q, k, v = (torch.randn(1, TEXT_TOKENS + 24, 2, 16) for _ in range(3))
    with pytest.raises(ValueError, match="holds 32 tokens"):
        canvas_attention(q, k, v, Full(), Canvas((4, 8)))
    q.requires_grad_()
    with pytest.raises(ValueError, match="recomputes its forward"):  # its backward ignores the merged lse
        canvas_attention(q, k, v, Blocks(2), FLUX_CANVAS, backend="reference")


@pytest.mark.parametrize("backend", ["triton", "tvm"])
def test_canvas_attention_with_text_tokens_differentiates_like_a_float64_masked_softmax(backend):
    """Text tokens plus a non-Full pattern: forward and dq, dk, dv equal the dense masked softmax's."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, TEXT_TOKENS + FLUX_CANVAS.size, 2, 16, requires_grad=True) for _ in range(3))
    pattern = Neighborhood(3) | Blocks(2)
    out = canvas_attention(q, k, v, pattern, FLUX_CANVAS, backend=backend)
    grad = torch.randn_like(out)
    out.backward(grad)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = dense_masked_attention(*leaves, pattern, FLUX_CANVAS)
    expected.backward(grad.double())
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    for name, got, want in zip("qkv", (q, k, v), leaves, strict=True):
        torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-5, rtol=1e-5, msg=f"d{name}")


def parameter_gradients(model, inputs, dtype, grad) -> dict:
    model.to(dtype).zero_grad(set_to_none=True)
    out = model(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}, return_dict=False)[0]
    out.backward(grad.to(dtype))
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


TRAINING_CASES = [CASES[0], CASES[2]]


@pytest.mark.parametrize(
    "build, processor, dense, canvas, pattern", TRAINING_CASES, ids=[f"{c[0].__name__}-{c[4]}" for c in TRAINING_CASES]
)
def test_training_gradients_equal_the_float64_masked_reference(build, processor, dense, canvas, pattern):
    """Every parameter's gradient through the pattern processors (Flux: text tokens in the joint attention)
    equals the float64 dense masked model's."""
    model, inputs = build()
    grad = torch.randn_like(run(model, inputs))
    apply_pattern(model, dense(pattern, canvas))
    expected = parameter_gradients(model, inputs, torch.float64, grad)
    apply_pattern(model, processor(pattern, canvas))
    got = parameter_gradients(model, inputs, torch.float32, grad)
    assert got.keys() == expected.keys() and len(got) == len(list(model.parameters()))
    for name, want in expected.items():
        torch.testing.assert_close(got[name].double(), want.double(), atol=2e-5, rtol=1e-3, msg=name)
