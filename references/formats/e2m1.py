"""FP4 E2M1 elements: the code table, round-to-nearest-even encoding, two-codes-per-byte packing.

Source: OCP Microscaling Formats (MX) v1.0, section 5.3.3 (FP4 E2M1 element encoding).
"""

from __future__ import annotations

import torch

from references.formats._checks import as_uint8, check_finite

E2M1_MAX = 6.0
E2M1_EMAX = 2  # exponent of the largest normal, 6 = 1.5 * 2^2

_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Boundary between code i and i+1 and whether a tie goes up (to the even code i+1).
_BOUNDS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))
_LUTS: dict = {}


def e2m1_table(device=None) -> torch.Tensor:
    """The 16 E2M1 values indexed by code; bit 3 is the sign.

    Source: OCP Microscaling Formats (MX) v1.0, section 5.3.3 (FP4 E2M1 element encoding).
    """
    mags = torch.tensor(_MAGNITUDES, dtype=torch.float32, device=device)
    return torch.cat([mags, -mags])


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
    p = as_uint8(packed, "e2m1_decode_packed input")
    return _lut("byte", p.device, dtype)[p.to(torch.int64)].flatten(-2)


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round fp values to E2M1 codes (uint8 0..15): round-to-nearest-even, saturate to +-6.

    Source: OCP Microscaling Formats (MX) v1.0, section 5.3.3 and 6.3 (RNE, saturating conversion).
    """
    check_finite(x, "e2m1_encode input")
    a = x.abs().to(torch.float32)
    code = torch.zeros_like(a, dtype=torch.uint8)
    for bound, tie_up in _BOUNDS:
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
    p = as_uint8(packed, "unpack_fp4 input")
    return torch.stack([p & 0xF, p >> 4], dim=-1).flatten(-2)
