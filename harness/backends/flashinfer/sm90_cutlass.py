"""FlashInfer SM90 cutlass fused MoE, FP8 block scale and unquantized bf16 (``cutlass_fused_moe``).

FP8 block (``use_deepseek_fp8_block_scale=True``; FlashInfer 0.6.12 / 0.7.2.post1
``fp8_blockscale_gemm.cu`` ``moeGemm``, binding ``getQuantParams``): bf16 input, e4m3 weights
``[E, 2I, H]`` with rows [up; gate], ``quant_scales=[fc1, fc2]`` fp32 per 128x128 block
``[E, 2I/128, H/128]``, ``[E, H/128, I/128]``; activations and the bf16 intermediate quantized
inside per token per 128 with fp32 scales (no UE8M0 activation scales; UE8M0 weight scales are
exact fp32 powers of two). bf16: ``quant_scales=[]``, weights bf16 [up; gate]; 0.6.12 reduces top-k
in a fused finalize epilogue with atomics (not bitwise reproducible), 0.7.x takes
``use_fused_finalize=False``. Both: SwiGLU alpha/beta/limit fp32 ``[E]``, biases in the output dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.backends.base import Level, Requirements, h100
from harness.backends.common import first_output
from harness.backends.emulated import FP8_BLOCK
from harness.backends.emulated_cutlass import Bf16Buffers, EmulatedCutlassBf16, EmulatedFp8BlockUpGate
from harness.backends.flashinfer import FI, fused_finalize_switch
from harness.backends.flashinfer.build import import_flashinfer
from harness.cases import CaseData
from harness.compare import BUDGET_K
from harness.families import CUTLASS_BF16, FP8_BLOCK_UP_GATE
from references.formats import WEIGHT_FORMATS, ActQuant
from references.moe import Experts


def _call(x, data: CaseData, w1, w2, quant_scales, b1, b2, alpha, beta, limit, **flags) -> torch.Tensor:
    import_flashinfer()
    cutlass_fused_moe = FI.attr("flashinfer.fused_moe", "cutlass_fused_moe")
    out = cutlass_fused_moe(
        input=x.contiguous(), token_selected_experts=data.topk_ids.to(torch.int32).contiguous(),
        token_final_scales=data.topk_weights.to(torch.float32).contiguous(), fc1_expert_weights=w1.contiguous(),
        fc2_expert_weights=w2.contiguous(), output_dtype=torch.bfloat16, quant_scales=quant_scales,
        fc1_expert_biases=b1, fc2_expert_biases=b2, swiglu_alpha=alpha, swiglu_beta=beta, swiglu_limit=limit, **flags)
    return first_output(out).float()


def _swiglu(params, e: int, device):
    if params.is_plain:
        return None, None, None
    full = lambda v: torch.full((e,), float(v), dtype=torch.float32, device=device)  # noqa: E731
    return full(params.alpha), full(params.beta), full(float("inf") if params.limit is None else params.limit)


@dataclass
class Fp8Buffers:
    experts: Experts     # e4m3 weights [up; gate], fp32 block scales
    alpha: torch.Tensor | None
    beta: torch.Tensor | None
    limit: torch.Tensor | None


class FlashInferSm90Fp8Block(EmulatedFp8BlockUpGate):
    name = "flashinfer-sm90-fp8-block"
    description = "FlashInfer SM90 cutlass FP8 block-scale fused MoE (DeepSeek recipe, 1x128 activations inside)"
    requirements = Requirements(devices=("sm90",), libraries=(FI,), formats=(FP8_BLOCK,), act_quants=(ActQuant.FP8_GROUP,),
                                k_multiple=128, min_tokens=1)  # min_tokens: see FlashInferSm90W4A16
    family = FP8_BLOCK_UP_GATE
    verified = Level("L2", h100("h100-fi0.6.12", "h100-fi0.6.12-models", "h100-fi0.7.2-fp8", "h100-fi0.7.2-fp8-faults"))
    kernel = "flashinfer.fused_moe.cutlass_fused_moe(use_deepseek_fp8_block_scale=True)"
    budget_k = BUDGET_K
    # the kernel quantizes activations itself: only the preprocessing and combine hooks apply
    hooks = (EmulatedFp8BlockUpGate.fc1_order, EmulatedFp8BlockUpGate.weight_scales,
             EmulatedFp8BlockUpGate.activation_params, EmulatedFp8BlockUpGate.combine)

    def prepare(self, data: CaseData, device: str) -> Fp8Buffers:
        ex = super().prepare(data, device)
        return Fp8Buffers(ex, *_swiglu(self.activation_params(data), ex.num_experts, ex.w1.data.device))

    def run(self, p: Fp8Buffers, data: CaseData) -> torch.Tensor:
        ex = p.experts
        out = _call(data.x.to(torch.bfloat16), data, ex.w1.data, ex.w2.data,
                    [ex.w1.scale.float().contiguous(), ex.w2.scale.float().contiguous()], ex.b1, ex.b2,
                    p.alpha, p.beta, p.limit, use_deepseek_fp8_block_scale=True)
        return self.combine(out, data).to(data.case.dtype)

    def notes(self) -> dict:
        return {"flashinfer": FI.installed() or "?", "build": "trimmed SM90 JIT module (harness.backends.flashinfer.build)"}


class FlashInferSm90Bf16(EmulatedCutlassBf16):
    name = "flashinfer-sm90-bf16"
    description = "FlashInfer SM90 cutlass unquantized bf16 fused MoE (the baseline for quantized rows)"
    requirements = Requirements(devices=("sm90",), libraries=(FI,), formats=(WEIGHT_FORMATS["bf16"],), act_quants=(None,),
                                k_multiple=16, min_tokens=1)  # min_tokens: see FlashInferSm90W4A16
    family = CUTLASS_BF16
    verified = Level("L2", h100("h100-fi0.6.12", "h100-fi0.7.2", "h100-fi0.7.2-models", "h100-fi0.7.2-faults",
                                "fuzz-20261123-fi0.6.12", "fuzz-20261123-fi0.7.2"))
    kernel = "flashinfer.fused_moe.cutlass_fused_moe (bf16 x bf16)"
    budget_k = BUDGET_K

    @property
    def deterministic(self) -> bool:
        return fused_finalize_switch()

    @property
    def nondeterminism_ulp(self) -> int:
        return 0 if fused_finalize_switch() else 2  # the fused finalize's atomic top-k sum, then bf16 rounding

    def run(self, p: Bf16Buffers, data: CaseData) -> torch.Tensor:
        ex = p.experts
        flags = {"use_fused_finalize": False} if fused_finalize_switch() else {}
        out = _call(data.x.to(torch.bfloat16), data, ex.w1.data.to(torch.bfloat16), ex.w2.data.to(torch.bfloat16), [],
                    ex.b1, ex.b2, p.alpha, p.beta, p.limit, **flags)
        return self.combine(out, data).to(data.case.dtype)

    def notes(self) -> dict:
        return {"flashinfer": FI.installed() or "?", "finalize": "unfused" if fused_finalize_switch() else "fused (atomics)"}
