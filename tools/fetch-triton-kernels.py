#!/usr/bin/env python3
"""Provide OpenAI's ``triton_kernels`` (triton v3.6.0 ``python/triton_kernels``) without vendoring it:
extract the copy the vLLM 0.20.0 wheel ships (``vllm/third_party/triton_kernels``; its sdist's
``cmake/external_projects/triton_kernels.cmake:3`` pins tag v3.6.0) into a git-ignored folder.

    python3 tools/fetch-triton-kernels.py [--wheel vllm-0.20.0-...whl] [--out .carry/triton_kernels]

Without ``--wheel`` it runs ``pip download --no-deps vllm==0.20.0`` (needs the network; the wheel is
tagged manylinux_2_35 only). Then ``PYTHONPATH=<out>`` makes ``import triton_kernels`` work; the
package index's ``triton-kernels`` is an unrelated project. The extracted files are checked against
the fingerprint of the 0.20.0 wheel's copy (41 .py files), so another vLLM's copy is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PREFIX = "vllm/third_party/triton_kernels/"
FINGERPRINT = "0bfeb27f0ff681472f76e63e08d85ff32b3f1cbdd746eb2a8c928315de9782ed"   # sha256 over the sorted "relative path  sha256" lines of the .py files
FILES = 41


def fingerprint(files: dict[str, bytes]) -> str:
    lines = "".join(f"{name}  {hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def download(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--platform", "manylinux_2_35_x86_64", "-d", str(dest), "vllm==0.20.0"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("vllm-0.20.0-*.whl"))
    if r.returncode or not wheels:
        sys.exit(f"fetch-triton-kernels: pip download vllm==0.20.0 failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    return wheels[0]


def extract(wheel: Path, out: Path) -> int:
    if not wheel.is_file():
        sys.exit(f"fetch-triton-kernels: {wheel}: no such wheel")
    try:
        with zipfile.ZipFile(wheel) as z:
            files = {n[len(PREFIX):]: z.read(n) for n in z.namelist() if n.startswith(PREFIX) and n.endswith(".py")}
    except zipfile.BadZipFile:
        sys.exit(f"fetch-triton-kernels: {wheel}: not a wheel (bad zip)")
    if not files:
        sys.exit(f"fetch-triton-kernels: {wheel}: has no {PREFIX} (not a vLLM wheel that vendors triton_kernels)")
    got = fingerprint(files)
    if len(files) != FILES or got != FINGERPRINT:
        sys.exit(f"fetch-triton-kernels: {wheel.name}: its triton_kernels ({len(files)} files, {got[:12]}) is not "
                 f"the v3.6.0 copy of vllm 0.20.0 ({FILES} files, {FINGERPRINT[:12]})")
    pkg = out / "triton_kernels"
    if pkg.exists():
        shutil.rmtree(pkg)
    for name, data in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (pkg / "VERSION").write_text("triton v3.6.0 python/triton_kernels (vllm 0.20.0 third_party)\n")
    return len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="a vllm 0.20.0 wheel (else pip download)")
    ap.add_argument("--out", type=Path, default=Path(".carry/triton_kernels"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = a.wheel or download(Path(tmp))
        n = extract(wheel, a.out)
    print(f"{n} files -> {a.out / 'triton_kernels'}; use PYTHONPATH={a.out}")


if __name__ == "__main__":
    main()
