"""Case model: YAML case files, validation with precise errors, deterministic inputs.

A case file holds ``defaults`` (optional) and ``cases``; each case may carry a ``grid`` whose
cartesian product expands it. Errors name the file, the case and the field.
Inputs are generated on the CPU from the case seed and then moved, so the same seed gives
bit-identical inputs on every device.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from references import formats as F
from references.activations import GPT_OSS, SwigluParams
from references.layouts import GATE_UP_ORDERS, fuse_gate_up
from references.moe import ACT_QUANTS, WEIGHT_FORMATS, dense_mlp, moe_forward
from references.routing import combine_shared, grouped_topk, softmax_topk, topk_softmax

ACTIVATION_PRESETS = {
    "silu": SwigluParams(),
    "gpt_oss": GPT_OSS,
    "clamp7": SwigluParams(1.0, 0.0, 7.0),
    "clamp10": SwigluParams(1.0, 0.0, 10.0),
}
ROUTINGS = ("softmax", "topk_softmax", "grouped")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
TIERS = ("smoke", "gpu", "nightly")


class CaseError(ValueError):
    """A malformed case: the message names the file, the case and the field."""


@dataclass(frozen=True)
class Case:
    name: str
    tokens: int
    hidden: int
    intermediate: int
    experts: int
    topk: int
    weight_format: str = "mxfp4"
    scale_mode: str = "floor"          # E8M0 rounding for MX weight formats
    fp8_scale: str = "fp32"            # fp32 | ue8m0 scales for fp8_block weights
    act_quant: str | None = None       # None | fp8_group | fp8_group_ue8m0 | mxfp8
    activation: Any = "silu"           # preset name or {alpha, beta, limit}
    bias: bool = False
    routing: str = "softmax"
    renormalize: bool = True
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    shared_expert: bool = False
    checkpoint_layout: str = "gate_up"  # row order of the canonical fc1 weights
    dtype: str = "bfloat16"
    seed: int = 0
    input_scale: float = 1.0
    weight_scale: float = 1.0
    outliers: float = 0.0              # fraction of input channels scaled x20 (LLM-style outlier channels)
    skew: float = 0.0                  # routing skew: adds skew * (E-1-e)/E to the router logits (large: all tokens on the first experts)
    thresholds: Any = None             # None (by format) | name | {base: name, field: value}
    backends: tuple = ()               # restrict to these backend names (globs)
    tier: str = "smoke"                # smoke: runs everywhere; gpu/nightly: GPU runs only by default
    tags: tuple = ()
    source: str = ""                   # citation for the numbers
    file: str = ""

    @property
    def swiglu(self) -> SwigluParams:
        return activation_params(self.activation)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def threshold_name(self) -> str:
        if isinstance(self.thresholds, str):
            return self.thresholds
        if isinstance(self.thresholds, dict) and "base" in self.thresholds:
            return self.thresholds["base"]
        if self.weight_format == "bf16":
            return "bf16"
        if self.act_quant is None:
            return "w4a16" if self.weight_format in ("mxfp4", "nvfp4") else "w8a8"
        return "w4a4" if self.weight_format in ("mxfp4", "nvfp4") else "w8a8"

    def short(self) -> str:
        return (f"T={self.tokens} H={self.hidden} I={self.intermediate} E={self.experts} k={self.topk} "
                f"{self.weight_format}{'/' + self.act_quant if self.act_quant else ''} act={_act_str(self.activation)}")


def _act_str(a) -> str:
    return a if isinstance(a, str) else "swiglu(" + ",".join(f"{k}={v}" for k, v in a.items()) + ")"


def activation_params(a) -> SwigluParams:
    if isinstance(a, str):
        if a not in ACTIVATION_PRESETS:
            raise ValueError(f"unknown activation preset {a!r}; known: {sorted(ACTIVATION_PRESETS)}")
        return ACTIVATION_PRESETS[a]
    if isinstance(a, dict):
        extra = set(a) - {"alpha", "beta", "limit"}
        if extra:
            raise ValueError(f"unknown activation key(s) {sorted(extra)}; expected alpha, beta, limit")
        return SwigluParams(float(a.get("alpha", 1.0)), float(a.get("beta", 0.0)),
                            None if a.get("limit") is None else float(a["limit"]))
    raise ValueError(f"activation must be a preset name or a mapping, got {type(a).__name__}")


_INT_FIELDS = {"tokens": 0, "hidden": 1, "intermediate": 1, "experts": 1, "topk": 1, "n_group": 1, "topk_group": 1, "seed": 0}
_FLOAT_FIELDS = ("routed_scaling_factor", "input_scale", "weight_scale")
_NONNEG_FIELDS = ("outliers", "skew")
_BOOL_FIELDS = ("bias", "renormalize", "shared_expert")
_CHOICES = {
    "weight_format": WEIGHT_FORMATS, "scale_mode": F.SCALE_MODES, "fp8_scale": F.FP8_SCALE_FORMATS,
    "routing": ROUTINGS, "checkpoint_layout": GATE_UP_ORDERS, "dtype": tuple(DTYPES), "tier": TIERS,
}
_FIELD_NAMES = {f.name for f in fields(Case)} - {"file"}


def validate_case(raw: dict, where: str) -> Case:
    """Build a Case from a mapping; errors read ``<where>: field '<f>': <problem>``."""
    def err(fld, msg):
        return CaseError(f"{where}: field '{fld}': {msg}")

    if not isinstance(raw, dict):
        raise CaseError(f"{where}: a case must be a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _FIELD_NAMES
    if unknown:
        raise err(sorted(unknown)[0], f"unknown field; known fields: {', '.join(sorted(_FIELD_NAMES))}")
    for req in ("name", "tokens", "hidden", "intermediate", "experts", "topk"):
        if req not in raw:
            raise err(req, "missing (required)")
    kw = dict(raw)
    if not isinstance(kw["name"], str) or not kw["name"]:
        raise err("name", "must be a non-empty string")
    for f_, lo in _INT_FIELDS.items():
        if f_ in kw:
            v = kw[f_]
            if isinstance(v, bool) or not isinstance(v, int):
                raise err(f_, f"must be an integer, got {v!r}")
            if v < lo:
                raise err(f_, f"must be >= {lo}, got {v}")
    for f_ in _FLOAT_FIELDS:
        if f_ in kw:
            v = kw[f_]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise err(f_, f"must be a positive finite number, got {v!r}")
            kw[f_] = float(v)
    for f_ in _NONNEG_FIELDS:
        if f_ in kw:
            v = kw[f_]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise err(f_, f"must be a non-negative finite number, got {v!r}")
            kw[f_] = float(v)
    if kw.get("outliers", 0.0) > 1.0:
        raise err("outliers", f"is a fraction of channels, got {kw['outliers']}")
    for f_ in _BOOL_FIELDS:
        if f_ in kw and not isinstance(kw[f_], bool):
            raise err(f_, f"must be true or false, got {kw[f_]!r}")
    for f_, choices in _CHOICES.items():
        if f_ in kw and kw[f_] not in choices:
            raise err(f_, f"{kw[f_]!r} is not one of {list(choices)}")
    if "act_quant" in kw:
        if kw["act_quant"] in ("none", "None"):
            kw["act_quant"] = None
        if kw["act_quant"] not in ACT_QUANTS:
            raise err("act_quant", f"{kw['act_quant']!r} is not one of {['none'] + [a for a in ACT_QUANTS if a]}")
    if "activation" in kw:
        try:
            activation_params(kw["activation"])
        except ValueError as e:
            raise err("activation", str(e)) from None
    if "thresholds" in kw and kw["thresholds"] is not None:
        from harness.compare import THRESHOLDS
        t = kw["thresholds"]
        base = t if isinstance(t, str) else (t.get("base", "default") if isinstance(t, dict) else None)
        if base not in THRESHOLDS:
            raise err("thresholds", f"unknown threshold set {base!r}; known: {sorted(THRESHOLDS)}")
        if isinstance(t, dict):
            try:
                THRESHOLDS[base].with_overrides(**{k: v for k, v in t.items() if k != "base"})
            except (ValueError, TypeError) as e:
                raise err("thresholds", str(e)) from None
    for f_ in ("backends", "tags"):
        if f_ in kw:
            v = kw[f_]
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise err(f_, "must be a list of strings")
            kw[f_] = tuple(v)
    case = Case(**kw)
    # cross-field constraints
    if case.topk > case.experts:
        raise err("topk", f"{case.topk} exceeds experts={case.experts}")
    blk = {"mxfp4": 32, "mxfp8": 32, "nvfp4": 16, "fp8_block": 128, "bf16": 1}[case.weight_format]
    for f_ in ("hidden", "intermediate"):
        if getattr(case, f_) % blk:
            raise err(f_, f"{getattr(case, f_)} is not a multiple of {blk}, the {case.weight_format} block size")
    if case.act_quant in ("fp8_group", "fp8_group_ue8m0"):
        for f_ in ("hidden", "intermediate"):
            if getattr(case, f_) % 128:
                raise err(f_, f"{getattr(case, f_)} is not a multiple of 128, the fp8 activation group size")
    if case.weight_format == "fp8_block" and case.checkpoint_layout == "interleaved":
        raise err("checkpoint_layout", "fp8_block scales cover 128-row blocks; rows cannot be interleaved")
    if case.routing == "grouped":
        if case.experts % case.n_group or case.topk_group > case.n_group:
            raise err("n_group", f"{case.experts} experts do not split into {case.n_group} groups with topk_group={case.topk_group}")
        if case.topk > case.topk_group * (case.experts // case.n_group):
            raise err("topk", f"{case.topk} exceeds the experts in {case.topk_group} kept groups")
    return case


def _expand(raw: dict, where: str) -> list[dict]:
    grid = raw.get("grid")
    if grid is None:
        return [raw]
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
        raise CaseError(f"{where}: field 'grid': must map field names to non-empty lists")
    bad = set(grid) - _FIELD_NAMES
    if bad:
        raise CaseError(f"{where}: field 'grid.{sorted(bad)[0]}': unknown field")
    base = {k: v for k, v in raw.items() if k != "grid"}
    out = []
    for combo in itertools.product(*grid.values()):
        d = dict(base)
        d.update(dict(zip(grid, combo)))
        d["name"] = f"{base.get('name', '?')}[" + ",".join(f"{k}={_act_str(v) if k == 'activation' else v}"
                                                          for k, v in zip(grid, combo)) + "]"
        out.append(d)
    return out


def load_case_file(path: str | Path) -> list[Case]:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise CaseError(f"{path}:{at}: not valid YAML: {getattr(e, 'problem', e)}") from None
    except OSError as e:
        raise CaseError(f"{path}: cannot read: {e.strerror}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise CaseError(f"{path}: expected a mapping with a 'cases' list at the top level")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise CaseError(f"{path}: 'defaults' must be a mapping")
    out: list[Case] = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["cases"]):
        if not isinstance(raw, dict):
            raise CaseError(f"{path}: case #{i + 1}: must be a mapping, got {type(raw).__name__}")
        label = f"{path}: case '{raw.get('name', f'#{i + 1}')}'"
        merged = {**defaults, **raw}
        for d in _expand(merged, label):
            c = replace(validate_case(d, f"{path}: case '{d.get('name', f'#{i + 1}')}'"), file=str(path))
            if c.name in seen:
                raise CaseError(f"{label}: field 'name': duplicate case name {c.name!r}")
            seen.add(c.name)
            out.append(c)
    return out


def load_cases(paths, pattern: str | None = None, tags: tuple = ()) -> list[Case]:
    """Load every ``*.yaml`` under the given files/folders, optionally filtered by name glob and tags."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml"))
        elif p.exists():
            files.append(p)
        else:
            raise CaseError(f"{p}: no such case file or folder")
    cases: list[Case] = []
    names: dict[str, str] = {}
    for f in files:
        for c in load_case_file(f):
            if c.name in names:
                raise CaseError(f"{f}: case '{c.name}': field 'name': also defined in {names[c.name]}")
            names[c.name] = str(f)
            cases.append(c)
    if pattern:
        pats = pattern.split(",")
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in pats)]
    if tags:
        cases = [c for c in cases if set(tags) & set(c.tags)]
    return cases


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
@dataclass
class MoEWeights:
    """Canonical (checkpoint-form) weights: fc1 rows in ``order``, quantized per ``fmt``."""

    fmt: str
    order: str
    w1: torch.Tensor
    w2: torch.Tensor
    w1_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None
    w1_global_scale: torch.Tensor | None = None
    w2_global_scale: torch.Tensor | None = None
    b1: torch.Tensor | None = None
    b2: torch.Tensor | None = None
    shared_w1: torch.Tensor | None = None   # [2Is, H] in gate_up order, case dtype
    shared_w2: torch.Tensor | None = None   # [H, Is]

    def to(self, device) -> "MoEWeights":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})


