"""Metrics on (output, reference) and verdicts against named thresholds.

Mismatch rule (vLLM's sense, made scale-aware): an element mismatches when
``|out - ref| > atol * rms(ref) + rtol * |ref|`` or when ``out`` is not finite. ``atol`` is in
units of the reference's RMS so one threshold serves every shape and input scale; with
``atol_abs=True`` it is absolute, exactly ``not torch.isclose(out, ref, rtol, atol)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch

from references.formats import float_to_ordered_int


@dataclass(frozen=True)
class Thresholds:
    name: str = "default"
    rtol: float = 0.1
    atol: float = 0.1
    atol_abs: bool = False
    max_mismatch: float = 0.01
    max_rel_l2: float = 0.03
    min_cosine: float = 0.999
    bit_exact: bool = False

    def with_overrides(self, **kw) -> "Thresholds":
        unknown = set(kw) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown threshold field(s) {sorted(unknown)}; known: {sorted(asdict(self))}")
        return replace(self, **kw)

    def rule(self) -> str:
        a = f"{self.atol:g}" if self.atol_abs else f"{self.atol:g}*rms(ref)"
        return f"|out-ref| > {a} + {self.rtol:g}*|ref|"


# Named threshold sets. Correct kernels measured against the references (README table) sit well
# inside these; every fault class in the zoo lands well outside.
THRESHOLDS: dict[str, Thresholds] = {
    "default": Thresholds(),
    "bf16": Thresholds("bf16", rtol=0.05, atol=0.05, max_mismatch=0.01, max_rel_l2=0.02, min_cosine=0.9995),
    "w4a16": Thresholds("w4a16", rtol=0.1, atol=0.1, max_mismatch=0.01, max_rel_l2=0.03, min_cosine=0.999),
    "w8a8": Thresholds("w8a8", rtol=0.1, atol=0.1, max_mismatch=0.01, max_rel_l2=0.06, min_cosine=0.998),
    "w4a4": Thresholds("w4a4", rtol=0.2, atol=0.2, max_mismatch=0.02, max_rel_l2=0.08, min_cosine=0.995),
    # one kernel against another on the same inputs (a real kernel and its emulated twin)
    "differential": Thresholds("differential", rtol=0.02, atol=0.02, max_mismatch=0.001, max_rel_l2=0.01, min_cosine=0.9999),
    "exact": Thresholds("exact", rtol=0.0, atol=0.0, atol_abs=True, max_mismatch=0.0, max_rel_l2=0.0,
                        min_cosine=1.0, bit_exact=True),
}


# Error budgets: a correct kernel is about as accurate as its contract, i.e. as its emulated twin on
# the same case. A row also fails when its rel_l2 exceeds BUDGET_K x max(twin rel_l2, BUDGET_FLOOR)
# (a precision regression, e.g. an intermediate kept in FP8 where the contract says bf16).
# Calibration: benchmarks/calibrate_budget.py (README "Error budgets").
BUDGET_K = 3.0
BUDGET_FLOOR = 1e-3


@dataclass
class Metrics:
    numel: int
    mismatch: float
    rel_l2: float
    cosine: float
    max_abs: float
    max_rel: float
    snr_db: float
    nonfinite: int
    bit_exact: bool
    max_ulp: int | None = None
    worst_index: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def compute_metrics(out: torch.Tensor, ref: torch.Tensor, th: Thresholds = THRESHOLDS["default"]) -> Metrics:
    """All metrics of ``out`` against ``ref`` (shapes must match; computed in fp64 on ``ref``'s device)."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"output shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    bit_exact = out.dtype == ref.dtype and torch.equal(out.contiguous().view(-1).view(torch.uint8),
                                                       ref.contiguous().view(-1).view(torch.uint8))
    max_ulp = None
    if out.dtype == ref.dtype and out.is_floating_point() and out.element_size() in (1, 2, 4):
        max_ulp = int((float_to_ordered_int(out) - float_to_ordered_int(ref)).abs().max().item()) if out.numel() else 0
    o = out.to(ref.device).to(torch.float64)
    r = ref.to(torch.float64)
    n = r.numel()
    if n == 0:
        return Metrics(0, 0.0, 0.0, 1.0, 0.0, 0.0, math.inf, 0, bit_exact, max_ulp)
    finite = torch.isfinite(o)
    nonfinite = int((~finite).sum())
    o_f = torch.where(finite, o, torch.zeros_like(o))
    diff = (o_f - r).abs()
    rms = float(r.square().mean().sqrt())
    atol = th.atol if th.atol_abs else th.atol * rms
    bad = (diff > atol + th.rtol * r.abs()) | ~finite
    err2 = float((o_f - r).square().sum())
    ref2 = float(r.square().sum())
    out2 = float(o_f.square().sum())
    rel_l2 = math.sqrt(err2 / ref2) if ref2 > 0 else (0.0 if err2 == 0 else math.inf)
    cos = float((o_f * r).sum()) / math.sqrt(out2 * ref2) if out2 > 0 and ref2 > 0 else (1.0 if out2 == ref2 else 0.0)
    snr = 10 * math.log10(ref2 / err2) if err2 > 0 else math.inf
    denom = r.abs().clamp_min(max(rms, 1e-30) * 1e-3)
    worst = int(diff.argmax())
    worst_idx = list(torch.unravel_index(torch.tensor(worst), tuple(r.shape))) if n else []
    if nonfinite:
        rel_l2, cos, snr = math.inf, 0.0, -math.inf
    return Metrics(
        numel=n, mismatch=float(bad.double().mean()), rel_l2=rel_l2, cosine=cos,
        max_abs=float(diff.max()), max_rel=float((diff / denom).max()), snr_db=snr,
        nonfinite=nonfinite, bit_exact=bit_exact, max_ulp=max_ulp,
        worst_index=[int(i) for i in worst_idx],
    )


