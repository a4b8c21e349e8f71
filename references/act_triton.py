"""The Triton kernel behind :mod:`references.act_fused` (imported only where triton is): fc1's fp32
output to fc2's bf16 input in one pass: fc1's bias added in fp32, the SwiGLU of
:func:`references.activations.swiglu` at ``Precision.FP32``, then the round to bf16.

Each operation is the one eager torch runs on CUDA, in the same order: ``h + b1`` (fp32),
``min(g, limit)`` and ``clamp(u, -limit, limit)`` keeping NaN, ``t = alpha * g``, ``sigmoid(t) = 1 / (1 + exp(-t))``
(PyTorch ``aten/src/ATen/native/cuda/UnarySpecialOpsKernel.cu`` sigmoid_kernel_cuda: ``std::exp`` and
an IEEE division, which here are libdevice ``__nv_expf`` and ``div_rn``), ``(g * s) * (u + beta)``,
and round-to-nearest-even to bf16 (on the bits). No fp contraction and no flush to zero in libdevice
(the launch passes ``enable_fp_fusion=False``, ``enable_reflect_ftz=False``). ``LIBDEVICE`` is false only under triton's CPU interpreter, which has no libdevice: there ``tl.exp``
(numpy's) stands in, so the interpreter checks the indexing, the clamps and the special values, not
the last bit of exp.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def swiglu_bf16(h_ptr, b1_ptr, ids_ptr, out_ptr, I, P, alpha, beta, limit,
                GATE0: tl.constexpr, UP0: tl.constexpr, STEP: tl.constexpr, LIMIT: tl.constexpr, BIAS: tl.constexpr,
                LIBDEVICE: tl.constexpr, BLOCK: tl.constexpr):
    """``h [R, 2I]`` fp32 -> ``out [R, I]`` bf16; gate column ``j`` of a row is ``GATE0 * I + STEP * j``
    (+ ``UP0`` for up, in units of I when ``STEP`` is 1, of one column when it is 2). ``BIAS``: first
    add, in fp32, row ``ids[r // P]`` of ``b1 [E, 2I]`` (any float dtype) to row ``r``."""
    r = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = j < I
    if STEP == 1:
        gj, uj = GATE0 * I + j, UP0 * I + j
    else:
        gj, uj = 2 * j + GATE0, 2 * j + UP0
    g = tl.load(h_ptr + r * 2 * I + gj, mask=m, other=0.0)
    u = tl.load(h_ptr + r * 2 * I + uj, mask=m, other=0.0)
    if BIAS:
        e = tl.load(ids_ptr + r // P).to(tl.int64)
        g = g + tl.load(b1_ptr + e * 2 * I + gj, mask=m, other=0.0).to(tl.float32)
        u = u + tl.load(b1_ptr + e * 2 * I + uj, mask=m, other=0.0).to(tl.float32)
    if LIMIT:
        g = tl.where(g > limit, limit, g)                        # torch clamp(max=): NaN stays NaN
        u = tl.where(u > limit, limit, tl.where(u < -limit, -limit, u))
    t = alpha * g
    if LIBDEVICE:
        x = libdevice.exp(-t)
    else:
        x = tl.exp(-t)
    s = tl.div_rn(1.0, 1.0 + x)
    a = (g * s) * (u + beta)
    # round to nearest even on the bits, as c10/util/BFloat16.h round_to_nearest_even (NaN to a quiet
    # NaN): the same bits as cvt.rn.bf16.f32, and the interpreter (whose bf16 cast truncates) agrees
    b = a.to(tl.uint32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    b = tl.where(a != a, 0x7FC0, b)
    tl.store(out_ptr + r * I + j, b.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=m)
