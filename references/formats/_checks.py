"""Input checks shared by the format references: each names the tensor and the offending index."""

from __future__ import annotations

import torch


def as_uint8(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t
    if t.element_size() == 1:
        return t.view(torch.uint8)
    raise ValueError(f"{name}: expected a uint8 (or 1-byte) tensor, got {t.dtype}")


def check_block(x: torch.Tensor, block: int, name: str) -> None:
    if x.dim() == 0 or x.shape[-1] % block:
        raise ValueError(f"{name}: last dim K={x.shape[-1] if x.dim() else 0} is not a multiple of the block size {block}")


def check_finite(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0].tolist())
            raise ValueError(f"{name}: non-finite value {x[idx].item()} at index {idx} ({int(bad.sum())} in all)")
