"""torch's grouped GEMMs as an MoE backend, the way torchtitan / torchao MoE layers use them:
tokens sorted by expert, each expert's rows padded to a multiple of 16 (torchtitan
``generate_permute_indices`` aligns groups to 16 for bf16 and fp8), ``torch._grouped_mm`` (bf16) or
``torch._scaled_grouped_mm`` (FP8 rowwise: per-token activation scales, per-output-channel weight
scales) for fc1 and fc2, the SwiGLU between them in fp32 rounded to bf16, and a deterministic
top-k sum (no atomics). The MoE composition is this module's; the kernels are torch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.backends.base import Backend, Level, Requirements, h100
from harness.backends.common import experts_in_order
from harness.cases import CaseData, layer_output
from references import formats as F
from references.activations import Precision, swiglu
from references.formats import WEIGHT_FORMATS, ActQuant, Fp8Scale
from references.layouts import GateUpOrder, split_gate_up

ALIGN = 16


def sort_by_expert(topk_ids: torch.Tensor, num_experts: int, align: int = ALIGN):
    """(row -> flat (token, slot) index or -1 for padding, group end offsets int32): each expert's
    rows contiguous and padded to a multiple of ``align``."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + align - 1) // align * align
    starts = torch.cumsum(padded, 0) - padded
    order = torch.argsort(flat, stable=True)
    rank = torch.arange(flat.numel(), device=flat.device) - (torch.cumsum(counts, 0) - counts)[flat[order]]
    src = torch.full((int(padded.sum()),), -1, dtype=torch.int64, device=flat.device)
    src[starts[flat[order]] + rank] = order
    return src, torch.cumsum(padded, 0).to(torch.int32)


@dataclass
class GroupedWeights:
    w1t: torch.Tensor          # [E, H, 2I] (bf16 or e4m3), fc1 rows [gate; up]
    w2t: torch.Tensor          # [E, I, H]
    s1: torch.Tensor | None    # [E, 2I] fp32 per output channel (FP8)
    s2: torch.Tensor | None    # [E, H]
    b1: torch.Tensor | None
    b2: torch.Tensor | None


class TorchGroupedMmBf16(Backend):
    name = "torch-grouped-mm-bf16"
    description = "torch._grouped_mm bf16 MoE (torchtitan-style token sort, 16-aligned groups)"
    requirements = Requirements(devices=("sm90+",), formats=(WEIGHT_FORMATS["bf16"],), act_quants=(None,), k_multiple=16)
    verified = Level("L2", h100("h100-fi0.7.2", "h100-fi0.7.2-models"))
    kernel = "torch._grouped_mm"
    # fc1's GEMM writes bf16 (out_dtype=torch.bfloat16, as torchao's float8 MoE calls it) and the SwiGLU
    # reads those bf16 values: the reference rounds fc1's output to bf16 too (Precision.KERNEL). With the
    # fp32 fc1 output instead, a fuzzed FP8 case (H = I = 32, reports/sm90-nvidia-h200/h200-fuzz-torch-grouped)
    # failed at 1.03% mismatch, which the emulated contract reproduces on the CPU (0.00% against this reference).
    reference_kw = {"precision": Precision.KERNEL}

    def case_gate(self, case):
        why = super().case_gate(case)
        return why or (None if case.dtype == torch.bfloat16 else "bf16 activations only")

    def prepare(self, data: CaseData, device: str) -> GroupedWeights:
        ex = experts_in_order(data.experts, GateUpOrder.GATE_UP)
        # mat_b as torchtitan passes it: the [E, N, K] weights viewed as [E, K, N] (column-major per group)
        return GroupedWeights(ex.w1.data.contiguous().transpose(-2, -1), ex.w2.data.contiguous().transpose(-2, -1),
                              None, None, ex.b1, ex.b2)

    def gemm(self, a: torch.Tensor, w: torch.Tensor, s: torch.Tensor | None, offs: torch.Tensor) -> torch.Tensor:
        return torch._grouped_mm(a.to(torch.bfloat16), w, offs=offs, out_dtype=torch.bfloat16)

    def quant_act(self, a: torch.Tensor):
        return a, None

    def run(self, p: GroupedWeights, data: CaseData) -> torch.Tensor:
        c = data.case
        t, k = data.topk_ids.shape
        src, offs = sort_by_expert(data.topk_ids, p.w1t.shape[0])
        valid = src >= 0
        tok = torch.where(valid, src // k, 0)
        expert = torch.repeat_interleave(torch.arange(p.w1t.shape[0], device=src.device), torch.diff(offs, prepend=offs.new_zeros(1)))
        x = data.x.index_select(0, tok) * valid.unsqueeze(-1).to(data.x.dtype)
        h = self.gemm(x, p.w1t, p.s1, offs).float()
        if p.b1 is not None:
            h = h + p.b1.float().index_select(0, expert)
        gate, up = split_gate_up(h.to(torch.bfloat16), GateUpOrder.GATE_UP, dim=-1)
        a = swiglu(gate, up, c.swiglu, Precision.KERNEL).to(torch.bfloat16)
        y = self.gemm(a, p.w2t, p.s2, offs).float()
        if p.b2 is not None:
            y = y + p.b2.float().index_select(0, expert)
        per_slot = torch.zeros(t * k, y.shape[-1], dtype=torch.float32, device=y.device)
        per_slot[src[valid]] = y[valid]
        routed = (per_slot.view(t, k, y.shape[-1]) * data.topk_weights.to(torch.float32).unsqueeze(-1)).sum(1)
        return layer_output(routed, data).to(c.dtype)


class TorchScaledGroupedMmFp8(TorchGroupedMmBf16):
    """FP8 rowwise: activations quantized per token (fp32 scale amax/448), weights per output
    channel, ``torch._scaled_grouped_mm`` with both scale vectors (torchao float8 rowwise)."""

    name = "torch-scaled-grouped-mm-fp8"
    description = "torch._scaled_grouped_mm FP8 rowwise MoE (per-token x per-channel scales)"
    requirements = Requirements(devices=("sm90+",), formats=(WEIGHT_FORMATS["fp8_rowwise"],),
                                act_quants=(ActQuant.FP8_TOKEN,), fp8_scales=(Fp8Scale.FP32, Fp8Scale.UE8M0), k_multiple=16)
    kernel = "torch._scaled_grouped_mm (rowwise)"

    def prepare(self, data: CaseData, device: str) -> GroupedWeights:
        ex = experts_in_order(data.experts, GateUpOrder.GATE_UP)
        return GroupedWeights(ex.w1.data.contiguous().transpose(-2, -1), ex.w2.data.contiguous().transpose(-2, -1),
                              ex.w1.scale.squeeze(-1).float().contiguous(), ex.w2.scale.squeeze(-1).float().contiguous(),
                              ex.b1, ex.b2)

    def gemm(self, a: torch.Tensor, w: torch.Tensor, s: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        q, sa = F.fp8_group_quantize(a.float(), a.shape[-1], Fp8Scale.FP32)
        return torch._scaled_grouped_mm(q, w, sa.squeeze(-1).contiguous(), s, offs=offs, out_dtype=torch.bfloat16)
