"""The weight formats as objects: name, element, block, scale kind, quantize and dequantize, and
the kernel layouts each has; and the activation-quantization recipes. One place for each format.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import torch

from references.formats import fp8, mx, nvfp4
from references.formats.e8m0 import Element, ScaleMode
from references.formats.fp8 import Fp8Scale


@dataclass(frozen=True)
class QTensor:
    """Quantized data with its block scales and (NVFP4) global scale; expert dim first when batched."""

    data: torch.Tensor
    scale: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "QTensor":
        """Apply ``fn`` to every tensor present (``.to(device)``, padding, a layout transform)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None})

    def experts(self, ids: torch.Tensor) -> "QTensor":
        """The experts ``ids`` (a per-tensor global scale is shared, a per-expert one selected)."""
        pick = lambda t: t if t.dim() == 0 or t.numel() == 1 else t.index_select(0, ids)  # noqa: E731
        return replace(self, data=self.data.index_select(0, ids),
                       scale=None if self.scale is None else self.scale.index_select(0, ids),
                       global_scale=None if self.global_scale is None else pick(self.global_scale))


@dataclass(frozen=True)
class QuantRecipe:
    """How a case quantizes its weights (each format reads the fields that apply to it)."""

    scale_mode: ScaleMode = ScaleMode.FLOOR
    fp8_scale: Fp8Scale = Fp8Scale.FP32
    dtype: torch.dtype = torch.bfloat16


