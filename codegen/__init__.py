"""Code generation: lowers a plan, its predicate and a score_mod to kernel source text.

``common`` lowers predicates and score_mods to backend-neutral expressions; ``triton`` and ``tvm`` render
those expressions into forward and backward kernels, ``flex`` into a FlexAttention ``mask_mod`` and
``BlockMask``. ``backend`` is the one interface every backend implements (``can_run``, ``generate``,
``load``) and the registry the runtime and the CLI look backends up in by name. A backend imports
``common`` and ``backend``, never another backend.
"""
