"""Number formats: FP4 E2M1, E8M0, MXFP4/MXFP8 block quantization, NVFP4, FP8 block scales.

Conventions shared by every function here:
- Quantized codes are integer tensors (uint8) or torch float8 tensors; dequantized values are fp32.
- Block dimension is the last dimension (the reduction dim K of a ``[rows, K]`` weight).
- Bad input (unaligned K, NaN in data or scales) raises ``ValueError`` naming the tensor and index.
"""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------------------------
# FP4 E2M1
# --------------------------------------------------------------------------------------------
E2M1_MAX = 6.0
E2M1_EMAX = 2  # exponent of the largest normal, 6 = 1.5 * 2^2
E4M3_MAX = 448.0
E4M3_EMAX = 8  # 448 = 1.75 * 2^8
E8M0_BIAS = 127
E8M0_NAN = 0xFF

_E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Boundary between code i and i+1 and whether a tie goes up (to the even code i+1).
_E2M1_BOUNDS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))

MX_BLOCK = 32
NVFP4_BLOCK = 16
SCALE_MODES = ("floor", "ceil", "rceil", "even")


def e2m1_table(device=None) -> torch.Tensor:
    """The 16 E2M1 values indexed by code; bit 3 is the sign.

    Source: OCP Microscaling Formats (MX) v1.0, section 5.3.3 (FP4 E2M1 element encoding).
    """
    mags = torch.tensor(_E2M1_MAGNITUDES, dtype=torch.float32, device=device)
    return torch.cat([mags, -mags])


_LUTS: dict = {}


def _lut(kind: str, device, dtype) -> torch.Tensor:
    key = (kind, str(device), dtype)
    if key not in _LUTS:
        t = e2m1_table()
        lut = t if kind == "code" else torch.stack([t.repeat(16), t.repeat_interleave(16)], dim=-1)  # byte -> (lo, hi)
        _LUTS[key] = lut.to(device=device, dtype=dtype)
    return _LUTS[key]


def e2m1_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode unpacked E2M1 codes (integers 0..15) to ``dtype`` (exact in fp32 and bf16).

    Source: OCP Microscaling Formats (MX) v1.0, section 5.3.3 (FP4 E2M1 element encoding).
    """
    return _lut("code", codes.device, dtype)[(codes.to(torch.int64) & 0xF)]


def e2m1_decode_packed(packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode packed FP4 bytes ``[..., K/2]`` straight to ``[..., K]`` values (low nibble first).

    Source: OCP MX v1.0 section 5.3.3 with the packing of :func:`pack_fp4`.
    """
    p = _as_uint8(packed, "e2m1_decode_packed input")
    return _lut("byte", p.device, dtype)[p.to(torch.int64)].flatten(-2)


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round fp values to E2M1 codes (uint8 0..15): round-to-nearest-even, saturate to +-6.

    Source: OCP Microscaling Formats (MX) v1.0, section 5.3.3 and 6.3 (RNE, saturating conversion).
    """
    _check_finite(x, "e2m1_encode input")
    a = x.abs().to(torch.float32)
    code = torch.zeros_like(a, dtype=torch.uint8)
    for bound, tie_up in _E2M1_BOUNDS:
        code += (a >= bound if tie_up else a > bound).to(torch.uint8)
    sign = (torch.signbit(x) & (code != 0)).to(torch.uint8) << 3
    return code | sign


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """Pack E2M1 codes two per byte along the last dim: even element in the low nibble.

    Source: OCP MX v1.0 leaves packing open; FlashInfer/TRT-LLM, torch float4_e2m1fn_x2 and the
    GPT-OSS checkpoints all put element 2i in bits 0-3 and element 2i+1 in bits 4-7.
    """
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4: last dim {codes.shape[-1]} is odd; FP4 packs two codes per byte")
    c = codes.to(torch.uint8)
    return (c[..., 0::2] & 0xF) | ((c[..., 1::2] & 0xF) << 4)


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_fp4`: ``[..., K/2]`` bytes to ``[..., K]`` codes.

    Source: same packing convention as :func:`pack_fp4` (low nibble = even element).
    """
    p = _as_uint8(packed, "unpack_fp4 input")
    return torch.stack([p & 0xF, p >> 4], dim=-1).flatten(-2)


