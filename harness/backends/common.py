"""Helpers shared by backends: padding to a kernel multiple, the layer combine."""

from __future__ import annotations

import torch

from harness.cases import CaseData
from references.layouts import convert_gate_up, pad_dim, pad_gate_up
from references.moe import dense_mlp
from references.routing import combine_shared


def finish_layer(routed: torch.Tensor, data: CaseData) -> torch.Tensor:
    """Caller-side combine the kernels leave to the framework: ``rsf * routed + shared``."""
    w, c = data.weights, data.case
    shared = None
    if w.shared_w1 is not None:
        shared = dense_mlp(data.x, w.shared_w1, w.shared_w2, activation=c.swiglu, intermediate_dtype=c.torch_dtype)
    return combine_shared(routed, shared, c.routed_scaling_factor)


def fc1_in_order(w, order: str):
    """The fused fc1 weight, its block scales and its bias re-ordered from the checkpoint's gate/up
    row order to ``order`` (absent scales/bias stay None)."""
    conv = lambda t, dim=-2: None if t is None else convert_gate_up(t, w.order, order, dim=dim)  # noqa: E731
    return conv(w.w1), conv(w.w1_scale), conv(w.b1, -1)


def mx_weights_for_kernel(data: CaseData, order: str, multiple: int = 128, fp4: bool = True):
    """fc1/fc2 MX weights, scales and biases in ``order`` with H and I padded to ``multiple``.

    Returns ``(w1, s1, w2, s2, b1, b2)``; packed bytes pad with zero codes (value 0), scales with
    127 (2^0) so padded blocks stay finite.
    """
    w = data.weights
    per_byte = 2 if fp4 else 1
    w1, s1, b1o = fc1_in_order(w, order)
    w1 = pad_dim(pad_gate_up(w1, order, multiple), -1, multiple // per_byte)
    s1 = pad_dim(pad_gate_up(s1, order, multiple, value=127), -1, multiple // 32, value=127)
    w2 = pad_dim(pad_dim(w.w2, -2, multiple), -1, multiple // per_byte)
    s2 = pad_dim(pad_dim(w.w2_scale, -2, multiple, value=127), -1, multiple // 32, value=127)
    b1 = b2 = None
    if w.b1 is not None:
        b1 = pad_gate_up(b1o, order, multiple, dim=-1)
        b2 = pad_dim(w.b2, -1, multiple)
    return w1, s1, w2, s2, b1, b2


def pad_tokens_hidden(x: torch.Tensor, multiple: int = 128) -> torch.Tensor:
    return pad_dim(x, -1, multiple)
