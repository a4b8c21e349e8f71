"""Pure-PyTorch backends that emulate a kernel's contract (run on the CPU or any GPU).

They take weights in the kernel's own layout (built in ``prepare``) and decode them the way the
hardware path does, so a preprocessing fault shows up exactly as it would on the real kernel.
They are the harness's CPU stand-ins and the base the fault zoo mutates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.backends import Backend, Requirements
from harness.backends.common import fc1_in_order, finish_layer, mx_weights_for_kernel, pad_tokens_hidden
from harness.cases import CaseData
from references.activations import SwigluParams
from references.layouts import (aiter_shuffle_weight, aiter_unshuffle_weight, sm90_deinterleave_fp4_weights, sm90_deinterleave_scales,
                                sm90_interleave_fp4_weights, sm90_interleave_scales)
from references.moe import dequantize_weight, moe_forward, naive_moe_forward


class NaiveReference(Backend):
    """The kernel libraries' own test reference: dequantize every expert, loop with masks."""

    name = "torch-naive"
    description = "naive per-expert loop over all experts, every expert dequantized up front (vLLM torch_moe style)"
    requirements = Requirements(devices=("any",))
    verified = "cpu"
    kernel = "references.moe.naive_moe_forward"

    def prepare(self, data: CaseData, device: str):
        w = data.weights
        w1 = dequantize_weight(w.fmt, w.w1, w.w1_scale, w.w1_global_scale, name="w1")
        w2 = dequantize_weight(w.fmt, w.w2, w.w2_scale, w.w2_global_scale, name="w2")
        return w1, w2

    def run(self, prepared, data: CaseData) -> torch.Tensor:
        w1, w2 = prepared
        c, w = data.case, data.weights
        routed = naive_moe_forward(data.x, data.topk_ids, data.topk_weights, w1, w2, b1=w.b1, b2=w.b2,
                                   gate_up_order=w.order, activation=c.swiglu, intermediate_dtype=c.torch_dtype)
        return finish_layer(routed, data).to(c.torch_dtype)


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


