"""MXFP4 -> bf16 dequantization in one pass (the Triton kernel of ``mx_triton``), for the reference on CUDA.

The eager decode (:func:`references.formats.mx.mx_dequantize`) makes several passes over the weights
(byte -> int64 index, table lookup, scale multiply), ~14 bytes of traffic per weight; this kernel
reads each packed byte and its scale once and writes two bf16 values (~2.6 bytes per weight), and
gathers the batch's experts itself. The same exact values: an E2M1 code times a power of two is exact
in fp32 and in bf16 (OCP MX v1.0 sections 5.3.3, 5.4.1, 6.2). Exactness is not assumed: the first use on
a device compares every (byte, scale) pair with the eager decode bit for bit, and falls back to the
eager decode if one differs or the kernel cannot run (``status()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_STATE: dict = {}


@dataclass
class DecodeTile:
    """``block`` packed bytes per program, ``index`` (each value loads its own byte; else ``join``),
    ``warps``. The default was the fastest of 12 on the H200 (3.6 TB/s read + written,
    benchmarks/profile-h200.json)."""

    block: int = 4096
    index: bool = False
    warps: int = 4


DECODE = DecodeTile()
MIN_SCALE = 4      # E8M0 codes below it make subnormal products (6 * 2^(3-127) < 2^-126): eager decode there


def _kernel():
    """The Triton kernel (triton is an optional dependency: imported on first use)."""
    if "kernel" not in _STATE:
        from references.formats.mx_triton import decode_mxfp4
        _STATE["kernel"] = decode_mxfp4
    return _STATE["kernel"]


def _run(packed: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Experts ``ids`` of ``packed [E, R, K/2]`` (uint8) with ``scales [E, R, K/32]`` -> bf16 ``[B, R, K]``."""
    e, r, kb = packed.shape
    n = r * kb
    out = torch.empty(ids.numel(), r, 2 * kb, dtype=torch.bfloat16, device=packed.device)
    if out.numel():
        t = DECODE
        grid = (ids.numel(), -(-n // t.block))
        _kernel()[grid](packed.contiguous(), scales.contiguous(), ids.to(torch.int64).contiguous(), out, n,
                        BLOCK=t.block, INDEX=t.index, num_warps=t.warps)
    return out


def _self_check(device, eager) -> str | None:
    """None if the kernel equals ``eager(packed, scales)`` on every byte and every scale it is used for."""
    n = 255 - MIN_SCALE                                                                  # codes MIN_SCALE..254
    packed = torch.arange(256, dtype=torch.uint8, device=device).repeat(n, 2, 1)         # [n, 2, 256]
    scales = torch.arange(MIN_SCALE, 255, dtype=torch.uint8, device=device).view(n, 1, 1).expand(n, 2, 16).contiguous()
    ids = torch.arange(n - 1, -1, -1, device=device)                                     # reversed: the gather too
    try:
        got = _run(packed, scales, ids)
    except Exception as err:  # noqa: BLE001 - no triton, no GPU, a compile error: the eager decode
        return f"the Triton decode cannot run: {type(err).__name__}: {' '.join(str(err).split())[:160]}"
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


def mxfp4_to_bf16(packed: torch.Tensor, scales: torch.Tensor, ids: torch.Tensor) -> torch.Tensor | None:
    """Experts ``ids`` of ``[E, ..., K/2]`` codes with ``[E, ..., K/32]`` finite E8M0 scales -> bf16
    ``[len(ids), ..., K]`` (None if the kernel fails here: the caller decodes eagerly)."""
    e, mid = packed.shape[0], packed.shape[1:-1]
    try:
        out = _run(packed.reshape(e, -1, packed.shape[-1]), scales.reshape(e, -1, scales.shape[-1]), ids)
    except Exception as err:  # noqa: BLE001
        _STATE[str(packed.device)] = f"the Triton decode failed: {type(err).__name__}"
        return None
    return out.reshape(ids.numel(), *mid, -1)
