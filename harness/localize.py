"""Where does the error live? Experiments on a failing backend with crafted inputs.

A catalogue hypothesis names a known fault; localization works for any fault: it re-runs the
backend with inputs that isolate one thing at a time and reads the error's structure:

- experts: all tokens routed to one expert at a time (top-1, weight 1), per-expert error, and fits
  (an expert that computes another expert's output: an off-by-one index; an expert scaled by c);
- tokens and output channels: the original error by token (all, some, a tail after a tile
  boundary) and by column (all, some, a period of 32/64/128);
- stage: routing weights (all 1), the combine (no shared expert, rsf 1), the activation (a limit
  that cannot bind), fc2 replaced by a selection matrix (the output shows the intermediate), fc1
  replaced by selections too (the output shows the bare activation), K blocks of fc1 one at a time;
- half: which reference variant (gate or up side of the SwiGLU changed) explains the output.

The result is ``diagnosis.localization`` with one ``evidence`` line per experiment and a sentence.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from harness.backends.base import Backend
from harness.cases import Activation, CaseContext, CaseData, reference_output
from harness.compare import compute_metrics, judge
from references.formats import QTensor, QuantRecipe
from references.layouts import fuse_gate_up

MAX_EXPERTS, MAX_BLOCKS = 16, 8


class Probe:
    """Runs the backend and the reference on variants of one case's data."""

    def __init__(self, backend: Backend, ctx: CaseContext):
        self.b, self.ctx = backend, ctx
        self.data, _ = ctx.ensure()
        self.th = ctx.case.limits
        self.evidence: list[str] = []

    def outputs(self, data: CaseData) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.b.run(self.b.prepare(data, self.ctx.device), data)
        return out.float(), reference_output(data, **self.b.reference_kw).float()

    def bad(self, data: CaseData, label: str) -> tuple[bool, float]:
        out, ref = self.outputs(data)
        m = compute_metrics(out, ref, self.th)
        bad = not judge(m, self.th).passed
        self.evidence.append(f"{label}: {'error' if bad else 'clean'} (rel_l2 {m.rel_l2:.3g}, mismatch {m.mismatch:.1%})")
        return bad, m.rel_l2


def _route_to(data: CaseData, expert: int, weight: float = 1.0) -> CaseData:
    t = data.x.shape[0]
    ids = torch.full((t, 1), expert, dtype=data.topk_ids.dtype, device=data.topk_ids.device)
    w = torch.full((t, 1), weight, dtype=data.topk_weights.dtype, device=data.topk_weights.device)
    return replace(data, topk_ids=ids, topk_weights=w)


def _no_combine(data: CaseData) -> CaseData:
    return replace(data, shared=None, case=replace(data.case, routed_scaling_factor=1.0, shared_expert=False))


def _unbound_limit(data: CaseData) -> CaseData:
    p = data.case.swiglu
    act = Activation(replace(p, limit=1e30 if p.limit is not None else None), None, "limit-unbound")
    return replace(data, case=replace(data.case, activation=act))


def _quantized(data: CaseData, w: torch.Tensor) -> QTensor:
    c = data.case
    q = c.weight_format.quantize(w.cpu(), QuantRecipe(c.scale_mode, c.fp8_scale, c.dtype))
    return q.map(lambda t: t.to(data.x.device))


def _selection(rows: int, cols: int, shift: int = 0) -> torch.Tensor:
    """[rows, cols] with a single 1.0 per row, row r picking column (r + shift) mod cols."""
    s = torch.zeros(rows, cols)
    s[torch.arange(rows), (torch.arange(rows) + shift) % cols] = 1.0
    return s


def _select_fc2(data: CaseData) -> CaseData:
    ex, e, h, i = data.experts, data.case.experts, data.case.hidden, data.case.intermediate
    w2 = _quantized(data, _selection(h, i).expand(e, h, i).contiguous())
    b2 = None if ex.b2 is None else torch.zeros_like(ex.b2)
    return replace(data, experts=replace(ex, w2=w2, b2=b2))


def _select_fc1(data: CaseData) -> CaseData:
    ex, e, h, i = data.experts, data.case.experts, data.case.hidden, data.case.intermediate
    w1 = fuse_gate_up(_selection(i, h).expand(e, i, h), _selection(i, h, shift=1).expand(e, i, h), ex.order)
    b1 = None if ex.b1 is None else torch.zeros_like(ex.b1)
    return replace(data, experts=replace(ex, w1=_quantized(data, w1.contiguous()), b1=b1))


