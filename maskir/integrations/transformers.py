"""``attn_implementation="maskir"`` for Hugging Face transformers (tested with transformers 5.23).

``import maskir.integrations.transformers`` registers the name ``"maskir"`` in transformers'
``AttentionInterface`` and ``AttentionMaskInterface`` (``register(name, backend=...)`` registers another
name with another maskir backend, e.g. ``"tvm"`` on a CPU). The mask entry returns a ``MaskDescription``
(lengths, offsets, the 2-D padding mask, the sliding window, the packed documents): no N x N mask is
built. The attention function turns it, with the layer's keywords, into a maskir pattern on the layer's
(q, kv) index grid and run-time segment ids:

- causal: ``kv_pos <= q_pos`` with positions ``q_offset + i`` and ``kv_offset + j``: ``Causal(q_offset -
  kv_offset)``; bidirectional (``config.is_causal = False``): ``Full()``;
- sliding window w (the mask's ``local_size``, transformers' ``kv_pos > q_pos - w``): ``& Window(w - 1, 0)``
  shifted by the same offset;
- padding (``attention_mask`` 2-D) and packed sequences (what transformers' own mask function separates,
  found by asking it whether each token sees its predecessor: O(N), never N x N): ``& Segments()`` with ids
  = document index for real tokens and -1 for padding keys;
- ``scaling`` is the softmax scale, ``softcap`` a ``score_mod`` ``tanh(s / cap) * cap`` (as eager applies it,
  before the mask), GQA with k/v heads as given; head dims below 16 are zero-padded to 16 (exact);
- decoding (fewer queries than keys, under ``torch.no_grad()``) runs ``maskir.decode`` on the cache as
  given, queries at ``q_offset - kv_offset`` past its first key.

Before running, the description is checked against transformers' own ``mask_function`` on a few query
rows (O(rows x N)); a mask maskir does not express (an ``or_mask_function`` overlay, chunked attention,
block-sequence ids) raises ``ValueError`` there. Unsupported inputs raise ``ValueError`` naming the
argument (no silent fallback): a tensor ``attention_mask`` (an arbitrary 4-D mask), ``dropout > 0``,
attention sinks (``s_aux``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

import maskir
from maskir.ir import Causal, Full, Pattern, Segments, Window

CHECKED_ROWS = 8
"""Query rows of each mask checked against transformers' mask_function."""
PADDING_ID = -1
"""Segment id of padding keys (a real token's id is its document index, >= 0)."""
MIN_HEAD_DIM = 16
"""Smaller head dims (tiny test models) are zero-padded to this, the kernels' smallest."""


