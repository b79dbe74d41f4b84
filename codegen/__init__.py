"""Code generation: lowers a plan, its predicate and a score_mod to kernel source text.

``common`` lowers predicates and score_mods to backend-neutral expressions; ``triton`` renders those
expressions into forward and backward kernels, ``flex`` into a FlexAttention ``mask_mod`` (for
benchmarks and cross-checks). A backend never imports another; a TVM TensorIR backend would be one more
renderer over ``common``.
"""
