"""FlashInfer trtllm-gen MXFP4 x bf16 MoE on sm100 (``trtllm_fp4_block_scale_routed_moe``).

Contract (FlashInfer ``fused_moe/core.py`` docstring): ``gemm1_weights [E, 2I, H/2]`` uint8,
``gemm1_weights_scale [E, 2I, H/32]`` float8 (E8M0 bytes), per-expert ``gemm1_alpha/beta/
clamp_limit``, pre-computed routing as ``(topk_ids int32, topk_weights bf16)``. Weights and
scales go through FlashInfer's ``reorder_rows_for_gated_act_gemm`` and
``shuffle_matrix_a`` / ``shuffle_matrix_sf_a`` (epilogue tile 128), as FlashInfer's tests do.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from harness.backends.base import Backend, Requirements
from harness.backends.common import experts_in_order, first_output, pad_mx_experts, pad_tokens_hidden
from harness.backends.emulated import MXFP4
from harness.backends.flashinfer import FI
from harness.cases import CaseData, layer_output
from references.layouts import GateUpOrder


@dataclass
class TrtllmGenBuffers:
    x: torch.Tensor
    w1: torch.Tensor
    s1: torch.Tensor
    w2: torch.Tensor
    s2: torch.Tensor
    b1: torch.Tensor | None
    b2: torch.Tensor | None
    alpha: torch.Tensor | None
    beta: torch.Tensor | None
    limit: torch.Tensor | None
    ip: int


class FlashInferTrtllmGenMxfp4(Backend):
    name = "flashinfer-trtllm-gen-mxfp4"
    description = "FlashInfer trtllm-gen MXFP4 x bf16 fused MoE (sm100)"
    requirements = Requirements(devices=("sm100",), libraries=(FI,), formats=(MXFP4,), act_quants=(None,), k_multiple=128)
    kernel = "flashinfer.fused_moe.trtllm_fp4_block_scale_routed_moe"

    def prepare(self, data: CaseData, device: str) -> TrtllmGenBuffers:
        fm = importlib.import_module("flashinfer.fused_moe")
        fq = importlib.import_module("flashinfer")
        ex = pad_mx_experts(experts_in_order(data.experts, GateUpOrder.UP_GATE), 128)
        e = ex.num_experts

        def shuffle(w, s):
            ws, ss = [], []
            for j in range(e):
                wj, sj = fm.reorder_rows_for_gated_act_gemm(w[j]), fm.reorder_rows_for_gated_act_gemm(s[j])
                ws.append(fq.shuffle_matrix_a(wj.view(torch.uint8), 128))
                ss.append(fq.shuffle_matrix_sf_a(sj.view(torch.uint8), 128))
            return torch.stack(ws), torch.stack(ss)

        g1, gs1 = shuffle(ex.w1.data, ex.w1.scale)
        g2 = torch.stack([fq.shuffle_matrix_a(ex.w2.data[j].view(torch.uint8), 128) for j in range(e)])
        gs2 = torch.stack([fq.shuffle_matrix_sf_a(ex.w2.scale[j].view(torch.uint8), 128) for j in range(e)])
        b1 = ex.b1
        if b1 is not None:
            b1 = torch.stack([fm.reorder_rows_for_gated_act_gemm(b1[j].reshape(-1, 1)).reshape(-1) for j in range(e)])
        p = data.case.swiglu
        full = lambda v: torch.full((e,), float(v), dtype=torch.float32, device=ex.w1.data.device)  # noqa: E731
        return TrtllmGenBuffers(pad_tokens_hidden(data.x), g1, gs1, g2, gs2, b1, ex.b2,
                                None if p.is_plain else full(p.alpha), None if p.is_plain else full(p.beta),
                                None if p.limit is None else full(p.limit), ex.w2.data.shape[2] * 2)

    def run(self, p: TrtllmGenBuffers, data: CaseData) -> torch.Tensor:
        fm = importlib.import_module("flashinfer.fused_moe")
        c = data.case
        out = fm.trtllm_fp4_block_scale_routed_moe(
            (data.topk_ids.to(torch.int32), data.topk_weights.to(torch.bfloat16)), None, p.x, None,
            p.w1, p.s1.view(torch.float8_e4m3fn), p.b1, p.alpha, p.beta, p.limit,
            p.w2, p.s2.view(torch.float8_e4m3fn), p.b2, None, None, None,
            c.experts, c.topk, None, None, p.ip, 0, c.experts, None)
        return layer_output(first_output(out)[:, : c.hidden].float(), data).to(c.dtype)
