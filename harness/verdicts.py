"""A row's verdicts: accuracy under the case's thresholds, the other compare rules, the error budget
against the emulated twin, and determinism over repeated runs. Each can fail the row with its
failure class (accuracy, precision, nondeterministic)."""

from __future__ import annotations

import torch

from harness.backends.base import Backend
from harness.cases import CaseContext, CaseData
from harness.compare import BUDGET_FLOOR, compare_bits, compute_metrics, judge, other_verdicts
from harness.results import ResultRow, Status


def judge_row(row: ResultRow, backend: Backend, ctx: CaseContext, outs: list[torch.Tensor], ref: torch.Tensor,
              rules: tuple) -> None:
    """Fill ``row``'s status, message, metrics and failure class from the backend's outputs."""
    out, limits = outs[0], backend.limits(ctx.case)
    row.thresholds = limits.__dict__ | {"rule": limits.rule()}
    m = compute_metrics(out, ref, limits)
    v = judge(m, limits)
    row.status, row.message, row.metrics = Status.PASS if v.passed else Status.FAIL, v.message, m.as_dict()
    _apply_rules(row, out, ref, rules)
    row.failure = None if row.status is Status.PASS else "accuracy"
    if backend.budget_k and backend.family is not None:
        _judge_budget(row, backend, ctx, m.rel_l2, ref)
    if len(outs) > 1:
        _judge_repeats(row, outs, backend)


def twin_rel_l2(backend: Backend, data: CaseData, ref: torch.Tensor, device: str) -> float:
    """The rel_l2 of ``backend``'s emulated twin (its family's) on ``data`` against ``ref``: the budget."""
    twin = backend.family.twin()
    return compute_metrics(twin.run(twin.prepare(data, device), data), ref, data.case.limits).rel_l2


def _judge_budget(row: ResultRow, backend: Backend, ctx: CaseContext, rel_l2: float, ref: torch.Tensor) -> None:
    """The twin's rel_l2 on the same case (against the row's reference) is the budget; above
    ``budget_k`` x budget is a precision regression."""
    data, _ = ctx.ensure()
    twin_rel = twin_rel_l2(backend, data, ref, ctx.device)
    limit = backend.budget_k * max(twin_rel, BUDGET_FLOOR)
    row.budget = {"twin": backend.family.twin.name, "twin_rel_l2": twin_rel, "k": backend.budget_k, "limit": limit,
                  "ratio": rel_l2 / max(twin_rel, BUDGET_FLOOR)}
    if rel_l2 > limit and row.status is Status.PASS:
        row.status, row.failure = Status.FAIL, "precision"
        row.message = (f"precision regression: rel_l2 {rel_l2:.4g} > {backend.budget_k:g} x budget {max(twin_rel, BUDGET_FLOOR):.3g} "
                       f"(the emulated twin's rel_l2 on this case)")


def _apply_rules(row: ResultRow, out: torch.Tensor, ref: torch.Tensor, rules: tuple) -> None:
    """Record the other rules' verdicts; a non-moeacc first rule decides the status; say where they disagree."""
    others = other_verdicts(out, ref, rules)
    if not others:
        return
    row.verdicts = {"moeacc": {"passed": row.status is Status.PASS, "detail": row.message}} | \
        {k: {"passed": v["passed"], "detail": v["detail"]} for k, v in others.items()}
    if rules[0] != "moeacc":
        decide = row.verdicts[rules[0]]
        row.status = Status.PASS if decide["passed"] else Status.FAIL
        row.message = f"[{rules[0]}] {decide['detail']}" + ("" if decide["passed"] else f"; moeacc: {row.verdicts['moeacc']['detail']}")
    if len({v["passed"] for v in row.verdicts.values()}) > 1:
        row.verdicts["disagree"] = sorted(k for k, v in row.verdicts.items() if isinstance(v, dict) and v["passed"]
                                          != row.verdicts[rules[0]]["passed"])


def _judge_repeats(row: ResultRow, outs: list[torch.Tensor], backend: Backend) -> None:
    """Compare every repeated output with the first, bit for bit; fail a deterministic backend whose
    output changes (a non-deterministic one only beyond its declared ULP bound)."""
    first = outs[0]
    diffs = [compare_bits(o, first) for o in outs[1:]]
    differ = sum(not d["bit_exact"] for d in diffs)
    max_ulp = max((d.get("max_ulp") or 0) for d in diffs)
    max_abs = max(float((o.float() - first.float()).abs().nan_to_num(float("inf")).max()) for o in outs[1:]) if first.numel() else 0.0
    row.repeats = {"runs": len(outs), "differ": differ, "max_abs_diff": max_abs, "max_ulp": max_ulp,
                   "bound_ulp": backend.nondeterminism_ulp}
    if differ and max_ulp > backend.nondeterminism_ulp:
        why = (f"nondeterministic: {differ} of {len(outs) - 1} repeated runs differ from the first, "
               f"max |diff| {max_abs:.3g} ({max_ulp} ULP, bound {backend.nondeterminism_ulp})")
        row.status, row.failure = Status.FAIL, "nondeterministic"
        row.message = why if row.message == "pass" else f"{why}; {row.message}"
