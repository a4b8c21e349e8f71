"""fc1's output to fc2's input in one pass on CUDA: fc1's bias, the SwiGLU and the bf16 rounding of
:func:`references.moe.between_gemms` (``Precision.FP32``, bf16 intermediate, no re-quantization) as one
Triton kernel (``references.act_triton``) instead of about ten eager passes over fp32 tensors.

The same bits as the eager code, not assumed: the first use on a device for given SwiGLU parameters,
gate/up order and bias dtype runs both on about a million gate/up pairs (normals at magnitudes
2^-30..2^30, the exp overflow and underflow edges, the clamp limits and their neighbours, ±0, ±inf,
NaN, subnormals; the bias rows drawn from the same values) and compares them bit for bit (a NaN
equal to a NaN); if one differs or the kernel cannot run, the eager code is used (``status()``)."""

from __future__ import annotations

import os
from typing import Callable

import torch

from references.layouts import GateUpOrder, fuse_gate_up

_STATE: dict = {}
BLOCK = 1024
COLS = 1500                                                  # the check's I
ROWS = 7                                                     # and rows per batch
# (gate column origin, up column origin, step): GATE_UP in units of I, INTERLEAVED in columns
_COLUMNS = {GateUpOrder.GATE_UP: (0, 1, 1), GateUpOrder.UP_GATE: (1, 0, 1), GateUpOrder.INTERLEAVED: (0, 1, 2)}


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _options() -> dict:
    # compile options (the interpreter takes none): no fp contraction, and libdevice without flush to
    # zero, as nvcc builds PyTorch's CUDA kernels (no --use_fast_math, so no -ftz)
    return {} if _interpreted() else {"num_warps": 4, "enable_fp_fusion": False, "enable_reflect_ftz": False}


