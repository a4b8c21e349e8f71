"""Gated activations: silu_and_mul, GPT-OSS SwiGLU (alpha, beta, limit), clamp-only SwiGLU.

``Precision.FP32`` computes everything in fp32. ``Precision.KERNEL`` matches vLLM's / FlashInfer's
``silu_and_mul``-style kernels: clamp in fp32 and cast back to the input dtype, silu/sigmoid in fp32
and cast to the input dtype, then the product (and the ``+beta``) in the input dtype.
``Precision.CUTLASS`` is TRT-LLM's / FlashInfer's cutlass MoE: its GEMMs write the input dtype, the
fc1 bias and the activation are fp32 with one rounding, the fc2 bias and the top-k sum fp32
(``references.moe._expert_ffn``); the activation here computes as ``FP32``.
``Precision.TRITON_KERNELS`` is OpenAI's ``triton_kernels`` ``matmul_ogs`` with its fused SwiGLU: fc1's
fp32 accumulator plus bias goes straight into ``s = g / (1 + exp(-alpha g))`` and ``fma(s, up, s)``,
rounded once; fc2's rows are multiplied by their routing weight before their bf16 store, then summed
(``references.moe._routed``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class Precision(enum.Enum):
    """FP32: everything in fp32. KERNEL, CUTLASS, TRITON_KERNELS: kernels' roundings (see the module docstring)."""

    FP32 = "fp32"
    KERNEL = "kernel"
    CUTLASS = "cutlass"
    TRITON_KERNELS = "triton-kernels"


@dataclass(frozen=True)
class SwigluParams:
    """alpha scales the sigmoid argument; beta is added to the clamped up; limit clamps both.

    ``SwigluParams()`` is plain ``silu(gate) * up``; GPT-OSS is ``SwigluParams(1.702, 1.0, 7.0)``;
    clamp-only (DeepSeek-V4 style) is ``SwigluParams(1.0, 0.0, limit)``.
    """

    alpha: float = 1.0
    beta: float = 0.0
    limit: float | None = None

    @property
    def is_plain(self) -> bool:
        return self.alpha == 1.0 and self.beta == 0.0 and self.limit is None


GPT_OSS = SwigluParams(1.702, 1.0, 7.0)


def swiglu(gate: torch.Tensor, up: torch.Tensor, params: SwigluParams = SwigluParams(),
           precision: Precision | str = Precision.FP32) -> torch.Tensor:
    """``(clamp(up, -limit, limit) + beta) * g * sigmoid(alpha * g)`` with ``g = min(gate, limit)``.

    Source: HF transformers ``models/gpt_oss/modeling_gpt_oss.py`` ``GptOssExperts._apply_gate``.
    """
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate shape {tuple(gate.shape)} != up shape {tuple(up.shape)}")
    precision = Precision(precision)
    g, u = gate.to(torch.float32), up.to(torch.float32)
    if params.limit is not None:
        g = g.clamp(max=params.limit)
        u = u.clamp(-params.limit, params.limit)
    if precision is Precision.TRITON_KERNELS and params.beta == 1.0:
        # triton_kernels v3.6.0 swiglu_details/_swiglu.py:39-48: s = g / (1 + exp(-alpha g)), fma(s, up, s);
        # the fma in fp64 (the product exact, the sum rounded to fp64 then fp32: rare halfway cases aside)
        s = g / (1 + torch.exp(-params.alpha * g))
        return (s.double() * u.double() + s.double()).float()
    if precision is not Precision.KERNEL:
        return g * torch.sigmoid(params.alpha * g) * (u + params.beta)
    dt = gate.dtype
    g, u = g.to(dt), u.to(dt)
    gf = g.to(torch.float32)
    act = (gf * torch.sigmoid(params.alpha * gf)).to(dt)
    return act * (u + params.beta) if params.beta else act * u


def silu_and_mul(x: torch.Tensor, precision: Precision | str = Precision.FP32) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` for ``x = [..., 2d]`` ([gate; up] halves).

    Source: vLLM ``SiluAndMul.forward_native`` (vllm/model_executor/layers/activation.py).
    """
    if x.shape[-1] % 2:
        raise ValueError(f"silu_and_mul: last dim {x.shape[-1]} is odd")
    d = x.shape[-1] // 2
    return swiglu(x[..., :d], x[..., d:], SwigluParams(), precision)


def swiglu_clamp_only(gate: torch.Tensor, up: torch.Tensor, limit: float, precision: Precision | str = Precision.FP32) -> torch.Tensor:
    """Clamp-only SwiGLU: ``silu(min(gate, limit)) * clamp(up, -limit, limit)``.

    Source: DeepSeek-V4 inference ``model.py`` Expert.forward (swiglu_limit); vLLM PR 41986.
    """
    return swiglu(gate, up, SwigluParams(1.0, 0.0, limit), precision)
