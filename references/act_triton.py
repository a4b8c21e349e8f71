"""The Triton kernel behind :mod:`references.act_fused` (imported only where triton is): fc1's fp32
output to fc2's bf16 input in one pass, the SwiGLU of :func:`references.activations.swiglu` at
``Precision.FP32`` then the round to bf16.

Each operation is the one eager torch runs on CUDA, in the same order: ``min(g, limit)`` and
``clamp(u, -limit, limit)`` keeping NaN, ``t = alpha * g``, ``sigmoid(t) = 1 / (1 + exp(-t))``
(PyTorch ``aten/src/ATen/native/cuda/UnarySpecialOpsKernel.cu`` sigmoid_kernel_cuda: ``std::exp`` and
an IEEE division, which here are libdevice ``__nv_expf`` and ``div_rn``), ``(g * s) * (u + beta)``,
and round-to-nearest-even to bf16 (on the bits). No fp contraction and no flush to zero in libdevice (the launch passes ``enable_fp_fusion=False``,
``enable_reflect_ftz=False``).
``LIBDEVICE`` is false only under triton's CPU interpreter, which has no libdevice: there ``tl.exp``
(numpy's) stands in, so the interpreter checks the indexing, the clamps and the special values, not
the last bit of exp.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def swiglu_bf16(h_ptr, out_ptr, I, alpha, beta, limit,
                GATE0: tl.constexpr, UP0: tl.constexpr, STEP: tl.constexpr, LIMIT: tl.constexpr, LIBDEVICE: tl.constexpr,
                BLOCK: tl.constexpr):
    """``h [R, 2I]`` fp32 -> ``out [R, I]`` bf16; gate column ``j`` of a row is ``GATE0 * I + STEP * j``
    (+ ``UP0`` for up, in units of I when ``STEP`` is 1, of one column when it is 2)."""
    r = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < I
    row = h_ptr + r * 2 * I
    if STEP == 1:
        g = tl.load(row + GATE0 * I + j, mask=m, other=0.0)
        u = tl.load(row + UP0 * I + j, mask=m, other=0.0)
    else:
        g = tl.load(row + 2 * j + GATE0, mask=m, other=0.0)
        u = tl.load(row + 2 * j + UP0, mask=m, other=0.0)
    if LIMIT:
        g = tl.where(g > limit, limit, g)                        # torch clamp(max=): NaN stays NaN
        u = tl.where(u > limit, limit, tl.where(u < -limit, -limit, u))
    t = alpha * g
    if LIBDEVICE:
        e = libdevice.exp(-t)
    else:
        e = tl.exp(-t)
    s = tl.div_rn(1.0, 1.0 + e)
    a = (g * s) * (u + beta)
    # round to nearest even on the bits, as c10/util/BFloat16.h round_to_nearest_even (NaN to a quiet
    # NaN): the same bits as cvt.rn.bf16.f32, and the interpreter (whose bf16 cast truncates) agrees
    b = a.to(tl.uint32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    b = tl.where(a != a, 0x7FC0, b)
    tl.store(out_ptr + r * I + j, b.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=m)
