"""The case schema: a typed :class:`Case` and one validator per field.

YAML values are parsed here, once, into enums and objects; an error names the file, the case and
the field (``cases/x.yaml: case 'a': field 'topk': must be an integer, got 'nine'``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from harness.compare import THRESHOLDS, Thresholds
from references.activations import GPT_OSS, SwigluParams
from references.formats import WEIGHT_FORMATS, ActQuant, Fp8Scale, ScaleMode, WeightFormat
from references.layouts import GateUpOrder


class CaseError(ValueError):
    """A malformed case: the message names the file, the case and the field, on one line."""


class Routing(enum.Enum):
    SOFTMAX = "softmax"            # softmax over experts, top-k, renormalize (vLLM fused_topk)
    TOPK_SOFTMAX = "topk_softmax"  # top-k logits, softmax over them (GPT-OSS router)
    GROUPED = "grouped"            # DeepSeek-V3 sigmoid + group-limited top-k


class ExpertScales(enum.Enum):
    RANDOM = "random"         # each expert's weights drawn independently (block scales vary everywhere)
    IDENTICAL = "identical"   # every expert a copy of expert 0: identical scales across experts
    SPREAD = "spread"         # expert e scaled by 2^k_e, k_e in [-8, 8]: scales differ strongly across experts


class Tier(enum.Enum):
    SMOKE = "smoke"      # runs everywhere, CI included
    GPU = "gpu"          # GPU runs only by default
    NIGHTLY = "nightly"


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Activation:
    """SwiGLU parameters, with the preset name they came from (for names and repro files)."""

    params: SwigluParams
    preset: str | None = None
    label: str = ""   # how the case file wrote it: the preset name or swiglu(key=value,...)

    def __str__(self) -> str:
        return self.label or self.preset or f"swiglu(alpha={self.params.alpha},beta={self.params.beta},limit={self.params.limit})"

    def to_yaml(self):
        p = self.params
        return self.preset or {"alpha": p.alpha, "beta": p.beta, "limit": p.limit}


ACTIVATION_PRESETS = {name: Activation(p, name, name) for name, p in {
    "silu": SwigluParams(), "gpt_oss": GPT_OSS, "clamp7": SwigluParams(1.0, 0.0, 7.0),
    "clamp10": SwigluParams(1.0, 0.0, 10.0)}.items()}


@dataclass(frozen=True)
class Case:
    name: str
    tokens: int
    hidden: int
    intermediate: int
    experts: int
    topk: int
    weight_format: WeightFormat = WEIGHT_FORMATS["mxfp4"]
    scale_mode: ScaleMode = ScaleMode.FLOOR      # E8M0 rounding for MX weight formats
    fp8_scale: Fp8Scale = Fp8Scale.FP32          # fp32 | ue8m0 scales for fp8_block weights
    act_quant: ActQuant | None = None
    activation: Activation = ACTIVATION_PRESETS["silu"]
    bias: bool = False
    routing: Routing = Routing.SOFTMAX
    renormalize: bool = True
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    shared_expert: bool = False
    checkpoint_layout: GateUpOrder = GateUpOrder.GATE_UP  # row order of the canonical fc1 weights
    dtype: torch.dtype = torch.bfloat16
    seed: int = 0
    input_scale: float = 1.0
    weight_scale: float = 1.0
    outliers: float = 0.0      # fraction of input channels scaled x20 (LLM-style outlier channels)
    skew: float = 0.0          # routing skew: adds skew * (E-1-e)/E to the router logits
    expert_scales: ExpertScales = ExpertScales.RANDOM
    zero_blocks: float = 0.0   # fraction of weight blocks (along K) that are all zero
    repeat: int = 1            # runs of the backend on the same inputs (more than 1: a determinism check)
    thresholds: Thresholds | None = None  # None: the set for the format
    backends: tuple = ()       # restrict to these backend names (globs)
    tier: Tier = Tier.SMOKE
    tags: tuple = ()
    source: str = ""           # citation for the numbers
    file: str = ""             # where it was loaded from (project-relative or the file name)

    @property
    def swiglu(self) -> SwigluParams:
        return self.activation.params

    @property
    def limits(self) -> Thresholds:
        """The thresholds this case is judged by."""
        if self.thresholds is not None:
            return self.thresholds
        four_bit = self.weight_format.element == "e2m1"
        if self.weight_format.name == "bf16":
            return THRESHOLDS["bf16"]
        if self.act_quant is None:
            return THRESHOLDS["w4a16" if four_bit else "w8a8"]
        return THRESHOLDS["w4a4" if four_bit else "w8a8"]

    def short(self) -> str:
        """The shape, format and activation, then whatever shapes the data away from its defaults (a fuzz row
        records no more than this, so a scale that matters is named)."""
        aq = f"/{self.act_quant.value}" if self.act_quant else ""
        extra = [f"{k}={v:g}" for k, v in (("input_scale", self.input_scale), ("weight_scale", self.weight_scale),
                                           ("outliers", self.outliers), ("skew", self.skew),
                                           ("zero_blocks", self.zero_blocks)) if v != getattr(Case, k)]
        if self.fp8_scale is not Fp8Scale.FP32 and self.weight_format.name.startswith("fp8"):
            extra.append(f"fp8_scale={self.fp8_scale.value}")
        if self.routing is not Routing.SOFTMAX:
            extra.append(f"routing={self.routing.value}")
        return (f"T={self.tokens} H={self.hidden} I={self.intermediate} E={self.experts} k={self.topk} "
                f"{self.weight_format.name}{aq} act={self.activation}" + "".join(" " + e for e in extra))


# ---- one validator per field: value -> parsed value, ValueError(message) when bad ----------------
def _int(lo: int) -> Callable:
    def parse(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"must be an integer, got {v!r}")
        if v < lo:
            raise ValueError(f"must be >= {lo}, got {v}")
        return v
    return parse


def _number(positive: bool, upper: float | None = None, what: str = "") -> Callable:
    def parse(v):
        kind = "positive" if positive else "non-negative"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (v <= 0 if positive else v < 0):
            raise ValueError(f"must be a {kind} finite number, got {v!r}")
        if upper is not None and v > upper:
            raise ValueError(f"is {what}, got {v}")
        return float(v)
    return parse


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _choice(table: dict) -> Callable:
    def parse(v):
        if not isinstance(v, str) or v not in table:
            raise ValueError(f"{v!r} is not one of {list(table)}")
        return table[v]
    return parse


def _enum(cls) -> Callable:
    return _choice({m.value: m for m in cls})


def _act_quant(v):
    if v is None or v in ("none", "None"):
        return None
    table = {m.value: m for m in ActQuant}
    if not isinstance(v, str) or v not in table:
        raise ValueError(f"{v!r} is not one of {['none'] + list(table)}")
    return table[v]


def parse_activation(a) -> Activation:
    if isinstance(a, str):
        if a not in ACTIVATION_PRESETS:
            raise ValueError(f"unknown activation preset {a!r}; known: {sorted(ACTIVATION_PRESETS)}")
        return ACTIVATION_PRESETS[a]
    if not isinstance(a, dict):
        raise ValueError(f"activation must be a preset name or a mapping, got {type(a).__name__}")
    extra = set(a) - {"alpha", "beta", "limit"}
    if extra:
        raise ValueError(f"unknown activation key(s) {sorted(extra)}; expected alpha, beta, limit")
    vals = {k: a[k] for k in ("alpha", "beta", "limit") if a.get(k) is not None}
    for k, v in vals.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{k} must be a finite number, got {v!r}")
    params = SwigluParams(float(vals.get("alpha", 1.0)), float(vals.get("beta", 0.0)),
                          float(vals["limit"]) if "limit" in vals else None)
    return Activation(params, None, "swiglu(" + ",".join(f"{k}={v}" for k, v in a.items()) + ")")


def parse_thresholds(t) -> Thresholds | None:
    if t is None:
        return None
    base = t if isinstance(t, str) else (t.get("base", "default") if isinstance(t, dict) else None)
    if base not in THRESHOLDS:
        raise ValueError(f"unknown threshold set {base!r}; known: {sorted(THRESHOLDS)}")
    if isinstance(t, str):
        return THRESHOLDS[base]
    over = {k: v for k, v in t.items() if k != "base"}
    for k, v in over.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{k} must be finite, got {v!r}")
    try:
        return THRESHOLDS[base].with_overrides(**over)
    except (ValueError, TypeError) as e:
        raise ValueError(str(e)) from None


def _str_tuple(v):
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError("must be a list of strings")
    return tuple(v)


def _text(v):
    if not isinstance(v, str):
        raise ValueError(f"must be a string, got {v!r}")
    return v


def _name(v):
    if not isinstance(v, str) or not v:
        raise ValueError("must be a non-empty string")
    return v


FIELDS: dict[str, Callable[[Any], Any]] = {
    "name": _name, "tokens": _int(0), "hidden": _int(1), "intermediate": _int(1), "experts": _int(1),
    "topk": _int(1), "weight_format": _choice(WEIGHT_FORMATS), "scale_mode": _enum(ScaleMode),
    "fp8_scale": _enum(Fp8Scale), "act_quant": _act_quant, "activation": parse_activation, "bias": _bool,
    "routing": _enum(Routing), "renormalize": _bool, "n_group": _int(1), "topk_group": _int(1),
    "routed_scaling_factor": _number(True), "shared_expert": _bool, "checkpoint_layout": _enum(GateUpOrder),
    "dtype": _choice(DTYPES), "seed": _int(0), "input_scale": _number(True), "weight_scale": _number(True),
    "outliers": _number(False, 1.0, "a fraction of channels"), "skew": _number(False),
    "expert_scales": _enum(ExpertScales), "zero_blocks": _number(False, 1.0, "a fraction of blocks"), "repeat": _int(1),
    "thresholds": parse_thresholds, "backends": _str_tuple, "tier": _enum(Tier), "tags": _str_tuple,
    "source": _text,
}
REQUIRED = ("name", "tokens", "hidden", "intermediate", "experts", "topk")
assert set(FIELDS) == {f.name for f in fields(Case)} - {"file"}


# ---- cross-field rules: (field to blame, check returning a problem or None) ---------------------
def _block_rule(f: str) -> Callable[[Case], str | None]:
    def check(c: Case):
        blk = c.weight_format.block
        if getattr(c, f) % blk:
            return f"{getattr(c, f)} is not a multiple of {blk}, the {c.weight_format.name} block size"
        if c.act_quant is not None and getattr(c, f) % c.act_quant.group:
            return f"{getattr(c, f)} is not a multiple of {c.act_quant.group}, the {c.act_quant.value} activation group size"
        return None
    return check


def _grouped_rule(c: Case) -> str | None:
    if c.routing is Routing.GROUPED and (c.experts % c.n_group or c.topk_group > c.n_group or c.experts // c.n_group < 2):
        return (f"{c.experts} experts do not split into {c.n_group} groups of at least 2 (a group scores its top 2) "
                f"with topk_group={c.topk_group}")
    return None


CROSS_RULES: tuple[tuple[str, Callable[[Case], str | None]], ...] = (
    ("topk", lambda c: f"{c.topk} exceeds experts={c.experts}" if c.topk > c.experts else None),
    ("hidden", _block_rule("hidden")),
    ("intermediate", _block_rule("intermediate")),
    ("checkpoint_layout", lambda c: "fp8_block scales cover 128-row blocks; rows cannot be interleaved"
     if c.weight_format.name == "fp8_block" and c.checkpoint_layout is GateUpOrder.INTERLEAVED else None),
    ("n_group", _grouped_rule),
    ("topk", lambda c: f"{c.topk} exceeds the experts in {c.topk_group} kept groups"
     if c.routing is Routing.GROUPED and c.topk > c.topk_group * (c.experts // c.n_group) else None),
)


def validate_case(raw: dict, where: str) -> Case:
    """Build a Case from a mapping; errors read ``<where>: field '<f>': <problem>``."""
    if not isinstance(raw, dict):
        raise CaseError(f"{where}: a case must be a mapping, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:
        raise CaseError(f"{where}: field '{unknown[0]}': unknown field; known fields: {', '.join(sorted(FIELDS))}")
    missing = [f for f in REQUIRED if f not in raw]
    if missing:
        raise CaseError(f"{where}: field '{missing[0]}': missing (required)")
    kw = {}
    for name, value in raw.items():
        try:
            kw[name] = FIELDS[name](value)
        except (ValueError, TypeError) as e:
            raise CaseError(f"{where}: field '{name}': {' '.join(str(e).split())}") from None
    case = Case(**kw)
    for fld, rule in CROSS_RULES:
        problem = rule(case)
        if problem:
            raise CaseError(f"{where}: field '{fld}': {problem}")
    return case


def case_to_yaml(case: Case) -> dict:
    """The case as a case-file entry (plain YAML values); ``validate_case`` reads it back equal."""
    out = {}
    for f in fields(Case):
        v = getattr(case, f.name)
        if f.name == "file" or v == f.default:
            continue
        if isinstance(v, enum.Enum):
            v = v.value
        elif isinstance(v, WeightFormat):
            v = v.name
        elif isinstance(v, Activation):
            v = v.to_yaml()
        elif isinstance(v, Thresholds):
            v = {"base": v.name, **{k: getattr(v, k) for k in ("rtol", "atol", "atol_abs", "max_mismatch",
                                                             "max_rel_l2", "min_cosine", "bit_exact")}}
        elif isinstance(v, torch.dtype):
            v = next(k for k, d in DTYPES.items() if d == v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    for req in REQUIRED:
        out.setdefault(req, getattr(case, req))
    return {k: out[k] for k in [f.name for f in fields(Case)] if k in out}