def _block_only(data: CaseData, block: int, width: int) -> CaseData:
    mask = torch.zeros_like(data.x)
    mask[:, block * width:(block + 1) * width] = 1
    return replace(data, x=data.x * mask)


# ---- reading the error's structure ----------------------------------------------------------------
def _bad_mask(out: torch.Tensor, ref: torch.Tensor, th) -> torch.Tensor:
    o, r = out.double(), ref.double()
    rms = float(r.square().mean().sqrt()) if r.numel() else 0.0
    atol = th.atol if th.atol_abs else th.atol * rms
    return ((o - r).abs() > atol + th.rtol * r.abs()) | ~torch.isfinite(o)


def _indices(bad: torch.Tensor, n: int, what: str):
    """``"all"``, a tail ``{"from": b}`` after a 16/32/64/128 boundary, a period, or the index list."""
    idx = bad.nonzero().flatten().tolist()
    if not idx:
        return []
    if len(idx) >= 0.9 * n:
        return "all"
    first = idx[0]
    if idx == list(range(first, n)) and first % 16 == 0:
        return {"from": first}
    for period in (32, 64, 128):
        if n % period == 0 and n > period:
            res = sorted({i % period for i in idx})
            if len(res) < period and idx == [i for i in range(n) if i % period in res]:
                return {"period": period, "residues": res}
    return idx[:64]


def token_channel_pattern(out: torch.Tensor, ref: torch.Tensor, th) -> tuple:
    bad = _bad_mask(out, ref, th)
    tokens = _indices(bad.float().mean(1) > 0.01, bad.shape[0], "tokens") if bad.numel() else []
    channels = _indices(bad.float().mean(0) > 0.01, bad.shape[1], "channels") if bad.numel() else []
    return tokens, channels


def _scale_fit(out: torch.Tensor, ref: torch.Tensor, th) -> dict | None:
    r, o = ref.double().flatten(), out.double().flatten()
    den = float(r @ r)
    if den == 0:
        return None
    c = float(o @ r) / den
    resid = float((o - c * r).norm() / max(float(r.norm()) * abs(c), 1e-30))
    if abs(c - 1) > 0.01 and resid < th.max_rel_l2:
        exp = math.log2(abs(c)) if c else float("nan")
        return {"scale": round(c, 6), "power_of_two": bool(c > 0 and abs(exp - round(exp)) < 1e-3)}
    return None


def _close(a: torch.Tensor, b: torch.Tensor, th) -> bool:
    return judge(compute_metrics(a, b, th), th).passed


# ---- experiments ------------------------------------------------------------------------------------
def _experts(p: Probe) -> tuple:
    """Per-expert error with all tokens on one expert; an off-by-one or scaled expert as a fit."""
    data, case = p.data, p.ctx.case
    routed = torch.bincount(data.topk_ids.reshape(-1).cpu(), minlength=case.experts)
    order = sorted(range(case.experts), key=lambda e: -int(routed[e]))[:MAX_EXPERTS]
    bad, fit = [], None
    for e in sorted(order):
        d = _route_to(data, e)
        out, ref = p.outputs(d)
        if _close(out, ref, p.th):
            continue
        bad.append(e)
        if fit is None:
            fit = _expert_fit(p, e, out, ref, order)
    p.evidence.append(f"all tokens on one expert, {len(order)} experts tried: {len(bad)} wrong {bad[:16]}")
    return ("all" if bad and len(bad) == len(order) and len(order) == case.experts else bad), fit


def _expert_fit(p: Probe, e: int, out: torch.Tensor, ref: torch.Tensor, candidates: list[int]) -> dict | None:
    for j in sorted(candidates, key=lambda j: abs(j - e)):
        if j != e and _close(out, reference_output(_route_to(p.data, j), **p.b.reference_kw).float(), p.th):
            p.evidence.append(f"expert {e}'s output equals the reference of expert {j}")
            return {"expert_index": {"expert": e, "computes": j}}
    s = _scale_fit(out, ref, p.th)
    if s:
        p.evidence.append(f"expert {e}'s output is {s['scale']:g} x its reference")
        return {"expert_scale": {"expert": e} | s}
    return None


