"""OpenAI ``triton_kernels`` ``matmul_ogs`` with a fused SwiGLU (the GPT-OSS reference path).

Contract (triton_kernels ``swiglu.py`` / gpt-oss ``triton`` implementation): fc1 rows
interleaved gate/up, SwiGLU parameters ``(alpha, limit)`` with the ``+1`` on up built in, biases
added in the GEMM. Weights are passed as MXFP4 with E8M0 scales through ``PrecisionConfig``.
"""

from __future__ import annotations

import importlib

import torch

from harness.backends.base import Backend, Requirements
from harness.backends.common import experts_in_order
from harness.backends.emulated import MXFP4
from harness.cases import CaseData, layer_output
from references.layouts import GateUpOrder
from references.moe import Experts
from harness.backends.libapi import Library

TK = Library("triton", "triton_kernels", ">=3.6,<3.7", ("triton_kernels-3.6.0",), "triton v3.6.0 python/triton_kernels (vendored in the vllm 0.20.0 wheel)")


class TritonKernelsMxfp4(Backend):
    name = "triton-kernels-mxfp4"
    description = "OpenAI triton_kernels matmul_ogs + fused swiglu (interleaved gate/up, MXFP4)"
    requirements = Requirements(devices=("sm90+",), libraries=(TK,),
                                formats=(MXFP4,), act_quants=(None,))
    kernel = "triton_kernels.matmul_ogs.matmul_ogs(fused_activation=swiglu)"

    def case_gate(self, case):
        why = super().case_gate(case)
        if why is None and case.swiglu.beta not in (0.0, 1.0):
            why = "triton_kernels swiglu has the +1 on up built in (beta 1.0) or none"
        return why

    def prepare(self, data: CaseData, device: str) -> Experts:
        return experts_in_order(data.experts, GateUpOrder.INTERLEAVED)

    def run(self, p: Experts, data: CaseData) -> torch.Tensor:
        mo = importlib.import_module("triton_kernels.matmul_ogs")
        sw = importlib.import_module("triton_kernels.swiglu")
        rt = importlib.import_module("triton_kernels.routing")
        c = data.case
        act = c.swiglu
        routing_data, gather, scatter = rt.routing_from_topk(data.topk_weights, data.topk_ids, c.experts) \
            if hasattr(rt, "routing_from_topk") else rt.routing(data.router_logits, c.topk)
        fused = mo.FusedActivation(mo.FnSpecs("swiglu", sw.swiglu_fn, ("alpha", "limit")),
                                   (act.alpha, act.limit if act.limit is not None else float("inf")), 2)
        pc1 = mo.PrecisionConfig(weight_scale=p.w1.scale)
        pc2 = mo.PrecisionConfig(weight_scale=p.w2.scale)
        h = mo.matmul_ogs(data.x, p.w1.data.transpose(-2, -1), p.b1, routing_data, gather_indx=gather,
                          precision_config=pc1, fused_activation=fused)
        out = mo.matmul_ogs(h, p.w2.data.transpose(-2, -1), p.b2, routing_data, scatter_indx=scatter,
                            precision_config=pc2, gammas=routing_data.gate_scal)
        return layer_output(out.float(), data).to(c.dtype)
