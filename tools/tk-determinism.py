"""Which stage of triton_kernels' MoE changes between identical runs (Finding 10), on a GPU.

    PYTHONPATH=.carry/triton_kernels python3 tools/tk-determinism.py --cases CASES.yaml [--case GLOB] [--runs 20]

For each case: the adapter's own preparation once, then ``--runs`` times each of: the routing
metadata (gather / scatter indices, per-expert counts, gammas), fc1 on the first run's metadata,
fc2 on the first run's fc1 output, and the whole forward. Every result is compared bit for bit with
the first run's; a stage that differs while its inputs are fixed is where the nondeterminism lives.
Prints one line per stage: ``stage: D of N runs differ (max |diff| X)``.
"""

from __future__ import annotations

import argparse
import fnmatch

import torch

from harness.backends.triton_kernels import TK, TritonKernelsMxfp4
from harness.cases import load_cases, make_inputs
from harness.device import device_info


def _differs(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """None when bitwise equal, else the largest |a - b| (inf where shapes or NaN positions differ)."""
    if a.shape != b.shape:
        return float("inf")
    same = a.view(torch.uint8).reshape(a.shape[0], -1) == b.view(torch.uint8).reshape(b.shape[0], -1) if a.numel() else None
    if same is None or bool(same.all()):
        return None
    if a.is_floating_point():
        return float((a.float() - b.float()).abs().nan_to_num(float("inf")).max())
    return float((a.long() - b.long()).abs().max())


def stages(backend: TritonKernelsMxfp4, data, p):
    """Callables for each stage; each returns a tuple of tensors."""
    matmul_ogs = TK.attr("triton_kernels.matmul_ogs", "matmul_ogs")
    x = data.x.to(torch.bfloat16).contiguous()
    rd0, gi0, si0 = backend.routing(data)
    h0 = matmul_ogs(x=x, w=p.w1, bias=p.b1, routing_data=rd0, gather_indx=gi0, precision_config=p.pc1,
                    fused_activation=backend.swiglu(data))

    def routing():
        rd, gi, si = backend.routing(data)
        return (gi.src_indx, gi.dst_indx, si.src_indx, si.dst_indx, rd.expt_hist, rd.gate_scal)

    def fc1():
        return (matmul_ogs(x=x, w=p.w1, bias=p.b1, routing_data=rd0, gather_indx=gi0, precision_config=p.pc1,
                           fused_activation=backend.swiglu(data)),)

    def fc2():
        return (matmul_ogs(x=h0, w=p.w2, bias=p.b2, routing_data=rd0, scatter_indx=si0, precision_config=p.pc2,
                           gammas=rd0.gate_scal),)

    return {"routing metadata": routing, "fc1 (fixed metadata)": fc1, "fc2 (fixed fc1 output)": fc2,
            "whole forward": lambda: (backend.run(p, data),)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", required=True)
    ap.add_argument("--case", default="*")
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(f"tk-determinism: needs a CUDA GPU (torch {torch.__version__} sees none)")
    backend = TritonKernelsMxfp4()
    for case in (c for c in load_cases([a.cases]) if fnmatch.fnmatch(c.name, a.case)):
        why = backend.device_gate(device_info("cuda")["kind"]) or backend.case_gate(case)
        if why:
            print(f"{case.name}: skipped: {why}")
            continue
        data = make_inputs(case, "cuda")
        p = backend.prepare(data, "cuda")
        print(f"{case.name}: T={case.tokens} H={case.hidden} I={case.intermediate} E={case.experts} k={case.topk}")
        for name, fn in stages(backend, data, p).items():
            first = fn()
            torch.cuda.synchronize()
            worst, bad = None, 0
            for _ in range(a.runs - 1):
                d = [_differs(u, v) for u, v in zip(fn(), first)]
                d = [v for v in d if v is not None]
                if d:
                    bad += 1
                    worst = max([worst or 0.0] + d)
            print(f"  {name}: {bad} of {a.runs - 1} runs differ from the first" + (f" (max |diff| {worst:.3g})" if bad else ""))


if __name__ == "__main__":
    main()
