"""Batching routed experts for the reference: rows sorted by expert, experts of similar row counts
padded to one count and stacked, so a layer is one batched GEMM per batch instead of one GEMM (and
a dozen small kernels) per expert.

Padding wastes at most 1/8 of a batch's rows (counts round up to a step of an eighth of their
power of two), an expert with more than ``max_rows`` rows is split into slices, and a batch holds
at most ``max_experts`` experts (the dequantization budget, or the activations' budget, a function
of the rows per expert). Pure index arithmetic: no numerics. The plan is made on the host from one copy
of the expert ids (sorted there: numpy's stable sort of int16 keys is a radix sort) and sent to the
device in pinned, unwaited copies with each row's token and slot (from ``SPLIT_ROWS`` rows on, the
first batch's alone first, so the device starts while the rest is planned), so the batches are
enqueued without waiting on the device and without index kernels.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch


# From this many (token, slot) rows on, the first batch is planned and sent before the rest: on the
# 2-core CPU the first batch is ready after 200-220 us instead of 270-420 at 4096 tokens (GPT-OSS-120B,
# DeepSeek-V4-Flash), while at 512 rows the split costs more than it saves (110 -> 118 us).
SPLIT_ROWS = 4096


class Batch:
    """``experts [B]`` (int64 expert ids; an expert split into slices appears once per slice), each with
    ``rows_per_expert`` (P) rows: ``tokens [B, P]`` (the token of each row; T, one past the last, for
    padding) and ``slots [B, P]`` (flat (token, slot) index into ``topk_ids.reshape(-1)``; ``pad_slot`` =
    T * k for padding). ``rows_of`` gives (tokens, slots) when they are first read: the first batch's
    experts go to the device before its rows are worked out, so its weights are decoded meanwhile."""

    def __init__(self, experts: torch.Tensor, rows_per_expert: int, pad_slot: int,
                 rows_of: Callable[[], tuple[torch.Tensor, torch.Tensor]]):
        self.experts, self.rows_per_expert, self.pad_slot, self._rows_of = experts, rows_per_expert, pad_slot, rows_of

    @functools.cached_property
    def _tokens_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._rows_of()

    @property
    def tokens(self) -> torch.Tensor:
        return self._tokens_slots[0]

    @property
    def slots(self) -> torch.Tensor:
        return self._tokens_slots[1]

    @property
    def rows(self) -> torch.Tensor:
        """``slots`` with -1 for padding."""
        return torch.where(self.slots == self.pad_slot, -1, self.slots)


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
    counts = np.bincount(flat, minlength=num_experts)
    e, first, n = _slices(counts, max_rows)
    p = _padded_counts(n)
    plan, by_p = [], np.argsort(p, kind="stable")        # (padded rows, slice indices) per batch
    for q, at in zip(*np.unique(p[by_p], return_index=True)):
        group = by_p[at:at + int((p == q).sum())]
        step = max(1, max_experts(int(q)) if callable(max_experts) else max_experts)
        plan += [(int(q), group[g0:g0 + step]) for g0 in range(0, len(group), step)]
    plan.sort(key=lambda pg: -pg[0] * len(pg[1]))   # most rows first: the device's first batch is long, so the host gets ahead
    if len(plan) > 1 and flat.size >= SPLIT_ROWS:
        # the first batch on its own: its experts sent at once (the caller decodes their weights while the
        # host works out the rows), its rows from its own experts' rows (a sort of those alone) when first
        # read; the device starts on it while the host sorts every row for the rest
        q, g = plan[0]

        def head_rows():
            head_first, head_order = _head_rows(flat, counts, e, first, g)
            return _rows(g, q, head_first, n, head_order, t, k, device)
        yield Batch(_to_device([e[g]], device, "experts"), int(q), t * k, head_rows)
        plan = plan[1:]
    yield from _batches(plan, e, first, n, _sorted_rows(flat, num_experts), t, k, device)


def _sorted_rows(flat: np.ndarray, num_experts: int) -> np.ndarray:
    """The (token, slot) rows in expert order, stable (numpy's stable sort of int16 keys is a radix sort)."""
    return np.argsort(flat.astype(np.int16) if num_experts <= 1 << 15 else flat, kind="stable")


def _head_rows(flat, counts, e, first, slices):
    """``(first, order)`` for the slices ``slices`` alone: the rows of their experts in expert order,
    and each slice's first row in that shorter order (the same rows :func:`_sorted_rows` gives them)."""
    experts = np.unique(e[slices])
    mine = np.zeros(len(counts), dtype=bool)
    mine[experts] = True
    rows = np.flatnonzero(mine[flat])
    order = rows[_sorted_rows(flat[rows], len(counts))]
    local = np.zeros(len(counts), dtype=np.int64)
    local[experts] = np.cumsum(counts[experts]) - counts[experts]
    head_first = first.copy()
    head_first[slices] = first[slices] - (np.cumsum(counts) - counts)[e[slices]] + local[e[slices]]
    return head_first, order


def _slices(counts: np.ndarray, max_rows: int):
    """``(expert, first sorted row, rows)`` arrays of every slice, in expert order; an expert with more
    than ``max_rows`` rows is cut into slices of ``max_rows`` (and the rest), one with none has none."""
    pieces = -(-counts // max_rows)
    e = np.repeat(np.arange(len(counts)), pieces)
    piece = np.arange(len(e)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    first = np.repeat(np.cumsum(counts) - counts, pieces) + piece * max_rows
    return e, first, np.minimum(max_rows, counts[e] - piece * max_rows)


def _padded_counts(n: np.ndarray) -> np.ndarray:
    """:func:`padded_count` of each of ``n`` (frexp's exponent is the bit length, exact below 2^53)."""
    bits = np.frexp(np.maximum(n, 1).astype(np.float64))[1].astype(np.int64)
    step = np.maximum(1, (np.int64(1) << (bits - 1)) // 8)
    return -(-n // step) * step


def _batches(plan, e, first, n, order, t: int, k: int, device: torch.device):
    """Each batch's expert ids, tokens and slots, built on the host in numpy (single-threaded, no
    waiting for a thread pool; all batches at once) and moved in one copy; the views per batch are
    taken as the batches are used, while the device works."""
    if not plan:
        return
    sl = np.concatenate([g for _, g in plan])            # slices in batch order
    per = np.repeat(np.array([q for q, _ in plan]), [len(g) for _, g in plan])   # their padded rows
    slots = _slots(sl, per, first, n, order, t * k)
    dev = _to_device([e[sl], slots // k, slots], device)   # slot s is token s // k; padding: t, one past the last
    ne, nr, a, r0 = len(sl), len(slots), 0, 0
    for q, g in plan:
        b = len(g)
        rows = (dev[ne + r0:ne + r0 + b * q].view(b, q), dev[ne + nr + r0:ne + nr + r0 + b * q].view(b, q))
        yield Batch(dev[a:a + b], int(q), t * k, lambda rows=rows: rows)
        a, r0 = a + b, r0 + b * q


def _rows(g, q: int, first, n, order, t: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, slots) ``[len(g), q]`` of one batch's slices ``g`` on ``device``, as :func:`_batches` lays them."""
    slots = _slots(g, np.full(len(g), q), first, n, order, t * k)
    dev = _to_device([slots // k, slots], device)
    return dev[:slots.size].view(len(g), q), dev[slots.size:].view(len(g), q)


def _slots(sl, per, first, n, order, pad_slot: int) -> np.ndarray:
    """The flat (token, slot) index of every row of the slices ``sl``, ``per`` padded rows each (slice i's
    rows are ``order[first[i]:first[i] + n[i]]``), ``pad_slot`` for padding."""
    col = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
    i = np.where(col < np.repeat(n[sl], per), np.repeat(first[sl], per) + col, len(order))
    return np.append(order, pad_slot).take(i)


_STAGING: dict = {}   # (str(device), buffer name) -> (pinned int64 buffer, event after the last copy out of it)


def _to_device(parts, device: torch.device, buffer: str = "rows") -> torch.Tensor:
    """``parts`` (int64 numpy arrays) concatenated on ``device`` in one copy; to CUDA through a pinned
    buffer (one per ``buffer`` name) kept between calls (pinning anew costs 0.3-0.5 ms of host time per
    forward on the H200 host, benchmarks/host_overhead.py), so the copy does not wait for the host either."""
    n = sum(len(p) for p in parts)
    if device.type != "cuda":
        return torch.from_numpy(np.concatenate(parts)).to(device)
    key = (str(device), buffer)
    buf, done = _STAGING.get(key, (None, None))
    if buf is None or buf.numel() < n:
        buf = torch.empty(max(n, 1024, 2 * (0 if buf is None else buf.numel())), dtype=torch.int64, pin_memory=True)
    elif done is not None:
        done.synchronize()   # the last copy out of it has finished (its forward waited for the device)
    np.concatenate(parts, out=buf.numpy()[:n])
    dev = buf[:n].to(device, non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(device))
    _STAGING[key] = (buf, done)
    return dev
