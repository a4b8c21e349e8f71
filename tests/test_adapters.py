"""Gated adapters on the CPU with fake library modules: gates, the arguments and layouts each
passes, and (where the fake computes the documented contract) a passing verdict."""

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from harness.backends import aiter as _aiter, deepgemm as _deepgemm, sglang as _sglang, triton_kernels as _tk, vllm as _vllm
from harness.backends.flashinfer import trtllm_gen as _trtllm
from harness.cases import load_cases
from harness.cases import CaseContext
from harness.runner import run_one
from references import formats as F
from references.formats import WEIGHT_FORMATS, ActQuant, QTensor
from references.layouts import aiter_unshuffle_weight, aiter_shuffle_weight, split_gate_up
from references.moe import Experts, MoEConfig, moe_forward

A = SimpleNamespace(TritonFusedExperts=_vllm.TritonFusedExperts, SglangFusedExperts=_sglang.SglangFusedExperts,
                    DeepGemmFp8=_deepgemm.DeepGemmFp8, AiterMxfp4=_aiter.AiterMxfp4, TritonKernelsMxfp4=_tk.TritonKernelsMxfp4,
                    FlashInferTrtllmGenMxfp4=_trtllm.FlashInferTrtllmGenMxfp4)


def _mf(x, ids, tw, w1, w2, fmt, s1=None, s2=None, order="gate_up", **cfg):
    f = WEIGHT_FORMATS[fmt]
    return moe_forward(x, ids, tw, Experts(f, QTensor(w1, s1), QTensor(w2, s2), order=order), MoEConfig(**cfg))


def fake_module(monkeypatch, name, **attrs):
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules:
        monkeypatch.setattr(sys.modules[parent], child, mod, raising=False)
    return mod


def open_gate(cls):
    return type("Open" + cls.__name__, (cls,), {"device_gate": lambda self, kind: None})()


def case(name):
    (c,) = load_cases(["cases"], name)
    return c


@pytest.mark.parametrize("cls,kind,expect", [
    (A.TritonFusedExperts, "cpu", "needs cuda or rocm, found cpu"),
    (A.DeepGemmFp8, "sm120", "needs sm90 or sm100, found sm120"),
    (A.AiterMxfp4, "gfx942", "needs gfx950, found gfx942"),
    (A.FlashInferTrtllmGenMxfp4, "sm90", "needs sm100, found sm90"),
    (A.TritonKernelsMxfp4, "cpu", "needs sm90+, found cpu"),
])
def test_device_gates(cls, kind, expect):
    assert cls().device_gate(kind) == expect


def test_package_gate_names_the_distribution():
    assert A.SglangFusedExperts().device_gate("sm90") == "sglang not installed"
    assert A.DeepGemmFp8().device_gate("sm90") == "deep-gemm not installed"


@pytest.mark.parametrize("cls,module", [(A.TritonFusedExperts, "vllm.model_executor.layers.fused_moe"),
                                        (A.SglangFusedExperts, "sglang.srt.layers.moe.fused_moe_triton.fused_moe")])
def test_triton_fused_experts_contract(monkeypatch, cls, module):
    calls = []

    def fused_experts(x, w1, w2, topk_weights, topk_ids, inplace, activation, use_fp8_w8a8, w1_scale, w2_scale, block_shape):
        calls.append(dict(w1=w1, ids=topk_ids, fp8=use_fp8_w8a8, block=block_shape, act=activation, inplace=inplace))
        fmt = "fp8_block" if use_fp8_w8a8 else "bf16"
        return _mf(x, topk_ids.long(), topk_weights, w1, w2, fmt, w1_scale, w2_scale,
                   act_quant=ActQuant.FP8_GROUP if use_fp8_w8a8 else None).to(x.dtype)

    for i, part in enumerate(module.split(".")):
        fake_module(monkeypatch, ".".join(module.split(".")[: i + 1]))
    fake_module(monkeypatch, module, fused_experts=fused_experts)
    row = run_one(open_gate(cls), CaseContext(case("w8a8-fp8-block-small"), "cpu"), "sm90")
    assert row.status.value == "pass", row.message
    c = calls[0]
    assert c["fp8"] and c["block"] == [128, 128] and c["ids"].dtype == torch.int32 and c["act"] == "silu" and not c["inplace"]
    # gated on plain silu and W8A8 pairing
    assert "weight format mxfp4 not supported" in cls().case_gate(case("w4a16-gptoss-small"))
    assert "SwiGLU alpha/beta/limit not supported" in cls().case_gate(case("w8a8-fp8-clamp"))


def test_deepgemm_contiguous_layout_and_result(monkeypatch):
    seen = []

    def m_grouped(lhs, rhs, out, m_indices):
        (qa, sa), (qb, sb) = lhs, rhs
        assert qa.shape[0] % 128 == 0 and m_indices.shape[0] == qa.shape[0] and m_indices.dtype == torch.int32
        seen.append(m_indices.clone())
        a = F.fp8_group_dequantize(qa, sa)
        for e in range(qb.shape[0]):
            rows = m_indices == e
            if rows.any():
                out[rows] = (a[rows] @ F.fp8_block_dequantize(qb[e], sb[e]).T).to(out.dtype)
        out[m_indices < 0] = 0

    fake_module(monkeypatch, "deep_gemm", m_grouped_fp8_gemm_nt_contiguous=m_grouped)
    row = run_one(open_gate(A.DeepGemmFp8), CaseContext(case("w8a8-fp8-block-small"), "cpu"), "sm90")
    assert row.status.value == "pass", row.message
    # every group of the contiguous layout starts on a 128-row boundary
    m = seen[0]
    starts = (m[1:] != m[:-1]).nonzero().flatten() + 1
    assert all(int(s) % 128 == 0 for s in starts if m[int(s)] >= 0)


