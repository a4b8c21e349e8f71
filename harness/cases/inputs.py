"""Seeded inputs of a case and its reference output.

Inputs are generated on the CPU from the case seed and then moved, so the same seed gives
bit-identical inputs on every device. Weights depend only on the shape, format and seed (not on
tokens, top-k or activation), so a grid over those reuses one set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from harness.cases.schema import Case, ExpertScales, Routing
from references.activations import Precision
from references.formats import QTensor, QuantRecipe
from references.layouts import fuse_gate_up
from references.moe import Experts, MoEConfig, SharedExpert, dense_mlp, moe_forward
from references.routing import combine_shared, grouped_topk, softmax_topk, topk_softmax


@dataclass
class CaseData:
    """Everything a backend needs for one case: activations, routing, canonical weights."""

    case: Case
    x: torch.Tensor
    router_logits: torch.Tensor
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor
    experts: Experts                  # checkpoint form: fc1 rows in case.checkpoint_layout
    shared: SharedExpert | None = None
    _shared_out: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def shared_output(self) -> torch.Tensor | None:
        """The shared expert's output, which the harness computes beside the kernel (``dense_mlp``), once
        per case data: repeated runs of a backend then differ only in what the backend computed, so a
        nondeterministic verdict is the kernel's, never a library GEMM of ours run again."""
        if self.shared is not None and self._shared_out is None:
            self._shared_out = dense_mlp(self.x, self.shared, self.case.swiglu, self.case.dtype)
        return self._shared_out

    def to(self, device) -> "CaseData":
        mv = lambda t: t.to(device)  # noqa: E731
        ex = self.experts
        experts = replace(ex, w1=ex.w1.map(mv), w2=ex.w2.map(mv), b1=None if ex.b1 is None else mv(ex.b1),
                          b2=None if ex.b2 is None else mv(ex.b2))
        shared = None if self.shared is None else SharedExpert(mv(self.shared.w1), mv(self.shared.w2))
        return replace(self, x=mv(self.x), router_logits=mv(self.router_logits), topk_weights=mv(self.topk_weights),
                       topk_ids=mv(self.topk_ids), experts=experts, shared=shared)


def _fuse(a: QTensor, b: QTensor, order) -> QTensor:
    pick = lambda f: None if getattr(a, f) is None else fuse_gate_up(getattr(a, f), getattr(b, f), order)  # noqa: E731
    return QTensor(pick("data"), pick("scale"), pick("global_scale"))


def _cat(parts: list[QTensor]) -> QTensor:
    cat = lambda f: None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts])  # noqa: E731
    return QTensor(cat("data"), cat("scale"), cat("global_scale"))


_WEIGHT_CACHE: dict[tuple, tuple] = {}


def _weight_key(c: Case) -> tuple:
    return (c.seed, c.hidden, c.intermediate, c.experts, c.weight_format.name, c.scale_mode, c.fp8_scale,
            c.checkpoint_layout, c.bias, c.shared_expert, c.dtype, c.weight_scale, c.expert_scales, c.zero_blocks)


class _ExpertWeightSource:
    """Each expert's fp32 (gate, up, down): drawn from the case's generator, then shaped by the
    case's expert_scales and zero_blocks (their own generators, so defaults draw exactly as before)."""

    def __init__(self, case: Case, g: torch.Generator):
        self.c, self.g, self.first = case, g, None
        self.aux = torch.Generator().manual_seed(case.seed * 7919 + 5)
        s1, s2 = case.weight_scale / math.sqrt(case.hidden), case.weight_scale / math.sqrt(case.intermediate)
        self.scales = (s1, s1, s2)

    def next(self):
        c = self.c
        if c.expert_scales is ExpertScales.IDENTICAL and self.first is not None:
            return self.first
        I, H = c.intermediate, c.hidden
        ws = [torch.randn(shape, generator=self.g) * s for shape, s in zip(((1, I, H), (1, I, H), (1, H, I)), self.scales)]
        if c.expert_scales is ExpertScales.SPREAD:
            ws = [w * 2.0 ** int(torch.randint(-8, 9, (1,), generator=self.aux)) for w in ws]
        if c.zero_blocks:
            ws = [self._zero_blocks(w) for w in ws]
        self.first = self.first or tuple(ws)
        return tuple(ws)

    def _zero_blocks(self, w: torch.Tensor) -> torch.Tensor:
        blk = self.c.weight_format.block if self.c.weight_format.block > 1 else 16  # one quantization block
        nb = w.shape[-1] // blk
        keep = (torch.rand(w.shape[-2], nb, generator=self.aux) >= self.c.zero_blocks).to(w.dtype)
        return (w.unflatten(-1, (nb, blk)) * keep.unsqueeze(-1)).flatten(-2)


