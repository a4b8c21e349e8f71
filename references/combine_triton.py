"""The Triton kernel behind :mod:`references.combine` (imported only where triton is): the top-k sum in
slot order, each product and each sum rounded to fp32 (the launch passes ``enable_fp_fusion=False``)."""

import triton
import triton.language as tl


@triton.jit
def topk_sum(y_ptr, w_ptr, out_ptr, H, K: tl.constexpr, BLOCK: tl.constexpr):
    """``y [T, K, H]`` fp32, ``w [T, K]`` fp32 -> ``out [T, H]``: ``acc = y_0 w_0; acc = acc + y_j w_j``."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = h < H
    acc = tl.load(y_ptr + t * K * H + h, mask=m, other=0.0) * tl.load(w_ptr + t * K)
    for j in tl.static_range(1, K):
        acc = acc + tl.load(y_ptr + (t * K + j) * H + h, mask=m, other=0.0) * tl.load(w_ptr + t * K + j)
    tl.store(out_ptr + t * H + h, acc, mask=m)