@dataclass(frozen=True)
class WeightFormat:
    name: str
    element: str                  # bf16 | e2m1 | e4m3
    block: int                    # elements along K that share one scale (1: unscaled)
    scale: str                    # what the scales are
    bf16_exact: bool              # every dequantized value is exactly representable in bf16
    per_tensor_scale: bool        # a global scale over the whole (fused) tensor: quantize fc1 as one
    quantize: Callable[[torch.Tensor, QuantRecipe], QTensor] = field(repr=False)
    dequantize_fn: Callable[..., torch.Tensor] = field(repr=False)
    layouts: tuple[str, ...] = ()  # kernel layouts of this format the harness knows (references.layouts)
    source: str = ""

    def dequantize(self, q: QTensor, *, name: str = "weight", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[..., N, K]`` values in fp32 (or bf16 where that is exact)."""
        if dtype != torch.float32 and not self.bf16_exact:
            raise ValueError(f"{self.name} weights are not exactly representable in {dtype}")
        return self.dequantize_fn(q, name, dtype)

    def dequantize_experts(self, q: QTensor, ids: torch.Tensor, *, name: str = "weight",
                           dtype: torch.dtype = torch.float32, scales_checked: bool = False) -> torch.Tensor:
        """The experts ``ids`` of a batched ``q``, dequantized (MXFP4 to bf16 on CUDA: one fused pass;
        ``scales_checked``: the caller found no NaN or subnormal-making scale in ``q``, skip that sync)."""
        if self.name == "mxfp4" and dtype == torch.bfloat16:
            out = mx.mxfp4_experts_bf16(q.data, q.scale, ids, name=name, scales_checked=scales_checked)
            if out is not None:
                return out
        return self.dequantize(q.experts(ids), name=name, dtype=dtype)

    def __str__(self) -> str:
        return self.name

    def __reduce__(self):  # pickled by name (worker processes): the registry holds the one object
        return weight_format, (self.name,)


def _mx(elem: Element):
    def quantize(w, r: QuantRecipe):
        return QTensor(*mx.mx_quantize(w, elem, r.scale_mode))

    def dequantize(q: QTensor, name, dtype):
        return mx.mx_dequantize(q.data, q.scale, elem, name=name, dtype=dtype)
    return quantize, dequantize


def _nvfp4_quantize(w, r: QuantRecipe):
    """One global scale per leading (expert) index, as a per-expert checkpoint has it."""
    gs = torch.stack([nvfp4.nvfp4_global_scale(w[e]) for e in range(w.shape[0])])
    qs = [nvfp4.nvfp4_quantize(w[e], gs[e]) for e in range(w.shape[0])]
    return QTensor(torch.stack([q for q, _, _ in qs]), torch.stack([s for _, s, _ in qs]), gs)


_MXFP4_Q, _MXFP4_D = _mx(Element.E2M1)
_MXFP8_Q, _MXFP8_D = _mx(Element.E4M3)

WEIGHT_FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("bf16", "bf16", 1, "none", True, False,
                 lambda w, r: QTensor(w.to(r.dtype)), lambda q, name, dtype: q.data.to(dtype),
                 source="unquantized"),
    WeightFormat("mxfp4", "e2m1", mx.MX_BLOCK, "E8M0 per 32 along K", True, False, _MXFP4_Q, _MXFP4_D,
                 layouts=("sm90-mixed-interleave (FlashInfer SM90 W4A16)", "aiter-16x16-shuffle",
                          "trtllm-gen shuffle_matrix_a", "triton_kernels HopperMXValueLayout"),
                 source="OCP MX v1.0"),
    WeightFormat("mxfp8", "e4m3", mx.MX_BLOCK, "E8M0 per 32 along K", True, False, _MXFP8_Q, _MXFP8_D,
                 source="OCP MX v1.0"),
    WeightFormat("nvfp4", "e2m1", nvfp4.NVFP4_BLOCK, "E4M3 per 16 along K x fp32 global", False, True,
                 _nvfp4_quantize, lambda q, name, dtype: nvfp4.nvfp4_dequantize(q.data, q.scale, q.global_scale),
                 source="NVIDIA NVFP4 (TensorRT-LLM)"),
    WeightFormat("fp8_block", "e4m3", 128, "fp32 (or UE8M0) per 128x128 block", False, False,
                 lambda w, r: QTensor(*fp8.fp8_block_quantize(w, (128, 128), r.fp8_scale)),
                 lambda q, name, dtype: fp8.fp8_block_dequantize(q.data, q.scale, (128, 128)),
                 layouts=("DeepGEMM contiguous grouped (m_indices)",), source="DeepSeek-V3 / DeepGEMM"),
    WeightFormat("fp8_rowwise", "e4m3", 16, "fp32 (or UE8M0) per output row, over all of K", False, False,
                 lambda w, r: QTensor(*fp8.fp8_group_quantize(w, w.shape[-1], r.fp8_scale)),
                 lambda q, name, dtype: fp8.fp8_group_dequantize(q.data, q.scale, q.data.shape[-1]),
                 layouts=("torch._scaled_grouped_mm rowwise",), source="torchao float8 rowwise recipe"),
)}


def weight_format(fmt: "WeightFormat | str") -> WeightFormat:
    """The registered format for a name (or the format itself)."""
    if isinstance(fmt, WeightFormat):
        return fmt
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of {tuple(WEIGHT_FORMATS)}")
    return WEIGHT_FORMATS[fmt]


class ActQuant(enum.Enum):
    """How an A8 kernel quantizes activations (``None`` where activations stay in bf16/fp16)."""

    FP8_GROUP = "fp8_group"              # e4m3 per token per 128 channels, fp32 scales (DeepGEMM)
    FP8_GROUP_UE8M0 = "fp8_group_ue8m0"  # the same with scales rounded up to powers of two
    MXFP8 = "mxfp8"                      # OCP MXFP8, E8M0 per 32
    FP8_TOKEN = "fp8_token"              # e4m3 per token over all channels, fp32 scale (torchao rowwise)

    @property
    def group(self) -> int:
        """The channel multiple the recipe needs (its group; 16 for the per-token recipe's fp8 GEMM)."""
        return {ActQuant.MXFP8: mx.MX_BLOCK, ActQuant.FP8_TOKEN: 16}.get(self, 128)

    def fake_quant(self, x: torch.Tensor, rule: fp8.Fp8Rule = fp8.DEEPGEMM_TEST) -> torch.Tensor:
        """Quantize-dequantize ``x`` the way an A8 kernel sees it (fp32 out); ``rule``: how the FP8
        recipes turn an amax into codes (``references.formats.fp8.Fp8Rule``).

        Source: DeepGEMM ``per_token_cast_to_fp8`` (1x128, fp32 or UE8M0 scales); OCP MX v1.0 (MXFP8);
        torchao float8 rowwise (one scale per token).
        """
        if self is ActQuant.MXFP8:
            q, s = mx.mx_quantize(x, Element.E4M3, ScaleMode.FLOOR)
            return mx.mx_dequantize(q, s, Element.E4M3, name="activation")
        if self is ActQuant.FP8_TOKEN:
            q, s = fp8.fp8_group_quantize(x, x.shape[-1], Fp8Scale.FP32, rule)
            return fp8.fp8_group_dequantize(q, s, x.shape[-1])
        q, s = fp8.fp8_group_quantize(x, 128, Fp8Scale.UE8M0 if self is ActQuant.FP8_GROUP_UE8M0 else Fp8Scale.FP32,
                                      rule)
        return fp8.fp8_group_dequantize(q, s, 128)


def fake_quant_activation(x: torch.Tensor, act_quant: ActQuant | None, rule: fp8.Fp8Rule = fp8.DEEPGEMM_TEST) -> torch.Tensor:
    """``x`` in fp32 as the kernel's GEMM sees it: unchanged, or quantize-dequantized."""
    return x.to(torch.float32) if act_quant is None else act_quant.fake_quant(x, rule)
