"""The TVM backend: the plan's forward and backward kernels as TensorIR, built for llvm (CPU) or cuda.

- ``emit.generate_tvm_source(plan, ...)``: one TVMScript ``IRModule`` (``fwd_<i>``, ``dq_<i>``, ``dkdv_<i>``
  per plan part) from the shared lowering, and what a launcher needs (``TvmSource``);
- ``tile_template``: the CPU tile kernels; ``template``: the CUDA row kernels; ``render``: predicate /
  score_mod ``Expr`` to TVMScript statements (scalar, or a tile row at a time);
- ``balance``: the order in which CPU threads take their units of work;
- ``launch.TvmAttention``: builds the module for this CPU (or loads its cached library) and runs it on CPU
  tensors (``backend="tvm"``); ``launch.cuda_source``: the CUDA C++ TVM generates for sm_90;
  ``cuda_check.cuda_report``: that source compiled by nvcc, registers and spills per kernel.
"""
