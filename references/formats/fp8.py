"""FP8 E4M3 with fp32 or UE8M0 block scales: 1x128 activation groups, 128x128 weight blocks.

Source: DeepSeek-V3 technical report section 3.3; DeepGEMM tests ``per_token_cast_to_fp8`` /
``per_block_cast_to_fp8`` and ``deep_gemm/utils/math.py`` ``ceil_to_ue8m0``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from references.formats._checks import check_block, check_finite
from references.formats.arith import div, rdiv
from references.formats.e8m0 import E4M3_MAX, ceil_log2
from references.formats.fast_math_sm90 import sm90_fast_math_scale


class Fp8Scale(enum.Enum):
    """Block-scale format of FP8 data: plain fp32, or fp32 rounded up to a power of two (UE8M0)."""

    FP32 = "fp32"
    UE8M0 = "ue8m0"


def ceil_to_ue8m0(s: torch.Tensor) -> torch.Tensor:
    """Round positive fp32 scales up to a power of two (exactly, via frexp).

    Source: DeepGEMM ``deep_gemm/utils/math.py`` ``ceil_to_ue8m0`` (2^ceil(log2(s))).
    """
    return torch.exp2(ceil_log2(s.to(torch.float32)).to(torch.float32))


@dataclass(frozen=True)
class Fp8Rule:
    """How a quantizer turns a group's amax into codes, where libraries differ:

    - ``amax_floor``: the amax is clamped below at it (0: not at all, and an all-zero group gets
      scale 1). It decides groups whose amax is below it: tiny activations under a 1e-4 floor fall
      below e4m3's subnormals and flush to zero.
    - ``reciprocal``: ``q = e4m3(x * (448 / amax))`` with the stored scale ``1 / (448 / amax)``,
      instead of ``q = e4m3(x / (amax / 448))``. The two round differently in fp32, which moves
      values that sit exactly on an e4m3 rounding midpoint (saturated activations in ratio 6:8
      land on 336, between 320 and 352) by a whole e4m3 step. The reference computes ``448 / amax`` as
      ``448 * RN(1 / amax)`` (:func:`references.formats.arith.rdiv`, what torch does for it); nvcc's
      ``-use_fast_math`` division in TRT-LLM's kernel is ``448 * rcp.approx(amax)`` (``div.approx.f32``):
      the same bits where the GPU's reciprocal is correctly rounded, which ``moeacc probe --probe
      nvcc-fast-math-fp8-scale`` measures.
    - ``sm90_fast_math``: ``448 / amax`` and the stored ``1 / scale`` as that probe measured them on sm90
      (:mod:`references.formats.fast_math_sm90`: 4671 of 32512 bf16 amax give another scale than
      ``448 * RN(1 / amax)``); for a twin of FlashInfer's kernel, not for a reference.
    """

    name: str
    amax_floor: float
    reciprocal: bool
    sm90_fast_math: bool = False


# DeepGEMM's tests: per_token_cast_to_fp8 (amax.clamp(1e-4), x / sf)
DEEPGEMM_TEST = Fp8Rule("deepgemm-test", 1e-4, False)
# vLLM per_token_group_quant_fp8: eps=1e-10, y_s = absmax / 448, y = x / y_s
VLLM = Fp8Rule("vllm", 1e-10, False)
# SGLang per_token_group_quant_fp8: amax floored at 1e-10, q = x * (448 / amax)
SGLANG = Fp8Rule("sglang", 1e-10, True)
# TRT-LLM / FlashInfer scale_1x128_kernel: scale = amax != 0 ? 448 / amax : 1; q = x * scale; stores 1 / scale
# (FlashInfer 0.6.12 and 0.7.2.post1 fp8_blockscale_gemm_kernel.cuh:871, :988-999)
TRTLLM = Fp8Rule("trtllm", 0.0, True)
# the same as FlashInfer's fused_moe_90 build computes it on sm90 (-use_fast_math: div.approx, rcp.approx)
TRTLLM_SM90_FAST_MATH = Fp8Rule("trtllm-sm90-fast-math", 0.0, True, sm90_fast_math=True)


def _fp8_scale(amax: torch.Tensor, scale_fmt: Fp8Scale | str, rule: Fp8Rule = DEEPGEMM_TEST) -> tuple[torch.Tensor, torch.Tensor]:
    """(multiplier applied to x, stored dequantization scale) per group."""
    a = amax.to(torch.float32)
    if rule.amax_floor > 0:
        a = a.clamp_min(rule.amax_floor)
    zero = a == 0
    a = torch.where(zero, torch.full_like(a, E4M3_MAX), a)   # an all-zero group (floor 0): scale 1
    s = div(a, E4M3_MAX)
    if Fp8Scale(scale_fmt) is Fp8Scale.UE8M0:
        s = ceil_to_ue8m0(s)
        return torch.reciprocal(s), s   # a power of two: exact either way
    if rule.reciprocal:
        inv = rdiv(E4M3_MAX, a)
        stored = torch.reciprocal(inv)
        if rule.sm90_fast_math:
            applies, fm_inv, fm_stored = sm90_fast_math_scale(a)
            applies &= ~zero   # amax 0: the kernel's scale is exactly 1
            inv, stored = torch.where(applies, fm_inv, inv), torch.where(applies, fm_stored, stored)
        return inv, stored
    return None, s


def fp8_group_quantize(x: torch.Tensor, group: int = 128, scale_fmt: Fp8Scale | str = Fp8Scale.FP32,
                       rule: Fp8Rule = DEEPGEMM_TEST):
    """Per-token-group FP8 quantization (1 x group along the last dim).

    ``s = max(amax, floor) / 448`` (fp32) or that rounded up to a power of two (UE8M0);
    ``q = e4m3(x / s)``, or ``e4m3(x * (448 / amax))`` with ``s = 1 / (448 / amax)`` for a
    ``reciprocal`` rule (:class:`Fp8Rule`). Returns ``(q float8_e4m3fn [..., K], s fp32 [..., K/group])``.
    Source: DeepGEMM tests ``per_token_cast_to_fp8(x, use_ue8m0)``; DeepSeek-V3 report section 3.3;
    the other rules as cited at their definitions.
    """
    check_block(x, group, "fp8_group_quantize input")
    check_finite(x, "fp8_group_quantize input")
    xb = x.to(torch.float32).unflatten(-1, (-1, group))
    inv, s = _fp8_scale(xb.abs().amax(-1), scale_fmt, rule)
    scaled = xb / s.unsqueeze(-1) if inv is None else xb * inv.unsqueeze(-1)
    q = scaled.clamp(-E4M3_MAX, E4M3_MAX).flatten(-2).to(torch.float8_e4m3fn)
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
    _, s = _fp8_scale(wb.abs().amax(dim=(-3, -1)), scale_fmt)  # [..., N/bn, K/bk]
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
