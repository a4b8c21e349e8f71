"""Which stage of triton_kernels' MoE changes between identical runs (Finding 10), on a GPU.

    PYTHONPATH=.carry/triton_kernels python3 tools/tk-determinism.py --cases CASES.yaml [--case GLOB] [--runs 20]
        [--constraints '{"num_stages": 1}']

For each case: the adapter's own preparation once, then ``--runs`` times each of: the routing
metadata (gather / scatter indices, per-expert counts, gammas), fc1 on the first run's metadata,
fc2 on the first run's fc1 output, and the whole forward. Every result is compared bit for bit with
the first run's; a stage that differs while its inputs are fixed is where the nondeterminism lives.
Prints the opt flags matmul_ogs chose for fc1 and fc2 (the source read says: not persistent, split-K 1,
nothing timed or device-size dependent on this path), then one line per stage:
``stage: D of N runs differ (max |diff| X)``. The harness's own shared-expert GEMMs (``dense_mlp``,
computed once per case data by the runner since this tool was written) are a stage of their own.
``--poison-scale-tail`` also runs fc1 with its weight scales copied into a buffer followed by 0x00, 0x7F or 0xFF
bytes (0xFF: E8M0 NaN): the Hopper scale load is unmasked (``_matmul_ogs.py:349-351``) and the scale layout pads K only to
2 groups (``hopper_scale.py:30-34``), so at K/32 = 2 mod 4 (K = 1472) the last K tile reads past each
swizzled row and, for the last rows, past the tensor; a NaN that appears only with the poisoned tail says
the kernel reads memory outside the scale tensor (harmless while those bytes are not 0xFF, a NaN when they are).
``--constraints`` adds opt-flag constraints (``update_opt_flags_constraints``, e.g. one pipeline stage)
to the adapter's ``split_k: 1``: a difference that goes away with them points at the compiled kernel.
"""

from __future__ import annotations

import argparse
import fnmatch
import json

import torch

from harness.backends.triton_kernels import TK, TritonKernelsMxfp4
from harness.cases import load_cases, make_inputs
from harness.device import device_info
from references.moe import dense_mlp


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

    def shared():
        return () if data.shared is None else (dense_mlp(data.x, data.shared, data.case.swiglu, data.case.dtype),)

    return {"routing metadata": routing, "fc1 (fixed metadata)": fc1, "fc2 (fixed fc1 output)": fc2,
            "shared expert (the harness's torch GEMMs)": shared, "whole forward": lambda: (backend.run(p, data),)}


def poisoned_tail(scale, fill: int = 0xFF, pad: int = 1 << 16):
    """The scale tensor's storage copied (same strides) into a buffer of ``fill`` bytes that runs ``pad`` bytes
    past its end; returns the original torch tensor so the caller can put it back."""
    t = scale.storage.data
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    if t.storage_offset() != 0 or span != t.numel():
        raise SystemExit(f"tk-determinism: scale storage is not a permutation of a dense buffer: {t.shape} {t.stride()}")
    big = torch.full((span + pad,), fill, dtype=torch.uint8, device=t.device).view(t.dtype)
    view = torch.as_strided(big, t.shape, t.stride(), 0)
    view.copy_(t)
    scale.storage.data = view
    return t


def poison_experiment(backend, data, p) -> None:
    """fc1 with its scales moved into a larger buffer whose tail is 0x00, 0x7F (E8M0 1.0) or 0xFF (E8M0 NaN):
    a change with every fill says the move itself (address, launch) matters; a change that depends on the
    fill says the kernel reads the bytes past the tensor (Findings 10)."""
    fc1 = stages(backend, data, p)["fc1 (fixed metadata)"]

    def run():
        (out,) = fc1()
        torch.cuda.synchronize()
        return out
    clean = run()
    for fill in (0x00, 0x7F, 0xFF):
        original = poisoned_tail(p.pc1.weight_scale, fill)
        try:
            dirty = run()
        finally:
            p.pc1.weight_scale.storage.data = original
        nan_clean, nan_dirty = int(clean.isnan().sum()), int(dirty.isnan().sum())
        rows = dirty.isnan().any(-1).nonzero().flatten().tolist()
        diff = _differs(clean, dirty)
        print(f"  fc1 with 0x{fill:02X} after the scale tensor: {nan_dirty} NaN (clean: {nan_clean}); bit-equal: "
              f"{diff is None}{'' if diff is None else f' ({diff})'}; rows with NaN: {rows[:8]}"
              f"{'...' if len(rows) > 8 else ''} of {dirty.shape[0]}")


def record_opt_flags(seen: list):
    """Wrap matmul_ogs's ``make_opt_flags`` (as the module imported it) to record each call's result."""
    import triton_kernels.matmul_ogs as mo
    real = getattr(mo, "make_opt_flags", None)
    if real is None:
        print("  (matmul_ogs has no make_opt_flags to record)")
        return

    def wrapped(*a, **k):
        flags = real(*a, **k)
        seen.append(flags)
        return flags
    mo.make_opt_flags = wrapped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", required=True)
    ap.add_argument("--case", default="*")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--constraints", default="{}", help="JSON opt-flag constraints added to split_k 1")
    ap.add_argument("--poison-scale-tail", action="store_true", help="fc1 with 0xFF bytes after its scale tensor")
    a = ap.parse_args()
    extra = json.loads(a.constraints)
    if not torch.cuda.is_available():
        raise SystemExit(f"tk-determinism: needs a CUDA GPU (torch {torch.__version__} sees none)")
    backend = TritonKernelsMxfp4()
    seen: list = []
    record_opt_flags(seen)
    for case in (c for c in load_cases([a.cases]) if fnmatch.fnmatch(c.name, a.case)):
        why = backend.device_gate(device_info("cuda")["kind"]) or backend.case_gate(case)
        if why:
            print(f"{case.name}: skipped: {why}")
            continue
        data = make_inputs(case, "cuda")
        p = backend.prepare(data, "cuda")
        if extra:
            TK.attr("triton_kernels.matmul_ogs_details.opt_flags", "update_opt_flags_constraints")(
                constraints={"split_k": 1, **extra})
        print(f"{case.name}: T={case.tokens} H={case.hidden} I={case.intermediate} E={case.experts} k={case.topk}"
              + (f" constraints {extra}" if extra else ""))
        seen.clear()
        backend.run(p, data)
        torch.cuda.synchronize()
        for layer, flags in zip(("fc1", "fc2"), list(seen)):
            print(f"  opt flags {layer}: {flags}")
        if a.poison_scale_tail:
            poison_experiment(backend, data, p)
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
