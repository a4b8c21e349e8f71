"""Batching routed experts for the reference: rows sorted by expert, experts of similar row counts
padded to one count and stacked, so a layer is one batched GEMM per batch instead of one GEMM (and
a dozen small kernels) per expert.

Padding wastes at most 1/8 of a batch's rows (counts round up to a step of an eighth of their
power of two), an expert with more than ``max_rows`` rows is split into slices, and a batch holds
at most ``max_experts`` experts (the dequantization budget, or the activations' budget, a function
of the rows per expert). Pure index arithmetic: no numerics. The plan is made on the host from one copy
of the expert ids (sorted there: numpy's stable sort of int16 keys is a radix sort) and sent to the device in one pinned, unwaited copy with each
row's token and slot, so the batches are enqueued without waiting on the device and without index
kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class Batch:
    experts: torch.Tensor   # [B] expert ids (int64; an expert split into slices appears once per slice)
    rows: torch.Tensor      # [B, P] flat (token, slot) indices into topk_ids.reshape(-1); -1 = padding
    tokens: torch.Tensor    # [B, P] the token of each row (rows // k); T (one past the last) for padding
    slots: torch.Tensor     # [B, P] rows, with T * k (one past the last) for padding


def padded_count(n: int) -> int:
    """``n`` rounded up to a multiple of max(1, 2^floor(log2 n) / 8): at most 12.5% padding."""
    step = max(1, (1 << (max(n, 1).bit_length() - 1)) // 8)
    return -(-n // step) * step


def batches(topk_ids: torch.Tensor, num_experts: int, max_rows: int, max_experts: int | Callable[[int], int],
            device: torch.device | str | None = None):
    """Yield :class:`Batch` es covering every (token, slot) row of ``topk_ids [T, k]`` exactly once,
    on ``device`` (default: that of ``topk_ids``); a batch of ``p`` rows per expert holds at most
    ``max_experts`` (or ``max_experts(p)``) experts. Planned on the host: pass ``topk_ids`` already
    there to spare a device-to-host copy."""
    device = topk_ids.device if device is None else torch.device(device)
    t = topk_ids.shape[0] if topk_ids.dim() else 1
    k = max(1, math.prod(topk_ids.shape[1:]))
    flat = topk_ids.reshape(-1).to("cpu", torch.int64).numpy()
    order = np.argsort(flat.astype(np.int16) if num_experts <= 1 << 15 else flat, kind="stable")
    counts = np.bincount(flat, minlength=num_experts).tolist()
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
    yield from _batches(plan, order, t, k, device)


def _batches(plan, order, t: int, k: int, device: torch.device):
    """Each batch's expert ids, rows, tokens and slots, built on the host (numpy: single-threaded, so
    no wait for a thread pool) and moved in one copy."""
    if not plan:
        return
    es, rows = [], []
    for p, group in plan:
        e, first, n = (np.array(c, dtype=np.int64) for c in zip(*group))
        col = np.arange(p)
        i = np.where(col < n[:, None], first[:, None] + col, -1).reshape(-1)
        es.append(e)
        rows.append(np.where(i >= 0, order[np.maximum(i, 0)], -1))
    r = np.concatenate(rows)
    host = torch.from_numpy(np.concatenate(es + [r, np.where(r >= 0, r // k, t), np.where(r >= 0, r, t * k)]))
    if device.type == "cuda":
        host = host.pin_memory()             # so the copy does not wait for the host
    sizes = [(len(g), p) for p, g in plan]
    dev = host.to(device, non_blocking=True).split([b for b, _ in sizes] + [b * p for b, p in sizes] * 3)
    n = len(plan)
    for j, (b, p) in enumerate(sizes):
        yield Batch(dev[j], *(dev[n * (1 + m) + j].view(b, p) for m in range(3)))
