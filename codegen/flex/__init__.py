"""FlexAttention emission: a maskir pattern as a ``mask_mod`` for ``torch.nn.attention.flex_attention``.

Used to run exactly the same pattern on flex (``benchmarks/suite.py``) and to let maskir users take any
pattern to flex. Imports torch only (no triton, no tvm).
"""

from maskir.codegen.flex.mask_mod import evaluate_torch, to_mask_mod

__all__ = ["evaluate_torch", "to_mask_mod"]
