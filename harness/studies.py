"""Studies: the accuracy cost of UE8M0 (power-of-two) FP8 block scales against fp32 scales.

One layer: Y = X W^T with X quantized per 1x128 group and W per 128x128 block (DeepSeek-V3 /
DeepGEMM recipe), scales fp32 or rounded up to UE8M0. SNR against the unquantized GEMM gives
bits (SNR / 6.02 dB); the loss is fp32 bits minus UE8M0 bits. Compounded: a ``depth``-layer
residual chain h <- h + (h W^T) / sqrt(depth) run unquantized and with each scale format; the SNR of the
last hidden state against the unquantized chain shows how the per-layer loss accumulates
(updates scaled by 1/sqrt(depth), so the stream neither explodes nor forgets early layers).
"""

from __future__ import annotations

import math

import torch

from references import formats as F

DB_PER_BIT = 20 * math.log10(2)  # 6.02


def _snr_db(y: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * math.log10(float(ref.double().square().sum()) / float((y.double() - ref.double()).square().sum()))


def _qgemm(x: torch.Tensor, w: torch.Tensor, fmt: str) -> torch.Tensor:
    fmt = F.Fp8Scale(fmt)
    qx, sx = F.fp8_group_quantize(x, 128, fmt)
    qw, sw = F.fp8_block_quantize(w, (128, 128), fmt)
    return F.fp8_group_dequantize(qx, sx) @ F.fp8_block_dequantize(qw, sw).T


def _activations(m: int, k: int, g: torch.Generator) -> torch.Tensor:
    # LLM-like activations: Gaussian with a few outlier channels (x20) and per-token scale spread
    x = torch.randn(m, k, generator=g)
    x[:, torch.randperm(k, generator=g)[: k // 64]] *= 20
    return x * torch.exp(torch.randn(m, 1, generator=g))


def ue8m0_study(m: int = 256, k: int = 1024, n: int = 1024, depth: int = 80, seeds: int = 4, device: str = "cpu") -> dict:
    per_layer = {"fp32": [], "ue8m0": []}
    for s in range(seeds):
        g = torch.Generator().manual_seed(s)
        x = _activations(m, k, g)
        w = torch.randn(n, k, generator=g) / math.sqrt(k)
        ref = x @ w.T
        for fmt in per_layer:
            per_layer[fmt].append(_snr_db(_qgemm(x.to(device), w.to(device), fmt).cpu(), ref))
    layer = {fmt: sum(v) / len(v) for fmt, v in per_layer.items()}
    g = torch.Generator().manual_seed(1234)
    h0 = _activations(m, k, g)
    ws = [torch.randn(k, k, generator=g) / math.sqrt(k) for _ in range(depth)]

    chains = {}
    for fmt in (None, "fp32", "ue8m0"):
        h = h0.clone().to(device)
        for w in ws:
            w = w.to(device)
            y = h @ w.T if fmt is None else _qgemm(h, w, fmt)
            h = h + y / math.sqrt(depth)  # a residual stream: each layer adds a small update
        chains[fmt] = h.cpu()
    deep = {fmt: _snr_db(chains[fmt], chains[None]) for fmt in ("fp32", "ue8m0")}
    return {
        "shape": {"m": m, "k": k, "n": n}, "depth": depth, "seeds": seeds,
        "layer_snr_db": {f: round(v, 3) for f, v in layer.items()},
        "layer_bits": {f: round(v / DB_PER_BIT, 3) for f, v in layer.items()},
        "layer_bits_lost_ue8m0": round((layer["fp32"] - layer["ue8m0"]) / DB_PER_BIT, 3),
        "depth_snr_db": {f: round(v, 3) for f, v in deep.items()},
        "depth_bits_lost_ue8m0": round((deep["fp32"] - deep["ue8m0"]) / DB_PER_BIT, 3),
    }
