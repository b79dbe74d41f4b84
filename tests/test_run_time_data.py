"""Run-time data (segment ids, routing indices) is checked and never narrowed: ids of any integer dtype
work exactly, indices out of range or of the wrong shape are a ValueError naming it, other forms a
TypeError."""

import pytest
import torch

import maskir
from maskir import Causal, Routing, Segments
from maskir.reference import reference_attention

N, D = 32, 16


def qkv(heads=2):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(1, heads, N, D, generator=generator) for _ in range(3)]


def documents(dtype, base):
    """Four documents of 8 tokens whose ids differ only above bit 31 (or far beyond int32)."""
    values = [0, base, 1, base + 1]
    return torch.tensor([[v for v in values for _ in range(8)]], dtype=torch.int64 if dtype != torch.uint64 else dtype)


WIDE_IDS = [
    pytest.param(torch.int64, 2**32, id="int64 0 and 2**32"),
    pytest.param(torch.int64, -(2**40), id="int64 negative beyond int32"),
    pytest.param(torch.uint32, 2**31, id="uint32 above int32"),
    pytest.param(torch.uint64, 2**63 + 2**32, id="uint64 above int64"),
]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dtype, base", WIDE_IDS)
def test_wide_segment_ids_keep_documents_apart(backend, dtype, base):
    ids = documents(dtype, base).to(dtype)
    exact = torch.tensor([[i for i in range(4) for _ in range(8)]])  # the same documents, small ids
    q, k, v = qkv()
    pattern = Segments() & Causal()
    out = maskir.attention(q, k, v, pattern, segments=ids, backend=backend)
    expected = reference_attention(q, k, v, pattern, segments=exact).float()
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


def test_a_q_kv_pair_of_wide_ids_is_renumbered_consistently():
    q, k, v = qkv()
    q_ids = torch.full((1, N), 2**40)
    kv_ids = torch.cat([torch.full((1, N // 2), 2**40), torch.full((1, N // 2), 2**41)], dim=1)
    out = maskir.attention(q, k, v, Segments(), segments=(q_ids, kv_ids), backend="reference")
    small = (torch.zeros(1, N, dtype=torch.int64), torch.cat([torch.zeros(1, N // 2), torch.ones(1, N // 2)], 1).long())
    torch.testing.assert_close(out, reference_attention(q, k, v, Segments(), segments=small).float())


@pytest.mark.parametrize(
    "segments",
    [
        pytest.param([0] * N, id="list"),
        pytest.param((torch.zeros(1, N, dtype=torch.int64),), id="1-tuple"),
        pytest.param((torch.zeros(1, N, dtype=torch.int64),) * 3, id="3-tuple"),
        pytest.param([torch.zeros(1, N, dtype=torch.int64)] * 2, id="list of two"),
        pytest.param(torch.zeros(1, N), id="float tensor"),
        pytest.param(torch.zeros(1, N, dtype=torch.bool), id="bool tensor"),
        pytest.param("0" * N, id="text"),
    ],
)
def test_segments_in_any_undocumented_form_are_a_type_error(segments):
    q, k, v = qkv()
    with pytest.raises(TypeError, match="segments"):
        maskir.attention(q, k, v, Segments(), segments=segments, backend="reference")


@pytest.mark.parametrize("topk", [1, 3])
def test_routing_indices_need_exactly_topk_columns(topk):
    q, k, v = qkv()
    indices = torch.zeros(1, 2, N // 8, topk, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"topk=2"):
        maskir.attention(q, k, v, Routing(8, 2), routing=indices, backend="reference")


@pytest.mark.parametrize(
    "dtype, value",
    [(torch.int64, 2**32), (torch.int64, -(2**32) + 1), (torch.uint64, 2**63 + 1), (torch.uint32, 2**32 - 1)],
    ids=["int64 2**32", "int64 wraps to 1", "uint64 wraps negative", "uint32 max"],
)
def test_wide_routing_indices_are_checked_before_any_narrowing(dtype, value):
    q, k, v = qkv()
    indices = torch.zeros(1, 2, N // 8, 2, dtype=torch.int64).to(dtype)
    indices[0, 0, 0, 1] = torch.tensor(value, dtype=dtype)
    with pytest.raises(ValueError, match=rf"lie in \[0, 4\).*{value}"):
        maskir.attention(q, k, v, Routing(8, 2), routing=indices, backend="reference")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.uint64])
def test_routing_indices_of_every_integer_dtype_match_int64_ones(dtype):
    q, k, v = qkv()
    indices = torch.tensor([[0, 1], [1, 0], [2, 0], [3, 2]]).expand(1, 2, 4, 2)
    expected = maskir.attention(q, k, v, Routing(8, 2), routing=indices, backend="reference")
    out = maskir.attention(q, k, v, Routing(8, 2), routing=indices.to(dtype), backend="reference")
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_decode_keeps_wide_segment_ids_apart():
    """maskir.decode reads segment ids too: documents 0, 2**32 and 2**33 stay three documents."""
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 2, D, generator=generator)
    k, v = (torch.randn(1, 2, 96, D, generator=generator) for _ in range(2))
    small = torch.repeat_interleave(torch.arange(3), 32)[None]
    pattern = Segments() & Causal()
    expected = maskir.decode(q, k, v, pattern, kv_lens=[96], segments=small)
    for wide in (small * 2**32, small.to(torch.uint64) * 2**62):
        torch.testing.assert_close(maskir.decode(q, k, v, pattern, kv_lens=[96], segments=wide), expected)
