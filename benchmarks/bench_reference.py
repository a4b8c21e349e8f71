"""Benchmark: the reference MoE forward vs the naive per-expert loop vs a plain bf16 grouped matmul,
side by side in one run on the same inputs.

Not a test: it measures. The naive loop is the kernel libraries' own test reference (every expert
dequantized up front, a boolean mask per expert over all (token, slot) pairs). The bf16 baseline
does the same routed work (tokens sorted by expert, fc1, SwiGLU, fc2, weighted sum) on
pre-dequantized bf16 weights with ``torch._grouped_mm`` when present (a per-expert loop otherwise);
its time does not include dequantization, the reference's does. Weights are random MXFP4 codes with
E8M0 scales 118..122 (timing does not depend on their values). Peak memory is
``torch.cuda.max_memory_allocated`` during the call, inputs and packed weights included, and is
compared with the layer's weights in bf16 (``reference_peak_over_bf16_weights``).

    python benchmarks/bench_reference.py --device cuda --out benchmarks/results-h100.json

On CUDA the reference multiplies batches of few rows per expert with its fused MXFP4 GEMM
(``references.gemm_fused``) and decodes the rest for cuBLAS; ``--variants`` also times, in the same
run and for the reference only, the dequantizing path alone (``dequant``), the eager SwiGLU
(``eager-act``), the eager top-k sum (``eager-combine``), batch b+1 decoded on a side stream beside
batch b's GEMMs (``overlap``), the fused GEMM for every batch (``packed-all*``) and other tilings of it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from references import formats as F
from references.activations import GPT_OSS
from references.formats import WEIGHT_FORMATS, QTensor
from references.moe import Experts, MoEConfig, moe_forward, naive_moe_forward
from references.routing import softmax_topk

CONFIGS = {
    # name: (hidden, intermediate, experts, topk)
    "gpt-oss-120b": (2880, 2880, 128, 4),
    "deepseek-v4-flash": (4096, 2048, 256, 6),
    "deepseek-v3-size": (7168, 2048, 256, 8),   # the 24 GiB CPU memory check of issue 2
}


_WEIGHTS: dict = {}


def make(cfg, tokens, device, seed=0):
    """Activations and routing for ``tokens``; the layer's weights are drawn once per config."""
    h, i, e, k = CONFIGS[cfg]
    if (cfg, device) not in _WEIGHTS:
        _WEIGHTS.clear()
        g = torch.Generator().manual_seed(seed)
        w1 = torch.randint(0, 256, (e, 2 * i, h // 2), dtype=torch.uint8, generator=g)
        s1 = torch.randint(118, 123, (e, 2 * i, h // 32), dtype=torch.uint8, generator=g)
        w2 = torch.randint(0, 256, (e, h, i // 2), dtype=torch.uint8, generator=g)
        s2 = torch.randint(118, 123, (e, h, i // 32), dtype=torch.uint8, generator=g)
        _WEIGHTS[(cfg, device)] = [t.to(device) for t in (w1, s1, w2, s2)]
    g = torch.Generator().manual_seed(seed + tokens)
    x = torch.randn(tokens, h, generator=g).to(torch.bfloat16)
    w, ids = softmax_topk(torch.randn(tokens, e, generator=g), k)
    return [t.to(device) for t in (x, ids, w)] + _WEIGHTS[(cfg, device)]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, reps):
    fn()  # warm-up
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    sync(device)
    dt = (time.perf_counter() - t0) / reps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return dt, peak, out


def bf16_grouped(x, ids, w, w1b, w2b):
    t, k = ids.shape
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w1b.shape[0])
    xs = x.index_select(0, order // k)
    if hasattr(torch, "_grouped_mm") and x.is_cuda:
        offs = counts.cumsum(0).to(torch.int32)
        h = torch._grouped_mm(xs, w1b.transpose(-2, -1), offs=offs)
        i = h.shape[-1] // 2
        a = (torch.nn.functional.silu(h[:, :i].float()) * h[:, i:].float()).to(torch.bfloat16)
        y = torch._grouped_mm(a, w2b.transpose(-2, -1), offs=offs)
    else:
        outs, start = [], 0
        for e, n in enumerate(counts.tolist()):
            if n:
                h = xs[start:start + n] @ w1b[e].T
                i = h.shape[-1] // 2
                a = (torch.nn.functional.silu(h[:, :i].float()) * h[:, i:].float()).to(torch.bfloat16)
                outs.append(a @ w2b[e].T)
            start += n
        y = torch.cat(outs)
    out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, order // k, y.float() * w.reshape(-1)[order].unsqueeze(-1))
    return out


VARIANTS = {
    # name: (MoEConfig overrides, gemm_fused.Tile fields, gemm_fused.PACKED_MAX_ROWS or None)
    "dequant": ({"packed_mxfp4": False}, {}, None),
    "eager-act": ({"fused_activation": False}, {}, None),
    "overlap": ({"overlap_decode": True}, {}, None),
    "eager-combine": ({"fused_combine": False}, {}, None),
    "packed-all": ({}, {}, 1 << 30),
    "packed-all-large-tile": ({}, {"mode": 1, "bn": 64, "bk": 64}, 1 << 30),
    "packed-join": ({}, {"mode": 1}, None),
    "packed-index": ({}, {"mode": 2}, None),
}


def run_variant(name, fn, dev, reps):
    """Time ``fn`` under the variant ``name`` (the module settings restored afterwards)."""
    from dataclasses import replace
    from references import gemm_fused
    cfg_kw, tile_kw, max_rows = VARIANTS[name]
    saved = gemm_fused.TILE, gemm_fused.PACKED_MAX_ROWS
    gemm_fused.TILE = replace(saved[0], **tile_kw)
    gemm_fused.PACKED_MAX_ROWS = saved[1] if max_rows is None else max_rows
    try:
        return timed(lambda: fn(**cfg_kw), dev, reps)
    finally:
        gemm_fused.TILE, gemm_fused.PACKED_MAX_ROWS = saved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", default="gpt-oss-120b,deepseek-v4-flash")
    ap.add_argument("--tokens", default="1,128,4096")
    ap.add_argument("--naive-max-gib", type=float, default=None, help="skip the naive loop above this much weight memory")
    ap.add_argument("--reference-only", action="store_true", help="measure only the reference (memory checks)")
    ap.add_argument("--variants", default="", help=f"also time these reference variants: {','.join(VARIANTS)}")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = a.device
    limit = a.naive_max_gib if a.naive_max_gib is not None else (60.0 if dev.startswith("cuda") else 10.0)
    rows = []
    for cfg in a.configs.split(","):
        h, i, e, k = CONFIGS[cfg]
        for tokens in (int(t) for t in a.tokens.split(",")):
            x, ids, w, w1, s1, w2, s2 = make(cfg, tokens, dev)
            reps = 5 if dev.startswith("cuda") else 1
            ex = Experts(WEIGHT_FORMATS["mxfp4"], QTensor(w1, s1), QTensor(w2, s2))
            moe_cfg = MoEConfig(activation=GPT_OSS)
            t_ref, m_ref, ref = timed(lambda: moe_forward(x, ids, w, ex, moe_cfg), dev, reps)
            variants = {}
            for name in filter(None, a.variants.split(",")):
                ref_v = lambda **kw: moe_forward(x, ids, w, ex, MoEConfig(activation=GPT_OSS, **kw))  # noqa: E731
                t_v, m_v, out_v = run_variant(name, ref_v, dev, reps)
                variants[name] = {"s": round(t_v, 5), "peak_gib": m_v and round(m_v, 2), "equal_to_reference": bool(torch.equal(out_v, ref)),
                                  "max_rel_diff": float(((out_v - ref).norm() / ref.norm().clamp(min=1e-30)).item())}
            bf16_gib = e * 3 * h * i * 2 / 2**30
            row = {"config": cfg, "tokens": tokens, "hidden": h, "intermediate": i, "experts": e, "topk": k,
                   "reference_s": round(t_ref, 5), "reference_peak_gib": m_ref and round(m_ref, 2),
                   "bf16_weights_gib": round(bf16_gib, 2),
                   "reference_peak_over_bf16_weights": m_ref and round(m_ref / bf16_gib, 2)}
            if variants:
                row["variants"] = variants
            need = e * 3 * h * i * 4 / 2**30
            if a.reference_only:
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            if need <= limit:
                def naive():  # all experts dequantized up front, as the kernel libraries' tests do
                    d1 = torch.stack([F.mx_dequantize(w1[j], s1[j]) for j in range(e)])
                    d2 = torch.stack([F.mx_dequantize(w2[j], s2[j]) for j in range(e)])
                    return naive_moe_forward(x, ids, w, d1, d2, cfg=moe_cfg)
                t_nv, m_nv, out_nv = timed(naive, dev, reps)
                row.update(naive_s=round(t_nv, 5), naive_peak_gib=m_nv and round(m_nv, 2),
                           speedup_vs_naive=round(t_nv / t_ref, 2),
                           max_rel_diff_vs_naive=float(((ref - out_nv).norm() / out_nv.norm()).item()))
            else:
                row.update(naive_s=None, naive_note=f"skipped: needs {need:.1f} GiB of fp32 weights")
            w1b = torch.stack([F.mx_dequantize(w1[j], s1[j]).to(torch.bfloat16) for j in range(e)])
            w2b = torch.stack([F.mx_dequantize(w2[j], s2[j]).to(torch.bfloat16) for j in range(e)])
            t_bf, _, _ = timed(lambda: bf16_grouped(x, ids, w, w1b, w2b), dev, reps)
            row.update(bf16_grouped_s=round(t_bf, 5), reference_over_bf16=round(t_ref / t_bf, 2))
            del w1b, w2b
            rows.append(row)
            print(json.dumps(row), flush=True)
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
    from references import gemm_fused
    from references.formats import mx_fused
    from references.formats.mx import mx_dequantize, mxfp4_bf16_eager
    info = {"device": torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor() or "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "fused_mxfp4_decode": (mx_fused.status(dev, mxfp4_bf16_eager) or f"used ({mx_fused.DECODE})") if dev.startswith("cuda") else "not used (CPU)",
            "fused_mxfp4_gemm": (gemm_fused.status(dev, mx_dequantize)
                                 or f"used up to {gemm_fused.PACKED_MAX_ROWS} rows per expert ({gemm_fused.TILE})") if dev.startswith("cuda") else "not used (CPU)",
            "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), "rows": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(info, f, indent=1)
    print(json.dumps({k: v for k, v in info.items() if k != "rows"}))


if __name__ == "__main__":
    main()
