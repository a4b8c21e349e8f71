"""The fast-math probe's CUDA program (FlashInfer's FP8 scale lines and SwiGLU, compiled with its flags), its
build (cached under ``$MOEACC_CACHE_DIR``) and how it is run: ``harness.probes.fast_math`` compares what it prints."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

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
