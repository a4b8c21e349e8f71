"""Lazy FlashInfer import with a configurable JIT cache and a trimmed SM90 fused-MoE build.

The stock ``fused_moe_90`` JIT module compiles 182 (0.6.12) to 248 (0.7.2.post1) translation
units, about 40 minutes on 16 cores. The harness's three SM90 paths need far fewer: we filter
FlashInfer's own ``JitSpec`` sources and build them under our own name, so a full build elsewhere
in the same cache is never clobbered. Kept generated files (sources read in flashinfer-python
0.6.12 and 0.7.2.post1, ``flashinfer/jit/fused_moe.py`` + ``generate_kernels.py``):

- W4A16 (bf16 x MXFP4): ``sm90_generic_mixed_moe_gemm_kernelLauncher<__nv_bfloat16, FP4`` where
  FP4 is ``__nv_fp4_e2m1`` (<= 0.6.15, 0.6.16.post3-0.6.17) or ``SafeFP4`` (0.6.16-0.6.16.post2,
  >= 0.6.18: why the old filter found nothing at 0.6.18);
- bf16: the SM90 TMA warp-specialized bf16 x bf16 instantiations and the SM80 fused-gated bf16
  fallback (on sm90 the bf16 tactic list includes Ampere configs, ``moe_gemm_template_dispatch.h``);
- FP8 block scale: no generated file (``CutlassFp8BlockScaleGemmRunner`` in ``fp8_blockscale_gemm.cu``).

Fixed sources stay, less the ``moe_gemm_kernels_<act>_<w>.cu`` files of other type pairs. A call
into a dropped instantiation aborts the process (tvm-ffi loads with RTLD_LAZY): keep every path a
reachable tactic needs, and run kernels isolated (``moeacc run --isolate``).

The build needs nvcc and the CUDA headers, not a GPU: ``moeacc build-flashinfer`` builds the .so
on any machine (``FLASHINFER_CUDA_ARCH_LIST=9.0a``), to carry to a GPU machine.

Environment:
- ``MOEACC_CACHE_DIR``: root of the build cache (default ``~/.cache/moe-accuracy``); FlashInfer's
  ``FLASHINFER_WORKSPACE_BASE`` is pointed at ``$MOEACC_CACHE_DIR/flashinfer`` unless already set.
- ``MOEACC_FLASHINFER_PREBUILT``: a folder holding ``<spec>/<spec>.so`` built earlier; loaded
  instead of building (``aot_path`` in FlashInfer <= 0.6.x, ``aot_artifacts`` in 0.7.x).
- ``MOEACC_FLASHINFER_FULL_BUILD=1``: do not trim (build every type pair).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

TRIMMED_SUFFIX = "_moeacc"
KEPT_TYPE_PAIRS = ("bf16_fp4", "bf16_bf16", "bf16_fp8")
GENERATED_KEEP = {
    "w4a16": re.compile(r"sm90_generic_mixed_moe_gemm_kernelLauncher<\s*__nv_bfloat16\s*,\s*(?:__nv_fp4_e2m1|SafeFP4)\s*,"),
    "bf16-tma": re.compile(r"INSTANTIATE_TMA_WARP_SPECIALIZED_MOE_GEMM\(\s*Sm90\s*,\s*__nv_bfloat16\s*,\s*__nv_bfloat16\s*,"),
    "bf16-sm80": re.compile(r"sm80_generic_fused_moe_gemm_kernelLauncher<\s*cutlass::bfloat16_t\s*,"),
}
_TYPE_PAIR_FILE = re.compile(r"moe_gemm_kernels_([a-z0-9]+_[a-z0-9]+)\.cu$")
_patched = False


def cache_dir() -> Path:
    return Path(os.environ.get("MOEACC_CACHE_DIR", Path.home() / ".cache" / "moe-accuracy"))


def import_flashinfer():
    """Import ``flashinfer.fused_moe`` after pointing its JIT cache at ours; patch the SM90 build once."""
    global _patched
    os.environ.setdefault("FLASHINFER_WORKSPACE_BASE", str(cache_dir() / "flashinfer"))
    import flashinfer.fused_moe as fused_moe  # noqa: F401  (lazy: optional dependency)
    import flashinfer.fused_moe.core as core

    if not _patched and os.environ.get("MOEACC_FLASHINFER_FULL_BUILD") != "1":
        original = core.gen_cutlass_fused_moe_sm90_module

        def trimmed(use_fast_build: bool = False):
            return trim_spec(original(use_fast_build))

        core.gen_cutlass_fused_moe_sm90_module = trimmed
        _patched = True
    return fused_moe


def select_sources(sources: list[Path]) -> list[Path]:
    """The subset of the SM90 fused-MoE sources the harness's W4A16, bf16 and FP8-block paths need."""
    keep, found = [], {k: 0 for k in GENERATED_KEEP}
    for src in map(Path, sources):
        if src.name.endswith(".generated.cu"):
            try:
                text = src.read_text(errors="replace")
            except OSError:
                continue
            hits = [k for k, rx in GENERATED_KEEP.items() if rx.search(text)]
            for k in hits:
                found[k] += 1
            if hits:
                keep.append(src)
        elif (m := _TYPE_PAIR_FILE.search(src.name)):
            if m.group(1) in KEPT_TYPE_PAIRS:
                keep.append(src)
        else:
            keep.append(src)  # fixed sources (fp8_blockscale_gemm.cu: the FP8 block path and the .so's symbols)
    missing = [k for k, n in found.items() if n == 0]
    if missing:
        raise RuntimeError(f"trimmed FlashInfer SM90 build found no generated {' / '.join(missing)} kernels "
                           "(a FlashInfer version whose generator names them differently); "
                           "set MOEACC_FLASHINFER_FULL_BUILD=1 to build everything")
    return keep


