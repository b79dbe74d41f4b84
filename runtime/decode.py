"""Decoding: a few queries against a KV cache, with the pattern on absolute positions (forward only).

``maskir.decode(q, k_cache, v_cache, pattern, ...)`` is the functional form; ``maskir.compile_decode``
returns a reusable ``DecodeAttention``. Queries of batch b sit at absolute positions ``q_offsets[b] + i``
and see cache positions ``0 <= p < kv_lens[b]`` the pattern allows there, so ``Causal()``, windows, sinks
and documents mean what they meant in training. Caches:

- contiguous ``[B, Hkv, S, D]`` with per-batch valid lengths ``kv_lens`` (ragged batches);
- paged (vLLM / FlashInfer "NHD"): a pool ``[pages, page_size, Hkv, D]`` and ``block_table`` ``[B, max_pages]``
  (int32): position p of batch b is row p % page_size of page ``block_table[b, p // page_size]``;
- ``ring=True``: the cache (either kind) holds the last S positions only, position p at slot p % S (a
  sliding-window cache); keys older than kv_len - S are gone: a pattern that allows one is refused.

Plans are cached per (pattern, heads, kv length bucket) and kernels per (number of queries, bucket): a
generation loop never re-plans (``maskir.planner.decode``). Kernels: ``codegen.triton.launch_decode``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch

from maskir.ir import Pattern, Segments
from maskir.planner.decode import check_decodable, decode_plan, kv_bucket, prefers_decode
from maskir.runtime.cache import DEFAULT_CACHE, KernelCache, source_digest
from maskir.runtime.checks import DTYPES, int32_ids, is_integer_tensor
from maskir.runtime.target import device_spec
from maskir.sim.target import KernelSpec

CPU_SMS = 4
"""SMs assumed for splitting on CPU (the interpreter runs programs one after another)."""
DECODE_BACKEND = "triton"
"""The registered backend whose kernels decode (``codegen/triton/template_decode.py``); decoding on a CPU
runs them in Triton's interpreter."""
MEMO_SIZE = 16
"""``maskir.decode`` keeps this many ``DecodeAttention`` objects (least recently used ones go first)."""
_MEMO: OrderedDict[tuple, DecodeAttention] = OrderedDict()


