"""Hypothesis strategies for cases: shapes that honour each backend family's constraints,
values that exercise clamps, outliers, saturation and tiny E8M0 scales, and skewed routing
(all tokens on a few experts, experts with no tokens). A failing example shrinks to a minimal
case; ``repro_yaml`` prints it as a case file entry.
"""

from __future__ import annotations

import yaml
from hypothesis import strategies as st

from harness.cases import Case, case_to_yaml, validate_case

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
