"""NVFP4: E2M1 elements, one E4M3 scale per 16 elements, a per-tensor fp32 global scale.

Source: NVIDIA NVFP4 format (TensorRT-LLM quantization kernels, cvt_warp_fp16_to_fp4; FlashInfer
``fp4_quantize`` docs for the global scale 448*6/amax).
"""

from __future__ import annotations

import torch

from references.formats._checks import check_block, check_finite
from references.formats.arith import div, rdiv
from references.formats.e2m1 import E2M1_MAX, e2m1_decode, e2m1_encode, pack_fp4, unpack_fp4
from references.formats.e8m0 import E4M3_MAX

NVFP4_BLOCK = 16


def nvfp4_global_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-tensor fp32 global scale ``448 * 6 / amax(x)`` (the encode direction).

    Source: NVIDIA TensorRT-LLM / FlashInfer ``fp4_quantize`` docs (global_sf = 448*6/amax).
    """
    return rdiv(E4M3_MAX * E2M1_MAX, x.abs().amax().to(torch.float32).clamp_min(1e-12))   # as torch computes 2688 / amax


def nvfp4_quantize(x: torch.Tensor, global_scale: torch.Tensor | None = None):
    """NVFP4: E2M1 elements, one E4M3 scale per 16 elements, an fp32 global scale.

    Block scale ``sf = e4m3(amax_block / 6 * global_scale)``; elements
    ``e2m1(x * global_scale / sf)``. Returns ``(packed uint8 [..., K/2], sf float8_e4m3fn
    [..., K/16], global_scale fp32)``.
    Source: NVIDIA NVFP4 format (TensorRT-LLM quantization kernels, cvt_warp_fp16_to_fp4).
    """
    check_block(x, NVFP4_BLOCK, "nvfp4_quantize input")
    check_finite(x, "nvfp4_quantize input")
    gs = nvfp4_global_scale(x) if global_scale is None else global_scale.to(torch.float32)
    xb = x.to(torch.float32).unflatten(-1, (-1, NVFP4_BLOCK))
    sf = (div(xb.abs().amax(-1), E2M1_MAX) * gs).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    sf32 = sf.to(torch.float32)
    inv = torch.where(sf32 > 0, gs / sf32, torch.zeros_like(sf32))
    q = pack_fp4(e2m1_encode((xb * inv.unsqueeze(-1)).clamp(-E2M1_MAX, E2M1_MAX).flatten(-2)))
    return q, sf, gs


def nvfp4_dequantize(q: torch.Tensor, sf: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`nvfp4_quantize`: ``e2m1 * sf / global_scale`` in fp32.

    Source: NVIDIA NVFP4 format (TensorRT-LLM quantization kernels).
    """
    vals = e2m1_decode(unpack_fp4(q)).unflatten(-1, (-1, NVFP4_BLOCK))
    s = sf.to(torch.float32)
    check_finite(s, "nvfp4 block scales")
    g = global_scale.to(torch.float32)
    g = g.reshape(g.shape + (1,) * (s.dim() - g.dim())) if g.dim() else g  # per-expert [E] broadcasts
    return (vals * (s / g).unsqueeze(-1)).flatten(-2)