@dataclass
class CaseData:
    case: Case
    x: torch.Tensor
    router_logits: torch.Tensor
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor
    weights: MoEWeights
    extra: dict = field(default_factory=dict)

    def to(self, device) -> "CaseData":
        return replace(self, x=self.x.to(device), router_logits=self.router_logits.to(device),
                       topk_weights=self.topk_weights.to(device), topk_ids=self.topk_ids.to(device),
                       weights=self.weights.to(device))


def _quantize_rows(w: torch.Tensor, case: Case):
    """Quantize ``[E, N, K]`` along K in the case's weight format: (data, scale, global_scale)."""
    fmt = case.weight_format
    if fmt == "bf16":
        return w.to(case.torch_dtype), None, None
    if fmt == "mxfp4":
        q, s = F.mx_quantize(w, "e2m1", case.scale_mode)
        return q, s, None
    if fmt == "mxfp8":
        q, s = F.mx_quantize(w, "e4m3", case.scale_mode)
        return q, s, None
    if fmt == "nvfp4":
        gs = torch.stack([F.nvfp4_global_scale(w[e]) for e in range(w.shape[0])])
        qs = [F.nvfp4_quantize(w[e], gs[e]) for e in range(w.shape[0])]
        return torch.stack([q for q, _, _ in qs]), torch.stack([s for _, s, _ in qs]), gs
    if fmt == "fp8_block":
        q, s = F.fp8_block_quantize(w, (128, 128), case.fp8_scale)
        return q, s, None
    raise ValueError(fmt)