def make_weights(case: Case) -> tuple[Experts, SharedExpert | None]:
    """Canonical weights from the case seed, generated and quantized one expert at a time so
    model-sized cases stay within memory (cached in-process: a few small sets, one large)."""
    key = _weight_key(case)
    if key in _WEIGHT_CACHE:
        return _WEIGHT_CACHE[key]
    g = torch.Generator().manual_seed(case.seed * 1_000_003 + 17)
    fmt, order, dt = case.weight_format, case.checkpoint_layout, case.dtype
    recipe = QuantRecipe(case.scale_mode, case.fp8_scale, dt)
    H, I, E = case.hidden, case.intermediate, case.experts
    s1, s2 = case.weight_scale / math.sqrt(H), case.weight_scale / math.sqrt(I)
    source = _ExpertWeightSource(case, g)
    parts1, parts2 = [], []
    for _ in range(E):
        gate, up, down = source.next()
        if fmt.per_tensor_scale:  # one global scale over the fused gate/up tensor
            parts1.append(fmt.quantize(fuse_gate_up(gate, up, order), recipe))
        else:
            parts1.append(_fuse(fmt.quantize(gate, recipe), fmt.quantize(up, recipe), order))
        parts2.append(fmt.quantize(down, recipe))
    b1 = b2 = shared = None
    if case.bias:
        b1 = (torch.randn(E, 2 * I, generator=g) * 0.5).to(dt)
        b2 = (torch.randn(E, H, generator=g) * 0.5).to(dt)
    if case.shared_expert:
        shared = SharedExpert((torch.randn(2 * I, H, generator=g) * s1).to(dt), (torch.randn(H, I, generator=g) * s2).to(dt))
    out = (Experts(fmt, _cat(parts1), _cat(parts2), b1, b2, order), shared)
    small = out[0].w1.data.numel() + out[0].w2.data.numel() < 2**24
    if not small or len(_WEIGHT_CACHE) >= 16:
        _WEIGHT_CACHE.clear()
    _WEIGHT_CACHE[key] = out
    return out


def _route(case: Case, logits: torch.Tensor, g: torch.Generator):
    if case.routing is Routing.SOFTMAX:
        return softmax_topk(logits, case.topk, case.renormalize)
    if case.routing is Routing.TOPK_SOFTMAX:
        return topk_softmax(logits, case.topk)
    bias = torch.randn(case.experts, generator=g) * 0.1
    return grouped_topk(logits, case.topk, case.n_group, case.topk_group, bias, case.renormalize, 1.0)


def make_inputs(case: Case, device: str | torch.device = "cpu") -> CaseData:
    """Deterministic inputs from ``case.seed`` (generated on the CPU, then moved to ``device``)."""
    g = torch.Generator().manual_seed(case.seed)
    T, H, E = case.tokens, case.hidden, case.experts
    x = torch.randn(T, H, generator=g) * case.input_scale
    if case.outliers:
        x[:, torch.randperm(H, generator=g)[: max(1, int(case.outliers * H))]] *= 20.0
    x = x.to(case.dtype)
    logits = torch.randn(T, E, generator=g)
    if case.skew:
        logits = logits + case.skew * torch.arange(E - 1, -1, -1, dtype=torch.float32) / E
    tw, ti = _route(case, logits, g)
    experts, shared = make_weights(case)
    data = CaseData(case, x, logits, tw, ti, experts, shared)
    return data.to(device) if str(device) != "cpu" else data


Combine = Callable[[torch.Tensor, "torch.Tensor | None", float], torch.Tensor]


def as_returned(routed: torch.Tensor, data: CaseData) -> torch.Tensor:
    """The routed sum as a MoE kernel returns it to its caller: in the activation dtype (FlashInfer's
    ``finalizeMoeRoutingKernel`` writes OutputType, cutlass_fused_moe_kernels.cuh:2033-2034 at 0.7.2.post1;
    triton_kernels' reduce stores the output dtype, reduce.py:95 at v3.6.0), before the caller adds the
    shared expert and applies the routed scaling factor. Exact for an output that already is bf16."""
    return routed.to(data.case.dtype).to(torch.float32)


def layer_output(routed: torch.Tensor, data: CaseData, combine: Combine = combine_shared) -> torch.Tensor:
    """The layer output from the routed experts' sum: ``rsf * routed + shared`` (the caller-side
    combine kernels leave to the framework); ``combine`` replaces the rule (fault hypotheses)."""
    return combine(routed, data.shared_output(), data.case.routed_scaling_factor)


def moe_config(case: Case, precision: Precision = Precision.FP32, **kw) -> MoEConfig:
    """The reference configuration a case specifies (activation, act quant, intermediate dtype)."""
    return MoEConfig(activation=case.swiglu, precision=precision, act_quant=case.act_quant,
                     intermediate_dtype=case.dtype, **kw)


def reference_output(data: CaseData, precision: Precision = Precision.FP32, **cfg) -> torch.Tensor:
    """The layer output the case specifies, in fp32: ``rsf * routed + shared`` (``cfg``: MoEConfig
    fields a kernel's contract sets differently from the case, ``Backend.reference_kw``)."""
    routed = moe_forward(data.x, data.topk_ids, data.topk_weights, data.experts, moe_config(data.case, precision, **cfg))
    return layer_output(routed, data)


@dataclass
class CaseContext:
    """Inputs and reference of one case on one device, made lazily once and shared by its backends."""

    case: Case
    device: str
    data: CaseData | None = None
    ref: torch.Tensor | None = None
    last_out: torch.Tensor | None = None  # the latest backend output, so a diagnosis need not re-run it
    other_refs: dict = field(default_factory=dict)  # references under a kernel contract's MoEConfig overrides

    def ensure(self) -> tuple[CaseData, torch.Tensor]:
        if self.data is None:
            self.data = make_inputs(self.case, self.device)
            self.ref = reference_output(self.data)
        return self.data, self.ref

    def reference_with(self, **cfg) -> torch.Tensor:
        """The reference with MoEConfig overrides (``Backend.reference_kw``), computed once per set."""
        data, ref = self.ensure()
        if not cfg:
            return ref
        key = tuple(sorted(cfg.items()))
        if key not in self.other_refs:
            self.other_refs[key] = reference_output(data, **cfg)
        return self.other_refs[key]
