"""The FP8 activation scale of FlashInfer's SM90 block-scale MoE as nvcc's fast math computes it, on
this GPU, bit for bit (Findings 7: the twin's correctly rounded division moves codes at e4m3
midpoints).

FlashInfer's ``scale_1x128_kernel`` (``fp8_blockscale_gemm_kernel.cuh:979-999`` at 0.6.12 and
0.7.2.post1) takes the group's amax as bf16, computes ``scale = 448.f / float(amax)`` (1 for a zero
amax), stores ``1.f / scale`` and writes ``__nv_fp8_e4m3(float(x) * scale)``. The ``fused_moe_90``
module is built with FlashInfer's default ``-use_fast_math`` (``jit/core.py:746-747``, ``-O3
-DNDEBUG`` at :763; ``jit/fused_moe.py:274-279`` does not opt out), under which nvcc 13.0 emits
``div.approx.ftz.f32``, ``rcp.approx.ftz.f32``, ``mul.ftz.f32`` and ``cvt.rn.satfinite.e4m3x2.f32``
for those lines (:func:`ptx_ops`). The PTX ISA defines ``div.approx`` as ``a * (1/b)`` with an
approximate reciprocal, and the twin's TRT-LLM rule computes ``448 * RN(1 / amax)`` and ``RN(1 / scale)``
(``references.formats.fp8``, torch's own ``448 / amax``): the two agree exactly where the GPU's
reciprocal is correctly rounded. Those bits are the hardware's, so they are measured here: the probe
compiles the kernel's lines with those flags for this GPU (``nvcc``, no FlashInfer needed), runs them on
every positive finite bf16 amax, and counts how many scales, stored scales and codes each model gets wrong:

- ``twin``: the reference's own quantizer scale (``_fp8_scale`` with ``TRTLLM``), the model in use;
- ``correctly-rounded``: ``RN(448 / a)`` and ``RN(1 / s)``, for comparison.

It also checks that the result scales with the exponent (then 128 bf16 mantissas determine it: the
notes carry that table, the data a twin needs to reproduce the kernel) and that the codes follow from
the scale by round-to-nearest. The row fails while the twin's scales differ from the kernel's arithmetic.
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
from references.formats import TRTLLM, Fp8Scale
from references.formats.fp8 import _fp8_scale

# FlashInfer gen_jit_spec's defaults for the fused_moe_90 module (jit/core.py:736-764 at 0.7.2.post1)
FLAGS = ("-std=c++17", "-use_fast_math", "-O3", "-DNDEBUG")

# The three lines of scale_1x128_kernel (fp8_blockscale_gemm_kernel.cuh:988-999), one amax per thread,
# and a main that reads n, amax[n], x[n] (bf16 bits) and writes scale[n], inv[n] (fp32), q[n] (e4m3).
SOURCE = r"""
#include <cstdio>
#include <cstdint>
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
int main(int argc, char** argv) {
  FILE* f = fopen(argv[1], "rb");
  int n = 0;
  if (!f || fread(&n, 4, 1, f) != 1) return 2;
  std::vector<uint16_t> in(2 * (size_t)n);
  if (fread(in.data(), 2, in.size(), f) != in.size()) return 3;
  fclose(f);
  __nv_bfloat16 *a, *x; float *s, *v; __nv_fp8_e4m3* q;
  cudaMalloc(&a, 2 * n); cudaMalloc(&x, 2 * n); cudaMalloc(&s, 4 * n); cudaMalloc(&v, 4 * n); cudaMalloc(&q, n);
  cudaMemcpy(a, in.data(), 2 * n, cudaMemcpyHostToDevice);
  cudaMemcpy(x, in.data() + n, 2 * n, cudaMemcpyHostToDevice);
  scale_lines<<<(n + 255) / 256, 256>>>(a, x, s, v, q, n);
  std::vector<float> hs(n), hv(n); std::vector<uint8_t> hq(n);
  cudaMemcpy(hs.data(), s, 4 * n, cudaMemcpyDeviceToHost);
  cudaMemcpy(hv.data(), v, 4 * n, cudaMemcpyDeviceToHost);
  cudaError_t e = cudaMemcpy(hq.data(), q, n, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) { fprintf(stderr, "%s\n", cudaGetErrorString(e)); return 4; }
  FILE* o = fopen(argv[2], "wb");
  fwrite(hs.data(), 4, n, o); fwrite(hv.data(), 4, n, o); fwrite(hq.data(), 1, n, o);
  fclose(o);
  return 0;
}
"""

E4M3_MAX = 448.0


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
    return sorted(set(re.findall(r"\b((?:div|rcp|mul|fma)\.[a-z0-9.]*f32|cvt\.rn\.satfinite\.e4m3x2\.f32)", ptx)))


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
    out["codes_follow_scale_by_rn"] = int(((codes(x, scale) != q.cpu()) & normal).sum()) == 0
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
    case = "probe:fp8 activation scale under nvcc -use_fast_math (FlashInfer scale_1x128_kernel)"
    n = stats["amax_values"]
    twin, exact = stats["twin"], stats["correctly-rounded"]
    metrics = {"amax_values": n, **{f"{m.replace('-', '_')}_{k}": stats[m][k] for m in MODELS for k in stats[m]}}
    tail = (f"correctly rounded division differs in {exact['scale_differs']} scales / {exact['inv_differs']} stored "
            f"scales / {exact['codes_differ']} codes; exponent-invariant: {stats['exponent_invariant']}; codes follow "
            f"the scale by RN: {stats['codes_follow_scale_by_rn']} ({arch})")
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
    exe = cache_dir() / "probes" / f"fast-math-{key}" / "scale"
    if exe.exists():
        return exe, ""
    exe.parent.mkdir(parents=True, exist_ok=True)
    src = exe.parent / "scale.cu"
    src.write_text(SOURCE)
    tmp = exe.with_suffix(".tmp")
    build = subprocess.run([compiler, *flags, str(src), "-o", str(tmp)], capture_output=True, text=True, timeout=600)
    if build.returncode:
        return None, next((ln for ln in build.stderr.splitlines() if "error" in ln), build.stderr.strip()[:200])
    tmp.replace(exe)
    return exe, ""


def fast_math_probe(device) -> list[ProbeResult]:
    compiler = nvcc()
    case = "probe:fp8 activation scale under nvcc -use_fast_math (FlashInfer scale_1x128_kernel)"
    if compiler is None:
        return [ProbeResult(case, "skipped", "needs nvcc (CUDA_HOME/bin/nvcc or on PATH), found none")]
    cap = torch.cuda.get_device_capability(device)
    exe, error = binary(compiler, cap)
    if exe is None:
        return [ProbeResult(case, "error", f"nvcc failed: {error}")]
    a, x = inputs()
    n = a.numel()
    with tempfile.TemporaryDirectory() as d:
        fin, fout = Path(d) / "in.bin", Path(d) / "out.bin"
        with open(fin, "wb") as f:
            f.write(np.int32(n).tobytes())
            f.write(a.view(torch.int16).numpy().tobytes())
            f.write(x.view(torch.int16).numpy().tobytes())
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(torch.device(device).index or 0))
        ran = subprocess.run([str(exe), str(fin), str(fout)], capture_output=True, text=True, timeout=120, env=env)
        if ran.returncode:
            return [ProbeResult(case, "error", f"probe program exited {ran.returncode}: {ran.stderr.strip()[:200]}")]
        raw = fout.read_bytes()
    scale = torch.frombuffer(bytearray(raw[:4 * n]), dtype=torch.float32)
    inv = torch.frombuffer(bytearray(raw[4 * n:8 * n]), dtype=torch.float32)
    q = torch.frombuffer(bytearray(raw[8 * n:9 * n]), dtype=torch.uint8)
    stats = compare(a, x, scale, inv, q)
    stats["ptx"] = ptx_ops(compiler, cap)
    return [verdict(stats, f"sm_{cap[0]}{cap[1]}, {Path(compiler).name} {' '.join(FLAGS)}")]
