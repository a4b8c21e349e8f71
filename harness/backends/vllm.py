"""vLLM's Triton ``fused_experts`` (bf16 or FP8 128x128 block weights, plain SiLU).

Contract (vLLM ``model_executor/layers/fused_moe/fused_moe.py``): ``w1 [E, 2I, H]`` with rows
``[gate (w1); up (w3)]``, ``w2 [E, H, I]``; FP8 block: e4m3 weights with ``w1_scale [E, 2I/128,
H/128]`` fp32, activations quantized per token per 128 inside the kernel
(``use_fp8_w8a8=True, block_shape=[128, 128]``); ``topk_ids`` int32.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from harness.backends.base import Backend, Requirements
from harness.backends.common import experts_in_order
from harness.backends.emulated import FP8_BLOCK
from harness.cases import CaseData, layer_output
from references.formats import WEIGHT_FORMATS, ActQuant, Fp8Scale
from references.layouts import GateUpOrder
from harness.backends.libapi import Library

VLLM = Library("vllm", "vllm", ">=0.33,<0.34", ("vllm-0.33.0",), "PyPI wheel vllm-0.33.0")


@dataclass
class FusedExpertsWeights:
    w1: torch.Tensor
    w2: torch.Tensor
    w1_scale: torch.Tensor | None
    w2_scale: torch.Tensor | None


class TritonFusedExperts(Backend):
    name = "vllm-fused-experts"
    description = "vLLM Triton fused_experts (bf16 / FP8 block W8A8)"
    module = "vllm.model_executor.layers.fused_moe"
    requirements = Requirements(devices=("cuda", "rocm"), libraries=(VLLM,),
                                formats=(WEIGHT_FORMATS["bf16"], FP8_BLOCK), act_quants=(None, ActQuant.FP8_GROUP),
                                swiglu=False, bias=False, fp8_scales=(Fp8Scale.FP32,))
    kernel = "vllm.model_executor.layers.fused_moe.fused_experts"

    def case_gate(self, case):
        why = super().case_gate(case)
        if why is None and (case.weight_format is FP8_BLOCK) != (case.act_quant is ActQuant.FP8_GROUP):
            why = "FP8 block weights go with fp8_group activations (W8A8) and bf16 with none"
        return why

    def prepare(self, data: CaseData, device: str) -> FusedExpertsWeights:
        ex = experts_in_order(data.experts, GateUpOrder.GATE_UP)
        return FusedExpertsWeights(ex.w1.data.contiguous(), ex.w2.data.contiguous(), ex.w1.scale, ex.w2.scale)

    def run(self, p: FusedExpertsWeights, data: CaseData) -> torch.Tensor:
        fused_experts = importlib.import_module(self.module).fused_experts
        fp8 = data.case.weight_format is FP8_BLOCK
        out = fused_experts(data.x, p.w1, p.w2, data.topk_weights.to(torch.float32),
                            data.topk_ids.to(torch.int32), inplace=False, activation="silu",
                            use_fp8_w8a8=fp8, w1_scale=p.w1_scale, w2_scale=p.w2_scale,
                            block_shape=[128, 128] if fp8 else None)
        return layer_output(out.float(), data).to(data.case.dtype)
