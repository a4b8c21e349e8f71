"""Where the host's time goes in one CUDA forward of the reference, without a profiler.

Not a test: it measures. A profiler slows every traced op on the host, so this times the phases of
``moe_forward`` by wrapping its steps (the median of ``--reps`` forwards, each synced): the expert
ids' copy to the host and the routing check, the GEMM plan (scale check enqueued), the batch plan
up to the first batch, the loop's enqueueing, and the final wait for the device.

    python benchmarks/host_overhead.py [--configs gpt-oss-120b,deepseek-v4-flash] [--tokens 1,128,4096]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench_reference import CONFIGS, make  # noqa: E402 - benchmarks/ is on sys.path when run as a script
from references import moe
from references.activations import GPT_OSS
from references.formats import WEIGHT_FORMATS, QTensor
from references.gemm import GemmPlan

MARKS: dict = {}


def _mark(name, fn):
    def wrapped(*a, **kw):
        MARKS.setdefault(name + ">", time.perf_counter())
        out = fn(*a, **kw)
        MARKS.setdefault(name + "<", time.perf_counter())
        return out
    return wrapped


def _first_batch(fn):
    def wrapped(*a, **kw):
        for i, b in enumerate(fn(*a, **kw)):
            if i == 0:
                MARKS.setdefault("first batch", time.perf_counter())
            yield b
    return wrapped


def phases(x, ids, w, ex, cfg, reps):
    runs = []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        MARKS.clear()
        t0 = time.perf_counter()
        moe.moe_forward(x, ids, w, ex, cfg)
        t1 = time.perf_counter()
        m = MARKS
        runs.append({"ids to host + check": m["check<"] - t0, "gemm plan": m["plan<"] - m["plan>"],
                     "batch plan to first batch": m["first batch"] - m["plan<"],
                     "loop enqueued": m["redo>"] - m["first batch"], "wait for the device": t1 - m["redo>"],
                     "total": t1 - t0})
    runs = runs[1:]
    return {k: round(statistics.median(r[k] for r in runs) * 1e3, 3) for k in runs[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="gpt-oss-120b,deepseek-v4-flash")
    ap.add_argument("--tokens", default="1,128,4096")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--cprofile", type=int, default=0, help="also print the N costliest host functions (cProfile, 4096 tokens)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    moe._check_routing = _mark("check", moe._check_routing)
    moe.plan_for = _mark("plan", moe.plan_for)
    moe.batches = _first_batch(moe.batches)
    GemmPlan.redo = _mark("redo", GemmPlan.redo)
    z = torch.zeros(1, device="cuda")
    for _ in range(100):
        z.add_(1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(1000):
        z.add_(1)
    launch_us = (time.perf_counter() - t0) * 1e3   # per op, in us
    torch.cuda.synchronize()
    print(json.dumps({"host_us_per_tiny_op": round(launch_us, 2)}), flush=True)
    rows = []
    for cfg_name in a.configs.split(","):
        for tokens in (int(t) for t in a.tokens.split(",")):
            x, ids, w, w1, s1, w2, s2 = make(cfg_name, tokens, "cuda")
            ex = moe.Experts(WEIGHT_FORMATS["mxfp4"], QTensor(w1, s1), QTensor(w2, s2))
            for overlap in (True, False):
                cfg = moe.MoEConfig(activation=GPT_OSS, overlap_decode=overlap)
                row = {"config": cfg_name, "tokens": tokens, "overlap_decode": overlap, "ms": phases(x, ids, w, ex, cfg, a.reps)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if a.cprofile:
        import cProfile
        import pstats
        for cfg_name in a.configs.split(","):
            x, ids, w, w1, s1, w2, s2 = make(cfg_name, 4096, "cuda")
            ex = moe.Experts(WEIGHT_FORMATS["mxfp4"], QTensor(w1, s1), QTensor(w2, s2))
            cfg = moe.MoEConfig(activation=GPT_OSS)
            moe.moe_forward(x, ids, w, ex, cfg)
            with cProfile.Profile() as pr:
                for _ in range(10):
                    moe.moe_forward(x, ids, w, ex, cfg)
            print(f"## {cfg_name} 4096 tokens, 10 forwards")
            pstats.Stats(pr).sort_stats("tottime").print_stats(a.cprofile)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "host_us_per_tiny_op": round(launch_us, 2), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
