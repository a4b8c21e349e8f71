"""The fault catalogue: one entry per real fault class, as data.

Each :class:`Fault` replaces exactly one hook (a method of an emulated twin) of a correct
backend. Applied to an emulated backend it is a zoo mutant (a test fixture, selectable as
``zoo:<fault>@<backend>``); applied to the twin of a backend under test it is a diagnosis
hypothesis ("what the kernel computes if this fault happened"). Which faults a contract can
suffer is said by its family (``harness.families``, which also builds the mutants). Adding a
hypothesis is adding one entry here and naming it in its family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from harness.backends.emulated import Combines, EmulatedAiterMxfp4, EmulatedInterleavedMx
from harness.backends.emulated_cutlass import EmulatedFp8Block, EmulatedSm90W4A16
from harness.cases import as_returned, layer_output
from references import formats as F
from references.activations import swiglu
from references.formats import Fp8Scale, ScaleMode
from references.layouts import GateUpOrder

SM90, FP8, INTERLEAVED, AITER = EmulatedSm90W4A16, EmulatedFp8Block, EmulatedInterleavedMx, EmulatedAiterMxfp4


@dataclass(frozen=True)
class Fault:
    name: str
    hook: Callable          # the twin's method it replaces
    impl: Callable          # the replacement (bound as a method)
    cause: str              # "the weights were not SM90-interleaved" (reads after "if")
    needs: Callable = field(default=lambda case: True)  # does this case exercise the fault at all?


# ---- replacements ---------------------------------------------------------------------------
def _identity_layout(self, t):
    return t.contiguous()


def _order(order: GateUpOrder):
    return lambda self, data: order


def _swapped(self, data):
    return GateUpOrder.GATE_UP if self.kernel_order is GateUpOrder.UP_GATE else GateUpOrder.UP_GATE


def _checkpoint_order(self, data):
    return data.experts.order


def _swiglu_without(*drop):
    def swiglu_tensors(self, data, e, device):
        p = data.case.swiglu
        if p.is_plain or set(drop) == {"alpha", "beta", "limit"}:
            return None, None, None
        full = lambda v: torch.full((e,), float(v), dtype=torch.float32, device=device)  # noqa: E731
        alpha = 1.0 if "alpha" in drop else p.alpha
        beta = 0.0 if "beta" in drop else p.beta
        limit = float("inf") if ("limit" in drop or p.limit is None) else p.limit
        return full(alpha), full(beta), full(limit)
    return swiglu_tensors


def _clamped(gate_lo: bool, up_lo: bool):
    """An activation whose clamps differ from the contract's (gate/up lower bounds on or off)."""
    def act(gate, up, params, precision):
        lim = params.limit
        if lim is None:
            return swiglu(gate, up, params, precision)
        g = gate.float().clamp(-lim if gate_lo else None, lim).to(gate.dtype)
        u = up.float().clamp(-lim if up_lo else None, lim).to(up.dtype)
        return swiglu(g, u, replace(params, limit=None), precision)
    return act


def _rsf_on_both(routed, shared, rsf):
    return routed.float() * rsf if shared is None else rsf * (routed.float() + shared)


def _has_limit(case):
    return case.swiglu.limit is not None


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