class EmulatedSm90W4A16(Backend):
    """CPU emulation of FlashInfer's SM90 cutlass W4A16 MXFP4 MoE contract.

    Contract (shared/notes/sm90-w4a16-probe.md): fc1 rows [up; gate], hidden and intermediate
    padded to 128, weights through the SM90 byte interleave, scales through the SM90 scale
    interleave, per-expert alpha/beta/limit fp32 tensors, bf16 intermediate.
    """

    name = "emulated-sm90-w4a16"
    family = "sm90-w4a16"
    hooks = ("interleave_weights", "interleave_scales", "fc1_order", "swiglu_tensors", "transform_mx",
             "activation_fn", "combine")
    description = "CPU emulation of FlashInfer SM90 cutlass W4A16 MXFP4 MoE (kernel-layout weights)"
    requirements = Requirements(devices=("any",), formats=("mxfp4",), act_quants=(None,))
    verified = "cpu"
    kernel = "emulation of flashinfer.fused_moe.cutlass_fused_moe(use_w4_group_scaling=True)"

    # Each step is a method so fault-zoo mutants can override exactly one of them.
    def interleave_weights(self, w: torch.Tensor) -> torch.Tensor:
        return sm90_interleave_fp4_weights(w)

    def interleave_scales(self, s: torch.Tensor) -> torch.Tensor:
        return sm90_interleave_scales(s)

    def fc1_order(self, data: CaseData) -> str:
        return "up_gate"

    def transform_mx(self, w: torch.Tensor, s: torch.Tensor):
        """Hook on (packed weights, E8M0 scales) before the layout steps (identity when correct)."""
        return w, s

    def activation_fn(self):
        """The kernel's activation (None = the reference SwiGLU)."""
        return None

    def combine(self, routed: torch.Tensor, data: CaseData) -> torch.Tensor:
        return finish_layer(routed, data)

    def swiglu_tensors(self, data: CaseData, e: int, device):
        p = data.case.swiglu
        if p.is_plain:
            return None, None, None
        full = lambda v: torch.full((e,), float(v), dtype=torch.float32, device=device)  # noqa: E731
        return full(p.alpha), full(p.beta), full(float("inf") if p.limit is None else p.limit)

    def prepare(self, data: CaseData, device: str) -> Sm90W4A16Buffers:
        w1, s1, w2, s2, b1, b2 = mx_weights_for_kernel(data, self.fc1_order(data), 128)
        w1, s1 = self.transform_mx(w1, s1)
        w2, s2 = self.transform_mx(w2, s2)
        e = w1.shape[0]
        alpha, beta, limit = self.swiglu_tensors(data, e, w1.device)
        return Sm90W4A16Buffers(
            x=pad_tokens_hidden(data.x), w1=self.interleave_weights(w1.contiguous()),
            s1=self.interleave_scales(s1.contiguous()), w2=self.interleave_weights(w2.contiguous()),
            s2=self.interleave_scales(s2.contiguous()), b1=b1, b2=b2, alpha=alpha, beta=beta, limit=limit,
            hidden=data.case.hidden)

    def run(self, p: Sm90W4A16Buffers, data: CaseData) -> torch.Tensor:
        # what the kernel's mainloop reads: de-interleaved bytes and scales, [up; gate] rows
        w1 = sm90_deinterleave_fp4_weights(p.w1)
        w2 = sm90_deinterleave_fp4_weights(p.w2)
        # the kernel reads the scale buffer as [E, K/128, rows*4] whatever layout it was given
        e, n1, k1 = p.w1.shape
        _, n2, k2 = p.w2.shape
        s1 = sm90_deinterleave_scales(p.s1.reshape(e, (2 * k1) // 128, n1 * 4))
        s2 = sm90_deinterleave_scales(p.s2.reshape(e, (2 * k2) // 128, n2 * 4))
        act = SwigluParams() if p.alpha is None else SwigluParams(
            float(p.alpha[0]), float(p.beta[0]), None if torch.isinf(p.limit[0]) else float(p.limit[0]))
        routed = moe_forward(p.x, data.topk_ids, data.topk_weights, w1, w2, fmt="mxfp4", w1_scale=s1, w2_scale=s2,
                             b1=p.b1, b2=p.b2, gate_up_order="up_gate", activation=act, precision="kernel",
                             intermediate_dtype=torch.bfloat16, act_fn=self.activation_fn())
        return self.combine(routed[:, : p.hidden], data).to(data.case.torch_dtype)


class EmulatedFp8Block(Backend):
    """CPU emulation of a DeepGEMM-style FP8 block-scale grouped GEMM MoE (sm90 contract).

    Weights [E, N, K] e4m3 with one scale per 128x128 block, fc1 rows [gate; up]; activations
    quantized per token per 128 channels; the intermediate re-quantized before fc2.
    """

    name = "emulated-fp8-block"
    family = "fp8-block"
    hooks = ("weight_scales", "activation_quant", "activation_params", "combine")
    description = "CPU emulation of an FP8 128x128-block W8A8 MoE (DeepGEMM / vLLM fused_moe block-fp8 contract)"
    requirements = Requirements(devices=("any",), formats=("fp8_block",),
                                act_quants=("fp8_group", "fp8_group_ue8m0"), k_multiple=128)
    verified = "cpu"
    kernel = "emulation of deep_gemm.m_grouped_fp8_gemm_nt_contiguous + silu_mul_fp8_quant"

    def weight_scales(self, s: torch.Tensor, data: CaseData) -> torch.Tensor:
        return s

    def activation_quant(self, data: CaseData) -> str:
        return data.case.act_quant

    def activation_params(self, data: CaseData) -> SwigluParams:
        """The SwiGLU parameters the fused silu-mul-fp8-quant kernel receives."""
        return data.case.swiglu

    def combine(self, routed: torch.Tensor, data: CaseData) -> torch.Tensor:
        return finish_layer(routed, data)

    def prepare(self, data: CaseData, device: str):
        w = data.weights
        w1, s1, b1 = fc1_in_order(w, "gate_up")
        return w1, self.weight_scales(s1, data), w.w2, self.weight_scales(w.w2_scale, data), b1, w.b2

    def run(self, p, data: CaseData) -> torch.Tensor:
        w1, s1, w2, s2, b1, b2 = p
        c = data.case
        routed = moe_forward(data.x, data.topk_ids, data.topk_weights, w1, w2, fmt="fp8_block", w1_scale=s1,
                             w2_scale=s2, b1=b1, b2=b2, gate_up_order="gate_up", activation=self.activation_params(data),
                             precision="kernel", act_quant=self.activation_quant(data),
                             intermediate_dtype=c.torch_dtype)
        return self.combine(routed, data).to(c.torch_dtype)


class EmulatedInterleavedMx(Backend):
    """CPU emulation of a GPT-OSS-style MXFP4 MoE that expects interleaved gate/up rows.

    Contract: fc1 ``[E, 2I, H/2]`` with gate at even rows and up at odd rows (the GPT-OSS
    checkpoint order), the fused SwiGLU reading gate/up pairs.
    Source: OpenAI ``triton_kernels`` ``swiglu`` (gpt-oss reference: interleaved ``[..., ::2]`` /
    ``[..., 1::2]`` over the fused projection) and HF ``modeling_gpt_oss.py``.
    """

    name = "emulated-interleaved-mxfp4"
    family = "interleaved-mxfp4"
    hooks = ("fc1_order",)
    description = "CPU emulation of an interleaved gate/up MXFP4 MoE (triton_kernels matmul_ogs + swiglu contract)"
    requirements = Requirements(devices=("any",), formats=("mxfp4",), act_quants=(None,))
    verified = "cpu"
    kernel = "emulation of triton_kernels.matmul_ogs(..., fused_activation=swiglu)"

    def fc1_order(self, data: CaseData) -> str:
        return "interleaved"

    def prepare(self, data: CaseData, device: str):
        w = data.weights
        o = self.fc1_order(data)
        w1, s1, b1 = fc1_in_order(w, o)
        return w1, s1, w.w2, w.w2_scale, b1, w.b2

    def run(self, p, data: CaseData) -> torch.Tensor:
        w1, s1, w2, s2, b1, b2 = p
        c = data.case
        routed = moe_forward(data.x, data.topk_ids, data.topk_weights, w1, w2, fmt="mxfp4", w1_scale=s1, w2_scale=s2,
                             b1=b1, b2=b2, gate_up_order="interleaved", activation=c.swiglu, precision="kernel",
                             intermediate_dtype=c.torch_dtype)
        return finish_layer(routed, data).to(c.torch_dtype)


class EmulatedAiterMxfp4(Backend):
    """CPU emulation of AMD AITER's MXFP4 fused MoE weight contract.

    Contract: fc1 separated ``[gate; up]``, both weights through AITER's (16, 16) tile shuffle and
    the ``is_shuffled`` flag set on the weight; with the flag the kernel reads the shuffled tiles,
    without it the kernel takes its unshuffled code path (sglang PR 26884: a lost flag silently
    selects the wrong path).
    Source: AMD AITER ``aiter/ops/shuffle.py`` ``shuffle_weight`` and ``fused_moe`` weight handling.
    """

    name = "emulated-aiter-mxfp4"
    family = "aiter-mxfp4"
    hooks = ("shuffled_flag",)
    description = "CPU emulation of AMD AITER MXFP4 fused MoE (separated gate/up, (16,16) shuffled weights, is_shuffled flag)"
    requirements = Requirements(devices=("any",), formats=("mxfp4",), act_quants=(None,), k_multiple=64)
    verified = "cpu"
    kernel = "emulation of aiter.fused_moe (MXFP4, shuffled weights)"

    def shuffled_flag(self) -> bool:
        return True

    def prepare(self, data: CaseData, device: str):
        w = data.weights
        w1, s1, b1 = fc1_in_order(w, "gate_up")
        return {"w1": aiter_shuffle_weight(w1), "s1": s1, "w2": aiter_shuffle_weight(w.w2), "s2": w.w2_scale, "b1": b1, "b2": w.b2,
                "is_shuffled": self.shuffled_flag()}

    def run(self, p, data: CaseData) -> torch.Tensor:
        c = data.case
        w1, w2 = p["w1"], p["w2"]
        if p["is_shuffled"]:  # the shuffled code path undoes the tile order as it loads
            w1, w2 = aiter_unshuffle_weight(w1), aiter_unshuffle_weight(w2)
        routed = moe_forward(data.x, data.topk_ids, data.topk_weights, w1, w2, fmt="mxfp4", w1_scale=p["s1"],
                             w2_scale=p["s2"], b1=p["b1"], b2=p["b2"], gate_up_order="gate_up", activation=c.swiglu,
                             precision="kernel", intermediate_dtype=c.torch_dtype)
        return finish_layer(routed, data).to(c.torch_dtype)