# --------------------------------------------------------------------------------------------
# E8M0 scales
# --------------------------------------------------------------------------------------------
def e8m0_decode(scales: torch.Tensor, *, name: str = "scales") -> torch.Tensor:
    """E8M0 codes to fp32 2^(e-127). A 0xFF (NaN) code raises with its index.

    Source: OCP Microscaling Formats (MX) v1.0, section 5.4.1 (E8M0: bias 127, 0xFF = NaN).
    """
    s = _as_uint8(scales, name)
    bad = s == E8M0_NAN
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0].tolist())
        raise ValueError(f"{name}: E8M0 scale 0xFF (NaN) at index {idx} ({int(bad.sum())} NaN scales in all)")
    return torch.exp2(s.to(torch.float32) - E8M0_BIAS)


def e8m0_from_exponent(exp: torch.Tensor) -> torch.Tensor:
    """Unbiased integer exponents to E8M0 codes, clamped to the representable [-127, 127].

    Source: OCP Microscaling Formats (MX) v1.0, section 5.4.1.
    """
    return (exp.clamp(-E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS).to(torch.uint8)


def _floor_log2(a: torch.Tensor) -> torch.Tensor:
    """Exact floor(log2(a)) for positive finite fp32 (zeros map to -127)."""
    mant, exp = torch.frexp(a)  # a = mant * 2^exp, mant in [0.5, 1)
    return torch.where(a > 0, exp.to(torch.int32) - 1, torch.full_like(exp, -E8M0_BIAS, dtype=torch.int32))


def _ceil_log2(a: torch.Tensor) -> torch.Tensor:
    """Exact ceil(log2(a)) for positive finite fp32 (zeros map to -127)."""
    mant, exp = torch.frexp(a)
    c = exp.to(torch.int32) - (mant == 0.5).to(torch.int32)
    return torch.where(a > 0, c, torch.full_like(c, -E8M0_BIAS))


def mx_scale_exponent(amax: torch.Tensor, elem: str, mode: str = "floor") -> torch.Tensor:
    """Shared-scale exponent (unbiased, int32) of an MX block from its fp32 amax.

    floor: floor(log2(amax)) - emax_elem (OCP MX v1.0 section 6.3); ceil: ceil(log2(amax)) - emax;
    even: floor after rounding amax's mantissa to the element's mantissa bits; rceil:
    ceil(log2(amax / max_elem)) (cuBLAS UE8M0 recipe, sm100 hardware conversion).
    Source: OCP MX v1.0 section 6.3; torchao prototype/mx_formats ScaleCalculationMode for the others.
    """
    emax, maxv, mbits = _elem_params(elem)
    a = amax.to(torch.float32)
    if mode == "floor":
        e = _floor_log2(a) - emax
    elif mode == "ceil":
        e = _ceil_log2(a) - emax
    elif mode == "even":
        bits = a.view(torch.int32)
        rounded = ((bits + (1 << (23 - mbits - 1))) & (0x1FF << 23)).view(torch.float32)
        e = _floor_log2(rounded) - emax
    elif mode == "rceil":
        e = _ceil_log2(a / maxv)
    else:
        raise ValueError(f"unknown E8M0 scale rounding mode {mode!r}; expected one of {SCALE_MODES}")
    zero = a == 0
    return torch.where(zero, torch.full_like(e, -E8M0_BIAS), e).clamp(-E8M0_BIAS, E8M0_BIAS)


def _elem_params(elem: str) -> tuple[int, float, int]:
    if elem == "e2m1":
        return E2M1_EMAX, E2M1_MAX, 1
    if elem == "e4m3":
        return E4M3_EMAX, E4M3_MAX, 3
    raise ValueError(f"unknown MX element type {elem!r}; expected 'e2m1' or 'e4m3'")


# --------------------------------------------------------------------------------------------
# MXFP4 / MXFP8
# --------------------------------------------------------------------------------------------
def mx_quantize(x: torch.Tensor, elem: str = "e2m1", mode: str = "floor", block: int = MX_BLOCK):
    """MX block quantization along the last dim.

    Returns ``(q, scales)``: for e2m1 ``q`` is packed uint8 ``[..., K/2]``; for e4m3 it is
    ``float8_e4m3fn [..., K]``. ``scales`` is uint8 E8M0 ``[..., K/block]``. Elements are
    ``x / 2^e`` rounded to nearest even and saturated to the element max.
    Source: OCP Microscaling Formats (MX) v1.0, section 6.3 (conversion to MX, block size 32).
    """
    _check_block(x, block, "mx_quantize input")
    _check_finite(x, "mx_quantize input")
    _, maxv, _ = _elem_params(elem)
    xb = x.to(torch.float32).unflatten(-1, (-1, block))
    exp = mx_scale_exponent(xb.abs().amax(-1), elem, mode)
    scaled = xb * torch.exp2(-exp.to(torch.float32)).unsqueeze(-1)  # exact: power-of-two scale
    scaled = scaled.clamp(-maxv, maxv).flatten(-2)
    if elem == "e2m1":
        q = pack_fp4(e2m1_encode(scaled))
    else:
        q = scaled.to(torch.float8_e4m3fn)
    return q, e8m0_from_exponent(exp)


def mx_dequantize(q: torch.Tensor, scales: torch.Tensor, elem: str = "e2m1", block: int = MX_BLOCK,
                  *, name: str = "weight", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`mx_quantize` to ``[..., K]`` (fp32; bf16 is exact too: the products of an
    E2M1/E4M3 element and a power of two fit bf16's 8-bit significand and exponent range).

    Source: OCP Microscaling Formats (MX) v1.0, section 6.2 (value = scale * element).
    """
    vals = e2m1_decode_packed(q, dtype) if elem == "e2m1" else q.to(dtype)
    k = vals.shape[-1]
    if scales.shape[-1] * block != k or scales.shape[:-1] != vals.shape[:-1]:
        raise ValueError(
            f"{name}: scales shape {tuple(scales.shape)} does not match {elem} data of K={k} "
            f"with block {block} (expected {tuple(vals.shape[:-1]) + (k // block,)})")
    s = e8m0_decode(scales, name=f"{name} scales").to(dtype)
    return (vals.unflatten(-1, (-1, block)) * s.unsqueeze(-1)).flatten(-2)


# --------------------------------------------------------------------------------------------
# NVFP4
# --------------------------------------------------------------------------------------------
def nvfp4_global_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-tensor fp32 global scale ``448 * 6 / amax(x)`` (the encode direction).

    Source: NVIDIA TensorRT-LLM / FlashInfer ``fp4_quantize`` docs (global_sf = 448*6/amax).
    """
    return (E4M3_MAX * E2M1_MAX) / x.abs().amax().to(torch.float32).clamp_min(1e-12)


def nvfp4_quantize(x: torch.Tensor, global_scale: torch.Tensor | None = None):
    """NVFP4: E2M1 elements, one E4M3 scale per 16 elements, an fp32 global scale.

    Block scale ``sf = e4m3(amax_block / 6 * global_scale)``; elements
    ``e2m1(x * global_scale / sf)``. Returns ``(packed uint8 [..., K/2], sf float8_e4m3fn
    [..., K/16], global_scale fp32)``.
    Source: NVIDIA NVFP4 format (TensorRT-LLM quantization kernels, cvt_warp_fp16_to_fp4).
    """
    _check_block(x, NVFP4_BLOCK, "nvfp4_quantize input")
    _check_finite(x, "nvfp4_quantize input")
    gs = nvfp4_global_scale(x) if global_scale is None else global_scale.to(torch.float32)
    xb = x.to(torch.float32).unflatten(-1, (-1, NVFP4_BLOCK))
    sf = (xb.abs().amax(-1) / E2M1_MAX * gs).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
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
    _check_finite(s, "nvfp4 block scales")
    g = global_scale.to(torch.float32)
    g = g.reshape(g.shape + (1,) * (s.dim() - g.dim())) if g.dim() else g  # per-expert [E] broadcasts
    return (vals * (s / g).unsqueeze(-1)).flatten(-2)


# --------------------------------------------------------------------------------------------
# FP8 E4M3 with fp32 or UE8M0 block scales (DeepSeek-V3 / DeepGEMM)
# --------------------------------------------------------------------------------------------
FP8_SCALE_FORMATS = ("fp32", "ue8m0")


def ceil_to_ue8m0(s: torch.Tensor) -> torch.Tensor:
    """Round positive fp32 scales up to a power of two (exactly, via frexp).

    Source: DeepGEMM ``deep_gemm/utils/math.py`` ``ceil_to_ue8m0`` (2^ceil(log2(s))).
    """
    return torch.exp2(_ceil_log2(s.to(torch.float32)).to(torch.float32))


def _fp8_scale(amax: torch.Tensor, scale_fmt: str) -> torch.Tensor:
    s = amax.to(torch.float32).clamp_min(1e-4) / E4M3_MAX
    if scale_fmt == "ue8m0":
        return ceil_to_ue8m0(s)
    if scale_fmt != "fp32":
        raise ValueError(f"unknown FP8 scale format {scale_fmt!r}; expected one of {FP8_SCALE_FORMATS}")
    return s


def fp8_group_quantize(x: torch.Tensor, group: int = 128, scale_fmt: str = "fp32"):
    """Per-token-group FP8 quantization (1 x group along the last dim).

    ``s = max(amax, 1e-4) / 448`` (fp32) or that rounded up to a power of two (UE8M0);
    ``q = e4m3(x / s)``. Returns ``(q float8_e4m3fn [..., K], s fp32 [..., K/group])``.
    Source: DeepGEMM tests ``per_token_cast_to_fp8(x, use_ue8m0)``; DeepSeek-V3 report section 3.3.
    """
    _check_block(x, group, "fp8_group_quantize input")
    _check_finite(x, "fp8_group_quantize input")
    xb = x.to(torch.float32).unflatten(-1, (-1, group))
    s = _fp8_scale(xb.abs().amax(-1), scale_fmt)
    q = (xb / s.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX).flatten(-2).to(torch.float8_e4m3fn)
    return q, s


def fp8_group_dequantize(q: torch.Tensor, s: torch.Tensor, group: int = 128) -> torch.Tensor:
    """Inverse of :func:`fp8_group_quantize` to fp32.

    Source: DeepGEMM tests (``x ~ q * s`` per 1 x 128 group).
    """
    _check_finite(s, "fp8 group scales")
    return (q.to(torch.float32).unflatten(-1, (-1, group)) * s.unsqueeze(-1)).flatten(-2)


def fp8_block_quantize(w: torch.Tensor, block: tuple[int, int] = (128, 128), scale_fmt: str = "fp32"):
    """Per-block FP8 quantization of ``[..., N, K]`` weights with one scale per block.

    Returns ``(q float8_e4m3fn [..., N, K], s fp32 [..., N/bn, K/bk])``.
    Source: DeepGEMM tests ``per_block_cast_to_fp8(x, use_ue8m0)``; DeepSeek-V3 report section 3.3.
    """
    bn, bk = block
    n, k = w.shape[-2], w.shape[-1]
    if n % bn or k % bk:
        raise ValueError(f"fp8_block_quantize: weight shape [..., {n}, {k}] is not a multiple of block {block}")
    _check_finite(w, "fp8_block_quantize input")
    wb = w.to(torch.float32).unflatten(-1, (k // bk, bk)).unflatten(-3, (n // bn, bn))  # [..., N/bn, bn, K/bk, bk]
    s = _fp8_scale(wb.abs().amax(dim=(-3, -1)), scale_fmt)  # [..., N/bn, K/bk]
    q = (wb / s.unsqueeze(-2).unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX)
    return q.flatten(-4, -3).flatten(-2).to(torch.float8_e4m3fn), s


def fp8_block_dequantize(q: torch.Tensor, s: torch.Tensor, block: tuple[int, int] = (128, 128)) -> torch.Tensor:
    """Inverse of :func:`fp8_block_quantize` to fp32.

    Source: DeepGEMM tests (``w ~ q * s`` per 128 x 128 block).
    """
    _check_finite(s, "fp8 block scales")
    bn, bk = block
    full = s.repeat_interleave(bn, dim=-2).repeat_interleave(bk, dim=-1)
    return q.to(torch.float32) * full


# --------------------------------------------------------------------------------------------
# ULP helpers used by bit-level comparisons
# --------------------------------------------------------------------------------------------
def float_to_ordered_int(x: torch.Tensor) -> torch.Tensor:
    """Map floats to integers whose difference is the ULP distance (sign-magnitude to two's).

    Source: the IEEE 754 ordering of same-width bit patterns (standard ULP-distance construction).
    """
    itype = {2: torch.int16, 4: torch.int32, 1: torch.int8}[x.element_size()]
    i = x.contiguous().view(itype).to(torch.int64)
    top = 1 << (8 * x.element_size() - 1)
    return torch.where(i < 0, -top - i, i)


# --------------------------------------------------------------------------------------------
def _as_uint8(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t
    if t.element_size() == 1:
        return t.view(torch.uint8)
    raise ValueError(f"{name}: expected a uint8 (or 1-byte) tensor, got {t.dtype}")


def _check_block(x: torch.Tensor, block: int, name: str) -> None:
    if x.dim() == 0 or x.shape[-1] % block:
        raise ValueError(f"{name}: last dim K={x.shape[-1] if x.dim() else 0} is not a multiple of the block size {block}")


def _check_finite(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0].tolist())
            raise ValueError(f"{name}: non-finite value {x[idx].item()} at index {idx} ({int(bad.sum())} in all)")