def _ints(value, name: str, batch: int) -> np.ndarray:
    """An int64 host array [batch] from an int, a sequence or a tensor."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got a {value.dtype} tensor.")
        array = value.detach().cpu().numpy().astype(np.int64).reshape(-1)
    else:
        array = np.asarray(value, dtype=np.int64).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, batch)
    if array.shape != (batch,):
        raise ValueError(f"{name} must be an int or hold one value per batch ({batch}), got shape {array.shape}.")
    return array


class DecodeAttention:
    """Decode kernels of one pattern, head layout, head dim, dtype, device and score_mod.

    ``attn(q, k_cache, v_cache, kv_lens=..., ...)`` returns the output [B, H, N_q, D] (and lse with
    ``return_lse=True``); see ``maskir.decode`` for the arguments. ``.plan(n)`` is the decode plan of the
    bucket holding n positions, ``.source(n_q, n)`` the generated kernel text.
    """

    def __init__(
        self,
        pattern: Pattern,
        *,
        heads: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        score_mod: Callable | None = None,
        cache: KernelCache = DEFAULT_CACHE,
    ):
        if not isinstance(pattern, Pattern):
            raise TypeError(f"pattern must be a maskir Pattern or spec text, got {type(pattern).__name__}.")
        check_decodable(pattern)
        if dtype not in DTYPES:
            raise TypeError(f"dtype must be one of {', '.join(map(str, DTYPES))}, got {dtype}.")
        for name, value in (("heads", heads), ("kv_heads", kv_heads), ("head_dim", head_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}.")
        if heads % kv_heads:
            raise ValueError(
                f"Key/value heads must evenly divide query heads, got heads_q={heads}, heads_kv={kv_heads}."
            )
        self.pattern, self.heads, self.kv_heads, self.head_dim = pattern, heads, kv_heads, head_dim
        self.dtype, self.device, self.score_mod, self.cache = dtype, torch.device(device), score_mod, cache
        self.spec = device_spec(
            self.device, head_dim=head_dim, dtype=dtype, kv_heads=kv_heads, score_mod=score_mod is not None
        )
        self._segments = any(isinstance(node, Segments) for node in pattern.walk())
        self._plans: dict[int, object] = {}
        self._kernels: dict[tuple[int, int], object] = {}
        self._sources: dict[tuple[int, int], str] = {}

    # -- plans and kernels -------------------------------------------------------------------------

    def plan(self, positions: int):
        """The decode plan of the bucket that holds ``positions`` absolute positions (built once)."""
        bucket = kv_bucket(self.pattern, positions)
        if bucket not in self._plans:
            self._plans[bucket] = decode_plan(self.pattern, bucket, self.heads)
        return self._plans[bucket]

    def kernels(self, n_q: int, positions: int):
        """The ``TritonDecode`` for ``n_q`` queries per head in the bucket of ``positions`` (built once)."""
        bucket = kv_bucket(self.pattern, positions)
        if (n_q, bucket) not in self._kernels:
            self._kernels[n_q, bucket] = self._build(n_q, self.plan(positions))
        return self._kernels[n_q, bucket]

    def _build(self, n_q: int, plan):
        from maskir.codegen.triton.backend import use_interpreter
        from maskir.runtime.backends import resolve
        from maskir.runtime.compiled import _device_capability

        resolve(
            DECODE_BACKEND, self.spec
        )  # the decode kernels are Triton's: ValueError with its reason if it cannot run
        interpret = self.device.type != "cuda"
        if interpret:
            use_interpreter()
        from maskir.codegen.triton.emit_decode import generate_decode_source
        from maskir.codegen.triton.launch_decode import TritonDecode

        generated = generate_decode_source(
            plan,
            n_q=n_q,
            head_dim=self.head_dim,
            dtype=self.dtype,
            kv_heads=self.kv_heads,
            score_mod=self.score_mod,
            interpret=interpret,
            capability=self.spec.capability or (9, 0),
            shared_memory_per_block=self.spec.shared_memory_per_block or None,
        )
        fields = {
            "kernel": "decode",
            "pattern": str(self.pattern),
            "bucket": plan.canvas.size,
            "n_q": n_q,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "dtype": DTYPES[self.dtype],
            "device": _device_capability(self.device),
            "score_mod": generated.score_mod_text,
            "interpret": interpret,
            "source_sha256": source_digest(generated.source),
        }
        entry = self.cache.get_or_build(
            fields, lambda: (generated.source, {"plan": plan.describe()}), expected_source=generated.source
        )
        self._sources[n_q, plan.canvas.size] = entry.source
        return TritonDecode(self.cache.load_module(entry), plan, generated)

    def source(self, n_q: int, positions: int) -> str:
        """The generated decode module for ``n_q`` queries in the bucket of ``positions`` positions."""
        self.kernels(n_q, positions)
        return self._sources[n_q, kv_bucket(self.pattern, positions)]

    # -- a call ------------------------------------------------------------------------------------

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        *,
        kv_lens=None,
        q_offsets=None,
        block_table: torch.Tensor | None = None,
        ring: bool = False,
        segments: torch.Tensor | None = None,
        scale: float | None = None,
        num_splits: int | None = None,
        return_lse: bool = False,
    ):
        batch, n_q = self._check_q(q)
        paged = block_table is not None
        capacity = self._check_cache(k_cache, v_cache, batch, block_table)
        if kv_lens is None:
            if paged:
                raise ValueError("kv_lens is required with a paged cache (block_table): the valid positions per batch.")
            kv_lens = capacity
        lens = _ints(kv_lens, "kv_lens", batch)
        if (lens < 1).any() or (not ring and (lens > capacity).any()):
            raise ValueError(
                f"kv_lens must lie in [1, {capacity}] (the cache's capacity{'' if not ring else ', or more with ring'}), "
                f"got {lens.tolist()}."
            )
        offsets = lens - n_q if q_offsets is None else _ints(q_offsets, "q_offsets", batch)
        if (offsets < 0).any():
            raise ValueError(f"q_offsets must be >= 0 (queries at absolute positions), got {offsets.tolist()}.")
        if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
            raise ValueError(
                f"num_splits must be a positive int or None (chosen from the SM count), got {num_splits!r}."
            )
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_cache, v_cache)):
            raise ValueError(
                "maskir.decode is forward only: run it under torch.no_grad() (generation), or use maskir.attention "
                "for gradients."
            )
        named = self._segment_tensors(segments, batch, int(max(lens.max(), (offsets + n_q).max())), q.device)
        out, lse = self.run(
            q,
            k_cache,
            v_cache,
            scale=scale,
            named=named,
            kv_lens=lens,
            q_offsets=offsets,
            block_table=block_table.to(torch.int32) if paged else None,
            ring=capacity if ring else None,
            num_splits=num_splits,
        )
        return (out, lse) if return_lse else out

    def _check_q(self, q: torch.Tensor) -> tuple[int, int]:
        if not isinstance(q, torch.Tensor) or q.dim() != 4:
            raise ValueError(f"q must be a 4-D tensor [B, H, N_q, D], got {getattr(q, 'shape', type(q))}.")
        batch, heads, n_q, dim = q.shape
        if (heads, dim, q.dtype, q.device.type) != (self.heads, self.head_dim, self.dtype, self.device.type):
            raise ValueError(
                f"q must be [B, H={self.heads}, N_q, D={self.head_dim}] {self.dtype} on {self.device.type} for this "
                f"DecodeAttention, got {tuple(q.shape)} {q.dtype} on {q.device.type}: build another one."
            )
        if n_q < 1:
            raise ValueError(f"q must hold at least one query per head, got N_q={n_q}.")
        return batch, n_q

    def _check_cache(self, k: torch.Tensor, v: torch.Tensor, batch: int, block_table) -> int:
        """The cache's capacity in positions per batch (ValueError naming what does not fit)."""
        for name, t in (("k_cache", k), ("v_cache", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise ValueError(f"{name} must be a 4-D tensor, got {getattr(t, 'shape', type(t))}.")
            if t.dtype != self.dtype or t.device.type != self.device.type or t.stride(-1) != 1:
                raise ValueError(
                    f"{name} must be {self.dtype} on {self.device.type} with a contiguous last dim, got {t.dtype} on "
                    f"{t.device.type}, strides {t.stride()}."
                )
        if k.shape != v.shape:
            raise ValueError(f"k_cache and v_cache must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}.")
        if block_table is None:
            if tuple(k.shape[:2]) != (batch, self.kv_heads) or k.shape[3] != self.head_dim:
                raise ValueError(
                    f"A contiguous cache must be [B={batch}, Hkv={self.kv_heads}, S, D={self.head_dim}], got "
                    f"{tuple(k.shape)} (a paged pool [pages, page_size, Hkv, D] needs block_table)."
                )
            return int(k.shape[2])
        pages, page_size, kv_heads, dim = k.shape
        if (kv_heads, dim) != (self.kv_heads, self.head_dim) or page_size < 16:
            raise ValueError(
                f"A paged pool must be [pages, page_size >= 16, Hkv={self.kv_heads}, D={self.head_dim}], got "
                f"{tuple(k.shape)}."
            )
        if not isinstance(block_table, torch.Tensor) or block_table.dim() != 2 or block_table.shape[0] != batch:
            raise ValueError(
                f"block_table must be an int tensor [B={batch}, max_pages], got {getattr(block_table, 'shape', block_table)}."
            )
        if block_table.dtype.is_floating_point or block_table.device.type != self.device.type:
            raise ValueError(f"block_table must be an integer tensor on {self.device.type}, got {block_table.dtype}.")
        return int(block_table.shape[1]) * page_size

    def run(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float | None,
        named: dict[str, torch.Tensor],
        kv_lens: np.ndarray,
        q_offsets: np.ndarray,
        block_table: torch.Tensor | None = None,
        ring: int | None = None,
        num_splits: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(out, lse) of checked arguments: ``named`` run-time tensors by kernel argument name (segment ids;
        a score_mod's tensors default to those it read when traced), host ``kv_lens`` and ``q_offsets``."""
        n_q = q.shape[2]
        kernels = self.kernels(n_q, int(max(kv_lens.max(), (q_offsets + n_q).max())))
        static = {name: t.to(q.device) for name, t in kernels.generated.static_tensors.items()}
        tensors = [{**static, **named}[name] for name in kernels.generated.tensor_names]
        return kernels.forward(
            q if q.stride(-1) == 1 else q.contiguous(),
            k,
            v,
            scale=self.head_dim**-0.5 if scale is None else float(scale),
            tensors=tensors,
            q_offsets=q_offsets,
            kv_lens=kv_lens,
            block_table=block_table,
            ring=ring,
            sms=spec_sms(self.spec),
            splits=num_splits,
        )

    def _segment_tensors(self, segments, batch: int, positions: int, device) -> dict[str, torch.Tensor]:
        named: dict[str, torch.Tensor] = {}
        if self._segments:
            if segments is None:
                raise ValueError(
                    f"The pattern {self.pattern} has a Segments() node: pass segments=<int ids [B, >= {positions}]> "
                    "(the document of every absolute position)."
                )
            if (
                not is_integer_tensor(segments)
                or segments.dim() != 2
                or segments.shape[0] != batch
                or segments.shape[1] < positions
            ):
                raise ValueError(
                    f"segments must be an int tensor [B={batch}, >= {positions}] (one id per absolute position), got "
                    f"{getattr(segments, 'shape', type(segments))}."
                )
            (ids,) = int32_ids(segments.to(device=device))  # exact: wide ids are renumbered, never cast
            named["segments_q"] = named["segments_kv"] = ids
        elif segments is not None:
            raise ValueError("segments were given but the pattern has no Segments() node.")
        return named


def spec_sms(spec: KernelSpec) -> int:
    """SMs the split count aims at: the target's (``KernelSpec.sms``, the device's own count on CUDA), or
    ``CPU_SMS`` for the interpreter."""
    return spec.sms if spec.device == "cuda" else CPU_SMS


class LocalDecode:
    """A ``CompiledAttention``'s forward on decode shapes (``prefers_decode``), in its canvases' coordinates:
    queries at 0..N_q-1, keys 0..N_kv-1 (q offset 0), so it equals the training kernels' forward. Taken for
    Triton-backend eager calls that need no gradient; the decode kernels are built on first use."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.attention: DecodeAttention | None = None

    def applies(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensors: list[torch.Tensor]) -> bool:
        """Whether this call takes the decode kernels (``tensors``: its run-time tensors, a trainable bias too)."""
        c = self.compiled
        if c.backend != DECODE_BACKEND or torch.compiler.is_compiling():
            return False
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *tensors)):
            return False
        return prefers_decode(c.pattern, c.canvas, c.kv_canvas, batch=q.shape[0], heads=c.heads, sms=spec_sms(c.spec))

    def __call__(self, q, k, v, scale: float, named: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.compiled
        if self.attention is None:
            self.attention = DecodeAttention(
                c.pattern,
                heads=c.heads,
                kv_heads=c.kv_heads,
                head_dim=c.head_dim,
                dtype=c.dtype,
                device=c.device,
                score_mod=c.score_mod,
            )
        batch = q.shape[0]
        lens, offsets = np.full(batch, c.kv_canvas.size, dtype=np.int64), np.zeros(batch, dtype=np.int64)
        k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
        return self.attention.run(q, k, v, scale=scale, named=named, kv_lens=lens, q_offsets=offsets)


def compile_decode(
    pattern: Pattern | str,
    *,
    heads: int,
    head_dim: int,
    kv_heads: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str | None = None,
    score_mod: Callable | None = None,
) -> DecodeAttention:
    """A reusable ``DecodeAttention`` (see ``maskir.decode`` for a call's arguments); ``pattern`` may be spec text.

    Tensors a ``score_mod`` reads are captured now (in-place updates are seen by later calls).
    """
    from maskir.runtime.api import _pattern

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return DecodeAttention(
        _pattern(pattern),
        heads=heads,
        kv_heads=heads if kv_heads is None else kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        device=torch.device(device),
        score_mod=score_mod,
    )


def decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pattern: Pattern | str = "Causal()",
    *,
    kv_lens=None,
    q_offsets=None,
    block_table: torch.Tensor | None = None,
    ring: bool = False,
    segments: torch.Tensor | None = None,
    score_mod: Callable | None = None,
    scale: float | None = None,
    num_splits: int | None = None,
    return_lse: bool = False,
):
    """Attention of a few new queries q [B, H, N_q, D] over a KV cache, forward only (generation).

    - ``k_cache``/``v_cache``: contiguous ``[B, Hkv, S, D]``, or with ``block_table`` ``[B, max_pages]`` a paged
      pool ``[pages, page_size, Hkv, D]`` (page_size >= 16; position p of batch b lives in page
      ``block_table[b, p // page_size]``, row ``p % page_size``). Hkv dividing H is GQA; the query heads of
      one kv head share the kernel's programs, so K/V are read once per kv head.
    - ``kv_lens`` (int, list or tensor [B]): valid positions per batch (default S; required when paged).
    - ``q_offsets`` ([B]): absolute position of each batch's first query (default ``kv_lens - N_q``: the new
      tokens are the cache's last ones). ``pattern`` and ``score_mod`` see absolute positions.
    - ``ring``: the cache is a ring buffer of its capacity C (S, or max_pages * page_size): position p at
      slot p % C, only positions >= kv_len - C present (sliding-window caches); ``kv_lens`` may exceed C; a
      pattern allowing an evicted key is a ValueError (``planner.decode.check_ring``).
    - ``segments``: with a ``Segments()`` pattern, int ids [B, >= positions] of every absolute position.
    - ``num_splits``: kv splits per tile list (default: from the lists' lengths and the SM count).

    Returns out [B, H, N_q, D] (and lse [B, H, N_q], natural log, with ``return_lse``); a query that sees no
    key gives 0 and lse -inf. Built objects are memoised per (pattern, heads, kv heads, head dim, dtype,
    device, score_mod); ``maskir.compile_decode`` holds one explicitly.
    """
    if not isinstance(q, torch.Tensor) or q.dim() != 4 or not isinstance(k_cache, torch.Tensor) or k_cache.dim() != 4:
        raise ValueError("q and k_cache must be 4-D tensors (q [B, H, N_q, D]; see maskir.decode's docstring).")
    kv_heads = k_cache.shape[1] if block_table is None else k_cache.shape[2]
    key = (pattern, q.shape[1], kv_heads, q.shape[3], q.dtype, q.device.type, score_mod)
    attention = _MEMO.get(key)
    if attention is None:
        attention = compile_decode(
            pattern,
            heads=q.shape[1],
            head_dim=q.shape[3],
            kv_heads=int(kv_heads),
            dtype=q.dtype,
            device=q.device,
            score_mod=score_mod,
        )
    _MEMO[key] = attention  # (re)inserted last: the most recently used
    _MEMO.move_to_end(key)
    while len(_MEMO) > MEMO_SIZE:
        with contextlib.suppress(KeyError):  # another thread may have emptied it meanwhile
            _MEMO.popitem(last=False)
    return attention(
        q,
        k_cache,
        v_cache,
        kv_lens=kv_lens,
        q_offsets=q_offsets,
        block_table=block_table,
        ring=ring,
        segments=segments,
        scale=scale,
        num_splits=num_splits,
        return_lse=return_lse,
    )
