"""Gated adapters for kernels that cannot run on this project's H100 machine.

Each imports its library lazily (inside ``prepare``/``run``), declares its gate, and is covered on
the CPU by tests with fake modules that check the arguments and layouts it passes
(tests/test_adapters.py). None has run on hardware: every class here is ``verified =
"unverified"`` and the README's backend table says so. The layouts follow each library's
documented contract as cited per class; where a detail could not be confirmed the docstring says
so, and the first hardware run is what settles it.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

import torch

from harness.backends import Backend, Requirements
from harness.backends.common import fc1_in_order, finish_layer, mx_weights_for_kernel, pad_tokens_hidden
from harness.cases import CaseData
from references import formats as F
from references.activations import swiglu


def _import(path: str):
    return importlib.import_module(path)


class TritonFusedExperts(Backend):
    """vLLM's Triton ``fused_experts`` (bf16 or FP8 128x128 block weights, plain SiLU).

    Contract (vLLM ``model_executor/layers/fused_moe/fused_moe.py``): ``w1 [E, 2I, H]`` with rows
    ``[gate (w1); up (w3)]``, ``w2 [E, H, I]``; FP8 block: e4m3 weights with ``w1_scale [E, 2I/128,
    H/128]`` fp32, activations quantized per token per 128 inside the kernel
    (``use_fp8_w8a8=True, block_shape=[128, 128]``); ``topk_ids`` int32.
    """

    name = "vllm-fused-experts"
    description = "vLLM Triton fused_experts (bf16 / FP8 block W8A8)"
    module = "vllm.model_executor.layers.fused_moe"
    requirements = Requirements(devices=("cuda", "rocm"), packages={"vllm": ("vllm", "")},
                                formats=("bf16", "fp8_block"), act_quants=(None, "fp8_group"), swiglu=False,
                                bias=False, fp8_scales=("fp32",))
    kernel = "vllm.model_executor.layers.fused_moe.fused_experts"

    def case_gate(self, case):
        why = super().case_gate(case)
        if why is None and (case.weight_format == "fp8_block") != (case.act_quant == "fp8_group"):
            why = "FP8 block weights go with fp8_group activations (W8A8) and bf16 with none"
        return why

    def prepare(self, data: CaseData, device: str):
        w = data.weights
        w1, s1, _ = fc1_in_order(w, "gate_up")
        return {"w1": w1.contiguous(), "w2": w.w2.contiguous(), "w1_scale": s1, "w2_scale": w.w2_scale}

    def run(self, p, data: CaseData) -> torch.Tensor:
        fused_experts = _import(self.module).fused_experts
        fp8 = data.case.weight_format == "fp8_block"
        out = fused_experts(data.x, p["w1"], p["w2"], data.topk_weights.to(torch.float32),
                            data.topk_ids.to(torch.int32), inplace=False, activation="silu",
                            use_fp8_w8a8=fp8, w1_scale=p["w1_scale"], w2_scale=p["w2_scale"],
                            block_shape=[128, 128] if fp8 else None)
        return finish_layer(out.float(), data).to(data.case.torch_dtype)


class SglangFusedExperts(TritonFusedExperts):
    """SGLang's Triton ``fused_experts`` (same contract as vLLM's; sglang
    ``srt/layers/moe/fused_moe_triton/fused_moe.py``)."""

    name = "sglang-fused-experts"
    description = "SGLang Triton fused_experts (bf16 / FP8 block W8A8)"
    module = "sglang.srt.layers.moe.fused_moe_triton.fused_moe"
    requirements = replace(TritonFusedExperts.requirements, packages={"sglang": ("sglang", "")})
    kernel = "sglang.srt.layers.moe.fused_moe_triton.fused_moe.fused_experts"


class DeepGemmFp8(Backend):
    """DeepGEMM grouped FP8 GEMMs (``m_grouped_fp8_gemm_nt_contiguous``) with the framework's
    permute / silu-mul-fp8-quant / un-permute around them.

    Contract (DeepGEMM README, "grouped GEMMs (contiguous layout)"): rows grouped by expert, each
    group padded to a multiple of 128 rows, ``m_indices`` gives each row's expert (-1 for padding);
    LHS ``(fp8 [M, K], fp32 [M, K/128])``, RHS ``(fp8 [E, N, K], fp32 [E, N/128, K/128])``. On sm100
    DeepGEMM requires UE8M0 scales (the forced power-of-two rounding this harness measures); the
    layout transform of the scales is left to DeepGEMM (``disable_ue8m0_cast=False``).
    """

    name = "deepgemm-fp8"
    description = "DeepGEMM m_grouped_fp8_gemm_nt_contiguous (FP8 128x128 block W8A8)"
    requirements = Requirements(devices=("sm90", "sm100"), packages={"deep-gemm": ("deep_gemm", "")},
                                formats=("fp8_block",), act_quants=("fp8_group", "fp8_group_ue8m0"), bias=False,
                                k_multiple=128)
    kernel = "deep_gemm.m_grouped_fp8_gemm_nt_contiguous"
    family = None

    def prepare(self, data: CaseData, device: str):
        w = data.weights
        w1, s1, _ = fc1_in_order(w, "gate_up")
        return {"w1": w1.contiguous(), "s1": s1.contiguous(), "w2": w.w2, "s2": w.w2_scale}

    @staticmethod
    def permute(topk_ids: torch.Tensor, num_experts: int, align: int = 128):
        """Row map for the contiguous layout: (row -> (token, slot) or -1, m_indices)."""
        flat = topk_ids.reshape(-1).to(torch.int64)
        counts = torch.bincount(flat, minlength=num_experts)
        padded = ((counts + align - 1) // align) * align
        starts = torch.cumsum(padded, 0) - padded
        order = torch.argsort(flat, stable=True)
        rank = torch.arange(flat.numel(), device=flat.device) - (torch.cumsum(counts, 0) - counts)[flat[order]]
        dest = starts[flat[order]] + rank
        total = int(padded.sum())
        src = torch.full((total,), -1, dtype=torch.int64, device=flat.device)
        src[dest] = order
        m_indices = torch.repeat_interleave(torch.arange(num_experts, device=flat.device, dtype=torch.int32), padded)
        m_indices = torch.where(src >= 0, m_indices, torch.full_like(m_indices, -1))
        return src, m_indices

    def run(self, p, data: CaseData) -> torch.Tensor:
        dg = _import("deep_gemm")
        c = data.case
        k = data.topk_ids.shape[1]
        ue8m0 = c.act_quant == "fp8_group_ue8m0"
        src, m_idx = self.permute(data.topk_ids, p["w1"].shape[0])
        valid = src >= 0
        xs = torch.zeros(src.numel(), c.hidden, dtype=data.x.dtype, device=data.x.device)
        xs[valid] = data.x[src[valid] // k]
        qa, sa = F.fp8_group_quantize(xs, 128, "ue8m0" if ue8m0 else "fp32")
        h = torch.empty(src.numel(), p["w1"].shape[1], dtype=torch.bfloat16, device=xs.device)
        dg.m_grouped_fp8_gemm_nt_contiguous((qa, sa), (p["w1"], p["s1"]), h, m_idx)
        gate, up = h.float().chunk(2, dim=-1)
        a = swiglu(gate.to(torch.bfloat16), up.to(torch.bfloat16), c.swiglu, "kernel")
        qh, sh = F.fp8_group_quantize(a, 128, "ue8m0" if ue8m0 else "fp32")
        y = torch.empty(src.numel(), c.hidden, dtype=torch.bfloat16, device=xs.device)
        dg.m_grouped_fp8_gemm_nt_contiguous((qh, sh), (p["w2"], p["s2"]), y, m_idx)
        out = torch.zeros(data.x.shape[0], c.hidden, dtype=torch.float32, device=xs.device)
        wflat = data.topk_weights.reshape(-1).to(torch.float32)
        out.index_add_(0, src[valid] // k, y[valid].float() * wflat[src[valid]].unsqueeze(-1))
        return finish_layer(out, data).to(c.torch_dtype)


class AiterMxfp4(Backend):
    """AMD AITER MXFP4 fused MoE on gfx950.

    Contract (AITER ``aiter/fused_moe.py`` and ``aiter/ops/shuffle.py``; sglang PR 26884): fc1
    separated ``[gate; up]``, weights through ``shuffle_weight(w, layout=(16, 16))`` with the
    ``is_shuffled`` attribute set, E8M0 scales ``[E, N, K/32]``, ``quant_type=per_1x32``, SwiGLU
    activation. Whether the scales need AITER's own e8m0 shuffle too was not confirmed here.
    """

    name = "aiter-mxfp4"
    description = "AMD AITER fused_moe, MXFP4 weights (per_1x32), shuffled (16,16)"
    requirements = Requirements(devices=("gfx950",), packages={"aiter": ("aiter", "")}, formats=("mxfp4",),
                                act_quants=(None,), k_multiple=64)
    kernel = "aiter.fused_moe.fused_moe(quant_type=per_1x32)"
    family = "aiter-mxfp4"

    def prepare(self, data: CaseData, device: str):
        shuffle = _import("aiter.ops.shuffle").shuffle_weight
        w = data.weights
        w1, s1, b1 = fc1_in_order(w, "gate_up")
        w1 = shuffle(w1.contiguous(), layout=(16, 16))
        w2 = shuffle(w.w2.contiguous(), layout=(16, 16))
        for t in (w1, w2):
            t.is_shuffled = True
        return {"w1": w1, "w2": w2, "s1": s1, "s2": w.w2_scale, "b1": b1, "b2": w.b2}

    def run(self, p, data: CaseData) -> torch.Tensor:
        aiter = _import("aiter")
        fm = _import("aiter.fused_moe")
        out = fm.fused_moe(data.x, p["w1"], p["w2"], data.topk_weights.to(torch.float32), data.topk_ids.to(torch.int32),
                           quant_type=aiter.QuantType.per_1x32, activation=aiter.ActivationType.Swiglu,
                           w1_scale=p["s1"], w2_scale=p["s2"])
        return finish_layer(out.float(), data).to(data.case.torch_dtype)


class TritonKernelsMxfp4(Backend):
    """OpenAI ``triton_kernels`` ``matmul_ogs`` with a fused SwiGLU (the GPT-OSS reference path).

    Contract (triton_kernels ``swiglu.py`` / gpt-oss ``triton`` implementation): fc1 rows
    interleaved gate/up, SwiGLU parameters ``(alpha, limit)`` with the ``+1`` on up built in, biases
    added in the GEMM. Weights are passed as MXFP4 with E8M0 scales through ``PrecisionConfig``.
    """

    name = "triton-kernels-mxfp4"
    description = "OpenAI triton_kernels matmul_ogs + fused swiglu (interleaved gate/up, MXFP4)"
    requirements = Requirements(devices=("sm90+",), packages={"triton-kernels": ("triton_kernels", "")},
                                formats=("mxfp4",), act_quants=(None,))
    kernel = "triton_kernels.matmul_ogs.matmul_ogs(fused_activation=swiglu)"

    def case_gate(self, case):
        why = super().case_gate(case)
        if why is None and case.swiglu.beta not in (0.0, 1.0):
            why = "triton_kernels swiglu has the +1 on up built in (beta 1.0) or none"
        return why

    def prepare(self, data: CaseData, device: str):
        w = data.weights
        w1, s1, b1 = fc1_in_order(w, "interleaved")
        return {"w1": w1, "s1": s1, "b1": b1, "w2": w.w2, "s2": w.w2_scale, "b2": w.b2}

    def run(self, p, data: CaseData) -> torch.Tensor:
        mo = _import("triton_kernels.matmul_ogs")
        sw = _import("triton_kernels.swiglu")
        rt = _import("triton_kernels.routing")
        c = data.case
        act = c.swiglu
        routing_data, gather, scatter = rt.routing_from_topk(data.topk_weights, data.topk_ids, c.experts) \
            if hasattr(rt, "routing_from_topk") else rt.routing(data.router_logits, c.topk)
        fused = mo.FusedActivation(mo.FnSpecs("swiglu", sw.swiglu_fn, ("alpha", "limit")),
                                   (act.alpha, act.limit if act.limit is not None else float("inf")), 2)
        pc1 = mo.PrecisionConfig(weight_scale=p["s1"])
        pc2 = mo.PrecisionConfig(weight_scale=p["s2"])
        h = mo.matmul_ogs(data.x, p["w1"].transpose(-2, -1), p["b1"], routing_data, gather_indx=gather,
                          precision_config=pc1, fused_activation=fused)
        out = mo.matmul_ogs(h, p["w2"].transpose(-2, -1), p["b2"], routing_data, scatter_indx=scatter,
                            precision_config=pc2, gammas=routing_data.gate_scal)
        return finish_layer(out.float(), data).to(c.torch_dtype)


class FlashInferTrtllmGenMxfp4(Backend):
    """FlashInfer trtllm-gen MXFP4 x bf16 MoE on sm100 (``trtllm_fp4_block_scale_routed_moe``).

    Contract (FlashInfer ``fused_moe/core.py`` docstring): ``gemm1_weights [E, 2I, H/2]`` uint8,
    ``gemm1_weights_scale [E, 2I, H/32]`` float8 (E8M0 bytes), per-expert ``gemm1_alpha/beta/
    clamp_limit``, pre-computed routing as ``(topk_ids int32, topk_weights bf16)``. Weights and
    scales go through FlashInfer's ``reorder_rows_for_gated_act_gemm`` and
    ``shuffle_matrix_a`` / ``shuffle_matrix_sf_a`` (epilogue tile 128), as FlashInfer's tests do;
    fc1 is assumed ``[up; gate]`` (TRT-LLM w3_w1 order) before the reorder; not confirmed here.
    """

    name = "flashinfer-trtllm-gen-mxfp4"
    description = "FlashInfer trtllm-gen MXFP4 x bf16 fused MoE (sm100)"
    requirements = Requirements(devices=("sm100",), packages={"flashinfer-python": ("flashinfer", "0.6.12")},
                                formats=("mxfp4",), act_quants=(None,), k_multiple=128)
    kernel = "flashinfer.fused_moe.trtllm_fp4_block_scale_routed_moe"

    def prepare(self, data: CaseData, device: str):
        fm = _import("flashinfer.fused_moe")
        fq = _import("flashinfer")
        w1, s1, w2, s2, b1, b2 = mx_weights_for_kernel(data, "up_gate", 128)
        e = w1.shape[0]

        def shuffle(w, s):
            ws, ss = [], []
            for j in range(e):
                wj, sj = fm.reorder_rows_for_gated_act_gemm(w[j]), fm.reorder_rows_for_gated_act_gemm(s[j])
                ws.append(fq.shuffle_matrix_a(wj.view(torch.uint8), 128))
                ss.append(fq.shuffle_matrix_sf_a(sj.view(torch.uint8), 128))
            return torch.stack(ws), torch.stack(ss)

        g1, gs1 = shuffle(w1, s1)
        g2 = torch.stack([fq.shuffle_matrix_a(w2[j].view(torch.uint8), 128) for j in range(e)])
        gs2 = torch.stack([fq.shuffle_matrix_sf_a(s2[j].view(torch.uint8), 128) for j in range(e)])
        if b1 is not None:
            b1 = torch.stack([fm.reorder_rows_for_gated_act_gemm(b1[j].reshape(-1, 1)).reshape(-1) for j in range(e)])
        p = data.case.swiglu
        full = lambda v: torch.full((e,), float(v), dtype=torch.float32, device=w1.device)  # noqa: E731
        return {"x": pad_tokens_hidden(data.x), "w1": g1, "s1": gs1, "w2": g2, "s2": gs2, "b1": b1, "b2": b2,
                "alpha": None if p.is_plain else full(p.alpha), "beta": None if p.is_plain else full(p.beta),
                "limit": None if p.limit is None else full(p.limit), "ip": w2.shape[2] * 2}

    def run(self, p, data: CaseData) -> torch.Tensor:
        fm = _import("flashinfer.fused_moe")
        c = data.case
        out = fm.trtllm_fp4_block_scale_routed_moe(
            (data.topk_ids.to(torch.int32), data.topk_weights.to(torch.bfloat16)), None, p["x"], None,
            p["w1"], p["s1"].view(torch.float8_e4m3fn), p["b1"], p["alpha"], p["beta"], p["limit"],
            p["w2"], p["s2"].view(torch.float8_e4m3fn), p["b2"], None, None, None,
            c.experts, c.topk, None, None, p["ip"], 0, c.experts, None)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return finish_layer(out[:, : c.hidden].float(), data).to(c.torch_dtype)



