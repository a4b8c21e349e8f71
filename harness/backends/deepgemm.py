"""DeepGEMM grouped FP8 GEMMs (``m_grouped_fp8_fp4_gemm_nt_contiguous``) with the MoE composition
around them: tokens sorted by expert into the contiguous layout, DeepGEMM's own per-token FP8 cast,
the SwiGLU between the GEMMs, the weighted top-k sum. Pinned at deepseek-ai/DeepGEMM@54e2261
(``__version__ = '2.6.1'``; the package index's ``deep-gemm`` 1.0.0 is the old v1 API).

Contract (DeepGEMM@54e2261):
- ``m_grouped_fp8_fp4_gemm_nt_contiguous(a, b, d, grouped_layout, recipe, recipe_a, recipe_b,
  compiled_dims, disable_ue8m0_cast, use_psum_layout, ensure_zero_padding, ...)``
  (``csrc/apis/gemm.hpp:673-681``; ``m_grouped_fp8_gemm_nt_contiguous`` is an alias, ``:715``);
  signatures of the compiled module from ``deep_gemm/_C.pyi`` made by the repository's own
  ``scripts/generate_pyi.py``;
- LHS ``(fp8 [M, K], fp32 [M, K/128])`` from ``deep_gemm.utils.math.per_token_cast_to_fp8``
  (``utils/math.py:26-38``: amax floored at 1e-4, ``x * (1 / sf)``), RHS ``(fp8 [E, N, K], fp32
  [E, N/128, K/128])``; rows grouped by expert, each group padded to
  ``get_mk_alignment_for_contiguous_layout()`` rows (BLOCK_M; ``sm90.hpp:33``), ``grouped_layout`` int32
  with the expert per row and -1 on zero-filled padding rows (``tests/generators.py:350-353``);
- sm100 takes only power-of-two (UE8M0) scales for activations and weights
  (``csrc/apis/layout.hpp:49-54``): not gated here, so the backend declares sm90 only.
The gate/up split and the activation between the GEMMs are this module's (the frameworks fuse their own
silu-mul-quant); the GEMMs and the quantizer are DeepGEMM's. No run on hardware here: L0.
"""

from __future__ import annotations

import torch

from harness.backends.base import Level, Requirements
from harness.backends.emulated import FP8_BLOCK
from harness.backends.emulated_cutlass import EmulatedFp8Block
from harness.backends.libapi import Library
from harness.backends.torch_grouped import sort_by_expert
from harness.cases import CaseData
from references.activations import Precision, swiglu
from references.formats import ActQuant, Fp8Scale
from references.layouts import split_gate_up
from references.moe import Experts

DEEPGEMM = Library("deep-gemm", "deep_gemm", ">=2.6,<2.7", ("deep_gemm-2.6.1",),
                   "github deepseek-ai/DeepGEMM@54e22612409371d6364144b69086735beb54e98b")


def contiguous_layout(topk_ids: torch.Tensor, num_experts: int, align: int):
    """Row map for the contiguous layout: (row -> flat (token, slot) index or -1, grouped_layout int32:
    the expert of each row, -1 on padding rows)."""
    src, ends = sort_by_expert(topk_ids, num_experts, align)
    sizes = torch.diff(ends.long(), prepend=ends.new_zeros(1).long())
    expert = torch.repeat_interleave(torch.arange(num_experts, device=src.device, dtype=torch.int32), sizes)
    return src, torch.where(src >= 0, expert, torch.full_like(expert, -1))


class DeepGemmFp8(EmulatedFp8Block):
    name = "deepgemm-fp8"
    description = "DeepGEMM m_grouped_fp8_fp4_gemm_nt_contiguous (FP8 128x128 block W8A8) in an MoE"
    requirements = Requirements(devices=("sm90",), libraries=(DEEPGEMM,), formats=(FP8_BLOCK,),
                                act_quants=(ActQuant.FP8_GROUP, ActQuant.FP8_GROUP_UE8M0), bias=False, k_multiple=128,
                                fp8_scales=(Fp8Scale.FP32, Fp8Scale.UE8M0))
    verified = Level("L0", ("tests/fixtures/api/deep_gemm-2.6.1.json", "tests/test_api_snapshots.py"))
    kernel = "deep_gemm.m_grouped_fp8_fp4_gemm_nt_contiguous"

    def gemm(self, a: torch.Tensor, w: torch.Tensor, s: torch.Tensor, grouped: torch.Tensor, ue8m0: bool):
        cast = DEEPGEMM.attr("deep_gemm.utils.math", "per_token_cast_to_fp8")
        gemm = DEEPGEMM.attr("deep_gemm", "m_grouped_fp8_fp4_gemm_nt_contiguous")
        d = torch.empty(a.shape[0], w.shape[1], dtype=torch.bfloat16, device=a.device)
        gemm(cast(a.contiguous(), use_ue8m0=ue8m0), (w.contiguous(), s.float().contiguous()), d, grouped)
        return d

    def run(self, p: Experts, data: CaseData) -> torch.Tensor:
        c = data.case
        k = data.topk_ids.shape[1]
        align = DEEPGEMM.attr("deep_gemm.utils.layout", "get_mk_alignment_for_contiguous_layout")()
        ue8m0 = self.activation_quant(data) is ActQuant.FP8_GROUP_UE8M0
        src, grouped = contiguous_layout(data.topk_ids, p.num_experts, int(align))
        valid = src >= 0
        xs = torch.zeros(src.numel(), c.hidden, dtype=torch.bfloat16, device=data.x.device)
        xs[valid] = data.x[src[valid] // k].to(torch.bfloat16)
        h = self.gemm(xs, p.w1.data, p.w1.scale, grouped, ue8m0)
        gate, up = split_gate_up(h, self.kernel_order, dim=-1)
        a = swiglu(gate, up, self.activation_params(data), Precision.KERNEL).to(torch.bfloat16)
        y = self.gemm(a, p.w2.data, p.w2.scale, grouped, ue8m0)
        per_slot = torch.zeros(data.topk_ids.numel(), c.hidden, dtype=torch.float32, device=y.device)
        per_slot[src[valid]] = y[valid].float()   # padding rows are unspecified (scheduler/gemm.cuh:161)
        routed = (per_slot.view(-1, k, c.hidden) * data.topk_weights.to(torch.float32).unsqueeze(-1)).sum(1)
        return self.combine(routed, data).to(c.dtype)

    def notes(self) -> dict:
        return {"deep_gemm": DEEPGEMM.installed() or "?"}
