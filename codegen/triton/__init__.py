"""The Triton backend: forward and backward block-sparse attention kernels rendered from a plan.

- ``emit.generate_source(plan, ...)``: the generated module's text (header, constexprs, lowered predicate
  and score_mod, kernels) and what a launcher needs (``GeneratedSource``);
- ``template_common`` / ``template_fwd`` / ``template_bwd``: the kernel texts (one shared score step);
- ``render`` (predicate/score_mod ``Expr`` to Triton text; pairs of bounds become one unsigned compare)
  and ``score_grad`` (d score_mod / d score);
- ``configs``: step widths and warps/stages per head dim, dtype and target;
- ``launch.TritonAttention``: device tables, grids, buffers, the log-sum-exp merge of plan parts;
- ``compile_check``: compile the kernels for sm_90 without a GPU and report shared memory and spills.
"""
