"""The TVM backend: the same plan lowered to a TensorIR prim_func, built for llvm (CPU) or cuda."""
