"""SGLang's Triton ``fused_experts`` (bf16, or FP8 128x128 block W8A8), pinned at sglang 0.5.23.

Contract, read in the 0.5.23 wheel (``sglang/srt/layers/moe/``):
- ``moe_runner/triton_utils/fused_moe.py:304-326``: ``fused_experts(hidden_states, w1, w2, topk_output,
  moe_runner_config, b1, b2, use_fp8_w8a8, ..., w1_scale, w2_scale, ..., block_shape, ...)``; the old
  ``fused_moe_triton.fused_moe`` module is gone; ``topk_output`` is any ``(weights, ids, _)`` triple
  (``:327``); ``MoeRunnerConfig.inplace`` defaults to True and overwrites the input (``base.py:57``,
  ``fused_moe.py:619-620``): pass False;
- ``w1 [E, 2I, H]`` ``[gate; up]`` for ``silu``; interleaved rows with ``gemm1_alpha`` /
  ``gemm1_clamp_limit`` and ``gate_up_interleaved=True`` (GPT-OSS: ``g * sigmoid(alpha g) * (u + 1)``,
  ``fused_moe.py:419-426``); ``w2 [E, H, I]`` (``fused_moe_triton_kernels.py:1076-1078``);
- the fc1 output is rounded to bf16 before the activation (``fused_moe_triton_kernels.py:634``);
- FP8 block: fp32 scales ``[E, 2I/128, H/128]`` (``:916-918``); activations quantized inside for both
  GEMMs with fp32 (not UE8M0) scales, ``q = x * (448 / amax)``, amax floored at 1e-10
  (``kernels/jit/csrc/gemm/per_token_group_quant.cuh:326-357``);
- the import needs the compiled ``sgl_kernel`` (``fused_moe.py:58-59``); the harness applies rsf itself.
What blocks a run here: ``sglang-kernel`` 0.4.10 (373 MB wheel, pins torch 2.14.1) cannot be carried
to the H100 (64 MiB a call), and replacing its ops with our own would test our code, not SGLang's. L0.
"""

from __future__ import annotations

import torch

from harness.backends.base import Level, Requirements
from harness.backends.emulated import FP8_BLOCK
from harness.backends.libapi import Library
from harness.backends.vllm import FusedExpertsWeights, VllmFusedExperts
from harness.cases import CaseData
from references.formats import SGLANG as SGLANG_RULE
from references.formats import WEIGHT_FORMATS, ActQuant, Fp8Scale

SGLANG = Library("sglang", "sglang", ">=0.5.23,<0.5.24", ("sglang-0.5.23",), "PyPI wheel sglang-0.5.23")
SGL_KERNEL = Library("sglang-kernel", "sgl_kernel", ">=0.4.10,<0.5", (), "sglang 0.5.23 METADATA pins sglang-kernel==0.4.10")


class SglangFusedExperts(VllmFusedExperts):
    """The same weight contract as vLLM's (``[gate; up]`` or interleaved, ``[E, N/128, K/128]`` fp32
    scales, :meth:`VllmFusedExperts.prepare`); its own call, config and FP8 activation rule."""

    name = "sglang-fused-experts"
    description = "SGLang Triton fused_experts (bf16, or FP8 128x128 block W8A8), silu or GPT-OSS swiglu"
    requirements = Requirements(devices=("cuda", "rocm"), libraries=(SGLANG, SGL_KERNEL),
                                formats=(WEIGHT_FORMATS["bf16"], FP8_BLOCK), act_quants=(None, ActQuant.FP8_GROUP),
                                fp8_scales=(Fp8Scale.FP32, Fp8Scale.UE8M0))
    verified = Level("L0", ("tests/fixtures/api/sglang-0.5.23.json", "tests/test_api_snapshots.py"))
    kernel = "sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe.fused_experts"

    def fp8_act_quant(self) -> ActQuant:
        return ActQuant.FP8_GROUP   # fp32 scales: scale_ue8m0 is never passed (fp8_kernel.py:410-486)

    def runner_config(self, p: FusedExpertsWeights, data: CaseData):
        config = SGLANG.attr("sglang.srt.layers.moe.moe_runner.base", "MoeRunnerConfig")
        e, act = data.case.experts, data.case.swiglu
        if p.interleaved:   # fused_moe.py:419-426, gate_up_interleaved (base.py:70)
            return config(num_experts=e, num_local_experts=e, activation="silu", inplace=False,
                          gemm1_alpha=act.alpha, gemm1_clamp_limit=act.limit, gate_up_interleaved=True)
        return config(num_experts=e, num_local_experts=e, activation="silu", inplace=False)

    def run(self, p: FusedExpertsWeights, data: CaseData) -> torch.Tensor:
        fused_experts = SGLANG.attr("sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe", "fused_experts")
        topk = (data.topk_weights.to(torch.float32).contiguous(), data.topk_ids.to(torch.int32).contiguous(), None)
        fp8 = p.w1_scale is not None
        with torch.inference_mode():   # the custom op calls its body directly only outside autograd (custom_op.py:143-170)
            out = fused_experts(hidden_states=data.x.contiguous(), w1=p.w1, w2=p.w2, topk_output=topk,
                                moe_runner_config=self.runner_config(p, data), b1=p.b1, b2=p.b2, use_fp8_w8a8=fp8,
                                w1_scale=p.w1_scale, w2_scale=p.w2_scale, block_shape=[128, 128] if fp8 else None)
        return self.combine(out.float(), data).to(data.case.dtype)

    @property
    def reference_kw(self) -> dict:
        return {"act_rule": SGLANG_RULE}
