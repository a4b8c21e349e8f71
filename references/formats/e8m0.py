"""E8M0 shared scales: decoding, and the shared-scale exponent of an MX block under each rounding mode.

Source: OCP Microscaling Formats (MX) v1.0, sections 5.4.1 (E8M0) and 6.3 (scale rule);
torchao ``prototype/mx_formats`` ``ScaleCalculationMode`` for the other rounding modes.
"""

from __future__ import annotations

import enum

import torch

from references.formats._checks import as_uint8
from references.formats.arith import div
from references.formats.e2m1 import E2M1_EMAX, E2M1_MAX

E8M0_BIAS = 127
E8M0_NAN = 0xFF
E4M3_MAX = 448.0
E4M3_EMAX = 8  # 448 = 1.75 * 2^8


class ScaleMode(enum.Enum):
    """How an MX block's E8M0 scale is rounded (torchao ``ScaleCalculationMode``).

    FLOOR is the OCP rule; CEIL rounds the exponent up; EVEN rounds amax's mantissa first;
    RCEIL is ceil(log2(amax / max_elem)) (cuBLAS UE8M0 recipe, sm100 hardware conversion).
    """

    FLOOR = "floor"
    CEIL = "ceil"
    RCEIL = "rceil"
    EVEN = "even"


class Element(enum.Enum):
    """MX element types: (emax, max magnitude, mantissa bits)."""

    E2M1 = "e2m1"
    E4M3 = "e4m3"

    @property
    def params(self) -> tuple[int, float, int]:
        return (E2M1_EMAX, E2M1_MAX, 1) if self is Element.E2M1 else (E4M3_EMAX, E4M3_MAX, 3)


def e8m0_decode(scales: torch.Tensor, *, name: str = "scales") -> torch.Tensor:
    """E8M0 codes to fp32 2^(e-127). A 0xFF (NaN) code raises with its index.

    Source: OCP Microscaling Formats (MX) v1.0, section 5.4.1 (E8M0: bias 127, 0xFF = NaN).
    """
    s = as_uint8(scales, name)
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


def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """Exact floor(log2(a)) for positive finite fp32 (zeros map to -127)."""
    _, exp = torch.frexp(a)  # a = mant * 2^exp, mant in [0.5, 1)
    return torch.where(a > 0, exp.to(torch.int32) - 1, torch.full_like(exp, -E8M0_BIAS, dtype=torch.int32))


def ceil_log2(a: torch.Tensor) -> torch.Tensor:
    """Exact ceil(log2(a)) for positive finite fp32 (zeros map to -127)."""
    mant, exp = torch.frexp(a)
    c = exp.to(torch.int32) - (mant == 0.5).to(torch.int32)
    return torch.where(a > 0, c, torch.full_like(c, -E8M0_BIAS))


def mx_scale_exponent(amax: torch.Tensor, elem: Element | str, mode: ScaleMode | str = ScaleMode.FLOOR) -> torch.Tensor:
    """Shared-scale exponent (unbiased, int32) of an MX block from its fp32 amax.

    floor: floor(log2(amax)) - emax_elem (OCP MX v1.0 section 6.3); ceil: ceil(log2(amax)) - emax;
    even: floor after rounding amax's mantissa to the element's mantissa bits; rceil:
    ceil(log2(amax / max_elem)) (cuBLAS UE8M0 recipe, sm100 hardware conversion).
    Source: OCP MX v1.0 section 6.3; torchao prototype/mx_formats ScaleCalculationMode for the others.
    """
    emax, maxv, mbits = Element(elem).params
    mode = ScaleMode(mode)
    a = amax.to(torch.float32)
    if mode is ScaleMode.FLOOR:
        e = floor_log2(a) - emax
    elif mode is ScaleMode.CEIL:
        e = ceil_log2(a) - emax
    elif mode is ScaleMode.EVEN:
        bits = a.view(torch.int32)
        rounded = ((bits + (1 << (23 - mbits - 1))) & (0x1FF << 23)).view(torch.float32)
        e = floor_log2(rounded) - emax
    else:
        e = ceil_log2(div(a, maxv))
    zero = a == 0
    return torch.where(zero, torch.full_like(e, -E8M0_BIAS), e).clamp(-E8M0_BIAS, E8M0_BIAS)