@dataclass
class Verdict:
    passed: bool
    failures: list[str]

    @property
    def message(self) -> str:
        return "pass" if self.passed else "; ".join(self.failures)


def judge(m: Metrics, th: Thresholds) -> Verdict:
    """Check metrics against thresholds; each failure names the metric, its value and the limit."""
    f: list[str] = []
    if th.bit_exact:
        if not m.bit_exact:
            f.append(f"not bit-exact (max ULP {m.max_ulp}, mismatch {m.mismatch:.2%})")
        return Verdict(not f, f)
    if m.nonfinite:
        f.append(f"{m.nonfinite} non-finite outputs")
    if m.mismatch > th.max_mismatch:
        f.append(f"mismatch {m.mismatch:.2%} > {th.max_mismatch:.2%} ({th.rule()})")
    if m.rel_l2 > th.max_rel_l2:
        f.append(f"rel_l2 {m.rel_l2:.4g} > {th.max_rel_l2:g}")
    if m.cosine < th.min_cosine:
        f.append(f"cosine {m.cosine:.6f} < {th.min_cosine:g}")
    return Verdict(not f, f)


def compare_bits(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """Bit-level comparison of layout/quantization outputs: equal, differing elements, first index."""
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return {"bit_exact": False, "differing": None,
                "reason": f"shape/dtype {tuple(out.shape)}/{out.dtype} vs {tuple(ref.shape)}/{ref.dtype}"}
    a = out.contiguous().view(torch.uint8) if out.element_size() == 1 else float_to_ordered_int(out)
    b = ref.to(out.device).contiguous().view(torch.uint8) if ref.element_size() == 1 else float_to_ordered_int(ref.to(out.device))
    neq = a != b
    nd = int(neq.sum())
    first = [int(i) for i in neq.nonzero()[0].tolist()] if nd else None
    res = {"bit_exact": nd == 0, "differing": nd, "first_diff_index": first}
    if out.is_floating_point() and out.element_size() > 1:
        res["max_ulp"] = int((a.to(torch.int64) - b.to(torch.int64)).abs().max()) if a.numel() else 0
    return res


# --------------------------------------------------------------------------------------------
# Other anchors' rules, as second verdicts (moeacc run/check --rule, the pytest plugin)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleVerdict:
    rule: str
    passed: bool
    detail: str


def _vllm_rule(out: torch.Tensor, ref: torch.Tensor) -> RuleVerdict:
    """vLLM's ``check_accuracy(ref, out, atol=0, rtol=0.3, percent=0.8)``: an element mismatches when
    ``|ref - out| > atol + rtol * |out|`` (relative to the kernel OUTPUT); more than 20% mismatching
    fails; a NaN or Inf in either tensor raises (a failure here).
    Source: vllm 0.33.0 ``tests/kernels/moe/utils.py:588-608``; call ``tests/kernels/moe/test_ocp_mx_moe.py:977``.
    """
    a, b = ref.to(torch.float32), out.to(torch.float32)
    for t, what in ((a, "reference"), (b, "output")):
        if not bool(torch.isfinite(t).all()):
            return RuleVerdict("vllm", False, f"NaN/Inf in the {what} (check_accuracy raises)")
    count = torch.sum((a - b).abs() > 0.0 + 0.3 * b.abs())
    frac = float(count / max(a.numel(), 1))  # a float32 quotient, as vLLM's: exactly 20% fails (0.2f > 1 - 0.8)
    return RuleVerdict("vllm", not frac > 1 - 0.8, f"{frac:.2%} of elements outside 0.3*|out| (fail above 20%)")


def _flashinfer_bench_rule(out: torch.Tensor, ref: torch.Tensor) -> RuleVerdict:
    """flashinfer-bench: an element fails when ``abs > 1e-2`` and ``abs / (|ref| + 1e-8) > 1e-2``;
    MoE definitions need 95% matched; any NaN/Inf in the output fails at once (the reference is
    not checked).
    Source: flashinfer-bench v0.1.2 ``bench/utils.py:91-118``, ``bench/config.py:21-22``,
    ``bench/evaluators/lowbit.py:24-25`` (0.95), ``evaluators/default.py:140-156`` (NaN/Inf).
    """
    x, y = out.to(torch.float32), ref.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        return RuleVerdict("flashinfer-bench", False, "NaN/Inf in the output")
    err = (x - y).abs()
    bad = (err > 1e-2) & (err / (y.abs() + 1e-8) > 1e-2)
    matched = 1.0 - int(bad.sum()) / max(x.numel(), 1)  # python floats, as flashinfer-bench's
    return RuleVerdict("flashinfer-bench", not matched < 0.95, f"{matched:.2%} matched at atol=rtol=1e-2 (need 95%)")


RULES = {"vllm": _vllm_rule, "flashinfer-bench": _flashinfer_bench_rule}
RULE_NAMES = ("moeacc",) + tuple(RULES)


def other_verdicts(out: torch.Tensor, ref: torch.Tensor, rules) -> dict:
    """Each named rule's verdict on ``out`` (``moeacc`` is the row's own verdict, not repeated here)."""
    return {r: (v := RULES[r](out, ref)).__dict__ | {"rule": v.rule} for r in rules if r in RULES}
