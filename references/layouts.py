"""Weight layouts and their inverses: gate/up row orders, SM90 mixed-input interleaves, padding.

Row orders of a fused fc1 weight ``[..., 2I, K]`` (rows on ``dim``):
- ``interleaved``: gate rows at even indices, up rows at odd (GPT-OSS checkpoints);
- ``gate_up``: ``[gate; up]`` (vLLM Triton / DeepGEMM paths);
- ``up_gate``: ``[up; gate]`` (FlashInfer SM90 cutlass W4A16, TRT-LLM w3_w1 order).
"""

from __future__ import annotations

import enum

import torch


class GateUpOrder(enum.Enum):
    """Row order of a fused gate/up (fc1) tensor."""

    INTERLEAVED = "interleaved"  # gate at even rows, up at odd rows (GPT-OSS checkpoints)
    GATE_UP = "gate_up"          # [gate; up] (vLLM Triton, DeepGEMM)
    UP_GATE = "up_gate"          # [up; gate] (FlashInfer SM90 cutlass W4A16, TRT-LLM w3_w1)


def split_gate_up(w: torch.Tensor, order: GateUpOrder | str, dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a fused gate/up tensor into ``(gate, up)`` given its row order along ``dim``.

    Source: HF ``modeling_gpt_oss.py`` (gate = ``[..., ::2]``, up = ``[..., 1::2]``); FlashInfer
    ``cutlass_fused_moe`` docs (fc1 = [w3; w1] = [up; gate]).
    """
    order = GateUpOrder(order)
    n = w.shape[dim]
    if n % 2:
        raise ValueError(f"split_gate_up: fused dim {n} is odd")
    if order is GateUpOrder.INTERLEAVED:
        idx = torch.arange(n, device=w.device)
        return w.index_select(dim, idx[0::2]), w.index_select(dim, idx[1::2])
    a, b = w.split(n // 2, dim=dim)
    return (a, b) if order is GateUpOrder.GATE_UP else (b, a)


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor, order: GateUpOrder | str, dim: int = -2) -> torch.Tensor:
    """Inverse of :func:`split_gate_up`.

    Source: same orders as :func:`split_gate_up`.
    """
    order = GateUpOrder(order)
    if order is GateUpOrder.INTERLEAVED:
        return torch.stack([gate, up], dim=dim if dim < 0 else dim + 1).flatten(
            dim - 1 if dim < 0 else dim, dim if dim < 0 else dim + 1)
    return torch.cat([gate, up] if order is GateUpOrder.GATE_UP else [up, gate], dim=dim)


def convert_gate_up(w: torch.Tensor, src: GateUpOrder | str, dst: GateUpOrder | str, dim: int = -2) -> torch.Tensor:
    """Re-order fused gate/up rows from ``src`` to ``dst`` order.

    Source: composition of :func:`split_gate_up` and :func:`fuse_gate_up`.
    """
    if GateUpOrder(src) is GateUpOrder(dst):
        return w
    return fuse_gate_up(*split_gate_up(w, src, dim), dst, dim)


# --------------------------------------------------------------------------------------------
# SM90 mixed-input (W4A16) layouts
# --------------------------------------------------------------------------------------------
def sm90_interleave_scales(s: torch.Tensor, group: int = 32) -> torch.Tensor:
    """``[E, rows, K/group] -> [E, K/128, rows * (128/group)]`` scale interleave.

    Source: FlashInfer ``interleave_moe_scales_for_sm90_mixed_gemm`` (fused_moe/core.py, TRT-LLM PR 12451).
    """
    f = 128 // group
    e, rows, kg = _check3(s, "sm90_interleave_scales")
    if kg % f:
        raise ValueError(f"sm90_interleave_scales: K/{group}={kg} is not a multiple of {f} (K must be a multiple of 128)")
    return s.reshape(e, rows, kg // f, f).permute(0, 2, 1, 3).reshape(e, kg // f, rows * f)


def sm90_deinterleave_scales(s: torch.Tensor, group: int = 32) -> torch.Tensor:
    """Inverse of :func:`sm90_interleave_scales`: ``[E, K/128, rows*4] -> [E, rows, K/group]``.

    Source: inverse of FlashInfer ``interleave_moe_scales_for_sm90_mixed_gemm``.
    """
    f = 128 // group
    e, kb, rf = _check3(s, "sm90_deinterleave_scales")
    return s.reshape(e, kb, rf // f, f).permute(0, 2, 1, 3).reshape(e, rf // f, kb * f)


def _sm90_fp4_view(w: torch.Tensor, name: str) -> torch.Tensor:
    e, n, kh = _check3(w, name)
    if w.dtype != torch.uint8:
        raise ValueError(f"{name}: expected packed uint8 FP4 weights, got {w.dtype}")
    if n % 16 or kh % 32:
        raise ValueError(f"{name}: shape [E={e}, n={n}, K/2={kh}] needs n % 16 == 0 and K % 64 == 0")
    return w


def sm90_interleave_fp4_weights(w: torch.Tensor) -> torch.Tensor:
    """Byte/nibble interleave of packed FP4 ``[E, n, K/2]`` weights for the SM90 mixed-input GEMM.

    Per 16-row group and 32-byte partition, rows r and r+8 exchange nibbles (a' = a.lo|b.lo<<4,
    b' = a.hi|b.hi<<4) and bytes are scattered as the LUT converter reads them.
    Source: FlashInfer csrc ``moe_gemm_mixed_utils.cu`` ``interleave_fp4_weights_for_sm90_mixed_gemm_kernel``.
    """
    e, n, kh = _sm90_fp4_view(w, "sm90_interleave_fp4_weights").shape
    # src byte [e, g, s, r8, p, h, m, c2, c4]: row = g*16 + s*8 + r8, col = p*32 + h*16 + m*8 + c2*4 + c4
    v = w.reshape(e, n // 16, 2, 8, kh // 32, 2, 2, 2, 4)
    a, b = v[:, :, 0], v[:, :, 1]
    na = (a & 0x0F) | ((b & 0x0F) << 4)
    nb = (a >> 4) | (b & 0xF0)
    new = torch.stack([na, nb], dim=-1)  # [e, g, r8, p, h, m, c2, c4, j]
    # dst byte: row = g*16 + m*8 + r8, col = p*32 + h*16 + c4*4 + c2*2 + j
    return new.permute(0, 1, 5, 2, 3, 4, 7, 6, 8).reshape(e, n, kh)


def sm90_deinterleave_fp4_weights(w: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`sm90_interleave_fp4_weights`.

    Source: inverse of FlashInfer ``interleave_fp4_weights_for_sm90_mixed_gemm_kernel``.
    """
    e, n, kh = _sm90_fp4_view(w, "sm90_deinterleave_fp4_weights").shape
    new = w.reshape(e, n // 16, 2, 8, kh // 32, 2, 4, 2, 2)  # [e, g, m, r8, p, h, c4, c2, j]
    new = new.permute(0, 1, 3, 4, 5, 2, 7, 6, 8)  # [e, g, r8, p, h, m, c2, c4, j]
    na, nb = new[..., 0], new[..., 1]
    a = (na & 0x0F) | ((nb & 0x0F) << 4)
    b = (na >> 4) | (nb & 0xF0)
    return torch.stack([a, b], dim=2).reshape(e, n, kh)


def pad_dim(x: torch.Tensor, dim: int, multiple: int, value: float | int = 0) -> torch.Tensor:
    """Pad ``dim`` of ``x`` with ``value`` up to the next multiple of ``multiple``.

    Source: FlashInfer SM90 W4A16 contract (hidden and intermediate padded to multiples of 128).
    """
    n = x.shape[dim]
    target = -(-n // multiple) * multiple
    if target == n:
        return x
    shape = list(x.shape)
    shape[dim] = target - n
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def pad_gate_up(w: torch.Tensor, order: GateUpOrder | str, multiple: int, dim: int = -2, value: float | int = 0) -> torch.Tensor:
    """Pad gate and up halves of a fused tensor separately to a multiple along ``dim``.

    Source: FlashInfer SM90 W4A16 contract (each of gate/up padded to the padded intermediate size).
    """
    g, u = split_gate_up(w, order, dim)
    return fuse_gate_up(pad_dim(g, dim, multiple, value), pad_dim(u, dim, multiple, value), order, dim)


def _check3(t: torch.Tensor, name: str):
    if t.dim() != 3:
        raise ValueError(f"{name}: expected a 3-D [E, rows, cols] tensor, got shape {tuple(t.shape)}")
    return t.shape


def aiter_shuffle_weight(w: torch.Tensor, layout: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """AMD AITER (16, 16) tile shuffle of 1-byte weights ``[..., N, K]``: 16-row by 32-byte tiles,
    stored tile-major with 16-byte column groups outermost inside a tile.

    Source: AMD AITER ``aiter/ops/shuffle.py`` ``shuffle_weight(x, layout=(16, 16))``.
    """
    bn, bk, kk = layout[0], layout[1] * 2, 16 // w.element_size()
    n, k = w.shape[-2], w.shape[-1]
    if n % bn or k % bk:
        raise ValueError(f"aiter_shuffle_weight: [..., {n}, {k}] needs N % {bn} == 0 and K % {bk} == 0")
    v = w.reshape(-1, n // bn, bn, k // bk, bk // kk, kk).permute(0, 1, 3, 4, 2, 5)
    return v.reshape(w.shape)


def aiter_unshuffle_weight(w: torch.Tensor, layout: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """Inverse of :func:`aiter_shuffle_weight`.

    Source: inverse of AMD AITER ``shuffle_weight``.
    """
    bn, bk, kk = layout[0], layout[1] * 2, 16 // w.element_size()
    n, k = w.shape[-2], w.shape[-1]
    v = w.reshape(-1, n // bn, k // bk, bk // kk, bn, kk).permute(0, 1, 4, 2, 3, 5)
    return v.reshape(w.shape)
