"""torch's grouped GEMMs as an MoE backend, the way torchtitan / torchao MoE layers use them:
tokens sorted by expert, each expert's rows padded to a multiple of 16 (torchtitan
``generate_permute_indices`` aligns groups to 16 for bf16 and fp8), ``torch._grouped_mm`` (bf16) or
``torch._scaled_grouped_mm`` (FP8 rowwise: per-token activation scales, per-output-channel weight
scales) for fc1 and fc2, the SwiGLU between them in fp32 rounded to bf16, and a deterministic
top-k sum (no atomics). The MoE composition is this module's; the kernels are torch's.

Each real backend derives from its twin, the same composition with the GEMM done by its arithmetic
in pure PyTorch (bf16 or e4m3 products summed exactly, rounded once to fp32, times the scales, bf16
out; any device): the twin is the error budget of the real kernel, the fault zoo mutates it, and
diagnosis runs it with each fault as a hypothesis. The steps a fault can replace are ``hooks``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from harness.backends.base import Backend, Level, Requirements, h100, h200
from harness.backends.common import experts_in_order
from harness.backends.emulated import Combines
from harness.cases import CaseData
from harness.compare import BUDGET_K
from references import formats as F
from references.activations import Precision, SwigluParams, swiglu
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


class EmulatedTorchGroupedBf16(Combines, Backend):
    """The torch grouped bf16 MoE with ``torch._grouped_mm`` replaced by its arithmetic: bf16 products
    (exact in fp32) summed exactly and rounded once to fp32, bf16 out (torch's GEMM sums in fp32 in its
    own order: the twin differs from it by summation order only)."""

    name = "emulated-torch-grouped-bf16"
    description = "pure-PyTorch twin of the torch._grouped_mm bf16 MoE (same composition, emulated GEMM)"
    requirements = Requirements(devices=("any",), formats=(WEIGHT_FORMATS["bf16"],), act_quants=(None,), k_multiple=16)
    verified = Level("cpu", ("pure PyTorch; tests/test_torch_grouped_contract.py, tests/test_faults.py",))
    kernel = "emulation of torch._grouped_mm"
    # fc1's GEMM writes bf16 (out_dtype=torch.bfloat16, as torchao's float8 MoE calls it) and the SwiGLU
    # reads those bf16 values: the reference rounds fc1's output to bf16 too (Precision.KERNEL). With the
    # fp32 fc1 output instead, a fuzzed FP8 case (H = I = 32, reports/sm90-nvidia-h200/h200-fuzz-torch-grouped)
    # failed at 1.03% mismatch, which the emulated contract reproduces on the CPU (0.00% against this reference).
    reference_kw = {"precision": Precision.KERNEL}

    def case_gate(self, case):
        why = super().case_gate(case)
        return why or (None if case.dtype == torch.bfloat16 else "bf16 activations only")

    kernel_order = GateUpOrder.GATE_UP   # the order the SwiGLU below reads fc1's rows in

    def fc1_order(self, data: CaseData) -> GateUpOrder:
        """The order prepare writes fc1 rows in (a fault may make it differ from kernel_order)."""
        return self.kernel_order

    def activation_params(self, data: CaseData) -> SwigluParams:
        """The SwiGLU parameters the activation between the GEMMs is given."""
        return data.case.swiglu

    hooks = (fc1_order, activation_params, Combines.combine)

    def prepare(self, data: CaseData, device: str) -> GroupedWeights:
        ex = experts_in_order(data.experts, self.fc1_order(data))
        # mat_b as torchtitan passes it: the [E, N, K] weights viewed as [E, K, N] (column-major per group)
        return GroupedWeights(ex.w1.data.contiguous().transpose(-2, -1), ex.w2.data.contiguous().transpose(-2, -1),
                              None, None, ex.b1, ex.b2)

    def gemm(self, a: torch.Tensor, w: torch.Tensor, s: torch.Tensor | None, offs: torch.Tensor) -> torch.Tensor:
        return _emulated_grouped(a.to(torch.bfloat16), w, offs, None, None)

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
        gate, up = split_gate_up(h.to(torch.bfloat16), self.kernel_order, dim=-1)
        a = swiglu(gate, up, self.activation_params(data), Precision.KERNEL).to(torch.bfloat16)
        y = self.gemm(a, p.w2t, p.s2, offs).float()
        if p.b2 is not None:
            y = y + p.b2.float().index_select(0, expert)
        per_slot = torch.zeros(t * k, y.shape[-1], dtype=torch.float32, device=y.device)
        per_slot[src[valid]] = y[valid]
        routed = (per_slot.view(t, k, y.shape[-1]) * data.topk_weights.to(torch.float32).unsqueeze(-1)).sum(1)
        return self.combine(routed, data).to(c.dtype)


def _emulated_grouped(a: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, sa: torch.Tensor | None,
                      sw: torch.Tensor | None) -> torch.Tensor:
    """``a [M, K]`` (bf16 or e4m3) times each group's ``w [E, K, N]``, rows ``offs[e-1]:offs[e]``: exact
    products summed in fp64, rounded once to fp32, times the row and column scales when given, bf16 out."""
    out = torch.zeros(a.shape[0], w.shape[-1], dtype=torch.float32, device=a.device)
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            acc = (a[start:end].double() @ w[e].double()).float()
            if sa is not None:
                acc = acc * sa[start:end].unsqueeze(-1) * sw[e]
            out[start:end] = acc
        start = end
    return out.to(torch.bfloat16)


class TorchGroupedMmBf16(EmulatedTorchGroupedBf16):
    name = "torch-grouped-mm-bf16"
    description = "torch._grouped_mm bf16 MoE (torchtitan-style token sort, 16-aligned groups)"
    requirements = replace(EmulatedTorchGroupedBf16.requirements, devices=("sm90+",))
    verified = Level("L2", h100("h100-fi0.7.2", "h100-fi0.7.2-models") + h200("h200-fuzz-torch-grouped"))
    kernel = "torch._grouped_mm"
    budget_k = BUDGET_K

    def gemm(self, a: torch.Tensor, w: torch.Tensor, s: torch.Tensor | None, offs: torch.Tensor) -> torch.Tensor:
        return torch._grouped_mm(a.to(torch.bfloat16), w, offs=offs, out_dtype=torch.bfloat16)


class EmulatedTorchScaledGroupedFp8(EmulatedTorchGroupedBf16):
    """FP8 rowwise: activations quantized per token (fp32 scale amax/448, by this module), weights per
    output channel; ``torch._scaled_grouped_mm`` replaced by its arithmetic (e4m3 products exact in fp32,
    summed exactly, rounded once, times both scales, bf16 out)."""

    name = "emulated-torch-scaled-grouped-fp8"
    description = "pure-PyTorch twin of the torch._scaled_grouped_mm FP8 rowwise MoE (same composition, emulated GEMM)"
    requirements = Requirements(devices=("any",), formats=(WEIGHT_FORMATS["fp8_rowwise"],),
                                act_quants=(ActQuant.FP8_TOKEN,), fp8_scales=(Fp8Scale.FP32, Fp8Scale.UE8M0), k_multiple=16)
    kernel = "emulation of torch._scaled_grouped_mm (rowwise)"

    def weight_scales(self, s: torch.Tensor, data: CaseData) -> torch.Tensor:
        """The per-channel weight scales the GEMM is given."""
        return s

    hooks = (EmulatedTorchGroupedBf16.fc1_order, weight_scales, EmulatedTorchGroupedBf16.activation_params,
             Combines.combine)

    def prepare(self, data: CaseData, device: str) -> GroupedWeights:
        ex = experts_in_order(data.experts, self.fc1_order(data))
        scales = [self.weight_scales(q.scale, data).squeeze(-1).float().contiguous() for q in (ex.w1, ex.w2)]
        return GroupedWeights(ex.w1.data.contiguous().transpose(-2, -1), ex.w2.data.contiguous().transpose(-2, -1),
                              *scales, ex.b1, ex.b2)

    def quantize(self, a: torch.Tensor):
        """Per-token FP8, the adapter's own quantizer: the reference's ``fp8_group_quantize`` over the row
        (DeepGEMM-test rule: scale amax / 448, amax floored at 1e-4). torchao's rowwise recipe multiplies by
        ``448 / clamp(amax, 1e-12)`` instead (``torchao/float8/float8_utils.py`` ``amax_to_scale``); the GEMM under
        test sees whichever codes it is given, and the twin quantizes with this same function."""
        q, sa = F.fp8_group_quantize(a.float(), a.shape[-1], Fp8Scale.FP32)
        return q, sa.squeeze(-1).contiguous()

    def gemm(self, a: torch.Tensor, w: torch.Tensor, s: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        q, sa = self.quantize(a)
        return _emulated_grouped(q, w, offs, sa, s)


class TorchScaledGroupedMmFp8(EmulatedTorchScaledGroupedFp8):
    """FP8 rowwise: activations quantized per token (fp32 scale amax/448), weights per output
    channel, ``torch._scaled_grouped_mm`` with both scale vectors (torchao float8 rowwise)."""

    name = "torch-scaled-grouped-mm-fp8"
    description = "torch._scaled_grouped_mm FP8 rowwise MoE (per-token x per-channel scales)"
    requirements = replace(EmulatedTorchScaledGroupedFp8.requirements, devices=("sm90+",))
    verified = TorchGroupedMmBf16.verified
    kernel = "torch._scaled_grouped_mm (rowwise)"
    budget_k = BUDGET_K

    def gemm(self, a: torch.Tensor, w: torch.Tensor, s: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        q, sa = self.quantize(a)
        return torch._scaled_grouped_mm(q, w, sa, s, offs=offs, out_dtype=torch.bfloat16)
