"""How the reference MoE multiplies: fp32 GEMMs, or, on CUDA where it is exact, bf16 operands with
fp32 accumulation and fp32 output; MXFP4 experts on CUDA straight from their codes.

bf16 x bf16 products are exact in fp32, and MXFP4 / MXFP8 values (codes times a power of two) are
exact in bf16, so with bf16 activations the bf16 GEMM computes the same products as the fp32 GEMM
(only the summation order of a different GEMM kernel differs). MXFP4 weights whose scales the
fused kernel takes stay packed (:class:`PackedMx`) and ``references.gemm_fused`` multiplies them
(the same products again). The CPU always takes the fp32 path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from references import gemm_fused
from references.formats.mx import mx_dequantize
from references.formats.registry import ActQuant, QTensor, WeightFormat

_MM_OUT_FP32: dict = {}


def mm_out_fp32_available(device) -> bool:
    """Do ``torch.mm`` and ``torch.bmm`` with ``out_dtype=torch.float32`` on bf16 work on this device?"""
    key = str(device)
    if key not in _MM_OUT_FP32:
        try:
            a = torch.ones(2, 2, 2, dtype=torch.bfloat16, device=device)
            _MM_OUT_FP32[key] = (torch.mm(a[0], a[0], out_dtype=torch.float32).dtype == torch.float32
                                 and torch.bmm(a, a, out_dtype=torch.float32).dtype == torch.float32)
        except (RuntimeError, TypeError):
            _MM_OUT_FP32[key] = False
    return _MM_OUT_FP32[key]


@dataclass(frozen=True)
class PackedMx:
    """The MXFP4 experts ``ids`` of ``q`` (codes ``[E, N, K/2]``, E8M0 scales ``[E, N, K/32]``), not dequantized."""

    q: QTensor
    ids: torch.Tensor

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return mx_dequantize(self.q.data.index_select(0, self.ids), self.q.scale.index_select(0, self.ids), dtype=dtype)


@dataclass(frozen=True)
class GemmPlan:
    exact_bf16: bool = False
    packed_mxfp4: bool = False   # MXFP4 experts may stay packed and go to the fused GEMM (see packs)
    scales_checked: bool = False  # MXFP4 scales taken to hold no NaN and no subnormal-making code
    scales_bad: torch.Tensor | None = field(default=None, compare=False)   # on the device: were they wrong?

    def redo(self) -> "GemmPlan | None":
        """None if the plan stands, else the plan to compute again with: the scale check runs on the
        device beside the work and is read once at the end (one host sync there, where the caller
        waits anyway), so a NaN or subnormal-making scale is redone by the eager decode, which names it."""
        if self.scales_bad is None or not bool(self.scales_bad):
            return None
        return GemmPlan(self.exact_bf16)

    def packs(self, rows: int) -> bool:
        """Does a batch of ``rows`` rows per expert go to the fused GEMM? Up to
        ``gemm_fused.PACKED_MAX_ROWS``, where it beats decoding then multiplying (benchmarks/)."""
        return self.packed_mxfp4 and rows <= gemm_fused.PACKED_MAX_ROWS

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.exact_bf16 else torch.float32

    def mm(self, a: torch.Tensor, w: torch.Tensor | PackedMx, bf16_operands: bool = True) -> torch.Tensor:
        """``a @ w.T`` in fp32 (bf16 operands with fp32 output where the plan and caller allow);
        ``a [B, P, K]`` with ``w [B, N, K]`` (or packed experts) is one batched GEMM."""
        bf16 = self.exact_bf16 and bf16_operands
        if isinstance(w, PackedMx):
            if bf16 and a.dim() == 3:
                return gemm_fused.mxfp4_bmm(a, w.q.data, w.q.scale, w.ids)
            w = w.dequantize(self.weight_dtype if bf16 else torch.float32)
        wt = w.transpose(-2, -1)
        if bf16:
            return (torch.bmm if a.dim() == 3 else torch.mm)(a, wt, out_dtype=torch.float32)
        return torch.matmul(a.to(torch.float32), wt.to(torch.float32))


def plan_for(x: torch.Tensor, fmt: WeightFormat, act_quant: ActQuant | None, allow_bf16: bool = True,
             weights: tuple[QTensor, ...] = (), allow_packed: bool = True) -> GemmPlan:
    """The GEMMs for this input: bf16 where exact; for MXFP4 ``weights``, their scales taken as good
    (checked on the device, see :meth:`GemmPlan.redo`) and, where the fused GEMM passed its check on
    this device, packed experts for the fused GEMM."""
    exact = (allow_bf16 and x.is_cuda and x.dtype == torch.bfloat16 and act_quant is None and fmt.bf16_exact
             and mm_out_fp32_available(x.device))
    mx4 = exact and fmt.name == "mxfp4" and bool(weights) and all(_packable(q) for q in weights)
    bad = gemm_fused.scales_flag(*(q.scale for q in weights)) if mx4 else None
    packed = mx4 and allow_packed and gemm_fused.status(x.device, mx_dequantize) is None
    return GemmPlan(exact, packed, mx4, bad)


def _packable(q: QTensor) -> bool:
    d, s = q.data, q.scale
    return (s is not None and d.dim() == 3 and d.element_size() == 1 and s.element_size() == 1
            and s.shape[:-1] == d.shape[:-1] and s.shape[-1] * 16 == d.shape[-1])
