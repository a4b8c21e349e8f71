"""Lazy FlashInfer import with a configurable JIT cache and a trimmed SM90 W4A16 MoE build.

The stock ``fused_moe_90`` JIT module compiles 182 translation units (about 40 minutes on 16
cores). The W4A16 MXFP4 path (bf16 x MXFP4, ``use_w4_group_scaling=True``) needs only the
generated mixed-input files that instantiate
``sm90_generic_mixed_moe_gemm_kernelLauncher<__nv_bfloat16, __nv_fp4_e2m1, ...>`` plus the fixed
sources, less the ``moe_gemm_kernels_<a>_<b>.cu`` files of other type pairs
(shared/notes/sm90-w4a16-probe.md). We filter FlashInfer's own ``JitSpec`` sources and build it
under its own name, so a full build elsewhere in the same cache is never clobbered.

Environment:
- ``MOEACC_CACHE_DIR``: root of the build cache (default ``~/.cache/moe-accuracy``); FlashInfer's
  ``FLASHINFER_WORKSPACE_BASE`` is pointed at ``$MOEACC_CACHE_DIR/flashinfer`` unless already set.
- ``MOEACC_FLASHINFER_PREBUILT``: a folder holding ``<spec>/<spec>.so`` built earlier; loaded
  instead of building (FlashInfer's AOT mechanism).
- ``MOEACC_FLASHINFER_FULL_BUILD=1``: do not trim (build every type pair).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

TRIMMED_SUFFIX = "_moeacc_w4a16"
_KEEP_TYPE_PAIR = "moe_gemm_kernels_bf16_fp4.cu"
_W4A16_LAUNCHER = re.compile(r"sm90_generic_mixed_moe_gemm_kernelLauncher<\s*__nv_bfloat16\s*,\s*__nv_fp4_e2m1")
_TYPE_PAIR_FILE = re.compile(r"moe_gemm_kernels_[a-z0-9]+_[a-z0-9]+\.cu$")
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
            return trim_w4a16_spec(original(use_fast_build))

        core.gen_cutlass_fused_moe_sm90_module = trimmed
        _patched = True
    return fused_moe


def select_w4a16_sources(sources: list[Path], generated_dir: Path | None = None) -> list[Path]:
    """The subset of the SM90 fused-MoE sources that the W4A16 MXFP4 path needs."""
    keep = []
    for src in sources:
        src = Path(src)
        if src.name.endswith(".generated.cu"):
            try:
                text = src.read_text(errors="replace")
            except OSError:
                continue
            if _W4A16_LAUNCHER.search(text):
                keep.append(src)
        elif _TYPE_PAIR_FILE.search(src.name):
            if src.name == _KEEP_TYPE_PAIR:
                keep.append(src)
        else:
            keep.append(src)  # fixed sources (fp8_blockscale_gemm.cu must stay: the .so needs its symbols)
    if not any(s.name.endswith(".generated.cu") for s in keep):
        raise RuntimeError("trimmed FlashInfer SM90 build found no generated bf16 x fp4 mixed-input kernels; "
                           "set MOEACC_FLASHINFER_FULL_BUILD=1 to build everything")
    return keep


def trim_w4a16_spec(spec):
    """A copy of FlashInfer's SM90 ``JitSpec`` with only the W4A16 sources, under its own name."""
    base = type(spec)
    prebuilt = os.environ.get("MOEACC_FLASHINFER_PREBUILT")

    class TrimmedSpec(base):
        @property
        def aot_path(self):
            if prebuilt:
                return Path(prebuilt) / self.name / f"{self.name}.so"
            return super().aot_path

    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    values["name"] = spec.name + TRIMMED_SUFFIX
    values["sources"] = select_w4a16_sources(spec.sources)
    return TrimmedSpec(**values)
