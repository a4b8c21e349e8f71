"""The Triton kernel behind :mod:`references.formats.mx_fused` (imported only where triton is):
one program decodes ``BLOCK`` packed MXFP4 bytes of one expert into bf16, gathering the expert by id.

Source: OCP MX v1.0 section 5.3.3 (E2M1: sign bit 3, exponent bits 1-2, mantissa bit 0, bias 1),
section 5.4.1 (E8M0 2^(s-127)), section 6.2 (value = scale * element); low nibble = even element.
"""

import triton
import triton.language as tl


@triton.jit
def _e2m1(c):
    """E2M1 code (int32, 0..15) -> fp32, built as bits: a normal code (magnitude 2..7, exponent
    field e >= 1) is ``2^(e-1) (1 + m/2)``, fp32 exponent ``e + 126`` and mantissa bit ``m``, which is
    ``(mag << 22) + (126 << 23)``; magnitude 1 is 0.5 and 0 is 0; bit 3 is the sign (code 8: -0.0)."""
    mag = c & 7
    sign = (c & 8) << 28
    normal = (mag << 22) + (126 << 23)
    small = tl.where(mag == 1, 0x3F000000, 0)
    return (tl.where(mag >= 2, normal, small) | sign).to(tl.float32, bitcast=True)


@triton.jit
def decode_mxfp4(p_ptr, s_ptr, ids_ptr, out_ptr, n, BLOCK: tl.constexpr, INDEX: tl.constexpr):
    """``out[i].flat[2j], [2j+1] = e2m1(p[ids[i]].flat[j] & 15 / >> 4) * 2^(s[ids[i]].flat[j // 16] - 127)``.

    ``INDEX``: each output element loads its own byte (``2j // 2``, each byte twice from cache) and
    shifts its nibble out, so the outputs come out in order; else each byte is loaded once and its
    two values are interleaved with ``join``."""
    i = tl.program_id(0)
    e = tl.load(ids_ptr + i).to(tl.int64)
    start = tl.program_id(1).to(tl.int64) * BLOCK
    o = 2 * start + tl.arange(0, 2 * BLOCK)
    if INDEX:
        mask = o < 2 * n
        p = tl.load(p_ptr + e * n + o // 2, mask=mask, other=0).to(tl.int32)
        s = tl.load(s_ptr + e * (n // 16) + o // 32, mask=mask, other=127).to(tl.int32)   # 32 values per scale
        scale = tl.where(s == 0, 1 << 22, s << 23).to(tl.float32, bitcast=True)           # 2^(s-127), exact
        vals = (_e2m1((p >> ((tl.arange(0, 2 * BLOCK) & 1) * 4)) & 15) * scale).to(tl.bfloat16)   # o is even-based
    else:
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        p = tl.load(p_ptr + e * n + offs, mask=mask, other=0).to(tl.int32)
        s = tl.load(s_ptr + e * (n // 16) + offs // 16, mask=mask, other=127).to(tl.int32)   # 16 bytes per scale
        scale = tl.where(s == 0, 1 << 22, s << 23).to(tl.float32, bitcast=True)             # 2^(s-127), exact
        pair = tl.join(_e2m1(p & 15) * scale, _e2m1(p >> 4) * scale).to(tl.bfloat16)
        vals = tl.reshape(pair, [2 * BLOCK])
    tl.store(out_ptr + i.to(tl.int64) * 2 * n + o, vals, mask=o < 2 * n)
