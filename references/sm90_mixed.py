"""SM90 mixed-input (W4A16) weight and scale layouts of FlashInfer's cutlass fused MoE, per version.

Two layouts exist (FlashInfer #3738, merged for 0.6.16; reverted in 0.6.16.post3, 0.6.16.post4 and
0.6.17; kept from 0.6.18 on):

- ``v1`` (flashinfer-python 0.6.12): weights nibble-swapped between rows r and r+8 of each 16-row
  group and bytes scattered in 32-byte partitions (``references.layouts.sm90_interleave_fp4_weights``),
  scales interleaved by 4 along K: ``[E, K/128, rows*4]``.
- ``v2`` (flashinfer-python 0.7.2.post1): each 32-bit word of 8 FP4 codes gets a fixed bit
  permutation, bytes land in other rows/columns, and scales are folded into 64-row x 128-K blocks
  of 256 bytes: ``[E, rows/64, K/128, 16, 16]``.

Each layout has its inverse (what the kernel's loader reads back), so an emulation can run on
either and a fault (a layout skipped) shows exactly as the kernel would see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from references.layouts import (sm90_deinterleave_fp4_weights, sm90_deinterleave_scales, sm90_interleave_fp4_weights,
                                sm90_interleave_scales)

# (mask, shift) of the v2 32-bit permutation; shift > 0 is a left shift
_V2_BITS = ((0x00000080, 24), (0x00000070, 18), (0x00000008, 12), (0x00000007, 6),
            (0x00008000, 13), (0x00007000, 7), (0x00000800, 1), (0x00000700, -5),
            (0x00800000, 2), (0x00700000, -4), (0x00080000, -10), (0x00070000, -16),
            (0x80000000, -1), (0x10000000, 1), (0x60000000, -3), (0x08000000, -13),
            (0x01000000, -11), (0x06000000, -15))


def _shift(x: torch.Tensor, s: int) -> torch.Tensor:
    return x << s if s >= 0 else x >> -s


def _check_w(w: torch.Tensor, name: str):
    if w.dim() != 3 or w.dtype != torch.uint8 or w.shape[1] % 16 or w.shape[2] % 32:
        raise ValueError(f"{name}: expected uint8 [E, n, K/2] with n % 16 == 0 and K % 64 == 0, got "
                         f"{w.dtype} {tuple(w.shape)}")
    return w.shape


def sm90_interleave_fp4_weights_v2(w: torch.Tensor) -> torch.Tensor:
    """v2 byte/bit interleave of packed FP4 ``[E, n, K/2]`` weights.

    Source: FlashInfer 0.7.2.post1 csrc ``moe_gemm_mixed_utils.cu`` ``interleave_fp4_weights_for_sm90_mixed_gemm_kernel``.
    """
    e, n, kh = _check_w(w, "sm90_interleave_fp4_weights_v2")
    # src byte [e, g, s, r8, p, m, h, c4]: row = g*16 + s*8 + r8, col = p*32 + m*8 + h*4 + c4
    v = w.reshape(e, n // 16, 2, 8, kh // 32, 4, 2, 4).to(torch.int64)
    raw = v[:, :, 0, :, :, :, 0] | v[:, :, 1, :, :, :, 0] << 8 | v[:, :, 0, :, :, :, 1] << 16 | v[:, :, 1, :, :, :, 1] << 24
    y = torch.zeros_like(raw)
    for m, s in _V2_BITS:
        y |= _shift(raw & m, s)
    out = torch.stack([(y >> (8 * j)) & 0xFF for j in range(4)], dim=-1).to(torch.uint8)  # [e, g, r8, p, m, c4, j]
    out = out.reshape(e, n // 16, 8, kh // 32, 2, 2, 4, 4)                                 # m -> (mh, ml)
    # dst row = g*16 + ml*8 + r8, dst col = p*32 + mh*16 + c4*4 + j
    return out.permute(0, 1, 5, 2, 3, 4, 6, 7).reshape(e, n, kh).contiguous()


def sm90_deinterleave_fp4_weights_v2(w: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`sm90_interleave_fp4_weights_v2`.

    Source: inverse of FlashInfer 0.7.2.post1 ``interleave_fp4_weights_for_sm90_mixed_gemm_kernel``.
    """
    e, n, kh = _check_w(w, "sm90_deinterleave_fp4_weights_v2")
    out = w.reshape(e, n // 16, 2, 8, kh // 32, 2, 4, 4).permute(0, 1, 3, 4, 5, 2, 6, 7)   # [e, g, r8, p, mh, ml, c4, j]
    out = out.reshape(e, n // 16, 8, kh // 32, 4, 4, 4).to(torch.int64)                    # [e, g, r8, p, m, c4, j]
    y = out[..., 0] | out[..., 1] << 8 | out[..., 2] << 16 | out[..., 3] << 24
    raw = torch.zeros_like(y)
    for m, s in _V2_BITS:
        raw |= _shift(y & _shift(torch.tensor(m, dtype=torch.int64), s), -s)
    b = [(raw >> (8 * j)) & 0xFF for j in range(4)]                                         # (s, h): 00, 10, 01, 11
    v = torch.stack([torch.stack([b[0], b[2]], -2), torch.stack([b[1], b[3]], -2)], dim=2)  # [e, g, s, r8, p, m, h, c4]
    return v.to(torch.uint8).reshape(e, n, kh).contiguous()


def sm90_fold_scales_v2(s: torch.Tensor, group: int = 32) -> torch.Tensor:
    """v2 scale fold ``[E, rows, K/32] -> [E, rows/64, K/128, 16, 16]``:
    ``out[e, r64, kb, fm, ms*4 + g] = s[e, r64*64 + ms*16 + fm, kb*4 + g]``.

    Source: FlashInfer 0.7.2.post1 ``flashinfer/fused_moe/prepare.py`` ``interleave_moe_scales_for_sm90_mixed_gemm``.
    """
    e, rows, kg = s.shape
    if group != 32 or rows % 64 or kg % 4:
        raise ValueError(f"sm90_fold_scales_v2: [E={e}, rows={rows}, K/32={kg}] needs rows % 64 == 0, K % 128 == 0, group 32")
    return s.reshape(e, rows // 64, 4, 16, kg // 4, 4).permute(0, 1, 4, 3, 2, 5).reshape(e, rows // 64, kg // 4, 16, 16)


def sm90_unfold_scales_v2(s: torch.Tensor, rows: int, kg: int) -> torch.Tensor:
    """Inverse of :func:`sm90_fold_scales_v2` from any buffer of ``E * rows * K/32`` bytes.

    Source: inverse of FlashInfer 0.7.2.post1 ``interleave_moe_scales_for_sm90_mixed_gemm``.
    """
    e = s.numel() // (rows * kg)
    v = s.reshape(e, rows // 64, kg // 4, 16, 4, 4).permute(0, 1, 4, 3, 2, 5)
    return v.reshape(e, rows, kg)


@dataclass(frozen=True)
class Sm90Layout:
    """One version's weight and scale layout: the prepare-side transforms and the loader-side inverses."""

    name: str
    interleave_weights: Callable
    deinterleave_weights: Callable
    interleave_scales: Callable
    read_scales: Callable[[torch.Tensor, int, int], torch.Tensor]   # (buffer, rows, K/32) -> [E, rows, K/32]
    row_multiple: int                                               # rows (2I and H) must be multiples of this


def _read_v1(buf: torch.Tensor, rows: int, kg: int) -> torch.Tensor:
    e = buf.numel() // (rows * kg)
    return sm90_deinterleave_scales(buf.reshape(e, kg // 4, rows * 4))


LAYOUTS = {
    "v1": Sm90Layout("v1", sm90_interleave_fp4_weights, sm90_deinterleave_fp4_weights, sm90_interleave_scales, _read_v1, 16),
    "v2": Sm90Layout("v2", sm90_interleave_fp4_weights_v2, sm90_deinterleave_fp4_weights_v2, sm90_fold_scales_v2,
                     sm90_unfold_scales_v2, 64),
}
