"""Code generation: lowers a plan, its predicate and a score_mod to kernel source text.

``common`` lowers predicates and score_mods to backend-neutral expressions; ``triton`` and ``tvm``
render those expressions into kernels. The backends never import each other.
"""
