"""Pure-PyTorch twins of FlashInfer's SM90 cutlass fused-MoE contracts: W4A16 MXFP4 (v1 and v2
layouts), FP8 block scale, unquantized bf16. Each models the buffers the kernel receives and how
its loader reads them, so a preprocessing fault shows exactly as on the kernel; each step a fault
can replace is a method listed in ``hooks``."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from harness.backends.base import Backend, Level, Requirements
from harness.backends.common import experts_in_order, pad_mx_experts, pad_tokens_hidden
from harness.backends.emulated import FP8_BLOCK, MXFP4, Combines
from harness.cases import CaseData
from references.activations import Precision, SwigluParams
from references.formats import DEEPGEMM_TEST, TRTLLM, TRTLLM_SM90_FAST_MATH, WEIGHT_FORMATS, ActQuant, Fp8Rule, QTensor
from references.layouts import GateUpOrder
from references.moe import Experts, MoEConfig, moe_forward
from references.sm90_mixed import LAYOUTS, Sm90Layout


@dataclass
class Sm90W4A16Buffers:
    """Exactly what FlashInfer's SM90 cutlass W4A16 MoE receives."""

    x: torch.Tensor          # [T, Hp] bf16
    w1: torch.Tensor         # [E, 2Ip, Hp/2] uint8, rows [up; gate], SM90 byte-interleaved
    s1: torch.Tensor         # [E, Hp/128, 2Ip*4] uint8 E8M0, SM90 scale-interleaved
    w2: torch.Tensor         # [E, Hp, Ip/2]
    s2: torch.Tensor         # [E, Ip/128, Hp*4]
    b1: torch.Tensor | None  # [E, 2Ip] bf16, [up; gate]
    b2: torch.Tensor | None  # [E, Hp]
    alpha: torch.Tensor | None   # [E] fp32
    beta: torch.Tensor | None
    limit: torch.Tensor | None
    hidden: int


