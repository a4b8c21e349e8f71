#!/usr/bin/env python3
"""Make a small copy of a flashinfer-python wheel for an offline GPU machine that loads prebuilt
modules (`moeacc build-flashinfer` / MOEACC_FLASHINFER_PREBUILT): the CUDA sources and headers that
only JIT builds read (flashinfer/data/{csrc,cutlass,cccl,include,spdlog}) are left out, and RECORD
is rewritten to match. The 0.7.2.post1 wheel goes from 62 MB to about 22 MB, under the device
tool's 64 MiB carry limit. Any module that still needs a JIT build on that machine will fail to
compile there: prebuild it, or carry the whole wheel. Kept: the DeepGEMM headers the FP8 block-scale
GEMM compiles at run time with nvcc (``fused_moe/core.py:646`` sets them as its JIT include dir;
without them the cubin is never written and the call fails ``!cubin.empty() || isPathValid(path_)``).

    python tools/trim-flashinfer-wheel.py flashinfer_python-0.7.2.post1-py3-none-any.whl --out .carry/fi-0.7.2/
"""

import argparse
import zipfile
from pathlib import Path

DROP = tuple(f"flashinfer/data/{d}/" for d in ("csrc", "cutlass", "cccl", "include", "spdlog"))
KEEP = ("flashinfer/data/csrc/nv_internal/tensorrt_llm/deep_gemm/",)


def _dropped(name: str) -> bool:
    return name.startswith(DROP) and not name.startswith(KEEP)


def trim(wheel: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        kept = [i for i in src.infolist() if not _dropped(i.filename)]
        record = next(i for i in kept if i.filename.endswith(".dist-info/RECORD"))
        for info in kept:
            data = src.read(info.filename)
            if info is record:
                lines = data.decode().splitlines()
                data = ("\n".join(ln for ln in lines if not _dropped(ln)) + "\n").encode()
            dst.writestr(info, data)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="folder for the trimmed wheel (same file name)")
    a = ap.parse_args()
    path = trim(a.wheel, a.out)
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB (from {a.wheel.stat().st_size / 2**20:.1f} MiB)")
