"""DeepGEMM grouped FP8 GEMMs (``m_grouped_fp8_gemm_nt_contiguous``) with the framework's
permute / silu-mul-fp8-quant / un-permute around them.

Contract (DeepGEMM README, "grouped GEMMs (contiguous layout)"): rows grouped by expert, each
group padded to a multiple of 128 rows, ``m_indices`` gives each row's expert (-1 for padding);
LHS ``(fp8 [M, K], fp32 [M, K/128])``, RHS ``(fp8 [E, N, K], fp32 [E, N/128, K/128])``.
"""

from __future__ import annotations

import importlib

import torch

from harness.backends.base import Backend, Requirements
from harness.backends.common import experts_in_order
from harness.backends.emulated import FP8_BLOCK
from harness.cases import CaseData, layer_output
from references import formats as F
from references.activations import Precision, swiglu
from references.formats import ActQuant, Fp8Scale
from references.layouts import GateUpOrder
from references.moe import Experts
from harness.backends.libapi import Library

DEEPGEMM = Library("deep-gemm", "deep_gemm", ">=2.6,<2.7", ("deep_gemm-2.6.1",), "github deepseek-ai/DeepGEMM@54e2261")


def contiguous_layout(topk_ids: torch.Tensor, num_experts: int, align: int = 128):
    """Row map for the contiguous layout: (row -> flat (token, slot) index or -1, m_indices)."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    counts = torch.bincount(flat, minlength=num_experts)
    padded = ((counts + align - 1) // align) * align
    starts = torch.cumsum(padded, 0) - padded
    order = torch.argsort(flat, stable=True)
    rank = torch.arange(flat.numel(), device=flat.device) - (torch.cumsum(counts, 0) - counts)[flat[order]]
    dest = starts[flat[order]] + rank
    src = torch.full((int(padded.sum()),), -1, dtype=torch.int64, device=flat.device)
    src[dest] = order
    m_indices = torch.repeat_interleave(torch.arange(num_experts, device=flat.device, dtype=torch.int32), padded)
    m_indices = torch.where(src >= 0, m_indices, torch.full_like(m_indices, -1))
    return src, m_indices


class DeepGemmFp8(Backend):
    name = "deepgemm-fp8"
    description = "DeepGEMM m_grouped_fp8_gemm_nt_contiguous (FP8 128x128 block W8A8)"
    requirements = Requirements(devices=("sm90", "sm100"), libraries=(DEEPGEMM,),
                                formats=(FP8_BLOCK,), act_quants=(ActQuant.FP8_GROUP, ActQuant.FP8_GROUP_UE8M0),
                                bias=False, k_multiple=128)
    kernel = "deep_gemm.m_grouped_fp8_gemm_nt_contiguous"

    def prepare(self, data: CaseData, device: str) -> Experts:
        return experts_in_order(data.experts, GateUpOrder.GATE_UP)

    def run(self, p: Experts, data: CaseData) -> torch.Tensor:
        dg = importlib.import_module("deep_gemm")
        c = data.case
        k = data.topk_ids.shape[1]
        sfmt = Fp8Scale.UE8M0 if c.act_quant is ActQuant.FP8_GROUP_UE8M0 else Fp8Scale.FP32
        src, m_idx = contiguous_layout(data.topk_ids, p.num_experts)
        valid = src >= 0
        xs = torch.zeros(src.numel(), c.hidden, dtype=data.x.dtype, device=data.x.device)
        xs[valid] = data.x[src[valid] // k]
        h = torch.empty(src.numel(), p.w1.data.shape[1], dtype=torch.bfloat16, device=xs.device)
        dg.m_grouped_fp8_gemm_nt_contiguous(F.fp8_group_quantize(xs, 128, sfmt), (p.w1.data, p.w1.scale), h, m_idx)
        gate, up = h.float().chunk(2, dim=-1)
        a = swiglu(gate.to(torch.bfloat16), up.to(torch.bfloat16), c.swiglu, Precision.KERNEL)
        y = torch.empty(src.numel(), c.hidden, dtype=torch.bfloat16, device=xs.device)
        dg.m_grouped_fp8_gemm_nt_contiguous(F.fp8_group_quantize(a, 128, sfmt), (p.w2.data, p.w2.scale), y, m_idx)
        out = torch.zeros(data.x.shape[0], c.hidden, dtype=torch.float32, device=xs.device)
        wflat = data.topk_weights.reshape(-1).to(torch.float32)
        out.index_add_(0, src[valid] // k, y[valid].float() * wflat[src[valid]].unsqueeze(-1))
        return layer_output(out, data).to(c.dtype)
