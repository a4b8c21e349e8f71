"""Preprocessing shared by backends: re-ordering fc1 rows, padding MX weights to a kernel multiple."""

from __future__ import annotations

from dataclasses import replace

import torch

from references.formats import QTensor
from references.layouts import GateUpOrder, convert_gate_up, pad_dim, pad_gate_up
from references.moe import Experts


def experts_in_order(ex: Experts, order: GateUpOrder) -> Experts:
    """The same experts with fc1 weight, block scales and bias re-ordered to ``order``."""
    conv = lambda t, dim=-2: None if t is None else convert_gate_up(t, ex.order, order, dim=dim)  # noqa: E731
    w1 = QTensor(conv(ex.w1.data), conv(ex.w1.scale), ex.w1.global_scale)
    return replace(ex, w1=w1, b1=conv(ex.b1, -1), order=order)


def pad_mx_experts(ex: Experts, multiple: int = 128) -> Experts:
    """MX experts with hidden and intermediate padded to ``multiple`` (gate and up halves each):
    packed codes pad with 0 (value 0), E8M0 scales with 127 (2^0), so padded blocks stay finite."""
    per_byte = 2 if ex.fmt.element == "e2m1" else 1
    o = ex.order
    w1 = QTensor(pad_dim(pad_gate_up(ex.w1.data, o, multiple), -1, multiple // per_byte),
                 pad_dim(pad_gate_up(ex.w1.scale, o, multiple, value=127), -1, multiple // 32, value=127))
    w2 = QTensor(pad_dim(pad_dim(ex.w2.data, -2, multiple), -1, multiple // per_byte),
                 pad_dim(pad_dim(ex.w2.scale, -2, multiple, value=127), -1, multiple // 32, value=127))
    b1 = None if ex.b1 is None else pad_gate_up(ex.b1, o, multiple, dim=-1)
    b2 = None if ex.b2 is None else pad_dim(ex.b2, -1, multiple)
    return replace(ex, w1=w1, w2=w2, b1=b1, b2=b2)


def pad_tokens_hidden(x: torch.Tensor, multiple: int = 128) -> torch.Tensor:
    return pad_dim(x, -1, multiple)


def first_output(out) -> torch.Tensor:
    """Kernel ops that return ``[output]`` (or a tuple) give their first element; tensors pass through."""
    return out[0] if isinstance(out, (list, tuple)) else out
