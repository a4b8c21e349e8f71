"""The L0 adapters (vLLM, SGLang, DeepGEMM, AITER) on any machine: their gates say what the pinned
source allows, the library gate names the version range, and DeepGEMM's contiguous layout (our own
index arithmetic around the library call) puts every routed row in its expert's padded group."""

import sys

import pytest
import torch

import harness.backends.libapi as L
from harness.backends.aiter import AiterMxfp4
from harness.backends.deepgemm import DeepGemmFp8, contiguous_layout
from harness.backends.sglang import SglangFusedExperts
from harness.backends.vllm import VllmFusedExperts, vllm_act_quant
from harness.cases import validate_case

VLLM, SGLANG, DG, AITER = VllmFusedExperts(), SglangFusedExperts(), DeepGemmFp8(), AiterMxfp4()


def case(**kw):
    raw = {"name": "t", "tokens": 8, "hidden": 256, "intermediate": 256, "experts": 4, "topk": 2,
           "weight_format": "bf16"} | kw
    return validate_case(raw, "test")


FP8 = {"weight_format": "fp8_block", "act_quant": "fp8_group"}


@pytest.mark.parametrize("backend,module,dist,rng,have", [
    (VLLM, "vllm", "vllm", ">=0.33,<0.34", "0.34.0"), (DG, "deep_gemm", "deep-gemm", ">=2.6,<2.7", "1.0.0"),
    (AITER, "aiter", "amd-aiter", ">=0.1.20,<0.1.21", "0.1.7.post2.dev18")])
def test_library_gate_names_the_range(monkeypatch, backend, module, dist, rng, have):
    kind = backend.requirements.devices[0]
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None)
    assert backend.device_gate(kind) == f"{dist} not installed"
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(L.importlib.metadata, "version", lambda d: have)
    assert backend.device_gate(kind) == f"written for {dist}{rng}, found {have} (--force to run anyway)"


def test_sglang_needs_its_kernel_package(monkeypatch):
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: object() if name == "sglang" else None)
    monkeypatch.setattr(L.importlib.metadata, "version", lambda d: "0.5.23")
    assert SGLANG.device_gate("sm90") == "sglang-kernel not installed"


def test_vllm_activation_scales_follow_deepgemm_e8m0_mode(monkeypatch):
    monkeypatch.delenv("VLLM_USE_DEEP_GEMM_E8M0", raising=False)
    monkeypatch.delenv("VLLM_USE_DEEP_GEMM", raising=False)
    assert vllm_act_quant().value == "fp8_group_ue8m0"
    assert "DeepGEMM E8M0" in VLLM.case_gate(case(**FP8))
    assert VLLM.case_gate(case(weight_format="fp8_block", act_quant="fp8_group_ue8m0")) is None
    monkeypatch.setenv("VLLM_USE_DEEP_GEMM_E8M0", "0")
    assert VLLM.case_gate(case(**FP8)) is None


@pytest.mark.parametrize("backend", [VLLM, SGLANG])
def test_triton_fused_experts_gates(backend):
    assert backend.case_gate(case(activation="gpt_oss")) is None              # SWIGLUOAI / gemm1_alpha path
    assert "plain" in backend.case_gate(case(activation="clamp10"))
    assert backend.case_gate(case(weight_format="mxfp4")) is not None


def test_sglang_fp8_is_fp32_scaled_w8a8():
    assert SGLANG.case_gate(case(**FP8)) is None
    assert "fp8_group_ue8m0 not supported" in SGLANG.case_gate(case(weight_format="fp8_block", act_quant="fp8_group_ue8m0"))


def test_aiter_gates():
    assert AITER.case_gate(case(weight_format="mxfp4", activation="gpt_oss")) is None
    assert "GPT-OSS" in AITER.case_gate(case(weight_format="mxfp4", activation="silu"))
    assert "256 tokens" in AITER.case_gate(case(weight_format="mxfp4", activation="gpt_oss", tokens=256))
    assert "multiple of 256" in AITER.case_gate(case(weight_format="mxfp4", activation="gpt_oss", hidden=128))


def test_deepgemm_gates():
    assert DG.device_gate("sm100").startswith("needs sm90")
    assert DG.case_gate(case(**FP8)) is None
    assert "activation quantization none not supported" in DG.case_gate(case(weight_format="fp8_block"))


@pytest.mark.parametrize("align", [1, 64, 128])
def test_deepgemm_contiguous_layout(align):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5, (37, 3), generator=g)
    src, grouped = contiguous_layout(ids, 5, align)
    assert src.numel() % align == 0 and grouped.dtype == torch.int32
    valid = src >= 0
    assert sorted(src[valid].tolist()) == list(range(ids.numel()))          # every routed row once
    assert torch.equal(grouped[valid].long(), ids.reshape(-1)[src[valid]])   # in its expert's group
    assert bool((grouped[~valid] == -1).all())                               # padding marked -1
    starts = torch.nonzero(torch.diff(grouped.long(), prepend=torch.tensor([-2])) != 0).flatten()
    assert all(int(s) % align == 0 for s in starts if grouped[s] >= 0)      # groups start aligned
