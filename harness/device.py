"""What machine this is: device kind (cpu, sm90, sm100, gfx942, ...) and software versions."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import re
import shutil
import subprocess

import torch


@functools.lru_cache(maxsize=None)
def device_info(device: str = "auto") -> dict:
    """A JSON-able description of the device a run uses."""
    dev = resolve_device(device)
    info = {"device": dev, "kind": "cpu", "name": platform.processor() or platform.machine(),
            "compute_capability": None, "gfx_arch": None, "driver": None,
            "cuda": torch.version.cuda, "rocm": getattr(torch.version, "hip", None)}
    if dev.startswith("cuda"):
        idx = torch.device(dev).index or 0
        props = torch.cuda.get_device_properties(idx)
        info["name"] = props.name
        if info["rocm"]:
            arch = getattr(props, "gcnArchName", "") or ""
            info["gfx_arch"] = arch.split(":")[0] or None
            info["kind"] = info["gfx_arch"] or "rocm"
        else:
            major, minor = torch.cuda.get_device_capability(idx)
            info["compute_capability"] = f"{major}.{minor}"
            info["kind"] = f"sm{major}{minor}" if major >= 10 else f"sm{major}{minor if minor else '0'}"
            info["driver"] = _nvidia_driver()
        info["multiprocessors"] = props.multi_processor_count
    return info


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch {torch.__version__} sees no GPU")
    return device


def device_slug(info: dict) -> str:
    """Folder name for a device's reports, e.g. ``sm90-nvidia-h100-80gb-hbm3`` or ``cpu``."""
    if info["kind"] == "cpu":
        return "cpu"
    return f"{info['kind']}-" + re.sub(r"[^a-z0-9]+", "-", info["name"].lower()).strip("-")


def _nvidia_driver() -> str | None:
    try:
        import pynvml  # nvidia-ml-py
        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            return None
    return None


TRACKED_PACKAGES = ("torch", "triton", "flashinfer-python", "vllm", "sglang", "aiter", "deep-gemm",
                    "triton-kernels", "numpy", "moe-accuracy")


def package_versions(extra: tuple = ()) -> dict:
    out = {}
    for name in TRACKED_PACKAGES + tuple(extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    out.setdefault("torch", torch.__version__)
    out["python"] = platform.python_version()
    return out


def kind_matches(kind: str, wanted: tuple) -> bool:
    """Does a device kind satisfy a requirement list? ``cuda`` = any NVIDIA GPU, ``any`` = all."""
    for w in wanted:
        if w == "any" or w == kind:
            return True
        if w == "cuda" and kind.startswith("sm"):
            return True
        if w == "rocm" and kind.startswith("gfx"):
            return True
        if w.endswith("+") and kind.startswith("sm") and w.startswith("sm"):
            if int(kind[2:]) >= int(w[2:-1]):
                return True
    return False