def test_deepgemm_permutation_is_complete():
    ids = torch.tensor([[0, 2], [2, 1], [0, 0]])
    src, m = _deepgemm.contiguous_layout(ids, 3, align=4)
    assert sorted(src[src >= 0].tolist()) == list(range(6))
    assert m.tolist()[:4] == [0, 0, 0, -1] and len(m) == 12


def test_aiter_shuffles_and_flags(monkeypatch):
    seen = {}

    def fused_moe(x, w1, w2, tw, ti, quant_type, activation, w1_scale, w2_scale):
        seen.update(s1=getattr(w1, "is_shuffled", False), s2=getattr(w2, "is_shuffled", False), qt=quant_type, act=activation)
        out = _mf(x, ti.long(), tw, aiter_unshuffle_weight(w1), aiter_unshuffle_weight(w2), "mxfp4", w1_scale, w2_scale,
                  precision=__import__("references.activations").activations.Precision.KERNEL, activation=ctx.case.swiglu)
        return out.to(x.dtype)

    fake_module(monkeypatch, "aiter", QuantType=SimpleNamespace(per_1x32="per_1x32"),
                ActivationType=SimpleNamespace(Swiglu="swiglu"))
    fake_module(monkeypatch, "aiter.ops")
    fake_module(monkeypatch, "aiter.ops.shuffle", shuffle_weight=lambda w, layout: aiter_shuffle_weight(w, layout))
    fake_module(monkeypatch, "aiter.fused_moe", fused_moe=fused_moe)
    ctx = CaseContext(case("swiglu-clamp-probe"), "cpu")
    row = run_one(open_gate(A.AiterMxfp4), ctx, "gfx950")
    assert row.status.value == "pass", row.message
    assert seen == {"s1": True, "s2": True, "qt": "per_1x32", "act": "swiglu"}


def test_triton_kernels_passes_interleaved_rows_and_swiglu_params(monkeypatch):
    rec = {}

    def matmul_ogs(x, w, b, rd, gather_indx=None, scatter_indx=None, precision_config=None, fused_activation=None, gammas=None):
        rec.setdefault("calls", []).append(dict(w=w, b=b, fused=fused_activation))
        return torch.zeros(x.shape[0], w.shape[-1] // (2 if fused_activation else 1))

    fake_module(monkeypatch, "triton_kernels")
    fake_module(monkeypatch, "triton_kernels.matmul_ogs", matmul_ogs=matmul_ogs,
                FusedActivation=lambda spec, params, n: SimpleNamespace(spec=spec, params=params, n=n),
                FnSpecs=lambda name, fn, names: SimpleNamespace(name=name, names=names),
                PrecisionConfig=lambda weight_scale: SimpleNamespace(weight_scale=weight_scale))
    fake_module(monkeypatch, "triton_kernels.swiglu", swiglu_fn=object())
    fake_module(monkeypatch, "triton_kernels.routing",
                routing_from_topk=lambda w, i, e: (SimpleNamespace(gate_scal=w), None, None))
    c = case("w4a16-gptoss-small")
    ctx = CaseContext(c, "cpu")
    data, _ = ctx.ensure()
    b = open_gate(A.TritonKernelsMxfp4)
    b.run(b.prepare(data, "cpu"), data)
    first = rec["calls"][0]
    assert first["fused"].params == (1.702, 7.0) and first["fused"].spec.names == ("alpha", "limit")
    g, u = split_gate_up(first["w"].transpose(-2, -1), "interleaved")
    assert torch.equal(g, split_gate_up(data.experts.w1.data, data.experts.order)[0])


def test_trtllm_gen_passes_contract_shapes(monkeypatch):
    rec = {}

    def routed(topk, bias, x, xs, w1, s1, b1, alpha, beta, limit, w2, s2, b2, o1, o1g, o2, e, k, ng, tg, isz, off, local, rsf):
        rec.update(ids=topk, x=x, w1=w1, s1=s1, alpha=alpha, limit=limit, w2=w2, e=e, k=k, isz=isz)
        return [torch.zeros(x.shape[0], x.shape[1], dtype=torch.bfloat16)]

    fake_module(monkeypatch, "flashinfer", shuffle_matrix_a=lambda t, m: t.clone(), shuffle_matrix_sf_a=lambda t, m: t.clone())
    fake_module(monkeypatch, "flashinfer.fused_moe", reorder_rows_for_gated_act_gemm=lambda t: t,
                trtllm_fp4_block_scale_routed_moe=routed)
    c = case("w4a16-gptoss-small")
    ctx = CaseContext(c, "cpu")
    data, _ = ctx.ensure()
    b = open_gate(A.FlashInferTrtllmGenMxfp4)
    b.run(b.prepare(data, "cpu"), data)
    assert rec["ids"][0].dtype == torch.int32 and rec["ids"][1].dtype == torch.bfloat16
    assert rec["w1"].shape == (c.experts, 2 * 256, 128) and rec["s1"].dtype == torch.float8_e4m3fn
    assert float(rec["alpha"][0]) == pytest.approx(1.702) and float(rec["limit"][0]) == 7.0
    assert (rec["e"], rec["k"], rec["isz"]) == (c.experts, c.topk, 256)
