"""Where the CUDA reference spends its time, and how fast each tiling of the fused MXFP4 GEMM is.

Not a test: it measures, on a GPU.

    python benchmarks/profile_reference.py [--config gpt-oss-120b] [--tokens 4096] [--sweep] [--out FILE]

1. ``torch.profiler`` over one forward of the reference (packed MXFP4 GEMM and the dequantizing
   path): the kernels by CUDA time, and the wall time.
2. ``--sweep``: the fused GEMM alone on one batch of the layer's fc1 and fc2 shapes (experts with
   the rows per expert of this token count), each tiling timed by ``triton.testing.do_bench``
   (median), in TFLOP/s, beside ``torch.bmm`` on the same weights already in bf16 (the ceiling a
   fused kernel would have to reach) and the decode alone; the decode kernel's variants in TB/s
   (bytes read + written); and, over rows per expert, the best fused tiling against decode + bmm
   (where the reference should switch, ``gemm_fused.PACKED_MAX_ROWS``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict, replace

import torch

from bench_reference import CONFIGS, make  # noqa: E402 - benchmarks/ is on sys.path when run as a script
from references import gemm_fused
from references.formats import mx_fused
from references.activations import GPT_OSS
from references.formats import WEIGHT_FORMATS, QTensor
from references.formats.mx import mx_dequantize
from references.moe import Experts, MoEConfig, moe_forward


def _kernel_times(p) -> dict:
    """Kernels only (no aten ops, which would count their kernels twice): how many, their summed time,
    the union of their intervals (GPU busy) and first start to last end (GPU span): a span much
    longer than busy time means the GPU waited for the host."""
    from torch.autograd import DeviceType
    ks = sorted(((e.time_range.start, e.time_range.end) for e in p.events()
                 if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start))
    busy, end = 0.0, None
    for a, b in ks:
        if end is None or a > end:
            busy, end = busy + (b - a), b
        elif b > end:
            busy, end = busy + (b - end), b
    named = sorted((e.time_range.start, e.time_range.end, e.name) for e in p.events()
                   if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start)
    t0 = named[0][0] if named else 0.0
    seq, prev = [], t0
    for a, b, n in named:   # kernel, its start and the GPU idle time before it, in us from the first
        seq.append([n[:48], round(a - t0, 1), round(b - a, 1), round(max(0.0, a - prev), 1)])
        prev = max(prev, b)
    return {"sequence": seq, "kernels": len(ks), "kernel_ms_sum": round(sum(b - a for a, b in ks) / 1e3, 3), "gpu_busy_ms": round(busy / 1e3, 3),
            "gpu_span_ms": round((ks[-1][1] - ks[0][0]) / 1e3, 3) if ks else 0.0}


def _safe(fn, *a) -> dict:
    try:
        return fn(*a)
    except Exception as err:  # noqa: BLE001 - a profiler API change must not lose the rest of the run
        return {"kernel_times_error": f"{type(err).__name__}: {err}"[:200]}


def profile(x, ids, w, ex, packed: bool, top: int = 12, fused_activation: bool = True, overlap: bool = True) -> dict:
    cfg = MoEConfig(activation=GPT_OSS, packed_mxfp4=packed, fused_activation=fused_activation, overlap_decode=overlap)
    moe_forward(x, ids, w, ex, cfg)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    moe_forward(x, ids, w, ex, cfg)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    from torch.profiler import ProfilerActivity, profile as prof
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        moe_forward(x, ids, w, ex, cfg)
        torch.cuda.synchronize()
    ev = [e for e in p.key_averages() if getattr(e, "self_device_time_total", 0) > 0]
    ev.sort(key=lambda e: -e.self_device_time_total)
    rows = [{"name": e.key[:90], "calls": e.count, "cuda_ms": round(e.self_device_time_total / 1e3, 3)} for e in ev[:top]]
    total = sum(e.self_device_time_total for e in ev) / 1e3
    host = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    cpu_top = [{"name": e.key[:60], "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3)} for e in host]
    return {"packed": packed, "fused_activation": fused_activation, "overlap_decode": overlap, "wall_ms": round(wall * 1e3, 2),
            "cuda_ms_total": round(total, 2), "top": rows, "cpu_top": cpu_top, **_safe(_kernel_times, p)}


def _shape_case(e_total, n, k, b, p, seed=1):
    g = torch.Generator().manual_seed(seed)
    packed = torch.randint(0, 256, (e_total, n, k // 2), dtype=torch.uint8, generator=g).cuda()
    scales = torch.randint(118, 123, (e_total, n, k // 32), dtype=torch.uint8, generator=g).cuda()
    ids = torch.randperm(e_total, generator=g)[:b].cuda()
    x = torch.randn(b, p, k, generator=g).to(torch.bfloat16).cuda()
    return x, packed, scales, ids


TILES = [gemm_fused.Tile(bn=128, bk=bk, mode=m, swap=s) for m, s, bk in itertools.product((0, 1, 2), (False, True), (64, 128))]


def sweep(shapes: dict, tiles=TILES) -> list[dict]:
    from triton.testing import do_bench
    out = []
    for name, (e_total, n, k, b, p) in shapes.items():
        x, packed, scales, ids = _shape_case(e_total, n, k, b, p)
        flop = 2 * b * p * n * k
        wb = mx_dequantize(packed[ids], scales[ids], dtype=torch.bfloat16)
        t_bmm = do_bench(lambda: torch.bmm(x, wb.transpose(-2, -1), out_dtype=torch.float32), return_mode="median")
        want = torch.bmm(x, wb.transpose(-2, -1), out_dtype=torch.float32)
        t_dec = do_bench(lambda: WEIGHT_FORMATS["mxfp4"].dequantize_experts(QTensor(packed, scales), ids, dtype=torch.bfloat16),
                         return_mode="median")
        out.append({"shape": name, "tile": "torch.bmm on bf16 weights", "ms": round(t_bmm, 4), "tflops": round(flop / t_bmm / 1e9, 1),
                    "decode_ms": round(t_dec, 4)})
        print(json.dumps(out[-1]), flush=True)
        saved = gemm_fused.TILE
        for t in tiles:
            gemm_fused.TILE = t
            try:
                got = gemm_fused.mxfp4_bmm(x, packed, scales, ids)
                rel = float((got - want).norm() / want.norm())
                ms = do_bench(lambda: gemm_fused.mxfp4_bmm(x, packed, scales, ids), return_mode="median")
                row = {"shape": name, "tile": asdict(t), "ms": round(ms, 4), "tflops": round(flop / ms / 1e9, 1), "rel_vs_bmm": rel}
            except Exception as err:  # noqa: BLE001 - a tiling that does not compile is a row, not the end
                row = {"shape": name, "tile": asdict(t), "error": f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"}
            out.append(row)
            print(json.dumps(row), flush=True)
        gemm_fused.TILE = saved
    return out


DECODES = [mx_fused.DecodeTile(block=b, index=i, warps=w) for i, b, w in itertools.product((False, True), (1024, 2048, 4096), (4, 8))]


def decode_sweep(e_total, n, k, b) -> list[dict]:
    from triton.testing import do_bench
    _, packed, scales, ids = _shape_case(e_total, n, k, b, 1)
    nbytes = b * n * (k // 2 + k // 32 + 2 * k)
    saved, out = mx_fused.DECODE, []
    want = mx_dequantize(packed[ids], scales[ids], dtype=torch.bfloat16)
    for t in DECODES:
        mx_fused.DECODE = t
        got = mx_fused.mxfp4_to_bf16(packed, scales, ids)
        ms = do_bench(lambda: mx_fused.mxfp4_to_bf16(packed, scales, ids), return_mode="median")
        out.append({"decode": asdict(t), "ms": round(ms, 4), "tb_s": round(nbytes / ms / 1e9, 2),
                    "bit_equal": bool(got is not None and torch.equal(got.view(torch.int16), want.view(torch.int16)))})
        print(json.dumps(out[-1]), flush=True)
    mx_fused.DECODE = saved
    return out


def rows_sweep(e_total, n, k, tile, decode) -> list[dict]:
    """Fused GEMM (``tile``) vs decode (``decode``) + bmm at each count of rows per expert."""
    from triton.testing import do_bench
    out, saved = [], (gemm_fused.TILE, mx_fused.DECODE)
    gemm_fused.TILE, mx_fused.DECODE = tile, decode
    for p in (1, 4, 8, 16, 32, 64, 96, 128, 256):
        b = 64 if p <= 16 else 16
        x, packed, scales, ids = _shape_case(e_total, n, k, b, p)
        fused = do_bench(lambda: gemm_fused.mxfp4_bmm(x, packed, scales, ids), return_mode="median")
        two = do_bench(lambda: torch.bmm(x, mx_fused.mxfp4_to_bf16(packed, scales, ids).transpose(-2, -1),
                                         out_dtype=torch.float32), return_mode="median")
        out.append({"rows": p, "experts": b, "fused_ms": round(fused, 4), "decode_bmm_ms": round(two, 4)})
        print(json.dumps(out[-1]), flush=True)
    gemm_fused.TILE, mx_fused.DECODE = saved
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="gpt-oss-120b")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    h, i, e, k = CONFIGS[a.config]
    x, ids, w, w1, s1, w2, s2 = make(a.config, a.tokens, "cuda")
    ex = Experts(WEIGHT_FORMATS["mxfp4"], QTensor(w1, s1), QTensor(w2, s2))
    res = {"config": a.config, "tokens": a.tokens, "profiles": [profile(x, ids, w, ex, p, fused_activation=f, overlap=o)
                                                          for p, f, o in ((True, True, True), (True, True, False),
                                                                          (False, True, True), (False, False, True))]}
    for pr in res["profiles"]:
        print(json.dumps(pr), flush=True)
    if a.sweep:
        rows = max(1, a.tokens * k // e)   # rows per expert at this token count
        shapes = {"fc1": (e, 2 * i, h, 16, rows), "fc1-4rows": (e, 2 * i, h, 64, 4)}
        res["decode"] = decode_sweep(e, 2 * i, h, 16)
        res["sweep"] = sweep(shapes)
        best = sorted((r for r in res["sweep"] if r["shape"] == "fc1" and "ms" in r and isinstance(r["tile"], dict)),
                      key=lambda r: r["ms"])[:2]
        more = [replace(gemm_fused.Tile(**b["tile"]), **kw) for b in best
                for kw in ({"bn": 64}, {"bn": 256}, {"warps": 8}, {"warps": 4}, {"stages": 2}, {"stages": 4})]
        res["sweep2"] = sweep({"fc1": shapes["fc1"]}, more)
        tiles = [r for r in res["sweep"] + res["sweep2"] if r["shape"] == "fc1" and "ms" in r and isinstance(r["tile"], dict)]
        small = [r for r in res["sweep"] if r["shape"] == "fc1-4rows" and "ms" in r and isinstance(r["tile"], dict)]
        dec = min(res["decode"], key=lambda r: r["ms"] if r["bit_equal"] else 1e9)
        for name, pool in (("large", tiles), ("small", small)):
            t = min(pool, key=lambda r: r["ms"])
            res[f"rows_{name}_tile"] = rows_sweep(e, 2 * i, h, gemm_fused.Tile(**t["tile"]), mx_fused.DecodeTile(**dec["decode"]))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
