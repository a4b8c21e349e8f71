"""Division by a constant that gives the same bits on every device.

torch divides a CUDA tensor by a Python number as ``x * RN(1 / c)`` (``div_true_kernel_cuda``,
``aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu``: "compute a * reciprocal(b) ... may lose one bit
of precision") and a CPU tensor as ``RN(x / c)``: written as ``amax / 448``, a reference's FP8 scales
would differ between the CPU and the GPU for 17,468 of the 32,512 positive normal bf16 amax values.
``c / x`` is ``x.reciprocal() * c`` on both (``torch/_tensor.py`` ``__rdiv__``): two roundings.
"""

from __future__ import annotations

import torch


def div(x: torch.Tensor, c: float) -> torch.Tensor:
    """``RN(x / c)`` elementwise on every device (the divisor a tensor on ``x``'s device, not a Python number)."""
    return x / torch.full((), c, dtype=x.dtype, device=x.device)


def rdiv(c: float, x: torch.Tensor) -> torch.Tensor:
    """``RN(c * RN(1 / x))``: what torch computes for ``c / x`` on every device, written out."""
    return torch.reciprocal(x) * c
