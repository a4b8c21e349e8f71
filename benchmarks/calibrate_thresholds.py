"""Threshold calibration: false-positive rate of correct backends and detection rate of the fault
zoo under the default thresholds, over many seeds (CPU). Not a test: it measures.

    python benchmarks/calibrate_thresholds.py --seeds 1000 --out benchmarks/calibration-cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import replace

from harness.backends.registry import select_backends
from harness.cases import CaseContext, load_cases
from harness.families import zoo_backends
from harness.results import Status
from harness.runner import run_one


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--zoo-seeds", type=int, default=50)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t0 = time.time()
    cases = load_cases(["cases/smoke.yaml"])
    correct = select_backends("emulated-*,torch-naive")
    stats = defaultdict(lambda: {"runs": 0, "fail": 0, "max_mismatch": 0.0, "max_rel_l2": 0.0, "min_cosine": 1.0})
    for seed in range(a.seeds):
        case = replace(cases[seed % len(cases)], seed=seed)
        ctx = CaseContext(case, "cpu")
        for b in correct:
            r = run_one(b, ctx, "cpu")
            if r.status is Status.SKIPPED:
                continue
            s = stats[(case.limits.name, b.name)]
            s["runs"] += 1
            s["fail"] += r.status is not Status.PASS
            m = r.metrics or {}
            s["max_mismatch"] = max(s["max_mismatch"], m.get("mismatch") or 0)
            s["max_rel_l2"] = max(s["max_rel_l2"], m.get("rel_l2") or 0)
            s["min_cosine"] = min(s["min_cosine"], m.get("cosine") or 0)
    zoo = defaultdict(lambda: {"runs": 0, "caught": 0, "min_mismatch": 1.0, "min_rel_l2": 1e9})
    for seed in range(a.zoo_seeds):
        for case0 in cases:
            case = replace(case0, seed=seed)
            ctx = CaseContext(case, "cpu")
            for b in zoo_backends(select_backends("emulated-*")):
                if b.case_gate(case):
                    continue
                r = run_one(b, ctx, "cpu")
                z = zoo[b.fault.name]
                z["runs"] += 1
                z["caught"] += r.status is Status.FAIL
                m = r.metrics or {}
                z["min_mismatch"] = min(z["min_mismatch"], m.get("mismatch", 1.0))
                z["min_rel_l2"] = min(z["min_rel_l2"], m.get("rel_l2", 1e9))
    res = {"seeds": a.seeds, "zoo_seeds": a.zoo_seeds, "seconds": round(time.time() - t0, 1),
           "correct": {f"{k[0]} / {k[1]}": v for k, v in sorted(stats.items())},
           "faults": dict(sorted(zoo.items()))}
    text = json.dumps(res, indent=1)
    if a.out:
        open(a.out, "w").write(text)
    print(text)


if __name__ == "__main__":
    main()
