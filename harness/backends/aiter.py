"""AMD AITER MXFP4 fused MoE on gfx950.

Contract (AITER ``aiter/fused_moe.py`` and ``aiter/ops/shuffle.py``; sglang PR 26884): fc1
separated ``[gate; up]``, weights through ``shuffle_weight(w, layout=(16, 16))`` with the
``is_shuffled`` attribute set, E8M0 scales ``[E, N, K/32]``, ``quant_type=per_1x32``, SwiGLU.
"""

from __future__ import annotations

import importlib

import torch

from harness.backends.base import Backend, Requirements
from harness.backends.common import experts_in_order
from harness.backends.emulated import MXFP4, AiterBuffers
from harness.cases import CaseData, layer_output
from harness.families import AITER_MXFP4
from references.formats import QTensor
from references.layouts import GateUpOrder
from harness.backends.libapi import Library

AITER = Library("amd-aiter", "aiter", ">=0.1.20,<0.1.21", ("aiter-0.1.20.post1",), "github ROCm/aiter v0.1.20.post1")


class AiterMxfp4(Backend):
    name = "aiter-mxfp4"
    description = "AMD AITER fused_moe, MXFP4 weights (per_1x32), shuffled (16,16)"
    requirements = Requirements(devices=("gfx950",), libraries=(AITER,), formats=(MXFP4,),
                                act_quants=(None,), k_multiple=64)
    kernel = "aiter.fused_moe.fused_moe(quant_type=per_1x32)"
    family = AITER_MXFP4

    def prepare(self, data: CaseData, device: str) -> AiterBuffers:
        from dataclasses import replace
        shuffle = importlib.import_module("aiter.ops.shuffle").shuffle_weight
        ex = experts_in_order(data.experts, GateUpOrder.GATE_UP)
        w1 = shuffle(ex.w1.data.contiguous(), layout=(16, 16))
        w2 = shuffle(ex.w2.data.contiguous(), layout=(16, 16))
        for t in (w1, w2):
            t.is_shuffled = True
        return AiterBuffers(replace(ex, w1=QTensor(w1, ex.w1.scale), w2=QTensor(w2, ex.w2.scale)), True)

    def run(self, p: AiterBuffers, data: CaseData) -> torch.Tensor:
        aiter = importlib.import_module("aiter")
        fm = importlib.import_module("aiter.fused_moe")
        ex = p.experts
        out = fm.fused_moe(data.x, ex.w1.data, ex.w2.data, data.topk_weights.to(torch.float32), data.topk_ids.to(torch.int32),
                           quant_type=aiter.QuantType.per_1x32, activation=aiter.ActivationType.Swiglu,
                           w1_scale=ex.w1.scale, w2_scale=ex.w2.scale)
        return layer_output(out.float(), data).to(data.case.dtype)
