"""The fault zoo: one entry per real fault class, as data.

Each :class:`Fault` overrides exactly one hook of a correct backend family. Applied to an
emulated backend it is a zoo mutant (a test fixture, selectable as ``zoo:<fault>@<backend>``);
applied to the emulated twin of a backend under test it is a diagnosis hypothesis ("what the
kernel computes if this fault happened"). Adding a hypothesis is adding one entry to ``FAULTS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from harness.backends import Backend
from harness.backends.common import finish_layer
from references import formats as F
from references.activations import SwigluParams, swiglu
from references.moe import dense_mlp


@dataclass(frozen=True)
class Fault:
    name: str
    family: tuple           # backend families it applies to
    hook: str               # the backend method it replaces
    impl: Callable          # the replacement (bound as a method)
    cause: str              # "the weights were not SM90-interleaved" (reads after "if")
    origin: str = ""        # the real-world incident it reproduces
    needs: Callable = field(default=lambda case: True)  # does this case exercise the fault at all?


# ---- replacements ---------------------------------------------------------------------------
def _identity_layout(self, t):
    return t.contiguous()


def _order(order):
    return lambda self, data: order


def _checkpoint_order(self, data):
    return data.weights.order


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


def _act_limit_swapped(gate, up, params, precision):
    """Limit rules exchanged: gate clamped to +-limit, up only from above."""
    lim = params.limit
    if lim is None:
        return swiglu(gate, up, params, precision)
    g = gate.float().clamp(-lim, lim).to(gate.dtype)
    u = up.float().clamp(max=lim).to(up.dtype)
    return swiglu(g, u, replace(params, limit=None), precision)


def _act_gate_both_sides(gate, up, params, precision):
    """Gate clamped on both sides (-limit <= gate <= limit) instead of from above only."""
    lim = params.limit
    if lim is None:
        return swiglu(gate, up, params, precision)
    g = gate.float().clamp(-lim, lim).to(gate.dtype)
    u = up.float().clamp(-lim, lim).to(up.dtype)
    return swiglu(g, u, replace(params, limit=None), precision)


def _rsf_on_shared(self, routed, data):
    w, c = data.weights, data.case
    if w.shared_w1 is None:
        return finish_layer(routed, data)
    shared = dense_mlp(data.x, w.shared_w1, w.shared_w2, activation=c.swiglu, intermediate_dtype=c.torch_dtype)
    return c.routed_scaling_factor * (routed.float() + shared)


def _swap_nibbles(self, w, s):
    return ((w & 0x0F) << 4) | (w >> 4), s


def _e8m0_plus_one(self, w, s):
    return w, (s.to(torch.int16) + 1).clamp(max=254).to(torch.uint8)


def _requant_ceil(self, w, s):
    return F.mx_quantize(F.mx_dequantize(w, s, "e2m1"), "e2m1", "ceil")


def _ue8m0_scales(self, s, data):
    return F.ceil_to_ue8m0(s)


def _drop_limit(self, data):
    return replace(data.case.swiglu, limit=None)


def _sigmoid(v: float) -> float:
    import math
    return 1.0 / (1.0 + math.exp(-v))


def _has_limit(case):
    return case.swiglu.limit is not None


SM90, FP8, INTERLEAVED, AITER = "sm90-w4a16", "fp8-block", "interleaved-mxfp4", "aiter-mxfp4"

FAULTS: tuple[Fault, ...] = (
    Fault("weights-not-sm90-interleaved", (SM90,), "interleave_weights", _identity_layout,
          "the weights were not SM90-interleaved (interleave_moe_weights_for_sm90_mixed_gemm skipped)",
          "vLLM test_flashinfer_cutlass_mxfp4_fused_moe on H20/H100: ~89% mismatch, K > 128 only"),
    Fault("scales-not-sm90-interleaved", (SM90,), "interleave_scales", _identity_layout,
          "the block scales were not SM90-interleaved (interleave_moe_scales_for_sm90_mixed_gemm skipped)",
          # with K <= 128 on both GEMMs the scale interleave is the identity: the fault is invisible
          needs=lambda c: max(-(-c.hidden // 128), -(-c.intermediate // 128)) > 1),
    Fault("gate-up-swapped", (SM90,), "fc1_order", _order("gate_up"),
          "fc1 was fed as [gate; up] where the kernel expects [up; gate]"),
    Fault("checkpoint-rows-not-deinterleaved", (SM90,), "fc1_order", _checkpoint_order,
          "fc1 kept the checkpoint's row order (GPT-OSS interleaved gate/up rows) where [up; gate] is expected",
          "GPT-OSS checkpoints interleave gate/up rows", needs=lambda c: c.checkpoint_layout == "interleaved"),
    Fault("separated-rows-where-interleaved-expected", (INTERLEAVED,), "fc1_order", _order("gate_up"),
          "fc1 was fed as separated [gate; up] where the kernel expects interleaved gate/up rows"),
    Fault("swiglu-limit-dropped", (SM90,), "swiglu_tensors", _swiglu_without("limit"),
          "the SwiGLU limit (swiglu_limit) was not forwarded to the kernel", "swiglu_limit not forwarded", _has_limit),
    Fault("swiglu-params-dropped", (SM90,), "swiglu_tensors", _swiglu_without("alpha", "beta", "limit"),
          "SwiGLU alpha/beta/limit were not passed (plain silu(gate)*up ran)",
          needs=lambda c: c.swiglu.alpha != 1.0 or c.swiglu.beta != 0.0),
    Fault("beta-dropped", (SM90,), "swiglu_tensors", _swiglu_without("beta"),
          "the SwiGLU beta (the +1 on up) was dropped", needs=lambda c: c.swiglu.beta != 0),
    Fault("limit-operands-swapped", (SM90,), "activation_fn", lambda self: _act_limit_swapped,
          "the clamp rules of gate and up were exchanged (gate clamped to +-limit, up only from above)",
          needs=_has_limit),
    Fault("gate-clamped-both-sides", (SM90,), "activation_fn", lambda self: _act_gate_both_sides,
          "the gate was clamped on both sides (-limit..limit) instead of from above only",
          needs=lambda c: _has_limit(c) and c.swiglu.limit * _sigmoid(-c.swiglu.alpha * c.swiglu.limit) > 0.01),
    Fault("silu-mul-quant-limit-dropped", (FP8,), "activation_params", _drop_limit,
          "the SwiGLU limit was not forwarded to the fused silu-mul-fp8-quant kernel",
          "swiglu_limit not forwarded to silu_mul_fp8_quant: rare junk tokens", _has_limit),
    Fault("rsf-applied-to-shared", (SM90, FP8), "combine", _rsf_on_shared,
          "the routed scaling factor was applied to the shared expert too: rsf*(routed+shared)",
          "rsf*(routed+shared) instead of rsf*routed + shared",
          needs=lambda c: c.shared_expert and c.routed_scaling_factor != 1.0),
    Fault("ue8m0-scales-for-fp32", (FP8,), "weight_scales", _ue8m0_scales,
          "fp32 block scales were rounded up to UE8M0 (power of two) without re-quantizing the weights",
          "DeepGEMM forced UE8M0 scales", needs=lambda c: c.fp8_scale == "fp32"),
    Fault("fp4-nibbles-swapped", (SM90,), "transform_mx", _swap_nibbles,
          "the two FP4 codes of each byte were swapped (even element in the high nibble)"),
    Fault("e8m0-bias-off-by-one", (SM90,), "transform_mx", _e8m0_plus_one,
          "the E8M0 scale exponent was off by one (every block scale doubled)"),
    Fault("e8m0-ceil-instead-of-floor", (SM90,), "transform_mx", _requant_ceil,
          "the weights were quantized with E8M0 ceil rounding instead of the OCP floor rule",
          needs=lambda c: c.scale_mode == "floor"),
    Fault("shuffle-flag-lost", (AITER,), "shuffled_flag", lambda self: False,
          "the is_shuffled flag was lost, so the kernel took its unshuffled code path with shuffled weights",
          "sglang PR 26884 (AITER MXFP4: lost is_shuffled flag)"),
)
FAULTS_BY_NAME = {f.name: f for f in FAULTS}


def mutant(base: Backend, fault: Fault) -> Backend:
    """A new backend: ``base`` with ``fault``'s hook replaced."""
    if getattr(base, "family", None) not in fault.family:
        raise ValueError(f"fault {fault.name} applies to {fault.family}, not to {base.name} ({getattr(base, 'family', None)})")
    if fault.hook not in base.hooks:
        raise ValueError(f"backend {base.name} does not honour hook {fault.hook!r}")
    def case_gate(self, case):
        if not fault.needs(case):
            return f"fault {fault.name} is not exercised by this case"
        return type(base).case_gate(self, case)

    cls = type(f"Zoo_{fault.name.replace('-', '_')}_{type(base).__name__}", (type(base),),
               {fault.hook: fault.impl, "name": f"zoo:{fault.name}@{base.name}", "case_gate": case_gate,
                "description": f"fault zoo: {fault.cause}", "verified": base.verified, "fault": fault})
    return cls()


def zoo_backends(bases: list[Backend] | None = None) -> list[Backend]:
    """Every (fault, base) pair: by default over the emulated backends and the FlashInfer one."""
    from harness.backends import load_backends
    if bases is None:
        bases = [b for b in load_backends().values() if getattr(b, "family", None)]
    out = []
    for b in bases:
        for f in FAULTS:
            if b.family in f.family and f.hook in b.hooks:
                out.append(mutant(b, f))
    return out
