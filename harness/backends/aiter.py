"""AMD AITER MXFP4 fused MoE (``aiter.fused_moe.fused_moe``, bf16 activations x MXFP4 weights, the
GPT-OSS SwiGLU) on gfx950, pinned at ROCm/aiter v0.1.20.post1 (de07f3885; the package index's
``amd-aiter`` 0.1.7 always quantizes activations to MXFP4 for ``per_1x32``).

Contract (aiter v0.1.20.post1):
- ``fused_moe(hidden_states, w1, w2, topk_weight, topk_ids, ..., activation, quant_type, doweight_stage1,
  w1_scale, w2_scale, ..., bias1, bias2, splitk, swiglu_limit, beta, linear_beta, gate_mode, ...)``
  (``aiter/fused_moe.py:454-490``);
- weights viewed as ``dtypes.fp4x2`` (every MXFP4 branch tests ``w1.dtype == fp4x2``, ``fused_moe.py:714``),
  ``w1 [E, 2I, H/2]`` rows ``[gate; up]`` with ``gate_mode="separated"`` (``:3603``), low nibble first
  (``utility/fp4_utils.py:238-243``);
- the a16w4 preshuffle of AITER's own test: ``shuffle_weight_a16w4(w, 16, False)`` (sets ``is_shuffled``,
  which the kernel reads, ``fused_moe.py:703``) and ``shuffle_scale_a16w4(s [E*N, K/32], E, False)``
  (``op_tests/test_moe_2stage.py:330-340``; ``ops/shuffle.py:212, 434``);
- biases fp32 or ``TypeError("MoE bias must be fp32")`` (``fused_moe.py:1311-1318``);
- ``ActivationType.Swiglu`` is GPT-OSS's with alpha 1.702 and limit 7.0 hardcoded on the CK-Tile path
  (``csrc/kernels/activation_kernels.cu:149-150``); AITER quantizes activations to MXFP4 itself from 256
  tokens on (``GPTOSS_SWIGLU_MXFP4_BF16_BOUND``, ``fused_moe.py:72, 745-746``): a different contract, gated.
No ROCm machine here: L0.
"""

from __future__ import annotations

import torch

from harness.backends.base import Level, Requirements
from harness.backends.common import experts_in_order
from harness.backends.emulated import MXFP4, AiterBuffers, EmulatedAiterMxfp4
from harness.backends.libapi import Library
from harness.cases import CaseData
from references.activations import GPT_OSS
from references.formats import QTensor
from references.layouts import GateUpOrder

AITER = Library("amd-aiter", "aiter", ">=0.1.20,<0.1.21", ("aiter-0.1.20.post1",),
                "github ROCm/aiter v0.1.20.post1 (de07f3885ee5f2030ba72b6cc5940d674fd457cf)")


class AiterMxfp4(EmulatedAiterMxfp4):
    name = "aiter-mxfp4"
    description = "AMD AITER fused_moe, bf16 x MXFP4 (per_1x32), GPT-OSS Swiglu, a16w4 shuffles"
    requirements = Requirements(devices=("gfx950",), libraries=(AITER,), formats=(MXFP4,), act_quants=(None,),
                                k_multiple=256)
    verified = Level("L0", ("tests/fixtures/api/aiter-0.1.20.post1.json", "tests/test_api_snapshots.py"))
    kernel = "aiter.fused_moe.fused_moe(quant_type=per_1x32, activation=Swiglu)"

    def case_gate(self, case):
        why = super().case_gate(case)
        if why is None and case.swiglu != GPT_OSS:
            why = "ActivationType.Swiglu is GPT-OSS's (alpha 1.702, beta 1, limit 7 hardcoded, activation_kernels.cu:149-150)"
        if why is None and case.dtype != torch.bfloat16:
            why = "bf16 activations only"
        if why is None and case.tokens >= 256:
            why = "from 256 tokens AITER quantizes activations to MXFP4 (fused_moe.py:745-746): another contract"
        return why

    def prepare(self, data: CaseData, device: str) -> AiterBuffers:
        fp4x2 = AITER.attr("aiter.utility.dtypes", "fp4x2")
        shuffle_w = AITER.attr("aiter.ops.shuffle", "shuffle_weight_a16w4")
        shuffle_s = AITER.attr("aiter.ops.shuffle", "shuffle_scale_a16w4")
        ex = experts_in_order(data.experts, GateUpOrder.GATE_UP)
        e = ex.num_experts
        w1 = shuffle_w(ex.w1.data.contiguous().view(fp4x2), 16, False)   # view first: .view() drops is_shuffled
        w2 = shuffle_w(ex.w2.data.contiguous().view(fp4x2), 16, False)
        s1 = shuffle_s(ex.w1.scale.reshape(-1, ex.w1.scale.shape[-1]).contiguous(), e, False)
        s2 = shuffle_s(ex.w2.scale.reshape(-1, ex.w2.scale.shape[-1]).contiguous(), e, False)
        flag = self.shuffled_flag()
        for w in (w1, w2):
            w.is_shuffled = flag   # the zoo's shuffle-flag-lost fault clears it
        f32 = lambda b: None if b is None else b.to(torch.float32).contiguous()  # noqa: E731
        ex = type(ex)(ex.fmt, QTensor(w1, s1), QTensor(w2, s2), f32(ex.b1), f32(ex.b2), ex.order)
        return AiterBuffers(ex, flag)

    def run(self, p: AiterBuffers, data: CaseData) -> torch.Tensor:
        fused_moe = AITER.attr("aiter.fused_moe", "fused_moe")
        quant = AITER.attr("aiter.ops.enum", "QuantType")
        act = AITER.attr("aiter.ops.enum", "ActivationType")
        ex = p.experts
        out = fused_moe(hidden_states=data.x.to(torch.bfloat16).contiguous(), w1=ex.w1.data, w2=ex.w2.data,
                        topk_weight=data.topk_weights.to(torch.float32).contiguous(),
                        topk_ids=data.topk_ids.to(torch.int32).contiguous(), activation=act.Swiglu,
                        quant_type=quant.per_1x32, doweight_stage1=False, w1_scale=ex.w1.scale, w2_scale=ex.w2.scale,
                        bias1=ex.b1, bias2=ex.b2, swiglu_limit=7.0, gate_mode="separated")
        return self.combine(out.float(), data).to(data.case.dtype)

    def notes(self) -> dict:
        return {"aiter": AITER.installed() or "?"}