FAULTS: tuple[Fault, ...] = (
    # vLLM test_flashinfer_cutlass_mxfp4_fused_moe on H20/H100: ~89% mismatch, K > 128 only
    Fault("weights-not-sm90-interleaved", SM90.interleave_weights, _identity_layout,
          "the weights were not SM90-interleaved (interleave_moe_weights_for_sm90_mixed_gemm skipped)"),
    # with K <= 128 on both GEMMs the scale interleave is the identity: the fault is invisible
    Fault("scales-not-sm90-interleaved", SM90.interleave_scales, _identity_layout,
          "the block scales were not SM90-interleaved (interleave_moe_scales_for_sm90_mixed_gemm skipped)",
          needs=lambda c: max(-(-c.hidden // 128), -(-c.intermediate // 128)) > 1),
    # the v2 fold (0.6.16+, 0.7.x) moves rows within 64-row blocks: visible at every K
    Fault("scales-not-sm90-folded", SM90.interleave_scales, _identity_layout,
          "the block scales were not folded (interleave_moe_scales_for_sm90_mixed_gemm of FlashInfer >= 0.6.16 skipped)"),
    Fault("gate-up-swapped", SM90.fc1_order, _swapped,
          "fc1's gate and up halves were swapped ([gate; up] where the kernel reads [up; gate], or the reverse)"),
    # GPT-OSS checkpoints interleave gate/up rows
    Fault("checkpoint-rows-not-deinterleaved", SM90.fc1_order, _checkpoint_order,
          "fc1 kept the checkpoint's row order (GPT-OSS interleaved gate/up rows) where [up; gate] is expected",
          needs=lambda c: c.checkpoint_layout is GateUpOrder.INTERLEAVED),
    Fault("separated-rows-where-interleaved-expected", INTERLEAVED.fc1_order, _order(GateUpOrder.GATE_UP),
          "fc1 was fed as separated [gate; up] where the kernel expects interleaved gate/up rows"),
    Fault("swiglu-limit-dropped", SM90.swiglu_tensors, _swiglu_without("limit"),
          "the SwiGLU limit (swiglu_limit) was not forwarded to the kernel", _has_limit),
    Fault("swiglu-params-dropped", SM90.swiglu_tensors, _swiglu_without("alpha", "beta", "limit"),
          "SwiGLU alpha/beta/limit were not passed (plain silu(gate)*up ran)",
          needs=lambda c: c.swiglu.alpha != 1.0 or c.swiglu.beta != 0.0),
    Fault("beta-dropped", SM90.swiglu_tensors, _swiglu_without("beta"),
          "the SwiGLU beta (the +1 on up) was dropped", needs=lambda c: c.swiglu.beta != 0),
    Fault("limit-operands-swapped", SM90.activation_fn, lambda self: _clamped(gate_lo=True, up_lo=False),
          "the clamp rules of gate and up were exchanged (gate clamped to +-limit, up only from above)",
          needs=_has_limit),
    Fault("gate-clamped-both-sides", SM90.activation_fn, lambda self: _clamped(gate_lo=True, up_lo=True),
          "the gate was clamped on both sides (-limit..limit) instead of from above only",
          needs=lambda c: _has_limit(c) and c.swiglu.limit * _sigmoid(-c.swiglu.alpha * c.swiglu.limit) > 0.01),
    # swiglu_limit not forwarded to silu_mul_fp8_quant: rare junk tokens
    Fault("silu-mul-quant-limit-dropped", FP8.activation_params, lambda self, data: replace(data.case.swiglu, limit=None),
          "the SwiGLU limit was not forwarded to the fused silu-mul-fp8-quant kernel", _has_limit),
    Fault("rsf-applied-to-shared", Combines.combine, lambda self, routed, data: layer_output(as_returned(routed, data), data, _rsf_on_both),
          "the routed scaling factor was applied to the shared expert too: rsf*(routed+shared)",
          needs=lambda c: c.shared_expert and c.routed_scaling_factor != 1.0),
    # DeepGEMM forced UE8M0 scales
    Fault("ue8m0-scales-for-fp32", FP8.weight_scales, lambda self, s, data: F.ceil_to_ue8m0(s),
          "fp32 block scales were rounded up to UE8M0 (power of two) without re-quantizing the weights",
          needs=lambda c: c.fp8_scale is Fp8Scale.FP32),
    Fault("fp4-nibbles-swapped", SM90.transform_mx, lambda self, w, s: (((w & 0x0F) << 4) | (w >> 4), s),
          "the two FP4 codes of each byte were swapped (even element in the high nibble)"),
    Fault("e8m0-bias-off-by-one", SM90.transform_mx,
          lambda self, w, s: (w, (s.to(torch.int16) + 1).clamp(max=254).to(torch.uint8)),
          "the E8M0 scale exponent was off by one (every block scale doubled)"),
    Fault("e8m0-ceil-instead-of-floor", SM90.transform_mx,
          lambda self, w, s: F.mx_quantize(F.mx_dequantize(w, s, F.Element.E2M1), F.Element.E2M1, ScaleMode.CEIL),
          "the weights were quantized with E8M0 ceil rounding instead of the OCP floor rule",
          needs=lambda c: c.scale_mode is ScaleMode.FLOOR),
    # sglang PR 26884 (AITER MXFP4: lost is_shuffled flag)
    Fault("shuffle-flag-lost", AITER.shuffled_flag, lambda self: False,
          "the is_shuffled flag was lost, so the kernel took its unshuffled code path with shuffled weights"),
)
FAULTS_BY_NAME = {f.name: f for f in FAULTS}
