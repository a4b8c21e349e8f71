"""FlashInfer's fast-math arithmetic on this GPU, bit for bit, against the twin's (Findings 7).

FlashInfer builds its ``fused_moe_90`` module with its default ``-use_fast_math`` (``jit/core.py:746-747``,
``-O3 -DNDEBUG`` at :763; ``jit/fused_moe.py:274-279`` does not opt out; 0.7.2.post1, and at 0.6.12).
Two pieces of its FP8 block-scale path turn approximate under it, and both feed fc2's FP8 codes:

- ``scale_1x128_kernel`` (``fp8_blockscale_gemm_kernel.cuh:979-999`` at 0.6.12 and 0.7.2.post1) takes
  the group's amax as bf16, computes ``scale = 448.f / float(amax)`` (1 for a zero amax), stores
  ``1.f / scale`` and writes ``__nv_fp8_e4m3(float(x) * scale)``: nvcc 13.0 emits ``div.approx.ftz``,
  ``rcp.approx.ftz``, ``mul.ftz`` and ``cvt.rn.satfinite.e4m3x2`` (:func:`ptx_ops`). ``div.approx`` is
  ``a * (1/b)`` with an approximate reciprocal (PTX ISA), and on the H200 (2026-12-05) it differs from
  torch's ``448 * RN(1 / amax)`` (what the reference computes) in 4671 of 32512 bf16 amax, following the
  exponent exactly: the twin now uses the measured results for the 128 mantissas
  (``references/formats/fast_math_sm90.py``). Measured on every positive finite bf16 amax, against that
  twin (where its table applies), the reference's arithmetic and correctly rounded division; the row
  fails while any of the twin's scales differs. It also checks the scale follows the exponent and that
  the codes follow the scale by RN.
- ``doActivationKernel``'s SwiGLU (``cutlass_fused_moe_kernels.cuh:2238-2262, 2480-2589`` at 0.7.2.post1;
  cutlass ``Sigmoid`` is ``1 / (1 + fast_exp(-z))``, ``epilogue/thread/activation.h:422-441``, with
  ``fast_exp`` = ``expf``, ``fast_math.h:877-879``): ``expf`` becomes ``ex2.approx`` and the division
  ``div.approx``. Measured on every finite bf16 gate (an up value each), plain and GPT-OSS parameters,
  against the twin's ``swiglu(..., Precision.CUTLASS)`` rounded to bf16: the row passes while every
  output is within 1 bf16 ULP of the twin's (the difference the twin cannot model without the GPU's
  ``ex2``), and counts how many differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.probes.base import ProbeResult
from harness.probes.fast_math_program import FLAGS, SOURCE, _bits16, _run, arch_flag, binary, nvcc, ptx_ops  # noqa: F401
from references.activations import GPT_OSS, Precision, SwigluParams, swiglu
from references.formats import TRTLLM, TRTLLM_SM90_FAST_MATH, Fp8Scale
from references.formats.fast_math_sm90 import sm90_fast_math_scale
from references.formats.bits import float_to_ordered_int
from references.formats.fp8 import _fp8_scale

E4M3_MAX = 448.0
SCALE_CASE = "probe:fp8 activation scale under nvcc -use_fast_math (FlashInfer scale_1x128_kernel)"


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every positive finite bf16 amax (0x0001-0x7F7F) with an x of at most that magnitude each
    (``amax * u``, u uniform in [-1, 1], rounded to bf16, and x = amax itself every 8th)."""
    a = torch.arange(1, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    u = torch.rand(a.numel(), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    u[::8] = 1.0
    return a, (a.float() * u).to(torch.bfloat16)


# twin: the FlashInfer twin's rule (the measured sm90 table, references/formats/fast_math_sm90.py, where it
# applies); rn-reciprocal: the library's rule as the reference computes it, 448 * RN(1 / amax)
MODELS = ("twin", "rn-reciprocal", "correctly-rounded")


def model(a: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, stored 1/scale) of ``a`` (bf16 amax) under the named model, fp32 on the CPU."""
    af = a.float().cpu()
    if name == "twin":
        return _fp8_scale(af, Fp8Scale.FP32, TRTLLM_SM90_FAST_MATH)
    if name == "rn-reciprocal":
        return _fp8_scale(af, Fp8Scale.FP32, TRTLLM)
    if name == "correctly-rounded":
        s = torch.full_like(af, E4M3_MAX) / af   # a tensor divisor: one rounding (references/formats/arith.py)
        return s, torch.ones_like(s) / s
    raise ValueError(f"unknown model {name!r}")


def codes(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``cvt.rn.satfinite.e4m3`` of ``x * scale`` (fp32, flush-to-zero of subnormal x as ``mul.ftz``)."""
    xf = x.float().cpu()
    xf = torch.where(xf.abs() < torch.finfo(torch.float32).tiny, xf * 0.0, xf)   # a signed zero, as mul.ftz gives
    v = (xf * scale).clamp(-E4M3_MAX, E4M3_MAX)
    return v.to(torch.float8_e4m3fn).view(torch.uint8)


def is_nan_code(c: torch.Tensor) -> torch.Tensor:
    """e4m3fn NaN codes (S.1111.111), either sign."""
    return (c & 0x7F) == 0x7F


def compare(a: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, inv: torch.Tensor, q: torch.Tensor) -> dict:
    """What the measured ``scale``, ``inv`` and codes ``q`` (uint8) say about each model; normal amax only
    (FTZ flushes subnormal ones, which no real group has)."""
    normal = a.float() >= torch.finfo(torch.float32).tiny
    bits = lambda t: t.float().cpu().view(torch.int32)   # noqa: E731
    table = sm90_fast_math_scale(a.float().cpu())[0]   # where the twin's measured table applies
    out = {"amax_values": int(normal.sum()), "twin_table_values": int((normal & table).sum())}
    for name in MODELS:
        s, v = model(a, name)
        where = normal & table if name == "twin" else normal
        out[name] = {"scale_differs": int(((bits(s) != bits(scale)) & where).sum()),
                     "inv_differs": int(((bits(v) != bits(inv)) & where).sum()),
                     "codes_differ": int(((codes(x, s) != q.cpu()) & where).sum())}
    # RN of x times the kernel's own scale, where that scale is finite (an amax below 448 / FLT_MAX makes it
    # inf, and x = 0 then gives a NaN code whose sign bit the CPU and the GPU choose differently)
    finite = normal & torch.isfinite(scale.cpu())
    rn = codes(x, scale.cpu())
    off = ((rn != q.cpu()) & ~(is_nan_code(rn) & is_nan_code(q.cpu())) & finite).nonzero().flatten()
    out["codes_follow_scale_by_rn"] = off.numel() == 0
    out["codes_off_rn"] = int(off.numel())
    out["codes_off_rn_examples"] = [{"amax": float(a[i]), "x": float(x[i]), "scale": float(scale[i]),
                                     "kernel_code": f"{int(q[i]):02x}", "rn_code": f"{int(rn[i]):02x}"} for i in off[:4].tolist()]
    out["infinite_scales"] = int((normal & ~torch.isfinite(scale.cpu())).sum())
    # exponent invariance: scale(m * 2^e) == scale(m) * 2^-e for amax in [2^-100, 2^100] (no range edges)
    m = a.float().cpu()
    ref = (m >= 1) & (m < 2)
    mant = a.view(torch.int16).cpu() & 0x7F
    table_s = torch.zeros(128, dtype=torch.float32)
    table_v = torch.zeros(128, dtype=torch.float32)
    table_s[mant[ref].long()], table_v[mant[ref].long()] = scale.cpu()[ref], inv.cpu()[ref]
    e = torch.floor(torch.log2(m))
    mid = (m >= 2.0 ** -100) & (m < 2.0 ** 100)
    pred_s = table_s[mant.long()] * torch.exp2(-e)
    pred_v = table_v[mant.long()] * torch.exp2(e)
    out["exponent_invariant"] = bool(torch.equal(bits(pred_s)[mid], bits(scale)[mid])
                                     and torch.equal(bits(pred_v)[mid], bits(inv)[mid]))
    out["table_amax_1_to_2"] = {"scale_bits": [f"{int(b) & 0xFFFFFFFF:08x}" for b in bits(table_s)],
                                "inv_bits": [f"{int(b) & 0xFFFFFFFF:08x}" for b in bits(table_v)]}
    return out


def verdict(stats: dict, arch: str) -> ProbeResult:
    case = SCALE_CASE
    n, nt = stats["amax_values"], stats["twin_table_values"]
    twin, rn, exact = stats["twin"], stats["rn-reciprocal"], stats["correctly-rounded"]
    metrics = {"amax_values": n, **{f"{m.replace('-', '_')}_{k}": stats[m][k] for m in MODELS for k in stats[m]}}
    ex = stats.get("codes_off_rn_examples") or []
    tail = (f"448 * RN(1 / amax) (the reference's) differs in {rn['scale_differs']} of {n} scales / {rn['inv_differs']} "
            f"stored scales / {rn['codes_differ']} codes; "
            f"correctly rounded division in {exact['scale_differs']} scales / {exact['inv_differs']} stored "
            f"scales / {exact['codes_differ']} codes; exponent-invariant: {stats['exponent_invariant']}; codes follow "
            f"the scale by RN: {stats['codes_follow_scale_by_rn']}"
            + (f" ({stats['codes_off_rn']} off, e.g. amax {ex[0]['amax']:.6g} x {ex[0]['x']:.6g}: kernel "
               f"{ex[0]['kernel_code']}, RN {ex[0]['rn_code']})" if ex else "") + f" ({arch})")
    if not any(twin.values()):
        return ProbeResult(case, "pass", f"the twin's measured sm90 scales reproduce the kernel's for all {nt} amax in "
                           f"[2^-100, 2^100]; {tail}", metrics, stats)
    return ProbeResult(case, "fail", (
        f"finding (our twin's contract, Findings 7): the twin's measured sm90 scales differ from this GPU's in "
        f"{twin['scale_differs']} of {nt} scales, {twin['inv_differs']} stored scales, {twin['codes_differ']} codes; {tail}"),
        metrics, stats)


def scale_probe(exe: Path, device) -> dict:
    a, x = inputs()
    n = a.numel()
    raw = _run(exe, "scale", np.int32(n).tobytes() + _bits16(a) + _bits16(x), device)
    scale = torch.frombuffer(bytearray(raw[:4 * n]), dtype=torch.float32)
    inv = torch.frombuffer(bytearray(raw[4 * n:8 * n]), dtype=torch.float32)
    q = torch.frombuffer(bytearray(raw[8 * n:9 * n]), dtype=torch.uint8)
    return compare(a, x, scale, inv, q)


SWIGLU = {"plain": SwigluParams(), "gpt-oss": GPT_OSS}


def swiglu_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Every finite bf16 gate (fc1's gate half is bf16; no bias), each with a random bf16 up of scale 2."""
    g = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    g = g[torch.isfinite(g.float())]
    u = (torch.randn(g.numel(), generator=torch.Generator().manual_seed(seed)) * 2).to(torch.bfloat16)
    return g, u


def twin_swiglu(g: torch.Tensor, u: torch.Tensor, params: SwigluParams) -> torch.Tensor:
    """The FlashInfer twins' activation on bf16 gate/up: fp32 SwiGLU, one rounding (``Precision.CUTLASS``)."""
    return swiglu(g.float(), u.float(), params, Precision.CUTLASS).to(torch.bfloat16)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in bf16 ULPs (ordinal distance of the bit patterns; -0 and +0 are 0 apart)."""
    return (float_to_ordered_int(a) - float_to_ordered_int(b)).abs()


# Outputs and inputs below this size are what fast math flushes (fp32 subnormals under .ftz; div.approx's 0 for a
# denominator past 2^126, true values below about 1e-35): counted apart, far below what an FP8 block can resolve
FLUSH_FLOOR = 1e-30


def swiglu_compare(g: torch.Tensor, u: torch.Tensor, kernel: torch.Tensor, params: SwigluParams) -> dict:
    """How the kernel's bf16 outputs sit against the twin's: counts per ULP distance (NaN where either is NaN),
    over all outputs and over those whose twin value and inputs are at least :data:`FLUSH_FLOOR` in size."""
    twin = twin_swiglu(g, u, params)
    both_nan = twin.isnan() & kernel.isnan()
    d = ulp_distance(kernel, twin)
    d = torch.where(both_nan, torch.zeros_like(d), torch.where(twin.isnan() | kernel.isnan(), torch.full_like(d, 1 << 20), d))
    small = (twin.float().abs() < FLUSH_FLOOR) | (g.float().abs() < FLUSH_FLOOR) | (u.float().abs() < FLUSH_FLOOR)
    big = torch.where(small, torch.zeros_like(d), d)
    out = {"outputs": int(d.numel()), "differ": int((d > 0).sum()), "differ_by_1_ulp": int((d == 1).sum()),
           "max_ulp": int(d.max()) if d.numel() else 0, "differ_below_floor": int(((d > 0) & small).sum()),
           "max_ulp_above_floor": int(big.max()) if d.numel() else 0}
    for key, dist in (("worst", d), ("worst_above_floor", big)):
        i = int(dist.argmax()) if d.numel() else 0
        out[key] = {"gate": float(g[i]), "up": float(u[i]), "kernel": float(kernel[i]), "twin": float(twin[i])}
    return out


def swiglu_verdict(stats: dict, name: str, arch: str) -> ProbeResult:
    """Passes while every output whose value and inputs are above :data:`FLUSH_FLOOR` is within 1 ULP of the twin's."""
    case = f"probe:SwiGLU under nvcc -use_fast_math (FlashInfer doActivationKernel, {name})"
    metrics = {k: stats[k] for k in ("outputs", "differ", "differ_by_1_ulp", "max_ulp", "differ_below_floor",
                                     "max_ulp_above_floor")}
    w, wa = stats["worst"], stats["worst_above_floor"]
    msg = (f"{stats['differ']} of {stats['outputs']} bf16 outputs differ from the twin's fp32 SwiGLU "
           f"({stats['differ_by_1_ulp']} by 1 ULP; {stats['differ_below_floor']} where the value or an input is below "
           f"{FLUSH_FLOOR:g}, at most {stats['max_ulp']} ULP: gate {w['gate']:.6g}, up {w['up']:.6g}, kernel "
           f"{w['kernel']:.6g}, twin {w['twin']:.6g}); above it at most {stats['max_ulp_above_floor']} ULP (gate "
           f"{wa['gate']:.6g}, up {wa['up']:.6g}: kernel {wa['kernel']:.6g}, twin {wa['twin']:.6g}); {arch}")
    if stats["max_ulp_above_floor"] <= 1:
        return ProbeResult(case, "pass", f"within 1 ULP above {FLUSH_FLOOR:g}: {msg}", metrics, stats)
    return ProbeResult(case, "fail", f"finding (our twin's contract, Findings 7): more than 1 ULP apart: {msg}",
                       metrics, stats)


def fast_math_probe(device) -> list[ProbeResult]:
    compiler = nvcc()
    case = SCALE_CASE
    if compiler is None:
        return [ProbeResult(case, "skipped", "needs nvcc (CUDA_HOME/bin/nvcc or on PATH), found none")]
    cap = torch.cuda.get_device_capability(device)
    exe, error = binary(compiler, cap)
    if exe is None:
        return [ProbeResult(case, "error", f"nvcc failed: {error}")]
    arch = f"sm_{cap[0]}{cap[1]}, {Path(compiler).name} {' '.join(FLAGS)}"
    stats = scale_probe(exe, device)
    stats["ptx"] = ptx_ops(compiler, cap)
    out = [verdict(stats, arch)]
    g, u = swiglu_inputs()
    for name, params in SWIGLU.items():
        limit = float("inf") if params.limit is None else params.limit
        head = np.int32(g.numel()).tobytes() + np.int32(0 if params.is_plain else 1).tobytes()
        head += np.array([params.alpha, params.beta, limit], dtype=np.float32).tobytes()
        raw = _run(exe, "swiglu", head + _bits16(g) + _bits16(u), device)
        kernel = torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16)
        out.append(swiglu_verdict(swiglu_compare(g, u, kernel, params), name, arch))
    return out