class EmulatedSm90W4A16(Combines, Backend):
    """CPU emulation of FlashInfer's SM90 cutlass W4A16 MXFP4 MoE contract, v1 layouts (0.6.12).

    Contract (shared/notes/sm90-w4a16-probe.md, measured on the H100 at flashinfer-python 0.6.12;
    FlashInfer 0.6.12 / 0.7.2.post1 ``cutlass_fused_moe_kernels.cuh`` ``gated_off = inter_size``):
    fc1 rows [up; gate], hidden and intermediate padded to 128, weights and scales in the
    version's SM90 layout (``references.sm90_mixed``), per-expert alpha/beta/limit fp32 tensors,
    fc1 written as bf16, bias and SwiGLU in fp32 rounded once to the bf16 intermediate
    (``doActivationKernel``: the mixed-input GEMM never fuses the gated activation,
    moe_gemm_template_dispatch.h:737-752; ``Precision.CUTLASS``).
    """

    name = "emulated-sm90-w4a16"
    description = "CPU emulation of FlashInfer SM90 cutlass W4A16 MXFP4 MoE, 0.6.x layouts (kernel-layout weights)"
    requirements = Requirements(devices=("any",), formats=(MXFP4,), act_quants=(None,))
    verified = Level("cpu", ("pure PyTorch; tests/test_fuzz.py, tests/test_faults.py",))
    kernel = "emulation of flashinfer.fused_moe.cutlass_fused_moe(use_w4_group_scaling=True)"
    layout: Sm90Layout = LAYOUTS["v1"]

    def interleave_weights(self, w: torch.Tensor) -> torch.Tensor:
        return self.layout.interleave_weights(w)

    def interleave_scales(self, s: torch.Tensor) -> torch.Tensor:
        return self.layout.interleave_scales(s)

    kernel_order = GateUpOrder.UP_GATE

    def fc1_order(self, data: CaseData) -> GateUpOrder:
        return self.kernel_order

    def transform_mx(self, w: torch.Tensor, s: torch.Tensor):
        """Hook on (packed weights, E8M0 scales) before the layout steps (identity when correct)."""
        return w, s

    def activation_fn(self):
        """The kernel's activation (None = the reference SwiGLU)."""
        return None

    def swiglu_tensors(self, data: CaseData, e: int, device):
        p = data.case.swiglu
        if p.is_plain:
            return None, None, None
        full = lambda v: torch.full((e,), float(v), dtype=torch.float32, device=device)  # noqa: E731
        return full(p.alpha), full(p.beta), full(float("inf") if p.limit is None else p.limit)

    hooks = (interleave_weights, interleave_scales, fc1_order, swiglu_tensors, transform_mx, activation_fn,
             Combines.combine)

    def prepare(self, data: CaseData, device: str) -> Sm90W4A16Buffers:
        ex = pad_mx_experts(experts_in_order(data.experts, self.fc1_order(data)), 128)
        w1, s1 = self.transform_mx(ex.w1.data, ex.w1.scale)
        w2, s2 = self.transform_mx(ex.w2.data, ex.w2.scale)
        alpha, beta, limit = self.swiglu_tensors(data, w1.shape[0], w1.device)
        return Sm90W4A16Buffers(
            x=pad_tokens_hidden(data.x), w1=self.interleave_weights(w1.contiguous()),
            s1=self.interleave_scales(s1.contiguous()), w2=self.interleave_weights(w2.contiguous()),
            s2=self.interleave_scales(s2.contiguous()), b1=ex.b1, b2=ex.b2, alpha=alpha, beta=beta, limit=limit,
            hidden=data.case.hidden)

    def run(self, p: Sm90W4A16Buffers, data: CaseData) -> torch.Tensor:
        # what the kernel's mainloop reads: its layout's inverse, whatever layout it was given
        (_, n1, k1), (_, n2, k2), lay = p.w1.shape, p.w2.shape, self.layout
        s1, s2 = lay.read_scales(p.s1, n1, 2 * k1 // 32), lay.read_scales(p.s2, n2, 2 * k2 // 32)
        ex = Experts(MXFP4, QTensor(lay.deinterleave_weights(p.w1), s1), QTensor(lay.deinterleave_weights(p.w2), s2),
                     p.b1, p.b2, self.kernel_order)
        act = SwigluParams() if p.alpha is None else SwigluParams(
            float(p.alpha[0]), float(p.beta[0]), None if torch.isinf(p.limit[0]) else float(p.limit[0]))
        cfg = MoEConfig(activation=act, precision=Precision.CUTLASS, intermediate_dtype=torch.bfloat16,
                        act_fn=self.activation_fn())
        routed = moe_forward(p.x, data.topk_ids, data.topk_weights, ex, cfg)
        return self.combine(routed[:, : p.hidden], data).to(data.case.dtype)


class EmulatedSm90W4A16V2(EmulatedSm90W4A16):
    """The same contract in the v2 layouts (FlashInfer 0.6.16-0.6.16.post2, >= 0.6.18, 0.7.2.post1):
    bit-permuted weights, scales folded into [E, rows/64, K/128, 16, 16] (``references.sm90_mixed``)."""

    name = "emulated-sm90-w4a16-v2"
    description = "CPU emulation of FlashInfer SM90 cutlass W4A16 MXFP4 MoE, >= 0.6.18 / 0.7.x layouts"
    layout = LAYOUTS["v2"]


class EmulatedFp8Block(Combines, Backend):
    """CPU emulation of an FP8 block-scale grouped GEMM MoE (DeepSeek-V3 recipe, sm90 contract).

    Weights [E, N, K] e4m3 with one fp32 scale per 128x128 block, fc1 rows in ``fc1_order``
    ([gate; up] for DeepGEMM / vLLM; [up; gate] for FlashInfer cutlass); activations quantized per
    token per 128 channels; the bf16 intermediate re-quantized before fc2.
    Source: DeepGEMM README (grouped contiguous layout); FlashInfer 0.6.12 ``fp8_blockscale_gemm.cu``
    ``moeGemm`` (``internal_quantize_a``: bf16 in, 1x128 quantized inside, for both GEMMs).
    """

    name = "emulated-fp8-block"
    description = "CPU emulation of an FP8 128x128-block W8A8 MoE (DeepGEMM / vLLM fused_moe block-fp8 contract)"
    requirements = Requirements(devices=("any",), formats=(FP8_BLOCK,),
                                act_quants=(ActQuant.FP8_GROUP, ActQuant.FP8_GROUP_UE8M0), k_multiple=128)
    verified = Level("cpu", ("pure PyTorch; tests/test_fuzz.py, tests/test_faults.py",))
    kernel = "emulation of deep_gemm.m_grouped_fp8_gemm_nt_contiguous + silu_mul_fp8_quant"

    kernel_order = GateUpOrder.GATE_UP   # the order the kernel reads fc1 rows in
    # how activations are quantized (references.formats.fp8.Fp8Rule): DeepGEMM's tests' per_token_cast_to_fp8
    act_rule: Fp8Rule = DEEPGEMM_TEST
    # the rule the twin quantizes by, where the kernel's arithmetic differs from the library's rule (None: act_rule)
    twin_act_rule: Fp8Rule | None = None
    # how the activation rounds: vLLM's silu_and_mul kernels (references.activations.Precision.KERNEL)
    precision: Precision = Precision.KERNEL

    @property
    def reference_kw(self) -> dict:
        return {} if self.act_rule == DEEPGEMM_TEST else {"act_rule": self.act_rule}

    def fc1_order(self, data: CaseData) -> GateUpOrder:
        """The order prepare writes fc1 rows in (a fault may make it differ from kernel_order)."""
        return self.kernel_order

    def weight_scales(self, s: torch.Tensor, data: CaseData) -> torch.Tensor:
        return s

    def activation_quant(self, data: CaseData) -> ActQuant | None:
        return data.case.act_quant

    def activation_params(self, data: CaseData) -> SwigluParams:
        """The SwiGLU parameters the fused silu-mul-fp8-quant kernel receives."""
        return data.case.swiglu

    hooks = (fc1_order, weight_scales, activation_quant, activation_params, Combines.combine)

    def prepare(self, data: CaseData, device: str) -> Experts:
        ex = experts_in_order(data.experts, self.fc1_order(data))
        return replace(ex, w1=QTensor(ex.w1.data, self.weight_scales(ex.w1.scale, data)),
                       w2=QTensor(ex.w2.data, self.weight_scales(ex.w2.scale, data)))

    def run(self, p: Experts, data: CaseData) -> torch.Tensor:
        c = data.case
        cfg = MoEConfig(activation=self.activation_params(data), precision=self.precision,
                        act_quant=self.activation_quant(data), act_rule=self.twin_act_rule or self.act_rule,
                        intermediate_dtype=c.dtype)
        routed = moe_forward(data.x, data.topk_ids, data.topk_weights, replace(p, order=self.kernel_order), cfg)
        return self.combine(routed, data).to(c.dtype)


class EmulatedFp8BlockUpGate(EmulatedFp8Block):
    """The FP8 block contract of FlashInfer's cutlass fused MoE: fc1 rows [up; gate]."""

    name = "emulated-fp8-block-up-gate"
    description = "CPU emulation of FlashInfer SM90 cutlass FP8 block-scale MoE ([up; gate] fc1, 1x128 activations)"
    requirements = replace(EmulatedFp8Block.requirements, act_quants=(ActQuant.FP8_GROUP,))
    kernel = "emulation of flashinfer.fused_moe.cutlass_fused_moe(use_deepseek_fp8_block_scale=True)"
    kernel_order = GateUpOrder.UP_GATE
    # TRT-LLM's scale_1x128_kernel: no amax floor, q = x * (448 / amax) (FlashInfer 0.6.12 and 0.7.2.post1
    # fp8_blockscale_gemm_kernel.cuh:871, :988-999); both differences were found by fuzzing on the H100:
    # 1e-9 activations flushed by a 1e-4 floor (40% mismatch), saturated activations on e4m3 midpoints (3%)
    act_rule: Fp8Rule = TRTLLM
    # and its fused_moe_90 build computes 448 / amax and 1 / scale with div.approx / rcp.approx (-use_fast_math),
    # measured on sm90 by the fast-math probe (Findings 7; references/formats/fast_math_sm90.py)
    twin_act_rule: Fp8Rule | None = TRTLLM_SM90_FAST_MATH
    # fc1 written as bf16, then bias and SwiGLU in fp32 rounded once (doActivationKernel, FlashInfer 0.7.2.post1
    # cutlass_fused_moe_kernels.cuh:2480-2589; 0.6.12 :2115-2254), not vLLM's silu_and_mul roundings
    precision: Precision = Precision.CUTLASS


class EmulatedCutlassBf16(Combines, Backend):
    """CPU emulation of FlashInfer's SM90 cutlass bf16 MoE: bf16 weights, fc1 rows [up; gate], the
    fc1 output rounded to bf16 before the (fp32, one rounding) activation, a bf16 intermediate.
    Source: FlashInfer 0.6.12 / 0.7.2.post1 ``cutlass_fused_moe_kernels.cuh`` (``doActivation``, gated_off).
    With an sm80-style (not TMA warp-specialized) tactic and plain SwiGLU, the kernel fuses the
    activation into fc1's epilogue instead (``isFusedGatedActivation``, moe_gemm_template_dispatch.h:737-752)
    and fc1's output is not rounded to bf16 first: that tactic's contract is not modelled.
    """

    name = "emulated-cutlass-bf16"
    description = "CPU emulation of FlashInfer SM90 cutlass unquantized bf16 MoE"
    requirements = Requirements(devices=("any",), formats=(WEIGHT_FORMATS["bf16"],), act_quants=(None,))
    verified = Level("cpu", ("pure PyTorch; tests/test_fuzz.py",))
    kernel = "emulation of flashinfer.fused_moe.cutlass_fused_moe (bf16)"
    kernel_order = GateUpOrder.UP_GATE

    def fc1_order(self, data: CaseData) -> GateUpOrder:
        return self.kernel_order

    def swiglu_tensors(self, data: CaseData, e: int, device):
        return EmulatedSm90W4A16.swiglu_tensors(self, data, e, device)

    hooks = (fc1_order, swiglu_tensors, Combines.combine)

    def prepare(self, data: CaseData, device: str) -> "Bf16Buffers":
        ex = experts_in_order(data.experts, self.fc1_order(data))
        alpha, beta, limit = self.swiglu_tensors(data, ex.num_experts, ex.w1.data.device)
        return Bf16Buffers(ex, alpha, beta, limit)

    def run(self, p: "Bf16Buffers", data: CaseData) -> torch.Tensor:
        act = SwigluParams() if p.alpha is None else SwigluParams(
            float(p.alpha[0]), float(p.beta[0]), None if torch.isinf(p.limit[0]) else float(p.limit[0]))
        cfg = MoEConfig(activation=act, precision=Precision.CUTLASS, intermediate_dtype=torch.bfloat16)
        routed = moe_forward(data.x, data.topk_ids, data.topk_weights, replace(p.experts, order=self.kernel_order), cfg)
        return self.combine(routed, data).to(data.case.dtype)


@dataclass
class Bf16Buffers:
    experts: Experts          # bf16, fc1 rows [up; gate]
    alpha: torch.Tensor | None
    beta: torch.Tensor | None
    limit: torch.Tensor | None
