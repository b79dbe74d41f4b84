"""The runtime: kernel cache, autograd Function, torch.library ops and the public ``attention`` API."""

from maskir.runtime.api import attention, compile
from maskir.runtime.compiled import CompiledAttention
from maskir.runtime.decode import DecodeAttention, compile_decode, decode
from maskir.runtime.union import union_attention

__all__ = [
    "CompiledAttention",
    "DecodeAttention",
    "attention",
    "compile",
    "compile_decode",
    "decode",
    "union_attention",
]
