"""Kernel probes: single quantization/activation/GEMM kernels checked against the references.

Each probe feeds deterministic inputs to one library kernel and compares it with the matching
reference: bit-exactly where the contract is bit-exact (MX/NVFP4 quantizers: it also names the
E8M0 rounding mode that reproduces the kernel), by ULP for activations, and by metrics for FP8
GEMMs (where the report also shows the accuracy cost of UE8M0 scales next to fp32 ones). Rows use
the same schema as MoE rows (backend = probe name, case = ``probe:<what>``).
"""

from __future__ import annotations

from harness.backends.base import Requirements
from harness.backends.flashinfer import FI
from harness.probes import fast_math as fm
from harness.probes import flashinfer as fi
from harness.probes import torch_fp8 as tf
from harness.probes import triton_kernels_int16 as tki
from harness.backends.triton_kernels import TK
from harness.probes.base import Probe, ProbeResult, run_probes

__all__ = ["Probe", "ProbeResult", "all_probes", "run_probes"]


def _mk(name, kernel, req, fn):
    return type(f"Probe_{name.replace('-', '_')}", (Probe,), {"name": name, "kernel": kernel, "requirements": req,
                                                            "fn": staticmethod(fn), "verified": "unverified"})()


def all_probes() -> list[Probe]:
    fi_sm100 = Requirements(devices=("sm100+",), libraries=(FI,))  # quantize kernels compiled for sm100+ only
    return [
        _mk("flashinfer-mxfp8-quantize", "flashinfer.mxfp8_quantize", fi_sm100, fi.mx_probe("mxfp8")),
        _mk("flashinfer-mxfp4-quantize", "flashinfer.fp4_quantize(sf_vec_size=32, ue8m0)", fi_sm100, fi.mx_probe("mxfp4")),
        _mk("flashinfer-nvfp4-quantize", "flashinfer.fp4_quantize(sf_vec_size=16)", fi_sm100, fi.nvfp4_probe),
        _mk("flashinfer-quantize-unsupported-arch", "flashinfer.mxfp8_quantize below sm100",
            Requirements(devices=("sm80", "sm86", "sm89", "sm90"), libraries=(FI,)), fi.unsupported_arch_probe),
        _mk("flashinfer-silu-and-mul", "flashinfer.silu_and_mul", Requirements(devices=("cuda",), libraries=(FI,)), fi.silu_probe),
        _mk("torch-scaled-mm", "torch._scaled_mm / torch.nn.functional.scaled_mm", Requirements(devices=("sm90+",)),
            tf.scaled_mm_probe),
        _mk("torch-scaled-grouped-mm", "torch._scaled_grouped_mm", Requirements(devices=("sm90+",)), tf.grouped_probe),
        _mk("triton-kernels-topk-int16-ids", "triton_kernels.topk.topk_forward(y_indx=int16 / int32 ids)",
            Requirements(devices=("cuda",), libraries=(TK,)), tki.int16_probe),
        _mk("nvcc-fast-math-fp8-scale", "448.f / amax, 1.f / scale, e4m3(x * scale) under nvcc -use_fast_math",
            Requirements(devices=("cuda",)), fm.fast_math_probe),
    ]
