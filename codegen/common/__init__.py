"""Backend-neutral lowering: predicates and score_mods to expression DAGs (no triton, no tvm here).

Pipeline, read top-down::

    expr = lower_predicate(pattern, canvas, kv_canvas)   # lower.py: IR -> bool Expr over b, h, q, kv
    mod = trace_score_mod(score_mod)                     # score_mod.py (via trace.py): callable -> float Expr
    grad = score_derivative(mod)                         # score_grad.py: d mod / d score, for the backward
    expr = lower_division(expr)                          # division.py: Python // % -> C semantics
    text = backend.render(expr)                          # codegen/triton/render.py

``expr.py`` defines the DAG and its builders, ``printer.py`` the operator text both ``str(expr)`` and the
renderers use, ``evaluate.py`` the numpy meaning of every op (tests, planner fallback).
"""
