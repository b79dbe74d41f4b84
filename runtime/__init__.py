"""The runtime: kernel cache, autograd Function, torch.library ops and the public ``attention`` API."""

from maskir.runtime.api import attention, compile
from maskir.runtime.compiled import CompiledAttention

__all__ = ["CompiledAttention", "attention", "compile"]
