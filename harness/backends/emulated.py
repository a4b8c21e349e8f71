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
from harness.cases import CaseData, as_returned, layer_output
from references.activations import Precision, SwigluParams
from references.formats import WEIGHT_FORMATS, ActQuant, QTensor
from references.layouts import GateUpOrder, aiter_shuffle_weight, aiter_unshuffle_weight
from references.moe import Experts, MoEConfig, moe_forward, naive_moe_forward

MXFP4, FP8_BLOCK = WEIGHT_FORMATS["mxfp4"], WEIGHT_FORMATS["fp8_block"]


class Combines:
    """The caller-side combine every contract shares: ``rsf * routed + shared``, on the routed sum as the
    kernel returns it (``harness.cases.as_returned``: in bf16, so a twin rounds where its kernel does)."""

    def combine(self, routed: torch.Tensor, data: CaseData) -> torch.Tensor:
        return layer_output(as_returned(routed, data), data)


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
        # matmul_ogs's roundings (references.activations.Precision.TRITON_KERNELS): fc1 and its SwiGLU in fp32,
        # one bf16 rounding; fc2 rows weighted, then rounded, then summed
        cfg = MoEConfig(activation=c.swiglu, precision=Precision.TRITON_KERNELS, intermediate_dtype=c.dtype)
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
