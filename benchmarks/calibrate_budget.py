"""Error-budget calibration: where ``BUDGET_K`` sits between correct kernels and precision faults.

A real backend's row fails as a precision regression when its rel_l2 exceeds
``BUDGET_K x max(twin rel_l2, BUDGET_FLOOR)``: the twin is the emulation of the same kernel contract
(``harness.compare``). This measures, not tests, the two sides of that line:

- faults (CPU): for every zoo fault over many seeds of the smoke cases, the ratio of the faulty
  emulation's rel_l2 to the correct twin's, split by whether the accuracy thresholds alone catch it
  (a fault they let pass is what only the budget can catch);
- a precision-only regression (CPU): the SM90 W4A16 twin with its SwiGLU output kept in FP8 (1x128)
  where the contract says bf16, against the correct twin with the same budget, over many seeds:
  how often the thresholds pass it, how often the budget catches it, and the correct twin's false
  positives;
- correct kernels (GPU): the ``budget.ratio`` of every real-kernel row in the given run reports.

    python benchmarks/calibrate_budget.py --seeds 30 --precision-seeds 1000 --out benchmarks/budget-calibration.json
    python benchmarks/calibrate_budget.py --seeds 0 --reports reports/sm90-*/<run>/results.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from harness.backends.registry import select_backends
from harness.cases import CaseContext, load_cases
from harness.compare import BUDGET_FLOOR, BUDGET_K
from harness.families import zoo_backends
from harness.results import Status
from harness.runner import run_one


def _quantiles(xs: list[float]) -> dict:
    if not xs:
        return {}
    xs = sorted(xs)
    at = lambda q: xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]  # noqa: E731
    return {"n": len(xs), "min": at(0), "p10": at(0.1), "p50": at(0.5), "p90": at(0.9), "max": at(1)}


def fault_ratios(seeds: int) -> dict:
    cases = load_cases(["cases/smoke.yaml"])
    bases = select_backends("emulated-*")
    by_fault = defaultdict(lambda: {"caught_by_accuracy": [], "passed_accuracy": []})
    for seed in range(seeds):
        for case0 in cases:
            ctx = CaseContext(replace(case0, seed=seed), "cpu")
            twins = {}
            for b in zoo_backends(bases):
                if b.case_gate(ctx.case):
                    continue
                twin = b.family.twin()
                if twin.name not in twins:
                    twins[twin.name] = run_one(twin, ctx, "cpu").metrics.get("rel_l2")
                r = run_one(b, ctx, "cpu")
                rel, base = (r.metrics or {}).get("rel_l2"), twins[twin.name]
                if rel is None or base is None or rel != rel:
                    continue
                side = "caught_by_accuracy" if r.status is Status.FAIL else "passed_accuracy"
                by_fault[b.fault.name][side].append(rel / max(base, BUDGET_FLOOR))
    return {name: {side: _quantiles(v) for side, v in d.items()} for name, d in sorted(by_fault.items())}


def precision_regression(seeds: int) -> dict:
    from harness.backends.emulated_cutlass import EmulatedSm90W4A16
    from harness.cases import validate_case
    from references import formats as F
    from references.activations import swiglu

    class Correct(EmulatedSm90W4A16):
        name, budget_k = "correct-twin", BUDGET_K

    class Fp8Intermediate(Correct):
        name = "fp8-intermediate"

        def activation_fn(self):
            def act(g, u, params, prec):
                a = swiglu(g, u, params, prec)
                return F.fp8_group_dequantize(*F.fp8_group_quantize(a.float(), 128)).to(a.dtype)
            return act

    base = dict(name="budget", tokens=96, hidden=256, intermediate=128, experts=6, topk=2, weight_format="mxfp4",
                activation="gpt_oss", input_scale=4.0)
    # fault verdicts: "precision" = the thresholds passed it and the budget caught it; "accuracy" = the
    # thresholds caught it; "pass" = missed
    out = {"seeds": seeds, "correct_false_positives": 0, "fault_verdicts": defaultdict(int), "correct_ratio": [],
           "fault_ratio": []}
    for seed in range(seeds):
        ctx = CaseContext(validate_case(base | {"seed": seed}, "calibration"), "cpu")
        good, bad = run_one(Correct(), ctx, "cpu"), run_one(Fp8Intermediate(), ctx, "cpu")
        out["correct_false_positives"] += good.status is not Status.PASS
        out["correct_ratio"].append(good.budget["ratio"])
        out["fault_ratio"].append(bad.budget["ratio"])
        out["fault_verdicts"][bad.failure or "pass"] += 1
    out["correct_ratio"], out["fault_ratio"] = _quantiles(out["correct_ratio"]), _quantiles(out["fault_ratio"])
    out["fault_verdicts"] = dict(out["fault_verdicts"])
    return out


def kernel_ratios(reports: list[str]) -> dict:
    by_backend = defaultdict(list)
    for path in reports:
        for row in json.loads(Path(path).read_text())["rows"]:
            if row.get("budget") and row.get("status") in ("pass", "fail"):
                by_backend[row["backend"]].append(row["budget"]["ratio"])
    q = {b: _quantiles(v) for b, v in sorted(by_backend.items())}
    return ({b: v for b, v in q.items() if not b.startswith("zoo:")},
            {b: v for b, v in q.items() if b.startswith("zoo:")})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=100, help="seeds per smoke case for the fault side (0: skip)")
    ap.add_argument("--precision-seeds", type=int, default=0, help="seeds for the precision-only regression (0: skip)")
    ap.add_argument("--reports", nargs="*", default=[], help="results.json of GPU runs for the correct-kernel side")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t0 = time.time()
    res = {"budget_k": BUDGET_K, "budget_floor": BUDGET_FLOOR, "seeds": a.seeds,
           "faults": fault_ratios(a.seeds) if a.seeds else {},
           "precision_regression": precision_regression(a.precision_seeds) if a.precision_seeds else {},
           "reports": [Path(p).as_posix() for p in a.reports]}
    res["kernels"], res["faults_on_kernels"] = kernel_ratios(a.reports)
    res["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
