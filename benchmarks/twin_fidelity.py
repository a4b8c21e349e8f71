"""How close each emulated twin is to its real kernel, from runs already committed: not a test, it measures.

A real backend's error budget is its twin's rel_l2 on the same case (``harness.verdicts``), so a twin that
models the kernel's roundings should land where the kernel did. For every real-kernel row with a budget in
the given ``results.json`` files, this recomputes the twin's rel_l2 as the twin is now, on the CPU, on the
same case and reference (the backend's ``reference_kw``), and prints it beside the kernel's rel_l2 and the
twin's rel_l2 recorded in the run:

    python benchmarks/twin_fidelity.py reports/sm90-*/h200-tk-*/results.json [--max-weights 2e8] [--out F]

Rows whose case is not among ``cases/`` (fuzz repros) or whose weights exceed ``--max-weights`` elements
(CPU time) are listed as not run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness.backends.registry import load_backends
from harness.cases import CaseContext, load_cases
from harness.verdicts import twin_rel_l2


def fidelity(result_files: list[str], max_weights: float) -> list[dict]:
    backends = load_backends()
    cases = {c.name: c for c in load_cases(["cases"])}
    ctxs: dict = {}
    out = []
    for f in result_files:
        run = Path(f).parent.name
        for r in json.load(open(f))["rows"]:
            b = backends.get(r.get("backend", ""))
            if not (b is not None and r.get("budget") and r.get("metrics")) or b.family is None:
                continue
            row = {"run": run, "case": r["case"], "backend": b.name, "twin": b.family.twin.name,
                   "kernel_rel_l2": r["metrics"]["rel_l2"], "twin_rel_l2_then": r["budget"]["twin_rel_l2"]}
            c = cases.get(r["case"])
            weights = 0 if c is None else c.experts * 3 * c.hidden * c.intermediate
            if c is None or weights > max_weights:
                row["not_run"] = "case not in cases/" if c is None else f"{weights:.3g} weight elements"
                out.append(row)
                continue
            ctx = ctxs.setdefault(c.name, CaseContext(c, "cpu"))
            data, _ = ctx.ensure()
            row["twin_rel_l2_now"] = twin_rel_l2(b, data, ctx.reference_with(**b.reference_kw), "cpu")
            out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--max-weights", type=float, default=2e8, help="skip cases with more expert weight elements")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t0 = time.time()
    rows = fidelity(a.results, a.max_weights)
    for r in rows:
        now = f"{r['twin_rel_l2_now']:.5f}" if "twin_rel_l2_now" in r else f"not run ({r['not_run']})"
        print(f"{r['run'][:22]:22s} {r['backend'][:26]:26s} {r['case'][:52]:52s} kernel {r['kernel_rel_l2']:.5f}  "
              f"twin then {r['twin_rel_l2_then']:.5f}  now {now}")
    if a.out:
        Path(a.out).write_text(json.dumps({"rows": rows, "seconds": round(time.time() - t0, 1)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
