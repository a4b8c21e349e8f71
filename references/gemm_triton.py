"""The Triton kernel behind :mod:`references.gemm_fused` (imported only where triton is): a batched
GEMM ``out[b] = x[b] @ W[ids[b]].T`` that reads MXFP4 weights as their packed codes and E8M0 scales
and decodes each tile in registers, bf16 x bf16 products accumulated in fp32, fp32 out.

Source of the numerics: OCP MX v1.0 sections 5.3.3 (E2M1), 5.4.1 (E8M0 2^(s-127)), 6.2 (value =
scale * element; low nibble = even element), with the decode of :mod:`references.formats.mx_triton`
(the same ``_e2m1``). A decoded weight is exact in bf16, so each product is exact and only the order
of the fp32 sums differs from a cuBLAS GEMM on the dequantized weights.
"""

import triton
import triton.language as tl

from references.formats.mx_triton import _e2m1


@triton.jit
def _decode(p, s):
    """``[BN, BK/2]`` packed bytes and their ``[BN, BK/2]`` E8M0 codes -> the even and odd elements (fp32)."""
    scale = (s << 23).to(tl.float32, bitcast=True)   # 2^(s-127), exact for the codes 4..254 used here
    return _e2m1(p & 15) * scale, _e2m1(p >> 4) * scale


@triton.jit
def mxfp4_bmm(x_ptr, p_ptr, s_ptr, ids_ptr, out_ptr, P, N, K,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr,
              OPERAND: tl.constexpr, PRECISION: tl.constexpr):
    """``x [B, P, K]`` bf16, ``p [E, N, K/2]`` uint8, ``s [E, N, K/32]`` uint8, ``ids [B]`` -> ``out [B, P, N]`` fp32.

    ``SPLIT``: multiply the even and odd K columns as two dots (x split in registers) instead of
    interleaving the decoded weights back into one ``[BN, BK]`` tile (the same products either way).
    ``OPERAND``: the dot's operand type, bf16; fp32 (IEEE) only under triton's CPU interpreter,
    which multiplies the bit patterns of bf16 operands (the products are exact in both), with
    ``PRECISION='ieee'`` there (no tf32).
    """
    b = tl.program_id(1).to(tl.int64)
    num_n = tl.cdiv(N, BN)
    pm, pn = tl.program_id(0) // num_n, tl.program_id(0) % num_n
    e = tl.load(ids_ptr + b).to(tl.int64)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    half = tl.arange(0, BK // 2)
    kb = K // 2
    x_rows = x_ptr + b * P * K + rm.to(tl.int64)[:, None] * K
    p_rows = p_ptr + e * N * kb + rn.to(tl.int64)[:, None] * kb
    s_rows = s_ptr + e * N * (K // 32) + rn.to(tl.int64)[:, None] * (K // 32)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        jk = k0 // 2 + half                                   # packed byte columns of this step
        wmask = (rn[:, None] < N) & (jk[None, :] < kb)
        p = tl.load(p_rows + jk[None, :], mask=wmask, other=0).to(tl.int32)
        s = tl.load(s_rows + jk[None, :] // 16, mask=wmask, other=127).to(tl.int32)   # 16 bytes per scale
        lo, hi = _decode(p, s)
        kk = k0 + tl.arange(0, BK)
        x = tl.load(x_rows + kk[None, :], mask=(rm[:, None] < P) & (kk[None, :] < K), other=0.0).to(OPERAND)
        if SPLIT:
            x_lo, x_hi = tl.split(tl.reshape(x, [BM, BK // 2, 2]))
            acc = tl.dot(x_lo, tl.trans(lo.to(OPERAND)), acc, input_precision=PRECISION)
            acc = tl.dot(x_hi, tl.trans(hi.to(OPERAND)), acc, input_precision=PRECISION)
        else:
            w = tl.reshape(tl.join(lo, hi), [BN, BK]).to(OPERAND)
            acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    o = out_ptr + b * P * N + rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(o, acc, mask=(rm[:, None] < P) & (rn[None, :] < N))