def _weight_key(case: Case) -> tuple:
    return (case.seed, case.hidden, case.intermediate, case.experts, case.weight_format, case.scale_mode,
            case.fp8_scale, case.checkpoint_layout, case.bias, case.shared_expert, case.dtype, case.weight_scale)


_WEIGHT_CACHE: dict[tuple, MoEWeights] = {}


def make_weights(case: Case) -> MoEWeights:
    """Canonical weights from the case seed, independent of tokens/top-k/activation, so a grid
    over those reuses one set (cached in-process, one entry)."""
    key = _weight_key(case)
    if key in _WEIGHT_CACHE:
        return _WEIGHT_CACHE[key]
    g = torch.Generator().manual_seed(case.seed * 1_000_003 + 17)
    dt = case.torch_dtype
    H, I, E = case.hidden, case.intermediate, case.experts
    s1, s2 = case.weight_scale / math.sqrt(H), case.weight_scale / math.sqrt(I)
    # generate and quantize one expert at a time so model-sized cases stay within memory
    parts1, parts2 = [], []
    for _ in range(E):
        gate = torch.randn(1, I, H, generator=g) * s1
        up = torch.randn(1, I, H, generator=g) * s1
        down = torch.randn(1, H, I, generator=g) * s2
        if case.weight_format == "nvfp4":  # one global scale over the fused gate/up tensor
            parts1.append(_quantize_rows(fuse_gate_up(gate, up, case.checkpoint_layout), case))
        else:
            qg, qu = _quantize_rows(gate, case), _quantize_rows(up, case)
            parts1.append(tuple(None if a is None else fuse_gate_up(a, b, case.checkpoint_layout)
                                for a, b in zip(qg, qu)))
        parts2.append(_quantize_rows(down, case))

    def cat(parts, i):
        return None if parts[0][i] is None else torch.cat([p[i] for p in parts])

    b1 = b2 = None
    if case.bias:
        b1 = (torch.randn(E, 2 * I, generator=g) * 0.5).to(dt)
        b2 = (torch.randn(E, H, generator=g) * 0.5).to(dt)
    sw1 = sw2 = None
    if case.shared_expert:
        sw1 = (torch.randn(2 * I, H, generator=g) * s1).to(dt)
        sw2 = (torch.randn(H, I, generator=g) * s2).to(dt)
    w = MoEWeights(case.weight_format, case.checkpoint_layout, cat(parts1, 0), cat(parts2, 0),
                   cat(parts1, 1), cat(parts2, 1), cat(parts1, 2), cat(parts2, 2), b1, b2, sw1, sw2)
    # keep a few small weight sets (test suites revisit cases); model-sized ones one at a time
    small = sum(t.numel() for t in (w.w1, w.w2)) < 2**24
    if not small or len(_WEIGHT_CACHE) >= 16:
        _WEIGHT_CACHE.clear()
    _WEIGHT_CACHE[key] = w
    return w


