"""What ``maskir bench`` and the performance suite (``benchmarks/suite.py``) share, installed with maskir.

``case``: one configuration (``Case``) and the suite's shape (B, H, D, dtype). ``predict``: a case's plan
and the simulator's times for maskir and flex, no GPU needed. ``measure``: the three implementations
(maskir, compiled flex_attention, SDPA) built on the same tensors and timed with CUDA events. The
catalogue of entries, the result files and the report table stay with the script in ``benchmarks/``.
Nothing in maskir imports this package but the command line.
"""
