"""Name the fault behind a failure: rank the fault catalogue by how well each explains the output.

Each hypothesis is the backend's emulated twin (the pure-PyTorch model of its contract) with one
fault from ``harness.faults.FAULTS`` applied: "what the kernel computes if this fault happened".
The kernel's output is compared with each hypothesis; the best one that matches within the
case's thresholds is the conclusion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from harness.backends import Backend, load_backends
from harness.compare import compute_metrics, judge
from harness.faults import FAULTS, mutant

TWINS = {"sm90-w4a16": "emulated-sm90-w4a16", "fp8-block": "emulated-fp8-block",
         "interleaved-mxfp4": "emulated-interleaved-mxfp4", "aiter-mxfp4": "emulated-aiter-mxfp4"}


@dataclass
class Hypothesis:
    name: str
    cause: str
    mismatch: float
    rel_l2: float
    cosine: float
    explains: bool


@dataclass
class Diagnosis:
    backend: str
    case: str
    status: str
    mismatch_vs_ref: float
    rel_l2_vs_ref: float
    ranked: list[Hypothesis] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    conclusion: str = ""
    best: str | None = None
    seconds: float = 0.0

    def summary_dict(self) -> dict:
        return {"conclusion": self.conclusion, "best": self.best,
                "top": [h.__dict__ for h in self.ranked[:3]]}


def twin_of(backend: Backend) -> Backend | None:
    name = TWINS.get(getattr(backend, "family", None) or "")
    if name is None:
        return None
    reg = load_backends()
    return reg.get(name)


def diagnose(backend: Backend, ctx, out: torch.Tensor | None = None) -> Diagnosis:
    """Run ``backend`` on the case of ``ctx`` (a runner.CaseContext) and rank the fault hypotheses."""
    from harness.runner import case_thresholds
    t0 = time.perf_counter()
    data, ref = ctx.ensure()
    th = case_thresholds(ctx.case)
    if out is None:
        out = backend.run(backend.prepare(data, ctx.device), data)
    m_ref = compute_metrics(out, ref, th)
    v = judge(m_ref, th)
    d = Diagnosis(backend.name, ctx.case.name, "pass" if v.passed else "fail", m_ref.mismatch, m_ref.rel_l2)
    twin = twin_of(backend)
    if twin is None:
        d.conclusion = f"no emulated twin for {backend.name}: no fault hypotheses to test"
        d.seconds = time.perf_counter() - t0
        return d
    correct = twin.run(twin.prepare(data, ctx.device), data)
    hyps = []
    for f in FAULTS:
        if twin.family not in f.family or f.hook not in twin.hooks:
            continue
        if not f.needs(ctx.case):
            d.skipped.append(f"{f.name} (this case does not exercise it)")
            continue
        try:
            hyp = mutant(twin, f)
            h_out = hyp.run(hyp.prepare(data, ctx.device), data)
        except Exception as e:  # a hypothesis that cannot run on this case is not a candidate
            d.skipped.append(f"{f.name} ({type(e).__name__}: {e})")
            continue
        if torch.equal(h_out, correct):
            d.skipped.append(f"{f.name} (indistinguishable from correct on this case)")
            continue
        m = compute_metrics(out, h_out.to(out.dtype) if h_out.dtype != out.dtype else h_out, th)
        hyps.append(Hypothesis(f.name, f.cause, m.mismatch, m.rel_l2, m.cosine, judge(m, th).passed))
    m0 = compute_metrics(out, correct, th)
    hyps.append(Hypothesis("no-fault", "the kernel were correct (its emulated twin)", m0.mismatch, m0.rel_l2,
                           m0.cosine, judge(m0, th).passed))
    hyps.sort(key=lambda h: (not h.explains, h.mismatch, h.rel_l2))
    d.ranked = hyps
    best = hyps[0]
    if best.explains and best.name != "no-fault":
        d.best = best.name
        d.conclusion = (f"output matches the reference if {best.cause}: mismatch {best.mismatch:.1%} under that "
                        f"hypothesis vs {m_ref.mismatch:.1%} against the reference")
    elif best.explains:
        d.conclusion = ("output matches the emulated kernel contract; the failure is numerical, not a known "
                        f"preprocessing fault (mismatch {best.mismatch:.1%} vs twin, {m_ref.mismatch:.1%} vs reference)")
    else:
        d.conclusion = (f"no known fault explains it: the closest hypothesis, {best.name}, still leaves "
                        f"mismatch {best.mismatch:.1%} (vs {m_ref.mismatch:.1%} against the reference)")
    d.seconds = time.perf_counter() - t0
    return d
