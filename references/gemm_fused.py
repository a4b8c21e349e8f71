"""The reference's MXFP4 GEMM on CUDA without dequantizing: the Triton kernel of ``gemm_triton``
multiplies bf16 activations by MXFP4 experts straight from their codes, so no bf16 copy of the
weights is written and read again (the decode pass was most of the reference's time at model size).

The same values as decoding then multiplying: each decoded weight is exact in bf16 (an E2M1 code
times a power of two), so every product is exact and the fp32 sums differ from a cuBLAS GEMM only
in order (``references.gold`` states and tests that bound). Nothing is assumed: the first use on a
device multiplies an identity matrix by every packed byte at every E8M0 code 4..254, and integer
activations by random codes with a K tail, at each row tile the kernel uses, against the eager
decode (bit for bit, fp64 for the sums); if one value differs or the kernel cannot run, the
reference dequantizes and uses torch's GEMM instead (``status()``).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import torch

from references.formats.mx_fused import MIN_SCALE   # E8M0 codes below it make subnormal weights: dequantize there

NAN_SCALE = 0xFF


@dataclass
class Tile:
    """The kernel's tile: ``bn`` weight rows (output columns) and ``bk`` K elements per step,
    (the default: the fastest at 4 rows per expert on the H200, benchmarks/profile-h200.json),
    ``mode`` (how a tile is decoded, ``gemm_triton._weights``), ``swap`` (weights as the dot's left
    operand), ``warps`` (None: 8 for 128-row tiles, else 4) and ``stages`` of software pipelining.
    Rows per tile follow the batch (:func:`row_tile`)."""

    bn: int = 128
    bk: int = 64
    mode: int = 0
    swap: bool = True
    warps: int | None = None
    stages: int = 3


TILE = Tile()
# Batches of at most this many rows per expert take the fused GEMM (GemmPlan.packs); larger ones are
# decoded and multiplied by cuBLAS. Measured on an H200 (benchmarks/profile-h200.json, GPT-OSS-120B fc1,
# 64 or 16 experts): fused 0.80-0.82 ms vs decode + bmm 1.21-1.23 ms at 1-16 rows per expert, 0.45 vs
# 0.33 ms at 32 and 0.41 vs 0.34 ms at 128 (the decode in registers costs more than the bf16 copy there).
PACKED_MAX_ROWS = 16
_STATE: dict = {}
_FLAGS: dict = {}   # ((id, version) of each scale tensor) -> (weak references to them, flag on the device)


def row_tile(p: int) -> int:
    """Rows per program for a batch of ``p`` rows per expert (tl.dot needs at least 16)."""
    return 16 if p <= 16 else 32 if p <= 32 else 64 if p <= 64 else 128


def _launch(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    import triton.language as tl
    from references.gemm_triton import mxfp4_bmm
    interp = os.environ.get("TRITON_INTERPRET") == "1"   # see mxfp4_bmm's OPERAND
    b, p, k = x.shape
    n = packed.shape[1]
    out = torch.empty(b, p, n, dtype=torch.float32, device=x.device)
    if out.numel():
        bm, t = row_tile(p), TILE
        grid = (-(-p // bm) * -(-n // t.bn), b)
        mxfp4_bmm[grid](x.contiguous(), packed.view(torch.uint8).contiguous(), scales.view(torch.uint8).contiguous(),
                        ids.to(torch.int64).contiguous(),
                        out, p, n, k, BM=bm, BN=t.bn, BK=t.bk, MODE=t.mode, SWAP=t.swap,
                        OPERAND=tl.float32 if interp else tl.bfloat16, PRECISION="ieee" if interp else None,
                        num_warps=t.warps or (8 if bm == 128 else 4), num_stages=t.stages)
    return out


def _self_check(device, eager) -> str | None:
    """None if the kernel equals ``eager(packed, scales)`` (fp32 decode) on every value it is used for."""
    g = torch.Generator().manual_seed(0)
    # 1. identity activations read every decoded weight back: all 256 bytes in each row, codes 4..254
    n = 255 - MIN_SCALE
    packed = torch.arange(256, dtype=torch.uint8).repeat(3, n, 1)                                  # [3, n, 256]: K = 512
    codes = MIN_SCALE + (torch.arange(n).view(1, n, 1) + torch.arange(16).view(1, 1, 16) + torch.arange(3).view(3, 1, 1)) % n
    ids = torch.tensor([2, 0, 1])
    eye = torch.eye(512, dtype=torch.bfloat16)
    checks = [(eye[:rows], packed, codes.to(torch.uint8)) for rows in (13, 29, 61, 512)]          # every row tile
    # 2. integer activations x random codes at scales 2^-2..2^2, K with a tail: exact fp32 sums
    xi = torch.randint(-4, 5, (37, 224), generator=g).to(torch.bfloat16)
    checks.append((xi, torch.randint(0, 256, (3, 200, 112), dtype=torch.uint8, generator=g),
                   torch.randint(125, 130, (3, 200, 7), dtype=torch.uint8, generator=g)))
    for xs, p, s in checks:
        x = xs.unsqueeze(0).expand(3, -1, -1).contiguous()
        try:
            got = _launch(x.to(device), p.to(device), s.to(device), ids.to(device)).cpu()
        except Exception as err:  # noqa: BLE001 - no triton, no GPU, a compile error: dequantize instead
            return f"the Triton MXFP4 GEMM cannot run: {type(err).__name__}: {' '.join(str(err).split())[:160]}"
        w = eager(p[ids], s[ids]).double()
        want = (x.double() @ w.transpose(-2, -1)).float()
        bad = int(((got != want) & ~(got.isnan() & want.isnan())).sum())   # NaN: 0 x an overflowed (inf) weight, codes 253-254
        if bad:
            return f"the Triton MXFP4 GEMM: {bad} of {want.numel()} values differ from the eager decode (P={xs.shape[0]})"
    return None


def status(device, eager) -> str | None:
    """Why the fused MXFP4 GEMM is not used on ``device`` (None: it is used). ``eager(packed, scales)``
    is the fp32 decode it must reproduce (``references.formats.mx.mx_dequantize``)."""
    key = str(device)
    if key not in _STATE:
        _STATE[key] = _self_check(device, eager)
    return _STATE[key]


def scales_flag(*scales: torch.Tensor) -> torch.Tensor:
    """On the device, no host sync: does any scale hold the NaN code (the eager decode names it) or a
    code that makes subnormal weights (which the fused kernels do not decode)? Kept per scale tensor
    while it lives and is not written in place (its version counter), so a layer run again costs no
    kernel; a write through ``.data`` bypasses the version counter and is not seen."""
    key = tuple((id(s), s._version) for s in scales)
    hit = _FLAGS.get(key)
    if hit is not None and all(r() is s for r, s in zip(hit[0], scales)):
        return hit[1]
    flags = [torch.zeros((), dtype=torch.bool, device=scales[0].device if scales else "cpu")]
    for u in (s.view(torch.uint8) for s in scales if s.numel()):
        lo, hi = torch.aminmax(u)            # one read of the scales (NaN is the largest code, 0xFF)
        flags.append((lo < MIN_SCALE) | (hi == NAN_SCALE))
    flag = torch.stack(flags).any()
    try:
        refs = [weakref.ref(s, lambda _, k=key: _FLAGS.pop(k, None)) for s in scales]
    except TypeError:
        return flag
    _FLAGS[key] = (refs, flag)
    return flag


def scales_usable(*scales: torch.Tensor) -> bool:
    """No NaN code and no subnormal-making code: one host sync."""
    return not bool(scales_flag(*scales))


def mxfp4_bmm(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x [B, P, K]`` bf16 times the MXFP4 experts ``ids`` of ``packed [E, N, K/2]`` (uint8) with
    ``scales [E, N, K/32]`` (E8M0, checked by :func:`scales_usable`), transposed: ``[B, P, N]`` fp32."""
    return _launch(x, packed, scales, ids)
