"""FlashInfer SM90 cutlass W4A16 MXFP4 fused MoE (``cutlass_fused_moe``, ``use_w4_group_scaling``).

The contract of :class:`EmulatedSm90W4A16` (whose prepare steps it reuses), with the weight and
scale layouts of the installed version (``v1`` for 0.6.12, ``v2`` for 0.7.2.post1:
``harness.backends.flashinfer.sm90_layout``) produced by FlashInfer's own helpers, and ``run``
calling the real kernel. Call: FlashInfer 0.6.12 ``fused_moe/core.py:775`` / 0.7.2.post1 ``:1277``,
``quant_scales=[s1.view(int32), s2.view(int32)]`` (binding ``Expecting 2 quant scales for W4A16``),
SwiGLU alpha/beta/limit fp32 ``[E]``, biases in the output dtype, both or neither.
"""

from __future__ import annotations

import torch

from harness.backends.base import Level, Requirements, h100
from harness.backends.common import first_output
from harness.backends.emulated import MXFP4
from harness.backends.emulated_cutlass import EmulatedSm90W4A16, Sm90W4A16Buffers
from harness.backends.flashinfer import FI, sm90_layout, w4a16_race
from harness.backends.flashinfer.build import import_flashinfer
from harness.cases import CaseData
from harness.compare import BUDGET_K
from harness.families import SM90_W4A16, SM90_W4A16_V2
from references.sm90_mixed import LAYOUTS


class FlashInferSm90W4A16(EmulatedSm90W4A16):
    name = "flashinfer-sm90-w4a16"
    description = "FlashInfer SM90 cutlass W4A16 MXFP4 fused MoE (bf16 x MXFP4, per-expert SwiGLU alpha/beta/limit)"
    # an empty batch is refused: TLLM_CHECK(input_activations) in csrc/fused_moe/cutlass_backend/
    # cutlass_fused_moe_kernels.cuh:3640 (0.6.12; :4141 in 0.7.2.post1), a data_ptr of a 0-row tensor being null
    requirements = Requirements(devices=("sm90",), libraries=(FI,), formats=(MXFP4,), act_quants=(None,), min_tokens=1)
    verified = Level("L2", h100("h100-fi0.6.12", "h100-fi0.6.12-models", "h100-fi0.6.12-race", "h100-fi0.7.2",
                                "h100-fi0.7.2-models", "h100-fi0.7.2-race", "h100-fi0.7.2-faults", "fuzz-20261123-fi0.7.2"))
    # the real kernel's activation cannot be swapped: only preprocessing/combine hooks apply
    hooks = tuple(h for h in EmulatedSm90W4A16.hooks if h is not EmulatedSm90W4A16.activation_fn)
    kernel = "flashinfer.fused_moe.cutlass_fused_moe(use_w4_group_scaling=True)"
    budget_k = BUDGET_K

    @property
    def family(self):
        return SM90_W4A16 if sm90_layout() == "v1" else SM90_W4A16_V2

    @property
    def layout(self):
        return LAYOUTS[sm90_layout()]

    def interleave_weights(self, w: torch.Tensor) -> torch.Tensor:
        import_flashinfer()  # the helper is a CUDA op of the (trimmed) fused-MoE module
        return FI.attr("flashinfer.fused_moe", "interleave_moe_weights_for_sm90_mixed_gemm")(w.contiguous(), "fp4")

    def interleave_scales(self, s: torch.Tensor) -> torch.Tensor:
        import_flashinfer()
        return FI.attr("flashinfer.fused_moe", "interleave_moe_scales_for_sm90_mixed_gemm")(s.contiguous(), group_size=32)

    def run(self, p: Sm90W4A16Buffers, data: CaseData) -> torch.Tensor:
        import_flashinfer()
        cutlass_fused_moe = FI.attr("flashinfer.fused_moe", "cutlass_fused_moe")
        out = cutlass_fused_moe(
            input=p.x.contiguous(), token_selected_experts=data.topk_ids.to(torch.int32).contiguous(),
            token_final_scales=data.topk_weights.to(torch.float32).contiguous(), fc1_expert_weights=p.w1,
            fc2_expert_weights=p.w2, output_dtype=torch.bfloat16,
            quant_scales=[p.s1.view(torch.int32), p.s2.view(torch.int32)], fc1_expert_biases=p.b1,
            fc2_expert_biases=p.b2, swiglu_alpha=p.alpha, swiglu_beta=p.beta, swiglu_limit=p.limit,
            use_w4_group_scaling=True)
        return self.combine(first_output(out)[:, : p.hidden].float(), data).to(data.case.dtype)

    def notes(self) -> dict:
        n = {"flashinfer": FI.installed() or "?", "layout": sm90_layout(),
             "build": "trimmed SM90 JIT module (harness.backends.flashinfer.build)"}
        race = w4a16_race()
        return n | ({"known_issue": race} if race else {})
