"""MX block quantization (MXFP4 = E2M1 elements, MXFP8 = E4M3 elements, one E8M0 scale per 32).

Source: OCP Microscaling Formats (MX) v1.0, sections 6.2 and 6.3.
"""

from __future__ import annotations

import torch

from references.formats import mx_fused
from references.formats._checks import as_uint8, check_block, check_finite
from references.formats.e2m1 import e2m1_decode_packed, e2m1_encode, pack_fp4
from references.formats.e8m0 import Element, ScaleMode, e8m0_decode, e8m0_from_exponent, mx_scale_exponent

MX_BLOCK = 32


def mx_quantize(x: torch.Tensor, elem: Element | str = Element.E2M1, mode: ScaleMode | str = ScaleMode.FLOOR,
                block: int = MX_BLOCK):
    """MX block quantization along the last dim.

    Returns ``(q, scales)``: for e2m1 ``q`` is packed uint8 ``[..., K/2]``; for e4m3 it is
    ``float8_e4m3fn [..., K]``. ``scales`` is uint8 E8M0 ``[..., K/block]``. Elements are
    ``x / 2^e`` rounded to nearest even and saturated to the element max.
    Source: OCP Microscaling Formats (MX) v1.0, section 6.3 (conversion to MX, block size 32).
    """
    elem = Element(elem)
    check_block(x, block, "mx_quantize input")
    check_finite(x, "mx_quantize input")
    _, maxv, _ = elem.params
    xb = x.to(torch.float32).unflatten(-1, (-1, block))
    exp = mx_scale_exponent(xb.abs().amax(-1), elem, mode)
    scaled = xb * torch.exp2(-exp.to(torch.float32)).unsqueeze(-1)  # exact: power-of-two scale
    scaled = scaled.clamp(-maxv, maxv).flatten(-2)
    q = pack_fp4(e2m1_encode(scaled)) if elem is Element.E2M1 else scaled.to(torch.float8_e4m3fn)
    return q, e8m0_from_exponent(exp)


def mx_dequantize(q: torch.Tensor, scales: torch.Tensor, elem: Element | str = Element.E2M1, block: int = MX_BLOCK,
                  *, name: str = "weight", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`mx_quantize` to ``[..., K]`` (fp32; bf16 is exact too: the products of an
    E2M1/E4M3 element and a power of two fit bf16's 8-bit significand and exponent range).

    Source: OCP Microscaling Formats (MX) v1.0, section 6.2 (value = scale * element).
    """
    fp4 = Element(elem) is Element.E2M1
    k = q.shape[-1] * (2 if fp4 else 1)
    if scales.shape[-1] * block != k or scales.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"{name}: scales shape {tuple(scales.shape)} does not match {Element(elem).value} data of K={k} "
            f"with block {block} (expected {tuple(q.shape[:-1]) + (k // block,)})")
    vals = e2m1_decode_packed(q, dtype) if fp4 else q.to(dtype)
    s = e8m0_decode(scales, name=f"{name} scales").to(dtype)
    return (vals.unflatten(-1, (-1, block)) * s.unsqueeze(-1)).flatten(-2)


def mxfp4_experts_bf16(q: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor, *, name: str = "weight",
                       scales_checked: bool = False):
    """Experts ``ids`` of MXFP4 ``q [E, N, K/2]`` as bf16 in one fused pass on CUDA (the same values
    as :func:`mx_dequantize`, checked bit for bit at first use); None where that is not available."""
    if not q.is_cuda or scales.shape[-1] * MX_BLOCK != 2 * q.shape[-1] or scales.shape[:-1] != q.shape[:-1]:
        return None
    if mx_fused.status(q.device, mxfp4_bf16_eager) is not None:
        return None
    if not scales_checked:
        sel = as_uint8(scales, name).index_select(0, ids)
        if bool(((sel == 0xFF) | (sel < mx_fused.MIN_SCALE)).any()):
            return None   # the eager decode names a NaN scale; tiny scales make subnormal values
    return mx_fused.mxfp4_to_bf16(as_uint8(q, name), as_uint8(scales, name), ids)


def mxfp4_bf16_eager(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The eager MXFP4 decode to bf16 (what ``references.formats.mx_fused`` must equal bit for bit)."""
    vals = e2m1_decode_packed(packed, torch.bfloat16).unflatten(-1, (-1, MX_BLOCK))
    return (vals * e8m0_decode(scales).to(torch.bfloat16).unsqueeze(-1)).flatten(-2)