def _stage(p: Probe) -> tuple[str | None, dict | None]:
    """The first stage whose isolation makes the error disappear, and a fit if one shows."""
    data, case = p.data, p.ctx.case
    if case.shared_expert or case.routed_scaling_factor != 1.0:
        if not p.bad(_no_combine(data), "no shared expert, rsf 1")[0]:
            shared_only = replace(data, shared=None, case=replace(case, shared_expert=False))
            return ("shared" if case.shared_expert and not p.bad(shared_only, "no shared expert, rsf kept")[0]
                    else "combine"), None
        data = _no_combine(data)
    top = int(torch.mode(data.topk_ids[:, 0].cpu()).values)
    single = _route_to(data, top)
    if not p.bad(single, f"all tokens on expert {top}, weight 1")[0]:
        return ("routing" if p.bad(_route_to(data, top, 0.37), f"all tokens on expert {top}, weight 0.37")[0] else None), None
    fit = _scale_probe(p, single)
    if fit:
        return "quantization", fit
    if case.swiglu.limit is not None and not p.bad(_unbound_limit(single), "a limit that cannot bind")[0]:
        return "activation", None
    if not p.bad(_select_fc2(single), "fc2 = a selection matrix (the output shows the intermediate)")[0]:
        return "fc2", None
    if not p.bad(_constant(single, "w1", "w2"), "fc1 and fc2 constant (layout-invariant weights)")[0]:
        p.evidence.append("a weight-preprocessing fault (layout or quantization): weights that no permutation changes hide it")
        hide1 = not p.bad(_constant(single, "w1"), "fc1 constant; fc2 as is")[0]
        hide2 = not p.bad(_constant(single, "w2"), "fc2 constant; fc1 as is")[0]
        return ("fc1" if hide1 and not hide2 else "fc2" if hide2 and not hide1 else "quantization"), None
    blocks = _k_blocks(p)
    if blocks and blocks != "all":
        return "fc1", {"k_blocks": blocks}
    return "activation", None


def _constant(data: CaseData, *which: str) -> CaseData:
    """``which`` weights replaced by one power-of-two value everywhere: any permutation of codes,
    nibbles or scales leaves them unchanged, so a layout fault disappears and nothing else does.
    (With fc1 constant the intermediate is constant too, so a permutation within fc2's rows hides
    as well: a fault in both GEMMs' layout that fc2 shows only within rows reads as fc1.)"""
    ex, e, h, i = data.experts, data.case.experts, data.case.hidden, data.case.intermediate
    new = {}
    for name, (n, k) in (("w1", (2 * i, h)), ("w2", (h, i))):
        if name in which:
            new[name] = _quantized(data, torch.full((e, n, k), 2.0 ** -round(math.log2(math.sqrt(k)))))
    zero = lambda t: None if t is None else torch.zeros_like(t)  # noqa: E731  (biases would carry the fault around)
    return replace(data, experts=replace(ex, b1=zero(ex.b1), b2=zero(ex.b2), **new))


def _scale_probe(p: Probe, data: CaseData) -> dict | None:
    """Tiny inputs and no biases make the layer homogeneous (silu(g) ~ g/2): a scale fault shows as
    output = c x reference with c a power of two (2 for fc2's scales, 4 for fc1's, 8 for both)."""
    ex = data.experts
    zero = lambda t: None if t is None else torch.zeros_like(t)  # noqa: E731
    d = replace(data, x=data.x * 2.0 ** -8, experts=replace(ex, b1=zero(ex.b1), b2=zero(ex.b2)))
    out, ref = p.outputs(d)
    fit = _scale_fit(out, ref, p.th)
    if fit and fit["power_of_two"]:
        p.evidence.append(f"tiny inputs, no biases: output = {fit['scale']:g} x reference (a scale fault)")
        return {"scale": fit["scale"], "power_of_two": True}
    p.evidence.append("tiny inputs, no biases: no power-of-two scale explains the output")
    return None


