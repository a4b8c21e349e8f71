"""SGLang's Triton ``fused_experts`` (same contract as vLLM's; sglang
``srt/layers/moe/fused_moe_triton/fused_moe.py``)."""

from __future__ import annotations

from dataclasses import replace

from harness.backends.libapi import Library
from harness.backends.vllm import TritonFusedExperts

SGLANG = Library("sglang", "sglang", ">=0.5.23,<0.5.24", ("sglang-0.5.23",), "PyPI wheel sglang-0.5.23")


class SglangFusedExperts(TritonFusedExperts):
    name = "sglang-fused-experts"
    description = "SGLang Triton fused_experts (bf16 / FP8 block W8A8)"
    module = "sglang.srt.layers.moe.fused_moe_triton.fused_moe"
    requirements = replace(TritonFusedExperts.requirements, libraries=(SGLANG,))
    kernel = "sglang.srt.layers.moe.fused_moe_triton.fused_moe.fused_experts"
