"""Hypothesis strategies for cases: shapes that honour each backend family's constraints,
values that exercise clamps, outliers, saturation and tiny E8M0 scales, and skewed routing
(all tokens on a few experts, experts with no tokens). A failing example shrinks to a minimal
case; ``repro_yaml`` prints it as a case file entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import yaml
from hypothesis import assume
from hypothesis import strategies as st

from harness.cases import Case, CaseError, case_to_yaml, validate_case

_ACTIVATIONS = st.sampled_from(["silu", "gpt_oss", "clamp7", {"alpha": 1.0, "beta": 0.0, "limit": 1.0}])


@st.composite
def cases(draw, weight_format: str = "mxfp4", k_multiple: int = 32, max_dim: int = 384) -> Case:
    """A valid small case for ``weight_format``. K > 128 is drawn often (layout faults hide at
    K <= 128); dims are multiples of ``k_multiple`` but need not be of 128 (padding)."""
    unit = max(k_multiple, 128 if weight_format == "fp8_block" else 32 if weight_format.startswith("mx") else 16)
    hidden = draw(st.integers(1, max_dim // unit).map(lambda v: v * unit))
    inter = draw(st.integers(1, max_dim // unit).map(lambda v: v * unit))
    experts = draw(st.integers(1, 12))
    topk = draw(st.integers(1, min(experts, 4)))
    raw = {
        "name": "hyp", "tokens": draw(st.integers(0, 40)), "hidden": hidden, "intermediate": inter,
        "experts": experts, "topk": topk, "weight_format": weight_format,
        "activation": draw(_ACTIVATIONS), "bias": draw(st.booleans()),
        "checkpoint_layout": draw(st.sampled_from(["gate_up", "up_gate"] + (["interleaved"] if weight_format != "fp8_block" else []))),
        "seed": draw(st.integers(0, 2**20)),
        # Gaussian x8 drives pre-activations far past the clamps; x1e-3 makes tiny E8M0 scales
        "input_scale": draw(st.sampled_from([1.0, 8.0, 1e-3, 30.0])),
        "weight_scale": draw(st.sampled_from([1.0, 1e-4, 4.0])),
        "outliers": draw(st.sampled_from([0.0, 0.01, 0.1])),
        "skew": draw(st.sampled_from([0.0, 0.0, 5.0, 100.0])),
    }
    if weight_format == "fp8_block":
        raw["act_quant"] = "fp8_group"
        raw["fp8_scale"] = draw(st.sampled_from(["fp32", "ue8m0"]))
    if weight_format.startswith("mx"):
        raw["scale_mode"] = draw(st.sampled_from(["floor", "ceil", "rceil", "even"]))
    return validate_case(raw, "hypothesis case")


def repro_yaml(case: Case) -> str:
    """The case as a case-file entry, for pasting into ``cases/``."""
    d = {k: v for k, v in case_to_yaml(case).items() if k not in ("backends", "tags", "source", "thresholds")}
    d["tags"] = ["hypothesis-repro"]
    return yaml.safe_dump({"cases": [d]}, sort_keys=False)


# ---- cases inside what a backend declares --------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """How big a generated case may get (memory and time that fit the device)."""

    max_dim: int = 4096                 # hidden and intermediate
    max_tokens: int = 4096
    max_weight_elems: int = 48 * 2**20  # E * 3 * H * I
    max_act_elems: int = 8 * 2**20      # tokens * top-k * max(H, 2I)


CPU_BUDGET = Budget(max_dim=1024, max_tokens=512, max_weight_elems=3 * 2**20, max_act_elems=2**20)
BOUNDARIES = (64, 128, 256)             # tile and padding boundaries (SM90 pads K to 128; M tiles 64/128)
LARGE_DIMS = (1024, 2048, 2880, 3072, 4096)


def _dim(unit: int, budget: Budget):
    near = sorted({v for b in BOUNDARIES for v in (b - unit, b, b + unit) if v > 0 and v % unit == 0})
    return st.one_of(st.sampled_from([unit] + near), st.integers(1, 24).map(lambda v: v * unit),
                     st.sampled_from([d for d in LARGE_DIMS if d % unit == 0] or [unit]))


_TOKENS = st.one_of(st.sampled_from([0, 1, 2, 63, 64, 65, 127, 128, 129, 255, 256, 257]), st.integers(0, 40),
                    st.sampled_from([1024, 2048, 4096]))
_EXPERTS = st.one_of(st.integers(1, 8), st.sampled_from([16, 32, 64, 128, 256]))


def _unit(backend, fmt, act_quant) -> int:
    u = math.lcm(fmt.block, backend.requirements.k_multiple, act_quant.group if act_quant else 1)
    return max(u, 32) if fmt.name != "bf16" else max(u, 16)


def _activation(draw, swiglu: bool):
    if not swiglu:
        return "silu"
    return draw(st.one_of(st.sampled_from(["silu", "gpt_oss", "clamp7", "clamp10"]),
                          st.builds(lambda a, b, lim: {"alpha": a, "beta": b, "limit": lim},  # a limit that binds
                                    st.sampled_from([1.0, 1.702]), st.sampled_from([0.0, 1.0]), st.sampled_from([0.5, 1.0, 3.0]))))


@st.composite
def backend_cases(draw, backend, budget: Budget = Budget()) -> Case:
    """A valid case inside what ``backend`` declares (format, activation quantization, SwiGLU,
    bias, shared expert, routing, shape multiples), over the axes that break kernels: dimensions at,
    below and above tile and padding boundaries (each independently), tokens 0/1/tile+-1/large,
    many experts and skewed routing, top-k 1..8, routed scaling, limits that bind, scale extremes,
    zero blocks, outliers, identical and spread scales across experts."""
    r = backend.requirements
    fmt = draw(st.sampled_from(r.formats))
    act_quant = draw(st.sampled_from(r.act_quants))
    unit = _unit(backend, fmt, act_quant)
    hidden, inter = draw(_dim(unit, budget)), draw(_dim(unit, budget))
    assume(max(hidden, inter) <= budget.max_dim)
    experts = draw(_EXPERTS)
    experts = max(1, min(experts, budget.max_weight_elems // (3 * hidden * inter)))
    topk = draw(st.integers(1, min(8, experts)))
    tokens = draw(_TOKENS)
    tokens = min(tokens, budget.max_tokens, budget.max_act_elems // (topk * max(hidden, 2 * inter)))
    assume(tokens >= r.min_tokens)
    raw = {"name": "fuzz", "tokens": tokens, "hidden": hidden, "intermediate": inter, "experts": experts, "topk": topk,
           "weight_format": fmt.name, "act_quant": act_quant.value if act_quant else None,
           "activation": _activation(draw, r.swiglu), "seed": draw(st.integers(0, 2**20)),
           "input_scale": draw(st.sampled_from([1.0, 8.0, 1e-3, 30.0])),
           "weight_scale": draw(st.sampled_from([1.0, 1.0, 2.0 ** -20, 2.0 ** 16])),
           "outliers": draw(st.sampled_from([0.0, 0.0, 0.01])), "skew": draw(st.sampled_from([0.0, 0.0, 3.0, 100.0])),
           "expert_scales": draw(st.sampled_from(["random", "random", "identical", "spread"])),
           "zero_blocks": draw(st.sampled_from([0.0, 0.0, 0.0, 0.25])),
           "checkpoint_layout": draw(st.sampled_from(["gate_up", "up_gate"] + (["interleaved"] if fmt.name != "fp8_block" else [])))}
    raw |= _routing(draw, r, experts, topk)
    if r.bias:
        raw["bias"] = draw(st.booleans())
    if r.shared_expert and draw(st.booleans()):
        raw |= {"shared_expert": True}
    raw["routed_scaling_factor"] = draw(st.sampled_from([1.0, 1.0, 2.5]))
    if fmt.name in ("mxfp4", "mxfp8"):
        raw["scale_mode"] = draw(st.sampled_from([m.value for m in r.scale_modes]))
    if fmt.name == "fp8_block":
        raw["fp8_scale"] = draw(st.sampled_from([m.value for m in r.fp8_scales]))
    try:
        case = validate_case(raw, "fuzz case")
    except CaseError:
        assume(False)
    assume(backend.case_gate(case) is None)
    return case


def _routing(draw, r, experts: int, topk: int) -> dict:
    from harness.cases import Routing
    routing = draw(st.sampled_from(r.routings))
    if routing is not Routing.GROUPED:
        return {"routing": routing.value}
    groups = [g for g in range(1, experts + 1) if experts % g == 0]
    n_group = draw(st.sampled_from(groups))
    kept = [t for t in range(1, n_group + 1) if t * (experts // n_group) >= topk]
    assume(kept)
    return {"routing": routing.value, "n_group": n_group, "topk_group": draw(st.sampled_from(kept))}
