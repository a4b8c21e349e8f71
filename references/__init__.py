"""Pure-PyTorch references for quantized MoE kernels.

Every function here is a pure function of torch tensors that runs on the CPU and the GPU alike.
Nothing in this package imports from ``harness``. Each public function's docstring names its
source of truth on one line starting with ``Source:``.
"""