@dataclass(frozen=True)
class MaskDescription:
    """What transformers' mask creation knows, without the mask: sizes, offsets, padding, window, documents.

    ``padding``: bool [B, kv_offset + kv_length] (True = a real token) or None; ``documents``: int [B, N]
    document index per token when transformers detected packed sequences, else None.
    """

    batch_size: int
    q_length: int
    kv_length: int
    q_offset: int
    kv_offset: int
    causal: bool
    window: int | None
    padding: torch.Tensor | None
    documents: torch.Tensor | None

    def pattern(self) -> Pattern:
        """The pattern on the (q index i, kv index j) grid of one layer call."""
        shift = self.q_offset - self.kv_offset  # q_pos - kv_pos = shift + i - j
        pattern: Pattern = Causal(shift) if self.causal else Full()
        if self.window is not None:  # kv_pos > q_pos - window  <=>  j >= i + shift - window + 1
            left = self.window - 1 - shift
            pattern = pattern & (Window(left, shift) if left >= 0 and shift >= 0 else ~Causal(shift - self.window))
        if self.segment_ids() is not None:
            pattern = pattern & Segments()
        return pattern

    def segment_ids(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(q ids [B, Nq], kv ids [B, Nkv]): document index, -1 for padding keys; None when every token is one."""
        if self.padding is None and self.documents is None:
            return None
        first_kv = self.kv_offset
        if self.documents is not None:
            q_ids = kv_ids = self.documents.to(torch.int32)
        else:
            kv_ids = torch.zeros(self.batch_size, self.kv_length, dtype=torch.int32, device=self.padding.device)
            q_ids = torch.zeros(self.batch_size, self.q_length, dtype=torch.int32, device=self.padding.device)
        if self.padding is not None:
            real = self.padding[:, first_kv : first_kv + self.kv_length]
            kv_ids = torch.where(real, kv_ids, torch.full_like(kv_ids, PADDING_ID))
        return q_ids, kv_ids


def _padded(attention_mask: torch.Tensor | None, total: int) -> torch.Tensor | None:
    """The 2-D padding mask over ``total`` positions (transformers pads a short one with False), None if all real."""
    if attention_mask is None or (bool(attention_mask.all()) and attention_mask.shape[-1] >= total):
        return None
    mask = attention_mask.to(torch.bool)
    if mask.shape[-1] < total:
        mask = torch.nn.functional.pad(mask, (0, total - mask.shape[-1]))
    return mask


def _call(mask_function, batch: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """transformers' mask_function on broadcast index tensors (as its non-vmap sdpa expansion calls it)."""
    head = torch.zeros((), dtype=torch.long, device=q.device)
    return torch.as_tensor(mask_function(batch, head, q, kv)).to(torch.bool)


def _documents(mask_function, batch_size: int, length: int, device) -> torch.Tensor | None:
    """Document index per token from transformers' mask function: a new document starts where a token does
    not see its predecessor (in a causal mask without padding and cache, only packing does that). O(N)."""
    positions = torch.arange(1, length, device=device)
    batch = torch.arange(batch_size, device=device)[:, None]
    sees_previous = _call(mask_function, batch, positions[None, :], positions[None, :] - 1)
    starts = (~sees_previous.expand(batch_size, length - 1)).to(torch.int32)
    if not bool(starts.any()):
        return None
    return torch.cat([torch.zeros(batch_size, 1, dtype=torch.int32, device=device), starts.cumsum(-1)], dim=-1)


def maskir_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    config=None,
    device=None,
    **kwargs: Any,
) -> MaskDescription:
    """The ``AttentionMaskInterface`` entry: a ``MaskDescription`` of the mask transformers asks for."""
    if isinstance(q_offset, torch.Tensor):
        q_offset = int(q_offset)
    device = device if device is not None else "cpu"
    causal = bool(getattr(config, "is_causal", True))
    padding = _padded(attention_mask, kv_offset + kv_length)
    documents = None
    if (
        mask_function is not None
        and causal
        and padding is None
        and q_offset == kv_offset == 0
        and q_length == kv_length
    ):
        documents = _documents(mask_function, batch_size, q_length, device)
    description = MaskDescription(
        batch_size, q_length, kv_length, q_offset, kv_offset, causal, local_size, padding, documents
    )
    if mask_function is not None:
        _check_rows(description, mask_function, device)
    return description


def _check_rows(description: MaskDescription, mask_function, device) -> None:
    """Compare the description with transformers' mask_function on CHECKED_ROWS query rows (O(rows x N))."""
    d = description
    rows = torch.unique(torch.linspace(0, d.q_length - 1, min(CHECKED_ROWS, d.q_length), device=device).long())
    cols = torch.arange(d.kv_length, device=device)
    batch = torch.arange(d.batch_size, device=device)[:, None, None]
    expected = _call(mask_function, batch, (rows + d.q_offset)[None, :, None], (cols + d.kv_offset)[None, None, :])
    expected = expected.expand(d.batch_size, rows.numel(), d.kv_length)
    shift = d.q_offset - d.kv_offset
    i, j = rows[None, :, None], cols[None, None, :]
    ours = (j <= i + shift) if d.causal else torch.ones_like(j, dtype=torch.bool)
    if d.window is not None:
        ours = ours & (j >= i + shift - d.window + 1)
    if d.documents is not None:
        ours = ours & (d.documents[:, rows, None] == d.documents[:, None, :])
    if not torch.equal(ours.expand_as(expected), expected):
        raise ValueError(
            "maskir cannot express this model's attention mask: transformers' mask_function differs from a "
            f"{'causal' if d.causal else 'bidirectional'} mask{f' with sliding window {d.window}' if d.window else ''}"
            f"{' over packed documents' if d.documents is not None else ''} (an or/and_mask_function overlay, chunked "
            "attention or block_sequence_ids?). Use attn_implementation='sdpa' or 'eager' for this model."
        )