def _launch(h: torch.Tensor, order: GateUpOrder, alpha: float, beta: float, limit: float | None,
            b1: torch.Tensor | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
    """``h [..., P, 2I]`` -> bf16 ``[..., P, I]``; with ``b1 [E, 2I]``, ``h`` is ``[B, P, 2I]`` and row
    ``ids[b]`` of ``b1`` is added to batch ``b`` first."""
    from references.act_triton import swiglu_bf16
    two_i = h.shape[-1]
    i = two_i // 2
    out = torch.empty(*h.shape[:-1], i, dtype=torch.bfloat16, device=h.device)
    rows = h.numel() // two_i if two_i else 0
    if rows and i:
        g0, u0, step = _COLUMNS[order]
        bias = b1 is not None
        if bias and (h.dim() != 3 or ids is None or ids.shape != h.shape[:1] or b1.shape[-1] != two_i):
            raise ValueError(f"act_fused: b1 {tuple(b1.shape)} / ids {None if ids is None else tuple(ids.shape)} "
                             f"do not fit h {tuple(h.shape)}")
        h = h.contiguous()
        swiglu_bf16[(rows, -(-i // BLOCK))](h, b1.contiguous() if bias else h, ids.contiguous() if bias else h, out, i,
                                            h.shape[-2] if h.dim() > 1 else 1, float(alpha), float(beta),
                                            float(0.0 if limit is None else limit),
                                            GATE0=g0, UP0=u0, STEP=step, LIMIT=limit is not None, BIAS=bias,
                                            LIBDEVICE=not _interpreted(), BLOCK=BLOCK, **_options())
    return out


def _probe(limit: float | None, alpha: float, size: int = 1 << 20) -> torch.Tensor:
    """fp32 values where SwiGLU's operations have edges: random normals at magnitudes 2^-30..2^30, the
    exp argument's overflow / underflow / subnormal range (|alpha x| near 87-104), the limits and their
    fp32 neighbours, and the special values; about 2^20 of them."""
    g = torch.Generator().manual_seed(0)
    mags = 2.0 ** torch.randint(-30, 31, (size,), generator=g).to(torch.float32)
    vals = [torch.randn(size, generator=g) * mags]
    edge = torch.linspace(80.0, 110.0, max(size >> 6, 256)) / max(abs(alpha), 1e-30)
    vals += [edge, -edge]
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -1e-40, 1.0, -1.0,
                             torch.finfo(torch.float32).max, -torch.finfo(torch.float32).max])
    vals.append(specials)
    if limit is not None:
        at = torch.tensor([limit, -limit], dtype=torch.float32)
        vals += [at, torch.nextafter(at, at + 1), torch.nextafter(at, at - 1), torch.linspace(-2 * limit, 2 * limit, 4099)]
    v = torch.cat(vals).to(torch.float32)
    return v[torch.randperm(v.numel(), generator=g)]


def _self_check(device, order: GateUpOrder, alpha, beta, limit, eager: Callable, bias_dtype=None,
                size: int = 1 << 20) -> str | None:
    v = _probe(limit, alpha, size)
    g = torch.Generator().manual_seed(1)
    gate, up = v, v[torch.randperm(v.numel(), generator=g)]   # every value as gate and as up, in other pairs
    pad = -gate.numel() % (COLS * ROWS)                    # rows of COLS (a full block and a tail), ROWS a batch
    gate, up = torch.cat([gate, gate[:pad]]).view(-1, COLS), torch.cat([up, up[:pad]]).view(-1, COLS)
    h = fuse_gate_up(gate, up, order, dim=-1).view(-1, ROWS, 2 * COLS).to(device)
    b1 = ids = None
    if bias_dtype is not None:                             # 5 bias rows of probe values, in a random order
        b1 = v[torch.randint(0, v.numel(), (5, 2 * COLS), generator=g)].to(bias_dtype).to(device)
        ids = torch.randint(0, 5, (h.shape[0],), generator=g).to(device)
    try:
        got = _launch(h, order, alpha, beta, limit, b1, ids)
    except Exception as err:  # noqa: BLE001 - no triton, no GPU, a compile error: the eager code
        return f"the Triton SwiGLU cannot run: {type(err).__name__}: {' '.join(str(err).split())[:160]}"
    full = eager(h if b1 is None else h + b1.index_select(0, ids).to(torch.float32).unsqueeze(-2))  # as moe adds b1
    want = full.to(torch.bfloat16)                         # bf16 values, possibly held in fp32
    if want.shape != got.shape or not bool(((want.to(full.dtype) == full) | full.isnan()).all()):
        raise ValueError(f"act_fused: eager gives {full.dtype} {tuple(full.shape)} that is not bf16 {tuple(got.shape)}")
    differ = (got.view(torch.int16) != want.view(torch.int16)) & ~(got.isnan() & want.isnan())
    bad = int(differ.sum())
    if bad == 0:
        return None
    b, r, c = (int(i) for i in differ.nonzero()[0])
    return (f"the Triton SwiGLU: {bad} of {want.numel()} values differ from the eager code, e.g. gate "
            f"{gate[b * ROWS + r, c].item()!r} up {up[b * ROWS + r, c].item()!r}"
            f"{'' if b1 is None else ' + bias'}: {got[b, r, c].item()!r} vs {want[b, r, c].item()!r}")


def status(device, order: GateUpOrder, alpha: float, beta: float, limit: float | None, eager: Callable,
           bias_dtype: torch.dtype | None = None) -> str | None:
    """Why the fused SwiGLU is not used on ``device`` for these parameters and fc1 bias dtype (None: it
    is used); ``eager(h)`` maps fc1's output ``[..., 2I]`` to the bf16 values it must equal bit for bit."""
    key = (str(device), GateUpOrder(order), float(alpha), float(beta), limit, bias_dtype)
    if key not in _STATE:
        _STATE[key] = _self_check(device, GateUpOrder(order), alpha, beta, limit, eager, bias_dtype)
    return _STATE[key]


def swiglu_to_bf16(h: torch.Tensor, order: GateUpOrder, alpha: float, beta: float, limit: float | None,
                   b1: torch.Tensor | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
    """``bf16(swiglu(gate, up))`` ``[..., I]`` of ``h [..., 2I]`` fp32 (gate/up in ``order``; plus row
    ``ids[b]`` of ``b1`` for batch ``b`` of ``h [B, P, 2I]``); callers check :func:`status` first."""
    return _launch(h, GateUpOrder(order), alpha, beta, limit, b1, ids)
