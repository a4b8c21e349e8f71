"""FP8 E4M3 with fp32 or UE8M0 block scales: 1x128 activation groups, 128x128 weight blocks.

Source: DeepSeek-V3 technical report section 3.3; DeepGEMM tests ``per_token_cast_to_fp8`` /
``per_block_cast_to_fp8`` and ``deep_gemm/utils/math.py`` ``ceil_to_ue8m0``.
"""

from __future__ import annotations

import enum

import torch

from references.formats._checks import check_block, check_finite
from references.formats.e8m0 import E4M3_MAX, ceil_log2


class Fp8Scale(enum.Enum):
    """Block-scale format of FP8 data: plain fp32, or fp32 rounded up to a power of two (UE8M0)."""

    FP32 = "fp32"
    UE8M0 = "ue8m0"


def ceil_to_ue8m0(s: torch.Tensor) -> torch.Tensor:
    """Round positive fp32 scales up to a power of two (exactly, via frexp).

    Source: DeepGEMM ``deep_gemm/utils/math.py`` ``ceil_to_ue8m0`` (2^ceil(log2(s))).
    """
    return torch.exp2(ceil_log2(s.to(torch.float32)).to(torch.float32))


# The amax floor of a quantizer: DeepGEMM's tests clamp at 1e-4 (``per_token_cast_to_fp8``), vLLM's and
# SGLang's ``per_token_group_quant_fp8`` at eps=1e-10, TRT-LLM/FlashInfer's ``scale_1x128_kernel`` not at
# all (scale 1 for an all-zero group). It decides the scale of groups whose amax is below it, so a kernel
# contract names its own (tiny activations: 1e-4 / 448 leaves values of 1e-9 below e4m3's subnormals).
AMAX_FLOOR = 1e-4


def _fp8_scale(amax: torch.Tensor, scale_fmt: Fp8Scale | str, amax_floor: float = AMAX_FLOOR) -> torch.Tensor:
    a = amax.to(torch.float32)
    s = a.clamp_min(amax_floor) / E4M3_MAX if amax_floor > 0 else torch.where(a > 0, a / E4M3_MAX, torch.ones_like(a))
    return ceil_to_ue8m0(s) if Fp8Scale(scale_fmt) is Fp8Scale.UE8M0 else s


def fp8_group_quantize(x: torch.Tensor, group: int = 128, scale_fmt: Fp8Scale | str = Fp8Scale.FP32,
                       amax_floor: float = AMAX_FLOOR):
    """Per-token-group FP8 quantization (1 x group along the last dim).

    ``s = max(amax, amax_floor) / 448`` (fp32) or that rounded up to a power of two (UE8M0);
    ``q = e4m3(x / s)``; with ``amax_floor=0`` an all-zero group gets ``s = 1`` (TRT-LLM).
    Returns ``(q float8_e4m3fn [..., K], s fp32 [..., K/group])``.
    Source: DeepGEMM tests ``per_token_cast_to_fp8(x, use_ue8m0)``; DeepSeek-V3 report section 3.3;
    ``amax_floor=0``: FlashInfer 0.6.12 ``fp8_blockscale_gemm_kernel.cuh:988`` (``amax != 0 ? 448 / amax : 1``).
    """
    check_block(x, group, "fp8_group_quantize input")
    check_finite(x, "fp8_group_quantize input")
    xb = x.to(torch.float32).unflatten(-1, (-1, group))
    s = _fp8_scale(xb.abs().amax(-1), scale_fmt, amax_floor)
    q = (xb / s.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX).flatten(-2).to(torch.float8_e4m3fn)
    return q, s


def fp8_group_dequantize(q: torch.Tensor, s: torch.Tensor, group: int = 128) -> torch.Tensor:
    """Inverse of :func:`fp8_group_quantize` to fp32.

    Source: DeepGEMM tests (``x ~ q * s`` per 1 x 128 group).
    """
    check_finite(s, "fp8 group scales")
    return (q.to(torch.float32).unflatten(-1, (-1, group)) * s.unsqueeze(-1)).flatten(-2)


def fp8_block_quantize(w: torch.Tensor, block: tuple[int, int] = (128, 128), scale_fmt: Fp8Scale | str = Fp8Scale.FP32):
    """Per-block FP8 quantization of ``[..., N, K]`` weights with one scale per block.

    Returns ``(q float8_e4m3fn [..., N, K], s fp32 [..., N/bn, K/bk])``.
    Source: DeepGEMM tests ``per_block_cast_to_fp8(x, use_ue8m0)``; DeepSeek-V3 report section 3.3.
    """
    bn, bk = block
    n, k = w.shape[-2], w.shape[-1]
    if n % bn or k % bk:
        raise ValueError(f"fp8_block_quantize: weight shape [..., {n}, {k}] is not a multiple of block {block}")
    check_finite(w, "fp8_block_quantize input")
    wb = w.to(torch.float32).unflatten(-1, (k // bk, bk)).unflatten(-3, (n // bn, bn))  # [..., N/bn, bn, K/bk, bk]
    s = _fp8_scale(wb.abs().amax(dim=(-3, -1)), scale_fmt)  # [..., N/bn, K/bk]
    q = (wb / s.unsqueeze(-2).unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX)
    return q.flatten(-4, -3).flatten(-2).to(torch.float8_e4m3fn), s


def fp8_block_dequantize(q: torch.Tensor, s: torch.Tensor, block: tuple[int, int] = (128, 128)) -> torch.Tensor:
    """Inverse of :func:`fp8_block_quantize` to fp32.

    Source: DeepGEMM tests (``w ~ q * s`` per 128 x 128 block).
    """
    check_finite(s, "fp8 block scales")
    bn, bk = block
    full = s.repeat_interleave(bn, dim=-2).repeat_interleave(bk, dim=-1)
    return q.to(torch.float32) * full
