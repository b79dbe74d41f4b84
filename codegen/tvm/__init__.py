"""The TVM backend: the plan's forward and backward kernels as TensorIR, built for llvm (CPU) or cuda.

- ``emit.generate_tvm_source(plan, ...)``: one TVMScript ``IRModule`` (``fwd_<i>``, ``dq_<i>``, ``dkdv_<i>``
  per plan part) from the shared lowering, and what a launcher needs (``TvmSource``);
- ``template``: the kernel texts; ``render``: predicate/score_mod ``Expr`` to TVMScript statements;
- ``launch.TvmAttention``: builds the module for llvm and runs it on CPU tensors (``backend="tvm"``);
  ``launch.cuda_source``: the CUDA C++ TVM generates for sm_90, without a GPU.
"""
