#!/usr/bin/env python3
"""Provide OpenAI's ``triton_kernels`` (triton v3.6.0 ``python/triton_kernels``) without vendoring it:
extract the copy the vLLM 0.20.0 wheel ships (``vllm/third_party/triton_kernels``; its sdist's
``cmake/external_projects/triton_kernels.cmake:3`` pins tag v3.6.0) into a git-ignored folder.

    python3 tools/fetch-triton-kernels.py [--wheel vllm-0.20.0-...whl] [--out .carry/triton_kernels]

Without ``--wheel`` it runs ``pip download --no-deps vllm==0.20.0`` (needs the network; the wheel is
tagged manylinux_2_35 only). Then ``PYTHONPATH=<out>`` makes ``import triton_kernels`` work (the
package index's ``triton-kernels`` is an unrelated project). Checks: the wheel's own version marker
(``vllm-0.20.0.dist-info/METADATA`` says ``Version: 0.20.0``) and the fingerprint of its copy (41 .py
files), so another vLLM's copy is refused; the extracted package gets a ``VERSION`` marker, and a
folder that already has the right marker and files is left as it is. Every failure is one line on
stderr and exit status 1.
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

VLLM = "0.20.0"
PREFIX = "vllm/third_party/triton_kernels/"
FINGERPRINT = "0bfeb27f0ff681472f76e63e08d85ff32b3f1cbdd746eb2a8c928315de9782ed"   # sha256 over the sorted "relative path  sha256" lines of the .py files
FILES = 41
MARKER = f"triton v3.6.0 python/triton_kernels (vllm {VLLM} third_party {FINGERPRINT[:12]})\n"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / ".carry" / "triton_kernels"


def fail(msg: str) -> None:
    sys.exit(f"fetch-triton-kernels: {msg}")


def fingerprint(files: dict[str, bytes]) -> str:
    lines = "".join(f"{name}  {hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def download(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--platform", "manylinux_2_35_x86_64", "-d", str(dest), f"vllm=={VLLM}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"vllm-{VLLM}-*.whl"))
    if r.returncode or not wheels:
        last = ((r.stderr or r.stdout).strip().splitlines() or ["no wheel downloaded"])[-1]
        fail(f"pip download vllm=={VLLM} failed (offline? pass --wheel): {last}")
    return wheels[0]


def wheel_version(z: zipfile.ZipFile) -> str | None:
    meta = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
    if not meta:
        return None
    lines = z.read(meta[0]).decode(errors="replace").splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Version:")), None)


def read_wheel(wheel: Path) -> dict[str, bytes]:
    """The .py files of the wheel's triton_kernels copy, after the version and fingerprint checks."""
    if not wheel.is_file():
        fail(f"{wheel}: no such wheel")
    try:
        with zipfile.ZipFile(wheel) as z:
            version = wheel_version(z)
            files = {n[len(PREFIX):]: z.read(n) for n in z.namelist() if n.startswith(PREFIX) and n.endswith(".py")}
    except zipfile.BadZipFile:
        fail(f"{wheel}: not a wheel (bad zip)")
    if version != VLLM:
        fail(f"{wheel.name}: its METADATA says vllm {version or '?'}, need {VLLM} (the copy pinned to triton v3.6.0)")
    if not files:
        fail(f"{wheel.name}: has no {PREFIX}")
    got = fingerprint(files)
    if len(files) != FILES or got != FINGERPRINT:
        fail(f"{wheel.name}: its triton_kernels ({len(files)} files, {got[:12]}) is not the v3.6.0 copy of "
             f"vllm {VLLM} ({FILES} files, {FINGERPRINT[:12]})")
    return files


def installed(pkg: Path) -> bool:
    """The folder already holds this copy: the marker and the fingerprint of its files agree."""
    marker = pkg / "VERSION"
    if not marker.is_file() or marker.read_text() != MARKER:
        return False
    files = {str(p.relative_to(pkg)).replace("\\", "/"): p.read_bytes() for p in pkg.rglob("*.py")}
    return len(files) == FILES and fingerprint(files) == FINGERPRINT


def write(files: dict[str, bytes], pkg: Path) -> None:
    if pkg.exists():
        shutil.rmtree(pkg)
    for name, data in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (pkg / "VERSION").write_text(MARKER)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help=f"a vllm {VLLM} wheel (else pip download)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to put on PYTHONPATH (default .carry/triton_kernels)")
    a = ap.parse_args()
    pkg = a.out / "triton_kernels"
    if installed(pkg):
        print(f"already there: {pkg} ({MARKER.strip()}); use PYTHONPATH={a.out}")
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = read_wheel(a.wheel or download(Path(tmp)))
        write(files, pkg)
    except OSError as e:
        fail(f"{e.filename or pkg}: {e.strerror or e}")
    print(f"{len(files)} files -> {pkg}; use PYTHONPATH={a.out}")


if __name__ == "__main__":
    main()
