"""vLLM's Triton ``fused_experts`` (bf16, or FP8 128x128 block W8A8), pinned at vllm 0.33.0.

Contract, read in the 0.33.0 wheel (``vllm/model_executor/layers/fused_moe/``):
- ``fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, activation: MoEActivation,
  apply_router_weight_on_input, global_num_experts, expert_map, quant_config)`` (``fused_moe.py:1602-1613``):
  no ``inplace`` and no ``use_fp8_w8a8``/scales keywords any more; quantization and biases travel in a
  ``FusedMoEQuantConfig`` (``config.py:593-632`` fp8, ``config.py:987`` biases only); ``activation`` is the
  enum, a string fails at ``activation.value`` (``fused_moe.py:1624``);
- ``w1 [E, 2I, H]`` rows ``[gate; up]`` for SILU (``csrc/activation_kernels.cu:115-116``: first half
  gated), ``w2 [E, H, I]`` (``fused_moe.py:1714-1715``); GPT-OSS's ``SWIGLUOAI`` reads interleaved rows
  with alpha 1.702 and limit 7.0 fixed (``activation.py:30-33``, ``csrc/torch_bindings.cpp:668-670``);
- FP8 block: e4m3 weights, fp32 scales ``[E, 2I/128, H/128]`` (``fused_moe.py:806-811``); activations are
  quantized inside per token per 128 (``fused_moe.py:1778-1784``) by ``per_token_group_quant_fp8``, whose
  scales are rounded up to powers of two whenever DeepGEMM's E8M0 mode is on, the default on H100 and
  B200 (``utils/deep_gemm.py:121-143``, ``envs.py:1606-1608``); ``VLLM_USE_DEEP_GEMM_E8M0=0`` gives fp32 scales;
- no routed-scaling parameter: the caller applies ``rsf * routed + shared`` (here ``Combines``).
What only hardware settles: the kernel numerics; vLLM's compiled ops (``_C``, ``_moe_C``) make the
wheel (336 MB) impossible to carry to the H100 here, so this backend is L0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from harness.backends.base import Backend, Level, Requirements
from harness.backends.common import experts_in_order
from harness.backends.emulated import FP8_BLOCK, Combines
from harness.backends.libapi import Library
from harness.cases import CaseData
from references.activations import GPT_OSS
from references.formats import VLLM as VLLM_RULE
from references.formats import WEIGHT_FORMATS, ActQuant, Fp8Scale
from references.layouts import GateUpOrder

VLLM = Library("vllm", "vllm", ">=0.33,<0.34", ("vllm-0.33.0",), "PyPI wheel vllm-0.33.0 (commit g4ba787ec9)")
FM = "vllm.model_executor.layers.fused_moe"


def vllm_act_quant() -> ActQuant:
    """The activation scales vLLM's FP8 path produces here: UE8M0 unless DeepGEMM's E8M0 mode is off."""
    off = os.environ.get("VLLM_USE_DEEP_GEMM_E8M0") == "0" or os.environ.get("VLLM_USE_DEEP_GEMM") == "0"
    return ActQuant.FP8_GROUP if off else ActQuant.FP8_GROUP_UE8M0


@dataclass
class FusedExpertsWeights:
    w1: torch.Tensor
    w2: torch.Tensor
    w1_scale: torch.Tensor | None
    w2_scale: torch.Tensor | None
    b1: torch.Tensor | None
    b2: torch.Tensor | None
    interleaved: bool       # SWIGLUOAI (GPT-OSS) rows, else [gate; up] SILU


class VllmFusedExperts(Combines, Backend):
    name = "vllm-fused-experts"
    description = "vLLM Triton fused_experts (bf16, or FP8 128x128 block W8A8), SILU or GPT-OSS SWIGLUOAI"
    requirements = Requirements(devices=("cuda", "rocm"), libraries=(VLLM,), formats=(WEIGHT_FORMATS["bf16"], FP8_BLOCK),
                                act_quants=(None, ActQuant.FP8_GROUP, ActQuant.FP8_GROUP_UE8M0),
                                fp8_scales=(Fp8Scale.FP32, Fp8Scale.UE8M0))
    verified = Level("L0", ("tests/fixtures/api/vllm-0.33.0.json", "tests/test_api_snapshots.py"))
    kernel = "vllm.model_executor.layers.fused_moe.fused_moe.fused_experts"

    def fp8_act_quant(self) -> ActQuant:
        """How this library quantizes activations for FP8 block weights."""
        return vllm_act_quant()

    def case_gate(self, case):
        why = super().case_gate(case)
        fp8 = case.weight_format is FP8_BLOCK
        if why is None and fp8 and case.act_quant is not self.fp8_act_quant():
            why = (f"{self.name} quantizes activations as {self.fp8_act_quant().value} here (vLLM: DeepGEMM E8M0 "
                   "mode, utils/deep_gemm.py:121-143, VLLM_USE_DEEP_GEMM_E8M0=0 for fp32; SGLang: fp32 scales)")
        if why is None and not fp8 and case.act_quant is not None:
            why = "bf16 weights run with unquantized activations"
        if why is None and fp8 and (case.hidden % 128 or case.intermediate % 128):
            why = "FP8 block: hidden and intermediate must be multiples of 128 (the quantizer asserts K % 128 == 0)"
        if why is None and not (case.swiglu.is_plain or case.swiglu == GPT_OSS):
            why = "plain SiLU or GPT-OSS's SwiGLU (alpha 1.702, +1 on up, limit 7) only (vLLM activation.py:21-45)"
        return why

    def prepare(self, data: CaseData, device: str) -> FusedExpertsWeights:
        interleaved = not data.case.swiglu.is_plain
        ex = experts_in_order(data.experts, GateUpOrder.INTERLEAVED if interleaved else GateUpOrder.GATE_UP)
        s = lambda t: None if t is None else t.float().contiguous()  # noqa: E731 - fp32 scales
        return FusedExpertsWeights(ex.w1.data.contiguous(), ex.w2.data.contiguous(), s(ex.w1.scale), s(ex.w2.scale),
                                   ex.b1, ex.b2, interleaved)

    def quant_config(self, p: FusedExpertsWeights):
        if p.w1_scale is not None:   # config.py:593-632
            fp8_config = VLLM.attr("vllm.model_executor.layers.fused_moe.config", "fp8_w8a8_moe_quant_config")
            return fp8_config(w1_scale=p.w1_scale, w2_scale=p.w2_scale, w1_bias=p.b1, w2_bias=p.b2,
                              block_shape=[128, 128])
        if p.b1 is not None or p.b2 is not None:   # config.py:987
            return VLLM.attr("vllm.model_executor.layers.fused_moe.config", "biased_moe_quant_config")(
                w1_bias=p.b1, w2_bias=p.b2)
        return None

    def run(self, p: FusedExpertsWeights, data: CaseData) -> torch.Tensor:
        fused_experts = VLLM.attr("vllm.model_executor.layers.fused_moe.fused_moe", "fused_experts")
        act = VLLM.attr("vllm.model_executor.layers.fused_moe.activation", "MoEActivation")
        out = fused_experts(hidden_states=data.x.contiguous(), w1=p.w1, w2=p.w2,
                            topk_weights=data.topk_weights.to(torch.float32).contiguous(),
                            topk_ids=data.topk_ids.to(torch.int32).contiguous(),
                            activation=act.SWIGLUOAI if p.interleaved else act.SILU,
                            quant_config=self.quant_config(p))
        return self.combine(out.float(), data).to(data.case.dtype)

    @property
    def reference_kw(self) -> dict:
        return {"act_rule": VLLM_RULE}   # eps 1e-10 floor, absmax / 448 (fp8_utils.py:632-701)
