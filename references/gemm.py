"""How the reference MoE multiplies: fp32 GEMMs, or, on CUDA where it is exact, bf16 operands with
fp32 accumulation and fp32 output.

bf16 x bf16 products are exact in fp32, and MXFP4 / MXFP8 values (codes times a power of two) are
exact in bf16, so with bf16 activations the bf16 GEMM computes the same products as the fp32 GEMM
(only the summation order of a different GEMM kernel differs). The CPU always takes the fp32 path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from references.formats.registry import ActQuant, WeightFormat

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
class GemmPlan:
    exact_bf16: bool = False

    @property
    def weight_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.exact_bf16 else torch.float32

    def mm(self, a: torch.Tensor, w: torch.Tensor, bf16_operands: bool = True) -> torch.Tensor:
        """``a @ w.T`` in fp32 (bf16 operands with fp32 output where the plan and caller allow);
        ``a [B, P, K]`` with ``w [B, N, K]`` is one batched GEMM."""
        wt = w.transpose(-2, -1)
        if self.exact_bf16 and bf16_operands:
            return (torch.bmm if a.dim() == 3 else torch.mm)(a, wt, out_dtype=torch.float32)
        return torch.matmul(a.to(torch.float32), wt.to(torch.float32))


def plan_for(x: torch.Tensor, fmt: WeightFormat, act_quant: ActQuant | None, allow_bf16: bool = True) -> GemmPlan:
    exact = (allow_bf16 and x.is_cuda and x.dtype == torch.bfloat16 and act_quant is None and fmt.bf16_exact
             and mm_out_fp32_available(x.device))
    return GemmPlan(exact)
