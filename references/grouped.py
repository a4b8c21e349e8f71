"""Batching routed experts for the reference: rows sorted by expert, experts of similar row counts
padded to one count and stacked, so a layer is one batched GEMM per batch instead of one GEMM (and
a dozen small kernels) per expert.

Padding wastes at most 1/8 of a batch's rows (counts round up to a step of an eighth of their
power of two), an expert with more than ``max_rows`` rows is split into slices, and a batch holds
at most ``max_experts`` experts (the dequantization budget). Pure index arithmetic: no numerics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    experts: torch.Tensor   # [B] expert ids (int64; an expert split into slices appears once per slice)
    rows: torch.Tensor      # [B, P] flat (token, slot) indices into topk_ids.reshape(-1); -1 = padding


def padded_count(n: int) -> int:
    """``n`` rounded up to a multiple of max(1, 2^floor(log2 n) / 8): at most 12.5% padding."""
    step = max(1, (1 << (max(n, 1).bit_length() - 1)) // 8)
    return -(-n // step) * step


def batches(topk_ids: torch.Tensor, num_experts: int, max_rows: int, max_experts: int):
    """Yield :class:`Batch` es covering every (token, slot) row exactly once."""
    flat = topk_ids.reshape(-1).to(torch.int64)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    slices, start = [], 0                    # (expert, first sorted row, rows)
    for e, n in enumerate(counts):
        for s in range(0, n, max_rows):
            slices.append((e, start + s, min(max_rows, n - s)))
        start += n
    by_size: dict[int, list] = {}
    for sl in slices:
        by_size.setdefault(padded_count(sl[2]), []).append(sl)
    for p, group in sorted(by_size.items()):
        for g0 in range(0, len(group), max_experts):
            yield _batch(group[g0:g0 + max_experts], p, order)


def _batch(group, p: int, order: torch.Tensor) -> Batch:
    dev = order.device
    idx = torch.full((len(group), p), -1, dtype=torch.int64)
    for i, (_, first, n) in enumerate(group):
        idx[i, :n] = torch.arange(first, first + n)
    idx = idx.to(dev)
    rows = torch.where(idx >= 0, order[idx.clamp(min=0)], idx)
    return Batch(torch.tensor([e for e, _, _ in group], dtype=torch.int64, device=dev), rows)
