"""Batching routed experts for the reference: rows sorted by expert, experts of similar row counts
padded to one count and stacked, so a layer is one batched GEMM per batch instead of one GEMM (and
a dozen small kernels) per expert.

Padding wastes at most 1/8 of a batch's rows (counts round up to a step of an eighth of their
power of two), an expert with more than ``max_rows`` rows is split into slices, and a batch holds
at most ``max_experts`` experts (the dequantization budget, or the activations' budget, a function
of the rows per expert). Pure index arithmetic: no numerics. The plan is made on the host from the
per-expert counts (one device-to-host copy) and sent to the device in one copy, so the batches are
enqueued without waiting on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Batch:
    experts: torch.Tensor   # [B] expert ids (int64; an expert split into slices appears once per slice)
    rows: torch.Tensor      # [B, P] flat (token, slot) indices into topk_ids.reshape(-1); -1 = padding


def padded_count(n: int) -> int:
    """``n`` rounded up to a multiple of max(1, 2^floor(log2 n) / 8): at most 12.5% padding."""
    step = max(1, (1 << (max(n, 1).bit_length() - 1)) // 8)
    return -(-n // step) * step


def batches(topk_ids: torch.Tensor, num_experts: int, max_rows: int, max_experts: int | Callable[[int], int]):
    """Yield :class:`Batch` es covering every (token, slot) row exactly once; a batch of ``p`` rows
    per expert holds at most ``max_experts`` (or ``max_experts(p)``) experts."""
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
    plan = []                                # (padded rows, slices) per batch
    for p, group in sorted(by_size.items()):
        step = max(1, max_experts(p) if callable(max_experts) else max_experts)
        plan += [(p, group[g0:g0 + step]) for g0 in range(0, len(group), step)]
    yield from _batches(plan, order)


def _batches(plan, order: torch.Tensor):
    """The batches' expert ids and row indices, built on the host and moved in one copy."""
    if not plan:
        return
    host = [], []
    for p, group in plan:
        e, first, n = (torch.tensor(c, dtype=torch.int64) for c in zip(*group))
        col = torch.arange(p)
        host[0].append(e)
        host[1].append(torch.where(col < n[:, None], first[:, None] + col, -1).reshape(-1))
    sizes = [(len(g), p) for p, g in plan]
    dev = torch.cat(host[0] + host[1]).to(order.device).split([b for b, _ in sizes] + [b * p for b, p in sizes])
    for e, i, (b, p) in zip(dev[:len(plan)], dev[len(plan):], sizes):
        i = i.view(b, p)
        yield Batch(e, torch.where(i >= 0, order[i.clamp(min=0)], i))
