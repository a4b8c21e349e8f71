"""ULP distance between same-width floats, for bit-level comparisons."""

from __future__ import annotations

import torch


def float_to_ordered_int(x: torch.Tensor) -> torch.Tensor:
    """Map floats to integers whose difference is the ULP distance (sign-magnitude to two's).

    Source: the IEEE 754 ordering of same-width bit patterns (standard ULP-distance construction).
    """
    itype = {2: torch.int16, 4: torch.int32, 1: torch.int8}[x.element_size()]
    i = x.contiguous().view(itype).to(torch.int64)
    top = 1 << (8 * x.element_size() - 1)
    return torch.where(i < 0, -top - i, i)