def _softcap_score_mod(cap: float):
    def softcap(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / cap) * cap

    return softcap


def make_attention(backend: str = "auto"):
    """An ``AttentionInterface`` function running maskir with ``backend``."""

    def maskir_attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask,
        dropout: float = 0.0,
        scaling: float | None = None,
        softcap: float | None = None,
        sliding_window: int | None = None,
        s_aux: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if isinstance(attention_mask, torch.Tensor):
            raise ValueError(
                f"attn_implementation='maskir' got a tensor attention_mask of shape {tuple(attention_mask.shape)} "
                "(a prepared 4-D mask): pass the 2-D padding mask (or none) so transformers asks maskir for the mask, "
                "or use 'sdpa'/'eager' for arbitrary dense masks."
            )
        if dropout:
            raise ValueError(
                f"attn_implementation='maskir' does not apply attention dropout, got dropout={dropout}: set the "
                "config's attention_dropout to 0 (or call model.eval())."
            )
        if s_aux is not None:
            raise ValueError("attn_implementation='maskir' does not support attention sinks (s_aux).")
        head_dim = query.shape[-1]
        if head_dim < MIN_HEAD_DIM:  # zero columns change neither q . k nor the kept columns of the output
            scaling = head_dim**-0.5 if scaling is None else scaling
            query, key, value = (torch.nn.functional.pad(t, (0, MIN_HEAD_DIM - head_dim)) for t in (query, key, value))
        description = attention_mask if attention_mask is not None else _unmasked(module, query, key, sliding_window)
        score_mod = _softcap_score_mod(float(softcap)) if softcap else None
        gqa = key.shape[1] != query.shape[1]
        segments = description.segment_ids()
        pattern = description.pattern()
        decoding = query.shape[2] < key.shape[2] and not torch.is_grad_enabled()
        if decoding:
            out = _decode(query, key, value, description, scaling, score_mod, segments)
        else:
            out = maskir.attention(
                query,
                key,
                value,
                pattern,
                scale=scaling,
                score_mod=score_mod,
                enable_gqa=gqa,
                segments=segments,
                backend=backend,
            )
        return out[..., :head_dim].transpose(1, 2).contiguous(), None

    return maskir_attention


def _decode(query, key, value, description: MaskDescription, scaling, score_mod, segments):
    """Few queries over the layer's cache: queries sit at q_offset - kv_offset past the cache's first key."""
    d = description
    shift = d.q_offset - d.kv_offset
    pattern: Pattern = Causal() if d.causal else Full()
    if d.window is not None:
        pattern = pattern & Window(d.window - 1, 0)
    ids = None
    if segments is not None:  # the new tokens are the cache's last ones: their ids are in the kv ids
        ids = segments[1]
        pattern = pattern & Segments()
    return maskir.decode(
        query,
        key.contiguous(),
        value.contiguous(),
        pattern,
        kv_lens=key.shape[2],
        q_offsets=shift,
        segments=ids,
        score_mod=score_mod,
        scale=scaling,
    )


def _unmasked(module, query, key, sliding_window) -> MaskDescription:
    """The description when the model passed no mask: causal per the module, no padding, no offsets."""
    return MaskDescription(
        query.shape[0],
        query.shape[2],
        key.shape[2],
        key.shape[2] - query.shape[2],
        0,
        bool(getattr(module, "is_causal", True)),
        sliding_window,
        None,
        None,
    )


def register(name: str = "maskir", backend: str = "auto") -> None:
    """Register ``name`` in transformers' attention and mask interfaces, running maskir with ``backend``."""
    AttentionInterface.register(name, make_attention(backend))
    AttentionMaskInterface.register(name, maskir_mask)


register()
