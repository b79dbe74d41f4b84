"""Backend-neutral lowering: predicates and score_mods to expression DAGs (no triton, no tvm here).

Pipeline, read top-down::

    lowered = lower_plan(plan, score_mod)                # lowered.py: all of the below, per plan part
    expr = lower_predicate(pattern, canvas, kv_canvas)   # lower.py: IR -> bool Expr over b, h, q, kv
    mod = trace_score_mod(score_mod)                     # score_mod.py (via trace.py): callable -> float Expr
    grad = score_derivative(mod)                         # score_grad.py: d mod / d score, for the backward
    text = backend.render(expr)                          # codegen/triton/render.py, codegen/tvm/render.py

``expr.py`` defines the DAG and its builders, ``simplify.py`` the rewrite rules the builders apply
(constant folding, identities), ``printer.py`` the operator text both ``str(expr)`` and the
renderers use, ``division.py`` rewrites Python ``//`` ``%`` to C semantics for backends that divide that
way (Triton), ``evaluate.py`` the numpy meaning of every op (tests, planner fallback), ``tables.py`` the
host side every backend shares (tile tables as int32 tensors, call checks, the merge of plan parts),
``template.py`` the kernel-template filler both emitters use.
"""
