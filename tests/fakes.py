"""Fake kernel-library modules for CPU tests of backend plumbing.

Each fake records the call it receives and computes what the documented contract says the real
kernel computes (via ``references``), so a test can check both the arguments a backend passes
and that a correct backend passes while a faulty one fails.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import torch

from references.activations import Precision, SwigluParams
from references.formats import WEIGHT_FORMATS, QTensor
from references.layouts import (GateUpOrder, sm90_deinterleave_fp4_weights, sm90_deinterleave_scales,
                                sm90_interleave_fp4_weights, sm90_interleave_scales)
from references.moe import Experts, MoEConfig, moe_forward


@dataclass
class FakeJitSpec:
    name: str
    sources: list
    extra_cflags: list | None = None
    extra_cuda_cflags: list | None = None
    extra_ldflags: list | None = None
    extra_include_dirs: list | None = None
    is_class: bool = False
    needs_device_linking: bool = False

    @property
    def aot_path(self):
        return "stock-aot-path"


def install_fake_flashinfer(monkeypatch, sources=()):
    calls = []
    fi = types.ModuleType("flashinfer")
    fi.__version__ = "0.6.12"  # the fake computes the 0.6.12 (v1) layouts
    fm = types.ModuleType("flashinfer.fused_moe")
    core = types.ModuleType("flashinfer.fused_moe.core")
    core.gen_cutlass_fused_moe_sm90_module = lambda use_fast_build=False: FakeJitSpec("fused_moe_90", list(sources))

    def interleave_w(w, quant_type="fp4"):
        assert w.dtype == torch.uint8 and w.is_contiguous() and quant_type == "fp4"
        calls.append(("interleave_weights", tuple(w.shape)))
        return sm90_interleave_fp4_weights(w)

    def interleave_s(s, group_size=32):
        assert s.dtype == torch.uint8 and group_size == 32
        calls.append(("interleave_scales", tuple(s.shape)))
        return sm90_interleave_scales(s)

    def cutlass_fused_moe(**kw):
        calls.append(("cutlass_fused_moe", kw))
        x, w1, w2 = kw["input"], kw["fc1_expert_weights"], kw["fc2_expert_weights"]
        e, n1, k1 = w1.shape
        _, n2, k2 = w2.shape
        s1, s2 = (q.view(torch.uint8) for q in kw["quant_scales"])
        s1 = sm90_deinterleave_scales(s1.reshape(e, 2 * k1 // 128, n1 * 4))
        s2 = sm90_deinterleave_scales(s2.reshape(e, 2 * k2 // 128, n2 * 4))
        a = kw.get("swiglu_alpha")
        act = SwigluParams() if a is None else SwigluParams(float(a[0]), float(kw["swiglu_beta"][0]),
                                                            None if torch.isinf(kw["swiglu_limit"][0]) else float(kw["swiglu_limit"][0]))
        ex = Experts(WEIGHT_FORMATS["mxfp4"], QTensor(sm90_deinterleave_fp4_weights(w1), s1),
                     QTensor(sm90_deinterleave_fp4_weights(w2), s2), kw.get("fc1_expert_biases"),
                     kw.get("fc2_expert_biases"), GateUpOrder.UP_GATE)
        out = moe_forward(x, kw["token_selected_experts"].long(), kw["token_final_scales"], ex,
                          MoEConfig(activation=act, precision=Precision.KERNEL))
        return [out.to(kw["output_dtype"])]

    fm.interleave_moe_weights_for_sm90_mixed_gemm = interleave_w
    fm.interleave_moe_scales_for_sm90_mixed_gemm = interleave_s
    fm.cutlass_fused_moe = cutlass_fused_moe
    fm.core = core
    fi.fused_moe = fm
    for name, mod in (("flashinfer", fi), ("flashinfer.fused_moe", fm), ("flashinfer.fused_moe.core", core)):
        monkeypatch.setitem(sys.modules, name, mod)
    return calls