def _k_blocks(p: Probe) -> list | str:
    """Which K blocks of fc1 (input channels, one block at a time, all tokens on the top expert) go wrong."""
    data, case = p.data, p.ctx.case
    width = max(case.weight_format.block, 16)
    top = int(torch.mode(data.topk_ids[:, 0].cpu()).values)
    nb = case.hidden // width
    tried = list(range(min(nb, MAX_BLOCKS)))
    bad = [b for b in tried if not _close(*p.outputs(_block_only(_route_to(data, top), b, width)), p.th)]
    p.evidence.append(f"fc1 input one {width}-channel block at a time, {len(tried)} of {nb} blocks: wrong {bad}")
    return "all" if bad == tried and len(tried) == nb else bad


def _activation_fit(p: Probe, out: torch.Tensor) -> tuple[str | None, dict | None]:
    """A reference variant whose activation parameters differ on one side (gate: alpha; up: beta)
    or not at all (limit not applied) and explains the output: (half, fit)."""
    c, data, params = p.ctx.case, p.data, p.ctx.case.swiglu
    variants = [("up", {"beta": 0.0 if params.beta else 1.0}), ("gate", {"alpha": 1.0 if params.alpha != 1.0 else 1.702})]
    if params.limit is not None:
        variants.append((None, {"limit": None}))
    for half, change in variants:
        d = replace(data, case=replace(c, activation=Activation(replace(params, **change), None, "variant")))
        if _close(out, reference_output(d, **p.b.reference_kw).float(), p.th):
            p.evidence.append(f"the output equals the reference with SwiGLU {change}")
            return half, {"activation": change}
    return None, None


def localize(backend: Backend, ctx: CaseContext, out: torch.Tensor | None = None) -> dict:
    """Experiments that say where the error of ``backend`` on ``ctx``'s case lives (see the module doc)."""
    p = Probe(backend, ctx)
    data, ref = p.data, ctx.reference_with(**backend.reference_kw)
    out = (p.outputs(data)[0] if out is None else out).float()
    tokens, channels = token_channel_pattern(out, ref, p.th)
    p.evidence.append(f"original: wrong tokens {_short(tokens)}, wrong output channels {_short(channels)}")
    experts, fit = _experts(p)
    stage, stage_fit = _stage(p)
    blocks = (stage_fit or {}).pop("k_blocks", None) if stage == "fc1" else None
    half, act_fit = _activation_fit(p, out) if stage in ("activation", None) else (None, None)
    fit = fit or stage_fit or act_fit or _scale_fit(out, ref, p.th)
    loc = {"stage": stage, "experts": experts, "tokens": tokens, "half": half, "channels": channels, "k_blocks": blocks,
           "fit": fit, "evidence": p.evidence}
    loc["sentence"] = sentence(loc, ctx.case)
    return loc


def _short(v) -> str:
    return v if isinstance(v, str) else (str(v) if not isinstance(v, list) or len(v) <= 8 else f"{v[:8]}... ({len(v)})")


def sentence(loc: dict, case) -> str:
    """One sentence for the report: where the error is, and what explains it."""
    parts = []
    ex = loc["experts"]
    parts.append("error in every expert" if ex == "all" else
                 f"error confined to expert{'s' if len(ex) > 1 else ''} {', '.join(map(str, ex[:8]))}"
                 f"{' ...' if len(ex) > 8 else ''} of {case.experts}" if ex else
                 "no expert wrong on its own (the error needs several experts, or the combine)")
    tok = loc["tokens"]
    parts.append("all tokens" if tok == "all" else f"tokens from {tok['from']} on" if isinstance(tok, dict) and "from" in tok
                 else f"tokens {_short(tok)}")
    if loc["stage"]:
        parts.append(f"stage {loc['stage']}" + (f" ({loc['half']} half)" if loc["half"] else "")
                     + (f", fc1 input blocks {_short(loc['k_blocks'])}" if loc.get("k_blocks") else ""))
    fit = loc["fit"] or {}
    if "expert_index" in fit:
        parts.append(f"expert {fit['expert_index']['expert']}'s output equals expert {fit['expert_index']['computes']}'s weights applied")
    elif "expert_scale" in fit or "scale" in fit:
        f = fit.get("expert_scale", fit)
        parts.append(f"output = {f['scale']:g} x reference" + (" (a power of two)" if f.get("power_of_two") else "")
                     + (" with tiny inputs" if loc["stage"] == "quantization" else ""))
    elif "activation" in fit:
        parts.append(f"it equals the reference with SwiGLU {fit['activation']}")
    return "; ".join(parts)
