"""MXFP4 -> bf16 dequantization as one fused kernel (``torch.compile``), for the reference on CUDA.

The eager decode (:func:`references.formats.mx.mx_dequantize`) makes four passes over the weights
(byte -> int64 index, table lookup, scale multiply); at GPT-OSS-120B size that is ~14 bytes of
traffic per weight, against ~2.6 for one pass that reads the packed codes and writes bf16.
The same table and the same exact products: a code times a power of two is exact in fp32 and in
bf16. Exactness is not assumed: the first use on a device compares every (byte, scale) pair with
the eager decode bit for bit, and falls back to the eager decode if one differs (``status()``).
"""

from __future__ import annotations

import torch

from references.formats.e2m1 import e2m1_table

_STATE: dict = {}


def _core(packed: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Experts ``ids`` of ``packed [E, R, K/2]`` uint8 with ``scales [E, R, K/32]`` uint8 E8M0 (no
    0xFF) -> bf16 ``[len(ids), R, K]``; the gather is fused into the decode (no copy of the codes)."""
    p, s = packed[ids], scales[ids]
    vals = torch.stack([table[(p & 0xF).to(torch.int64)], table[(p >> 4).to(torch.int64)]], dim=-1)
    bits = torch.where(s == 0, 1 << 22, s.to(torch.int32) << 23)   # 2^(s-127); s = 0 is subnormal
    out = vals.reshape(*p.shape[:-1], -1, 32) * bits.view(torch.float32).unsqueeze(-1)
    return out.to(torch.bfloat16).flatten(-2)


def _compiled():
    if "fn" not in _STATE:
        _STATE["fn"] = torch.compile(_core, dynamic=True, fullgraph=True)
    return _STATE["fn"]


def _self_check(device, eager) -> str | None:
    """None if the fused decode equals ``eager(packed, scales)`` on every byte and every finite scale."""
    packed = torch.arange(256, dtype=torch.uint8, device=device).repeat(255, 1, 1)     # [255, 1, 256]
    scales = torch.arange(255, dtype=torch.uint8, device=device).view(255, 1, 1).expand(255, 1, 16).contiguous()
    ids = torch.arange(254, -1, -1, device=device)                                      # reversed: the gather too
    try:
        got = _compiled()(packed, scales, ids, e2m1_table(device))
    except Exception as e:  # noqa: BLE001 - any compile failure means: use the eager decode
        return f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    want = eager(packed[ids], scales[ids])
    bad = int((got.view(torch.int16) != want.view(torch.int16)).sum())
    return None if bad == 0 else f"{bad} of {want.numel()} values differ from the eager decode"


def status(device, eager) -> str | None:
    """Why the fused decode is not used on ``device`` (None: it is used); ``eager(packed, scales)``
    is the decode it must equal (``references.formats.mx.mxfp4_bf16_eager``)."""
    key = str(device)
    if key not in _STATE:
        _STATE[key] = _self_check(device, eager)
    return _STATE[key]


def mxfp4_to_bf16(packed: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Experts ``ids`` of ``[E, ..., K/2]`` codes with ``[E, ..., K/32]`` finite E8M0 scales -> bf16
    ``[len(ids), ..., K]`` (None if compiling for this shape fails: the caller decodes eagerly)."""
    e, mid = packed.shape[0], packed.shape[1:-1]
    try:
        out = _compiled()(packed.reshape(e, -1, packed.shape[-1]), scales.reshape(e, -1, scales.shape[-1]),
                          ids.to(packed.device), e2m1_table(packed.device))
    except Exception as err:  # noqa: BLE001 - a recompile that fails: the eager decode from now on
        _STATE[str(packed.device)] = f"torch.compile failed on a new shape: {type(err).__name__}"
        return None
    return out.reshape(ids.numel(), *mid, -1)
