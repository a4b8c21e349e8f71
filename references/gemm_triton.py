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
def _pairs(p_rows, s_rows, rn, k0, N, K, BN: tl.constexpr, BK: tl.constexpr):
    """The even and odd K columns of the decoded weight tile at ``k0``: two ``[BN, BK/2]`` fp32 tiles
    (zeros past N and K), each packed byte loaded once and both its nibbles decoded."""
    jk = k0 // 2 + tl.arange(0, BK // 2)                      # packed byte columns of this step
    m = (rn[:, None] < N) & (jk[None, :] < K // 2)
    p = tl.load(p_rows + jk[None, :], mask=m, other=0).to(tl.int32)
    s = tl.load(s_rows + jk[None, :] // 16, mask=m, other=127).to(tl.int32)   # 16 bytes per scale
    scale = (s << 23).to(tl.float32, bitcast=True)           # 2^(s-127), exact for the codes 4..254 used here
    return _e2m1(p & 15) * scale, _e2m1(p >> 4) * scale


@triton.jit
def _tile(p_rows, s_rows, rn, k0, N, K, BN: tl.constexpr, BK: tl.constexpr, MODE: tl.constexpr):
    """The decoded ``[BN, BK]`` weight tile at ``k0`` in K order (fp32). MODE 1: ``_pairs``
    interleaved back with ``join``; MODE 2: the byte of every element loaded (``k // 2``, each twice
    from cache) and its own nibble shifted out, so no interleave is needed."""
    if MODE == 1:
        lo, hi = _pairs(p_rows, s_rows, rn, k0, N, K, BN, BK)
        w = tl.reshape(tl.join(lo, hi), [BN, BK])
    else:
        kk = k0 + tl.arange(0, BK)
        m = (rn[:, None] < N) & (kk[None, :] < K)
        p = tl.load(p_rows + kk[None, :] // 2, mask=m, other=0).to(tl.int32)
        s = tl.load(s_rows + kk[None, :] // 32, mask=m, other=127).to(tl.int32)
        w = _e2m1((p >> ((kk[None, :] % 2) * 4)) & 15) * (s << 23).to(tl.float32, bitcast=True)
    return w


@triton.jit
def mxfp4_bmm(x_ptr, p_ptr, s_ptr, ids_ptr, out_ptr, P, N, K,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, MODE: tl.constexpr, SWAP: tl.constexpr,
              OPERAND: tl.constexpr, PRECISION: tl.constexpr):
    """``x [B, P, K]`` bf16, ``p [E, N, K/2]`` uint8, ``s [E, N, K/32]`` uint8, ``ids [B]`` -> ``out [B, P, N]`` fp32.

    ``MODE`` (``_pairs``, ``_tile``): 0 multiplies the even and odd K columns as two dots (x split in
    registers), 1 and 2 one dot on the ``[BN, BK]`` tile; the same products in every mode.
    ``SWAP``: compute ``W x^T`` (weights the dot's left operand, rows of x its columns), the
    orientation that keeps a decoded operand in registers for Hopper's wgmma and suits few rows.
    ``OPERAND``: the dot's operand type, bf16; fp32 only under triton's CPU interpreter, which
    multiplies the bit patterns of bf16 operands (the products are exact in both), with
    ``PRECISION='ieee'`` there (no tf32).
    """
    b = tl.program_id(1).to(tl.int64)
    num_n = tl.cdiv(N, BN)
    pm, pn = tl.program_id(0) // num_n, tl.program_id(0) % num_n
    e = tl.load(ids_ptr + b).to(tl.int64)
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    x_rows = x_ptr + b * P * K + rm.to(tl.int64)[:, None] * K
    p_rows = p_ptr + e * N * (K // 2) + rn.to(tl.int64)[:, None] * (K // 2)
    s_rows = s_ptr + e * N * (K // 32) + rn.to(tl.int64)[:, None] * (K // 32)
    acc = tl.zeros([BN, BM] if SWAP else [BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        x = tl.load(x_rows + kk[None, :], mask=(rm[:, None] < P) & (kk[None, :] < K), other=0.0).to(OPERAND)
        if MODE == 0:
            lo, hi = _pairs(p_rows, s_rows, rn, k0, N, K, BN, BK)
            x_lo, x_hi = tl.split(tl.reshape(x, [BM, BK // 2, 2]))
            if SWAP:
                acc = tl.dot(lo.to(OPERAND), tl.trans(x_lo), acc, input_precision=PRECISION)
                acc = tl.dot(hi.to(OPERAND), tl.trans(x_hi), acc, input_precision=PRECISION)
            else:
                acc = tl.dot(x_lo, tl.trans(lo.to(OPERAND)), acc, input_precision=PRECISION)
                acc = tl.dot(x_hi, tl.trans(hi.to(OPERAND)), acc, input_precision=PRECISION)
        elif SWAP:
            acc = tl.dot(_tile(p_rows, s_rows, rn, k0, N, K, BN, BK, MODE).to(OPERAND), tl.trans(x), acc,
                         input_precision=PRECISION)
        else:
            acc = tl.dot(x, tl.trans(_tile(p_rows, s_rows, rn, k0, N, K, BN, BK, MODE).to(OPERAND)), acc,
                         input_precision=PRECISION)
    o = out_ptr + b * P * N
    if SWAP:
        tl.store(o + rm.to(tl.int64)[None, :] * N + rn[:, None], acc, mask=(rn[:, None] < N) & (rm[None, :] < P))
    else:
        tl.store(o + rm.to(tl.int64)[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < P) & (rn[None, :] < N))