def make_inputs(case: Case, device: str | torch.device = "cpu") -> CaseData:
    """Deterministic inputs from ``case.seed`` (generated on the CPU, then moved to ``device``)."""
    g = torch.Generator().manual_seed(case.seed)
    T, H, E = case.tokens, case.hidden, case.experts
    x = torch.randn(T, H, generator=g) * case.input_scale
    if case.outliers:
        x[:, torch.randperm(H, generator=g)[: max(1, int(case.outliers * H))]] *= 20.0
    x = x.to(case.torch_dtype)
    logits = torch.randn(T, E, generator=g)
    if case.skew:
        logits = logits + case.skew * torch.arange(E - 1, -1, -1, dtype=torch.float32) / E
    if case.routing == "softmax":
        tw, ti = softmax_topk(logits, case.topk, case.renormalize)
    elif case.routing == "topk_softmax":
        tw, ti = topk_softmax(logits, case.topk)
    else:
        bias = torch.randn(E, generator=g) * 0.1
        tw, ti = grouped_topk(logits, case.topk, case.n_group, case.topk_group, bias, case.renormalize, 1.0)
    data = CaseData(case, x, logits, tw, ti, make_weights(case))
    return data.to(device) if str(device) != "cpu" else data


def reference_output(data: CaseData, precision: str = "fp32") -> torch.Tensor:
    """The layer output the case specifies, in fp32: ``rsf * routed + shared``."""
    c, w = data.case, data.weights
    routed = moe_forward(
        data.x, data.topk_ids, data.topk_weights, w.w1, w.w2, fmt=w.fmt,
        w1_scale=w.w1_scale, w2_scale=w.w2_scale, w1_global_scale=w.w1_global_scale,
        w2_global_scale=w.w2_global_scale, b1=w.b1, b2=w.b2, gate_up_order=w.order,
        activation=c.swiglu, precision=precision, act_quant=c.act_quant, intermediate_dtype=c.torch_dtype)
    shared = None
    if w.shared_w1 is not None:
        shared = dense_mlp(data.x, w.shared_w1, w.shared_w2, activation=c.swiglu, intermediate_dtype=c.torch_dtype)
    return combine_shared(routed, shared, c.routed_scaling_factor)