def prebuilt_so(name: str) -> Path | None:
    """``$MOEACC_FLASHINFER_PREBUILT/<name>/<name>.so`` (None when unset); raises, naming the file, for one
    that would kill the process at its first driver call (:func:`driver_link_problem`)."""
    d = os.environ.get("MOEACC_FLASHINFER_PREBUILT")
    if not d:
        return None
    p = Path(d) / name / f"{name}.so"
    why = driver_link_problem(p) if p.exists() else None
    if why is not None:
        raise RuntimeError(f"MOEACC_FLASHINFER_PREBUILT: {why}")
    return p


def driver_link_problem(so: Path) -> str | None:
    """Why ``so`` would die with ``symbol lookup error`` at its first CUDA driver call: driver symbols
    (``cu*``) undefined while ``libcuda.so.1`` is not among its needed libraries, which is what linking
    ``-lcuda`` against a stub without symbols gives (the linker drops it as not needed). None when fine,
    or when ``readelf`` is not there to tell."""
    readelf = shutil.which("readelf")
    if readelf is None:
        return None
    out = subprocess.run([readelf, "-dW", "--dyn-syms", str(so)], capture_output=True, text=True, timeout=60).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    undefined = sorted(set(re.findall(r"\sUND\s+(cu[A-Z]\w*)", out)))
    if undefined and not any(n.startswith("libcuda.so") for n in needed):
        return (f"{so.name} calls the CUDA driver ({', '.join(undefined[:3])}{', ...' if len(undefined) > 3 else ''}) "
                "but does not link libcuda.so.1 (built against a libcuda stub without symbols?): link the toolkit's "
                "lib64/stubs/libcuda.so, or add it with `patchelf --add-needed libcuda.so.1`")
    return None


def trim_spec(spec):
    """A copy of FlashInfer's SM90 ``JitSpec`` with only the kept sources, under its own name,
    that loads ``$MOEACC_FLASHINFER_PREBUILT/<name>/<name>.so`` when present."""
    base = type(spec)

    class TrimmedSpec(base):
        @property
        def aot_path(self):  # FlashInfer <= 0.6.x: build_and_load checks aot_path.exists()
            p = prebuilt_so(self.name)
            return p if p is not None else super().aot_path

        if hasattr(base, "aot_artifacts"):  # FlashInfer 0.7.x: try_load reads aot_artifacts, not aot_path
            @property
            def aot_artifacts(self):
                p = prebuilt_so(self.name)
                if p is None or not p.exists():
                    return super().aot_artifacts
                from flashinfer.jit import env as jit_env
                return (jit_env.AOTArtifact("moeacc", p, None),)

    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    values["name"] = spec.name + TRIMMED_SUFFIX
    values["sources"] = select_sources(spec.sources)
    return TrimmedSpec(**values)


def build(arch: str = "9.0a", jobs: int | None = None, verbose: bool = False) -> Path:
    """Build the trimmed SM90 module here (nvcc and CUDA headers; no GPU needed); return the .so."""
    os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", arch)
    if jobs:
        os.environ["MAX_JOBS"] = str(jobs)
    os.environ.setdefault("FLASHINFER_WORKSPACE_BASE", str(cache_dir() / "flashinfer"))
    from flashinfer.jit.fused_moe import gen_cutlass_fused_moe_sm90_module
    spec = trim_spec(gen_cutlass_fused_moe_sm90_module())
    spec.build(verbose)
    so = Path(spec.jit_library_path)
    why = driver_link_problem(so)
    if why is not None:
        raise RuntimeError(why)
    return so
