"""Pure-PyTorch backends that emulate a kernel's contract (run on the CPU or any GPU).

They take weights in the kernel's own layout (built in ``prepare``) and decode them the way the
hardware path does, so a preprocessing fault shows up exactly as it would on the real kernel.
They are the harness's CPU stand-ins, the twins of the real kernels (``harness.families``) and
the base the fault zoo mutates: each overridable step is a method listed in ``hooks``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from harness.backends.base import Backend, Level, Requirements
from harness.backends.common import experts_in_order, pad_mx_experts, pad_tokens_hidden
from harness.cases import CaseData, layer_output
from references.activations import Precision, SwigluParams
from references.formats import WEIGHT_FORMATS, ActQuant, QTensor
from references.layouts import (GateUpOrder, aiter_shuffle_weight, aiter_unshuffle_weight, sm90_deinterleave_fp4_weights,
                                sm90_deinterleave_scales, sm90_interleave_fp4_weights, sm90_interleave_scales)
from references.moe import Experts, MoEConfig, moe_forward, naive_moe_forward

MXFP4, FP8_BLOCK = WEIGHT_FORMATS["mxfp4"], WEIGHT_FORMATS["fp8_block"]


class Combines:
    """The caller-side combine every contract shares: ``rsf * routed + shared``."""

    def combine(self, routed: torch.Tensor, data: CaseData) -> torch.Tensor:
        return layer_output(routed, data)


@dataclass
class DequantizedExperts:
    w1: torch.Tensor   # [E, 2I, H] fp32, rows in the checkpoint order
    w2: torch.Tensor   # [E, H, I] fp32


class NaiveReference(Backend):
    """The kernel libraries' own test reference: dequantize every expert, loop with masks."""

    name = "torch-naive"
    description = "naive per-expert loop over all experts, every expert dequantized up front (vLLM torch_moe style)"
    requirements = Requirements(devices=("any",))
    verified = Level("cpu", ("pure PyTorch; tests/test_fuzz.py, tests/test_faults.py",))
    kernel = "references.moe.naive_moe_forward"

    def prepare(self, data: CaseData, device: str) -> DequantizedExperts:
        ex = data.experts
        return DequantizedExperts(ex.fmt.dequantize(ex.w1, name="w1"), ex.fmt.dequantize(ex.w2, name="w2"))

    def run(self, p: DequantizedExperts, data: CaseData) -> torch.Tensor:
        c, ex = data.case, data.experts
        routed = naive_moe_forward(data.x, data.topk_ids, data.topk_weights, p.w1, p.w2, b1=ex.b1, b2=ex.b2,
                                   order=ex.order, cfg=MoEConfig(activation=c.swiglu, intermediate_dtype=c.dtype))
        return layer_output(routed, data).to(c.dtype)


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
    """CPU emulation of FlashInfer's SM90 cutlass W4A16 MXFP4 MoE contract.

    Contract (shared/notes/sm90-w4a16-probe.md, measured on the H100 at flashinfer-python 0.6.12):
    fc1 rows [up; gate], hidden and intermediate padded to 128, weights through the SM90 byte
    interleave, scales through the SM90 scale interleave, per-expert alpha/beta/limit fp32
    tensors, bf16 intermediate.
    """

    name = "emulated-sm90-w4a16"
    description = "CPU emulation of FlashInfer SM90 cutlass W4A16 MXFP4 MoE (kernel-layout weights)"
    requirements = Requirements(devices=("any",), formats=(MXFP4,), act_quants=(None,))
    verified = Level("cpu", ("pure PyTorch; tests/test_fuzz.py, tests/test_faults.py",))
    kernel = "emulation of flashinfer.fused_moe.cutlass_fused_moe(use_w4_group_scaling=True)"

    def interleave_weights(self, w: torch.Tensor) -> torch.Tensor:
        return sm90_interleave_fp4_weights(w)

    def interleave_scales(self, s: torch.Tensor) -> torch.Tensor:
        return sm90_interleave_scales(s)

    def fc1_order(self, data: CaseData) -> GateUpOrder:
        return GateUpOrder.UP_GATE

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
        # what the kernel's mainloop reads: de-interleaved bytes and scales, [up; gate] rows;
        # it reads the scale buffer as [E, K/128, rows*4] whatever layout it was given
        e, n1, k1 = p.w1.shape
        _, n2, k2 = p.w2.shape
        s1 = sm90_deinterleave_scales(p.s1.reshape(e, (2 * k1) // 128, n1 * 4))
        s2 = sm90_deinterleave_scales(p.s2.reshape(e, (2 * k2) // 128, n2 * 4))
        ex = Experts(MXFP4, QTensor(sm90_deinterleave_fp4_weights(p.w1), s1), QTensor(sm90_deinterleave_fp4_weights(p.w2), s2),
                     p.b1, p.b2, GateUpOrder.UP_GATE)
        act = SwigluParams() if p.alpha is None else SwigluParams(
            float(p.alpha[0]), float(p.beta[0]), None if torch.isinf(p.limit[0]) else float(p.limit[0]))
        cfg = MoEConfig(activation=act, precision=Precision.KERNEL, intermediate_dtype=torch.bfloat16,
                        act_fn=self.activation_fn())
        routed = moe_forward(p.x, data.topk_ids, data.topk_weights, ex, cfg)
        return self.combine(routed[:, : p.hidden], data).to(data.case.dtype)


class EmulatedFp8Block(Combines, Backend):
    """CPU emulation of a DeepGEMM-style FP8 block-scale grouped GEMM MoE (sm90 contract).

    Weights [E, N, K] e4m3 with one scale per 128x128 block, fc1 rows [gate; up]; activations
    quantized per token per 128 channels; the intermediate re-quantized before fc2.
    Source: DeepGEMM README (grouped contiguous layout) and vLLM fused_moe block-fp8 path.
    """

    name = "emulated-fp8-block"
    description = "CPU emulation of an FP8 128x128-block W8A8 MoE (DeepGEMM / vLLM fused_moe block-fp8 contract)"
    requirements = Requirements(devices=("any",), formats=(FP8_BLOCK,),
                                act_quants=(ActQuant.FP8_GROUP, ActQuant.FP8_GROUP_UE8M0), k_multiple=128)
    verified = Level("cpu", ("pure PyTorch; tests/test_fuzz.py, tests/test_faults.py",))
    kernel = "emulation of deep_gemm.m_grouped_fp8_gemm_nt_contiguous + silu_mul_fp8_quant"

    def weight_scales(self, s: torch.Tensor, data: CaseData) -> torch.Tensor:
        return s

    def activation_quant(self, data: CaseData) -> ActQuant | None:
        return data.case.act_quant

    def activation_params(self, data: CaseData) -> SwigluParams:
        """The SwiGLU parameters the fused silu-mul-fp8-quant kernel receives."""
        return data.case.swiglu

    hooks = (weight_scales, activation_quant, activation_params, Combines.combine)

    def prepare(self, data: CaseData, device: str) -> Experts:
        ex = experts_in_order(data.experts, GateUpOrder.GATE_UP)
        return replace(ex, w1=QTensor(ex.w1.data, self.weight_scales(ex.w1.scale, data)),
                       w2=QTensor(ex.w2.data, self.weight_scales(ex.w2.scale, data)))

    def run(self, p: Experts, data: CaseData) -> torch.Tensor:
        c = data.case
        cfg = MoEConfig(activation=self.activation_params(data), precision=Precision.KERNEL,
                        act_quant=self.activation_quant(data), intermediate_dtype=c.dtype)
        routed = moe_forward(data.x, data.topk_ids, data.topk_weights, replace(p, order=GateUpOrder.GATE_UP), cfg)
        return self.combine(routed, data).to(c.dtype)


class EmulatedInterleavedMx(Combines, Backend):
    """CPU emulation of a GPT-OSS-style MXFP4 MoE that expects interleaved gate/up rows.

    Contract: fc1 ``[E, 2I, H/2]`` with gate at even rows and up at odd rows (the GPT-OSS
    checkpoint order), the fused SwiGLU reading gate/up pairs.
    Source: OpenAI ``triton_kernels`` ``swiglu`` (interleaved ``[..., ::2]`` / ``[..., 1::2]``
    over the fused projection) and HF ``modeling_gpt_oss.py``.
    """

    name = "emulated-interleaved-mxfp4"
    description = "CPU emulation of an interleaved gate/up MXFP4 MoE (triton_kernels matmul_ogs + swiglu contract)"
    requirements = Requirements(devices=("any",), formats=(MXFP4,), act_quants=(None,))
    verified = Level("cpu", ("pure PyTorch; tests/test_fuzz.py, tests/test_faults.py",))
    kernel = "emulation of triton_kernels.matmul_ogs(..., fused_activation=swiglu)"

    def fc1_order(self, data: CaseData) -> GateUpOrder:
        return GateUpOrder.INTERLEAVED

    hooks = (fc1_order,)

    def prepare(self, data: CaseData, device: str) -> Experts:
        return experts_in_order(data.experts, self.fc1_order(data))

    def run(self, p: Experts, data: CaseData) -> torch.Tensor:
        c = data.case
        cfg = MoEConfig(activation=c.swiglu, precision=Precision.KERNEL, intermediate_dtype=c.dtype)
        routed = moe_forward(data.x, data.topk_ids, data.topk_weights, replace(p, order=GateUpOrder.INTERLEAVED), cfg)
        return self.combine(routed, data).to(c.dtype)


@dataclass
class AiterBuffers:
    experts: Experts      # [gate; up], codes (16, 16)-shuffled
    is_shuffled: bool     # the flag the kernel reads to pick its shuffled code path


class EmulatedAiterMxfp4(Combines, Backend):
    """CPU emulation of AMD AITER's MXFP4 fused MoE weight contract.

    Contract: fc1 separated ``[gate; up]``, both weights through AITER's (16, 16) tile shuffle and
    the ``is_shuffled`` flag set on the weight; with the flag the kernel reads the shuffled tiles,
    without it the kernel takes its unshuffled code path (sglang PR 26884: a lost flag silently
    selects the wrong path).
    Source: AMD AITER ``aiter/ops/shuffle.py`` ``shuffle_weight`` and ``fused_moe`` weight handling.
    """

    name = "emulated-aiter-mxfp4"
    description = "CPU emulation of AMD AITER MXFP4 fused MoE (separated gate/up, (16,16) shuffled weights, is_shuffled flag)"
    requirements = Requirements(devices=("any",), formats=(MXFP4,), act_quants=(None,), k_multiple=64)
    verified = Level("cpu", ("pure PyTorch; tests/test_fuzz.py, tests/test_faults.py",))
    kernel = "emulation of aiter.fused_moe (MXFP4, shuffled weights)"

    def shuffled_flag(self) -> bool:
        return True

    hooks = (shuffled_flag,)

    def prepare(self, data: CaseData, device: str) -> AiterBuffers:
        ex = experts_in_order(data.experts, GateUpOrder.GATE_UP)
        ex = replace(ex, w1=QTensor(aiter_shuffle_weight(ex.w1.data), ex.w1.scale),
                     w2=QTensor(aiter_shuffle_weight(ex.w2.data), ex.w2.scale))
        return AiterBuffers(ex, self.shuffled_flag())

    def run(self, p: AiterBuffers, data: CaseData) -> torch.Tensor:
        c, ex = data.case, p.experts
        if p.is_shuffled:  # the shuffled code path undoes the tile order as it loads
            ex = replace(ex, w1=QTensor(aiter_unshuffle_weight(ex.w1.data), ex.w1.scale),
                         w2=QTensor(aiter_unshuffle_weight(ex.w2.data), ex.w2.scale))
        cfg = MoEConfig(activation=c.swiglu, precision=Precision.KERNEL, intermediate_dtype=c.dtype)
        routed = moe_forward(data.x, data.topk_ids, data.topk_weights, replace(ex, order=GateUpOrder.GATE_UP), cfg)
        return self.combine(routed, data).to(c.dtype)
