"""Name the fault behind a failure: rank the fault catalogue by how well each explains the output.

Each hypothesis is the backend's emulated twin (the pure-PyTorch model of its contract, from its
family) with one fault applied: "what the kernel computes if this fault happened". The kernel's
output is compared with each hypothesis; the best one that matches within the case's thresholds
is the conclusion.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from harness.backends.base import Backend
from harness.cases import CaseContext
from harness.compare import BUDGET_FLOOR, compute_metrics, judge
from harness.families import honours, mutant
from harness.localize import localize as run_localization


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
    localization: dict | None = None
    excess: dict | None = None        # a precision regression: where the error beyond the twin's sits

    def summary_dict(self) -> dict:
        return {"conclusion": self.conclusion, "best": self.best, "top": [asdict(h) for h in self.ranked[:3]],
                "localization": self.localization, "excess": self.excess}


def _hypothesis(name, cause, out, h_out, th) -> Hypothesis:
    m = compute_metrics(out, h_out.to(out.dtype) if h_out.dtype != out.dtype else h_out, th)
    return Hypothesis(name, cause, m.mismatch, m.rel_l2, m.cosine, judge(m, th).passed)


def _rank_faults(twin: Backend, ctx: CaseContext, out: torch.Tensor, d: "Diagnosis") -> tuple[list[Hypothesis], torch.Tensor]:
    """The hypotheses ranked best first, and the twin's own output (the no-fault hypothesis)."""
    data, _ = ctx.ensure()
    th = ctx.case.limits
    correct = twin.run(twin.prepare(data, ctx.device), data)
    hyps = []
    for f in twin.family.faults:
        if not honours(twin, f):
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
        hyps.append(_hypothesis(f.name, f.cause, out, h_out, th))
    hyps.append(_hypothesis("no-fault", "the kernel were correct (its emulated twin)", out, correct, th))
    hyps.sort(key=lambda h: (not h.explains, h.mismatch, h.rel_l2))
    return hyps, correct


def excess_over_twin(out: torch.Tensor, twin_out: torch.Tensor, ref: torch.Tensor, share: float = 0.9,
                     top: int = 16) -> dict:
    """Where the kernel's squared error exceeds its twin's (a precision regression that no fault explains):
    the fewest elements that carry ``share`` of the excess (at most ``top``), their tokens and channels,
    and the worst element's values."""
    o, t, r = (x.float().reshape(x.shape[0], -1) for x in (out, twin_out, ref))
    ex = ((o - r) ** 2 - (t - r) ** 2).clamp_min(0)
    total = float(ex.sum())
    if total <= 0 or not torch.isfinite(ex).all():
        return {"share": 0.0, "elements": 0, "tokens": [], "channels": [], "sentence": "no finite excess over the twin"}
    vals, idx = ex.flatten().topk(min(top, ex.numel()))
    n = min(int((vals.cumsum(0) < share * total).sum()) + 1, vals.numel())
    vals, idx = vals[:n], idx[:n]
    tok, ch = (idx // o.shape[1]).tolist(), (idx % o.shape[1]).tolist()
    carried = float(vals.sum()) / total
    w_t, w_c = tok[0], ch[0]
    sentence = (f"{n} element{'s' if n > 1 else ''} carr{'y' if n > 1 else 'ies'} {carried:.0%} of the error beyond "
                f"the twin's (of {ex.numel()}; tokens {sorted(set(tok))}, channels {sorted(set(ch))}); worst out[{w_t}, "
                f"{w_c}] = {float(o[w_t, w_c]):.6g} against reference {float(r[w_t, w_c]):.6g} (twin {float(t[w_t, w_c]):.6g})")
    return {"share": carried, "elements": n, "tokens": sorted(set(tok)), "channels": sorted(set(ch)),
            "worst": {"token": w_t, "channel": w_c, "out": float(o[w_t, w_c]), "reference": float(r[w_t, w_c]),
                      "twin": float(t[w_t, w_c])}, "sentence": sentence}


def diagnose(backend: Backend, ctx: CaseContext, out: torch.Tensor | None = None, localize: bool = False) -> Diagnosis:
    """Rank the fault hypotheses for ``backend``'s output on the case of ``ctx`` (run it if not given);
    with ``localize``, also run the localization experiments (``harness.localize``) on a failure."""
    t0 = time.perf_counter()
    data, ref = ctx.ensure()
    ref = ctx.reference_with(**backend.reference_kw)
    th = ctx.case.limits
    if out is None:
        out = backend.run(backend.prepare(data, ctx.device), data)
    m_ref = compute_metrics(out, ref, th)
    d = Diagnosis(backend.name, ctx.case.name, "pass" if judge(m_ref, th).passed else "fail", m_ref.mismatch, m_ref.rel_l2)
    if backend.family is None:
        d.conclusion = f"no emulated twin for {backend.name}: no fault hypotheses to test"
    else:
        d.ranked, twin_out = _rank_faults(backend.family.twin(), ctx, out, d)
        d.best, d.conclusion = _conclude(d.ranked[0], m_ref.mismatch)
        twin_rel = compute_metrics(twin_out, ref, th).rel_l2
        if backend.budget_k and m_ref.rel_l2 > backend.budget_k * max(twin_rel, BUDGET_FLOOR):
            d.status = "fail"   # as the row's verdict (harness.verdicts): a precision regression
            d.excess = excess_over_twin(out, twin_out, ref)
            d.conclusion += (f". Precision: rel_l2 {m_ref.rel_l2:.4g} against the twin's {twin_rel:.4g}; "
                             f"{d.excess['sentence']}")
    if localize and not judge(m_ref, th).passed:   # the experiments look for elements outside the thresholds
        d.localization = run_localization(backend, ctx, out)
        d.conclusion += f". Where: {d.localization['sentence']}"
    d.seconds = time.perf_counter() - t0
    return d


def _conclude(best: Hypothesis, mismatch_vs_ref: float) -> tuple[str | None, str]:
    if best.explains and best.name != "no-fault":
        return best.name, (f"output matches the reference if {best.cause}: mismatch {best.mismatch:.1%} under that "
                           f"hypothesis vs {mismatch_vs_ref:.1%} against the reference")
    if best.explains:
        return None, ("output matches the emulated kernel contract; the failure is numerical, not a known "
                      f"preprocessing fault (mismatch {best.mismatch:.1%} vs twin, {mismatch_vs_ref:.1%} vs reference)")
    return None, (f"no known fault explains it: the closest hypothesis, {best.name}, still leaves "
                  f"mismatch {best.mismatch:.1%} (vs {mismatch_vs_ref:.1%} against the reference)")
