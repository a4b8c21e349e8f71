"""FlashInfer SM90 cutlass W4A16 MXFP4 fused MoE (``cutlass_fused_moe``, ``use_w4_group_scaling``).

Same contract as :class:`EmulatedSm90W4A16` (whose prepare steps it reuses), but the interleaves
go through FlashInfer's own helpers and ``run`` calls the real kernel.
"""

from __future__ import annotations

import torch

from harness.backends.base import Level, Requirements
from harness.backends.common import first_output
from harness.backends.emulated import MXFP4, EmulatedSm90W4A16, Sm90W4A16Buffers
from harness.backends.flashinfer import FI
from harness.backends.flashinfer.build import import_flashinfer
from harness.cases import CaseData
from harness.families import SM90_W4A16


class FlashInferSm90W4A16(EmulatedSm90W4A16):
    name = "flashinfer-sm90-w4a16"
    description = "FlashInfer SM90 cutlass W4A16 MXFP4 fused MoE (bf16 x MXFP4, per-expert SwiGLU alpha/beta/limit)"
    requirements = Requirements(devices=("sm90",), libraries=(FI,), formats=(MXFP4,), act_quants=(None,))
    family = SM90_W4A16
    verified = Level("L2", ("reports/sm90-nvidia-h100-80gb-hbm3/h100-20261122",))
    # the real kernel's activation cannot be swapped: only preprocessing/combine hooks apply
    hooks = tuple(h for h in EmulatedSm90W4A16.hooks if h is not EmulatedSm90W4A16.activation_fn)
    kernel = "flashinfer.fused_moe.cutlass_fused_moe(use_w4_group_scaling=True)"

    def interleave_weights(self, w: torch.Tensor) -> torch.Tensor:
        return import_flashinfer().interleave_moe_weights_for_sm90_mixed_gemm(w.contiguous(), "fp4")

    def interleave_scales(self, s: torch.Tensor) -> torch.Tensor:
        return import_flashinfer().interleave_moe_scales_for_sm90_mixed_gemm(s.contiguous(), group_size=32)

    def run(self, p: Sm90W4A16Buffers, data: CaseData) -> torch.Tensor:
        fm = import_flashinfer()
        out = fm.cutlass_fused_moe(
            input=p.x.contiguous(),
            token_selected_experts=data.topk_ids.to(torch.int32).contiguous(),
            token_final_scales=data.topk_weights.to(torch.float32).contiguous(),
            fc1_expert_weights=p.w1,
            fc2_expert_weights=p.w2,
            output_dtype=torch.bfloat16,
            quant_scales=[p.s1.view(torch.int32), p.s2.view(torch.int32)],
            fc1_expert_biases=p.b1,
            fc2_expert_biases=p.b2,
            swiglu_alpha=p.alpha,
            swiglu_beta=p.beta,
            swiglu_limit=p.limit,
            use_w4_group_scaling=True,
        )
        return self.combine(first_output(out)[:, : p.hidden].float(), data).to(data.case.dtype)

    def notes(self) -> dict:
        import importlib.metadata
        try:
            version = importlib.metadata.version("flashinfer-python")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown (no package metadata)"
        return {"flashinfer": version,
                "build": "trimmed SM90 W4A16 JIT module (harness.backends.flashinfer.build)"}
