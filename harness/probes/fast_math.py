"""FlashInfer's fast-math arithmetic on this GPU, bit for bit, against the twin's (Findings 7).

FlashInfer builds its ``fused_moe_90`` module with its default ``-use_fast_math`` (``jit/core.py:746-747``,
``-O3 -DNDEBUG`` at :763; ``jit/fused_moe.py:274-279`` does not opt out; 0.7.2.post1, and at 0.6.12).
Two pieces of its FP8 block-scale path turn approximate under it, and both feed fc2's FP8 codes:

- ``scale_1x128_kernel`` (``fp8_blockscale_gemm_kernel.cuh:979-999`` at 0.6.12 and 0.7.2.post1) takes
  the group's amax as bf16, computes ``scale = 448.f / float(amax)`` (1 for a zero amax), stores
  ``1.f / scale`` and writes ``__nv_fp8_e4m3(float(x) * scale)``: nvcc 13.0 emits ``div.approx.ftz``,
  ``rcp.approx.ftz``, ``mul.ftz`` and ``cvt.rn.satfinite.e4m3x2`` (:func:`ptx_ops`). ``div.approx`` is
  ``a * (1/b)`` with an approximate reciprocal (PTX ISA); the twin computes ``448 * RN(1 / amax)`` and
  ``RN(1 / scale)`` (torch's ``448 / amax``, ``references.formats.fp8``): the same bits wherever the GPU's
  reciprocal is correctly rounded. Measured on every positive finite bf16 amax, against the twin's own
  ``_fp8_scale`` and, for comparison, correctly rounded division; the row fails while any scale differs.
  It also checks the scale follows the exponent (then 128 bf16 mantissas determine it: the notes carry
  that table, what a twin needs to reproduce the kernel) and that the codes follow the scale by RN.
- ``doActivationKernel``'s SwiGLU (``cutlass_fused_moe_kernels.cuh:2238-2262, 2480-2589`` at 0.7.2.post1;
  cutlass ``Sigmoid`` is ``1 / (1 + fast_exp(-z))``, ``epilogue/thread/activation.h:422-441``, with
  ``fast_exp`` = ``expf``, ``fast_math.h:877-879``): ``expf`` becomes ``ex2.approx`` and the division
  ``div.approx``. Measured on every finite bf16 gate (an up value each), plain and GPT-OSS parameters,
  against the twin's ``swiglu(..., Precision.CUTLASS)`` rounded to bf16: the row passes while every
  output is within 1 bf16 ULP of the twin's (the difference the twin cannot model without the GPU's
  ``ex2``), and counts how many differ.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from harness.probes.base import ProbeResult
from references.activations import GPT_OSS, Precision, SwigluParams, swiglu
from references.formats import TRTLLM, Fp8Scale
from references.formats.bits import float_to_ordered_int
from references.formats.fp8 import _fp8_scale

# FlashInfer gen_jit_spec's defaults for the fused_moe_90 module (jit/core.py:736-764 at 0.7.2.post1)
FLAGS = ("-std=c++17", "-use_fast_math", "-O3", "-DNDEBUG")

# The kernels' lines, one element per thread, and a main: `prog scale IN OUT` reads n, amax[n], x[n] (bf16
# bits) and writes scale[n], inv[n] (fp32), q[n] (e4m3); `prog swiglu IN OUT` reads n, mode, alpha, beta,
# limit, gate[n], up[n] and writes out[n] (bf16). scale: fp8_blockscale_gemm_kernel.cuh:988-999;
# swiglu: cutlass_fused_moe_kernels.cuh:2238-2262 (GLUAdaptor<SiLu>, SwigluBiasAdaptor), 2572 (x token
# scale, a runtime 1.0f), 2589 (bf16 store); cutlass activation.h:422-441, fast_math.h:877-879 (0.7.2.post1).
SOURCE = r"""
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
__global__ void scale_lines(const __nv_bfloat16* amaxs, const __nv_bfloat16* xs, float* scales, float* invs,
                            __nv_fp8_e4m3* qs, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  __nv_bfloat16 amax = amaxs[i];
  float scale = amax != __nv_bfloat16(0.f) ? 448.f / float(amax) : 1.f;
  invs[i] = float(1.f / scale);
  float value = float(xs[i]) * scale;
  qs[i] = __nv_fp8_e4m3(value);
  scales[i] = scale;
}
__device__ float sigmoid_(float z) { return 1.f / (1.f + expf(-z)); }
__global__ void swiglu_lines(const __nv_bfloat16* gs, const __nv_bfloat16* us, __nv_bfloat16* outs, int n, int bias,
                             float alpha, float beta, float limit, float token_scale) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float g = float(gs[i]), u = float(us[i]), out;
  if (bias) {
    float u_c = fmaxf(fminf(u, limit), -limit);
    float g_c = fminf(g, limit);
    out = g_c * sigmoid_(g_c * alpha) * (u_c + beta);
  } else {
    out = (g * sigmoid_(g)) * u;
  }
  outs[i] = __float2bfloat16_rn(out * token_scale);
}
static int fail(const char* what) { fprintf(stderr, "%s\n", what); return 2; }
int main(int argc, char** argv) {
  if (argc != 4) return fail("usage: prog scale|swiglu IN OUT");
  FILE* f = fopen(argv[2], "rb");
  int n = 0;
  if (!f || fread(&n, 4, 1, f) != 1) return fail("cannot read n");
  bool swiglu = strcmp(argv[1], "swiglu") == 0;
  int bias = 0; float p[3] = {1.f, 0.f, INFINITY};
  if (swiglu && (fread(&bias, 4, 1, f) != 1 || fread(p, 4, 3, f) != 3)) return fail("cannot read parameters");
  std::vector<uint16_t> in(2 * (size_t)n);
  if (fread(in.data(), 2, in.size(), f) != in.size()) return fail("cannot read inputs");
  fclose(f);
  __nv_bfloat16 *a, *x;
  cudaMalloc(&a, 2 * n); cudaMalloc(&x, 2 * n);
  cudaMemcpy(a, in.data(), 2 * n, cudaMemcpyHostToDevice);
  cudaMemcpy(x, in.data() + n, 2 * n, cudaMemcpyHostToDevice);
  FILE* o = fopen(argv[3], "wb");
  if (!o) return fail("cannot write output");
  if (swiglu) {
    __nv_bfloat16* y; cudaMalloc(&y, 2 * n);
    swiglu_lines<<<(n + 255) / 256, 256>>>(a, x, y, n, bias, p[0], p[1], p[2], 1.f);
    std::vector<uint16_t> hy(n);
    cudaError_t e = cudaMemcpy(hy.data(), y, 2 * n, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return fail(cudaGetErrorString(e));
    fwrite(hy.data(), 2, n, o);
  } else {
    float *s, *v; __nv_fp8_e4m3* q;
    cudaMalloc(&s, 4 * n); cudaMalloc(&v, 4 * n); cudaMalloc(&q, n);
    scale_lines<<<(n + 255) / 256, 256>>>(a, x, s, v, q, n);
    std::vector<float> hs(n), hv(n); std::vector<uint8_t> hq(n);
    cudaMemcpy(hs.data(), s, 4 * n, cudaMemcpyDeviceToHost);
    cudaMemcpy(hv.data(), v, 4 * n, cudaMemcpyDeviceToHost);
    cudaError_t e = cudaMemcpy(hq.data(), q, n, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return fail(cudaGetErrorString(e));
    fwrite(hs.data(), 4, n, o); fwrite(hv.data(), 4, n, o); fwrite(hq.data(), 1, n, o);
  }
  fclose(o);
  return 0;
}
"""

E4M3_MAX = 448.0
SCALE_CASE = "probe:fp8 activation scale under nvcc -use_fast_math (FlashInfer scale_1x128_kernel)"


def nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    found = shutil.which("nvcc") or str(Path(home) / "bin" / "nvcc")
    return found if Path(found).exists() else None


def arch_flag(capability: tuple[int, int]) -> str:
    """FlashInfer's gencode for sm90 (``sm90a_nvcc_flags``, jit/core.py:160-163); the plain arch elsewhere."""
    cc = f"{capability[0]}{capability[1]}"
    suffix = "a" if cc == "90" else ""
    return f"-gencode=arch=compute_{cc}{suffix},code=sm_{cc}{suffix}"


def ptx_ops(compiler: str, capability: tuple[int, int] = (9, 0), flags: tuple[str, ...] = FLAGS) -> list[str]:
    """The floating-point PTX instructions nvcc emits for :data:`SOURCE`'s kernel with ``flags``."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "scale.cu"
        src.write_text(SOURCE)
        subprocess.run([compiler, *flags, arch_flag(capability), "-ptx", str(src), "-o", str(Path(d) / "scale.ptx")],
                       check=True, capture_output=True, text=True, timeout=300)
        ptx = (Path(d) / "scale.ptx").read_text()
    return sorted(set(re.findall(r"\b((?:div|rcp|mul|fma|ex2|add|min|max)\.[a-z0-9.]*f32|cvt\.rn\.satfinite\.e4m3x2\.f32)", ptx)))


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every positive finite bf16 amax (0x0001-0x7F7F) with an x of at most that magnitude each
    (``amax * u``, u uniform in [-1, 1], rounded to bf16, and x = amax itself every 8th)."""
    a = torch.arange(1, 0x7F80, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    u = torch.rand(a.numel(), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    u[::8] = 1.0
    return a, (a.float() * u).to(torch.bfloat16)


MODELS = ("twin", "correctly-rounded")


def model(a: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, stored 1/scale) of ``a`` (bf16 amax) under the named model, fp32 on the CPU."""
    af = a.float().cpu()
    if name == "twin":
        return _fp8_scale(af, Fp8Scale.FP32, TRTLLM)
    if name == "correctly-rounded":
        s = torch.full_like(af, E4M3_MAX) / af   # a tensor divisor: one rounding (references/formats/arith.py)
        return s, torch.ones_like(s) / s
    raise ValueError(f"unknown model {name!r}")


def codes(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``cvt.rn.satfinite.e4m3`` of ``x * scale`` (fp32, flush-to-zero of subnormal x as ``mul.ftz``)."""
    xf = x.float().cpu()
    xf = torch.where(xf.abs() < torch.finfo(torch.float32).tiny, torch.zeros_like(xf), xf)
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
    out = {"amax_values": int(normal.sum())}
    for name in MODELS:
        s, v = model(a, name)
        out[name] = {"scale_differs": int(((bits(s) != bits(scale)) & normal).sum()),
                     "inv_differs": int(((bits(v) != bits(inv)) & normal).sum()),
                     "codes_differ": int(((codes(x, s) != q.cpu()) & normal).sum())}
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
    n = stats["amax_values"]
    twin, exact = stats["twin"], stats["correctly-rounded"]
    metrics = {"amax_values": n, **{f"{m.replace('-', '_')}_{k}": stats[m][k] for m in MODELS for k in stats[m]}}
    ex = stats.get("codes_off_rn_examples") or []
    tail = (f"correctly rounded division differs in {exact['scale_differs']} scales / {exact['inv_differs']} stored "
            f"scales / {exact['codes_differ']} codes; exponent-invariant: {stats['exponent_invariant']}; codes follow "
            f"the scale by RN: {stats['codes_follow_scale_by_rn']}"
            + (f" ({stats['codes_off_rn']} off, e.g. amax {ex[0]['amax']:.6g} x {ex[0]['x']:.6g}: kernel "
               f"{ex[0]['kernel_code']}, RN {ex[0]['rn_code']})" if ex else "") + f" ({arch})")
    if not any(twin.values()):
        return ProbeResult(case, "pass", f"the twin's 448 * RN(1 / amax) reproduces the kernel's scales for all {n} "
                           f"amax values; {tail}", metrics, stats)
    return ProbeResult(case, "fail", (
        f"finding (our twin's contract, Findings 7): the twin's 448 * RN(1 / amax) differs from the kernel's arithmetic in "
        f"{twin['scale_differs']} of {n} scales, {twin['inv_differs']} stored scales, {twin['codes_differ']} codes; {tail}"),
        metrics, stats)


def binary(compiler: str, capability: tuple[int, int]) -> tuple[Path | None, str]:
    """The probe program for this GPU, built once per source, flags and arch under ``$MOEACC_CACHE_DIR``;
    ``(path, "")`` or ``(None, first compiler error)``."""
    from harness.backends.flashinfer.build import cache_dir
    flags = (*FLAGS, arch_flag(capability))
    key = hashlib.sha256("\0".join((SOURCE, compiler, *flags)).encode()).hexdigest()[:16]
    exe = cache_dir() / "probes" / f"fast-math-{key}" / "fast-math"
    if exe.exists():
        return exe, ""
    exe.parent.mkdir(parents=True, exist_ok=True)
    src = exe.parent / "fast-math.cu"
    src.write_text(SOURCE)
    tmp = exe.with_suffix(".tmp")
    build = subprocess.run([compiler, *flags, str(src), "-o", str(tmp)], capture_output=True, text=True, timeout=600)
    if build.returncode:
        return None, next((ln for ln in build.stderr.splitlines() if "error" in ln), build.stderr.strip()[:200])
    tmp.replace(exe)
    return exe, ""


def _run(exe: Path, mode: str, payload: bytes, device) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        fin, fout = Path(d) / "in.bin", Path(d) / "out.bin"
        fin.write_bytes(payload)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(torch.device(device).index or 0))
        ran = subprocess.run([str(exe), mode, str(fin), str(fout)], capture_output=True, text=True, timeout=120, env=env)
        if ran.returncode:
            raise RuntimeError(f"probe program ({mode}) exited {ran.returncode}: {ran.stderr.strip()[:200]}")
        return fout.read_bytes()


def _bits16(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.int16).numpy().tobytes()


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


def swiglu_compare(g: torch.Tensor, u: torch.Tensor, kernel: torch.Tensor, params: SwigluParams) -> dict:
    """How the kernel's bf16 outputs sit against the twin's: counts per ULP distance (NaN where either is NaN)."""
    twin = twin_swiglu(g, u, params)
    both_nan = twin.isnan() & kernel.isnan()
    d = ulp_distance(kernel, twin)
    d = torch.where(both_nan, torch.zeros_like(d), torch.where(twin.isnan() | kernel.isnan(), torch.full_like(d, 1 << 20), d))
    worst = int(d.max()) if d.numel() else 0
    i = int(d.argmax()) if d.numel() else 0
    return {"outputs": int(d.numel()), "differ": int((d > 0).sum()), "differ_by_1_ulp": int((d == 1).sum()),
            "max_ulp": worst, "worst": {"gate": float(g[i]), "up": float(u[i]), "kernel": float(kernel[i]),
                                        "twin": float(twin[i])}}


def swiglu_verdict(stats: dict, name: str, arch: str) -> ProbeResult:
    case = f"probe:SwiGLU under nvcc -use_fast_math (FlashInfer doActivationKernel, {name})"
    metrics = {k: stats[k] for k in ("outputs", "differ", "differ_by_1_ulp", "max_ulp")}
    w = stats["worst"]
    msg = (f"{stats['differ']} of {stats['outputs']} bf16 outputs differ from the twin's fp32 SwiGLU "
           f"({stats['differ_by_1_ulp']} by 1 ULP), at most {stats['max_ulp']} ULP (gate {w['gate']:.6g}, up "
           f"{w['up']:.6g}: kernel {w['kernel']:.6g}, twin {w['twin']:.6g}); {arch}")
    if stats["max_ulp"] <= 1:
        return ProbeResult(case, "pass", f"within 1 ULP: {msg}", metrics, stats)
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
