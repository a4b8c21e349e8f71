"""The top-k combine of the reference MoE: ``out[t] = sum_j w[t, j] * y[t, j]`` in fp32, each product
rounded to fp32, summed in slot order ``j = 0 .. k-1`` (``acc = p_0; acc = acc + p_1; ...``): the same
bits on every run and on every device (no atomics, no reduction tree).

On CUDA one Triton pass (``references.combine_triton``) reads the k expert outputs of a token once,
instead of a multiply pass and a reduction pass over ``[T, k, H]`` fp32 (about 220 us of 4.8 ms at
GPT-OSS-120B, 4096 tokens, on the H200: benchmarks/profile-h200.json). The same bits as the eager
code, not assumed: its first use on a device compares both on products and sums with edges (±0,
±inf, NaN, subnormals, overflow, cancellation) at every top-k used, bit for bit; if one differs or
the kernel cannot run, the eager code is used (``status()``).
Source: vLLM ``torch_moe`` / FlashInfer test references (``(out * topk_weights).sum(1)``), with the
order of the sum fixed.
"""

from __future__ import annotations

import os

import torch

BLOCK = 1024
_STATE: dict = {}


def eager_topk_sum(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``y [T, k, H]`` fp32, ``w [T, k]`` -> ``[T, H]`` fp32, products rounded, summed in slot order."""
    p = y * w.to(torch.float32).unsqueeze(-1)
    if p.shape[1] == 0:
        return p.sum(1)                                                  # no slots: zeros
    acc = p[:, 0].contiguous()
    for j in range(1, p.shape[1]):
        acc = acc + p[:, j]
    return acc


def _launch(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    from references.combine_triton import topk_sum as kernel
    t, k, h = y.shape
    out = torch.empty(t, h, dtype=torch.float32, device=y.device)
    if out.numel():
        interp = os.environ.get("TRITON_INTERPRET") == "1"
        opts = {} if interp else {"num_warps": 4, "enable_fp_fusion": False}   # a * b + c stays two roundings
        kernel[(t, -(-h // BLOCK))](y.contiguous(), w.to(torch.float32).contiguous(), out, h, K=k, BLOCK=BLOCK, **opts)
    return out


def _probe(t: int, k: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and weights where a fused multiply-add or another order would show: normals over 2^-60..2^60,
    values that cancel, the overflow edge, ±0, ±inf, NaN, subnormals."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(t, k, h, generator=g) * 2.0 ** torch.randint(-60, 61, (t, k, h), generator=g).to(torch.float32)
    y[:, -1] = -y[:, 0] * (1 + 2.0 ** -20)                              # near-cancelling pairs
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -1e-40, 3e38, -3e38])
    y.view(-1)[torch.randint(0, y.numel(), (y.numel() // 16,), generator=g)] = \
        specials[torch.randint(0, len(specials), (y.numel() // 16,), generator=g)]
    w = torch.rand(t, k, generator=g)
    w[0] = torch.tensor([[0.0, 1.0, 1e-30, 3.0][j % 4] for j in range(k)])   # weight 0 times inf is NaN
    return y, w


def _self_check(device, k: int) -> str | None:
    y, w = _probe(97, k, BLOCK + 37)                                     # a full block and a tail
    y, w = y.to(device), w.to(device)
    try:
        got = _launch(y, w)
    except Exception as err:  # noqa: BLE001 - no triton, no GPU, a compile error: the eager code
        return f"the Triton top-k sum cannot run: {type(err).__name__}: {' '.join(str(err).split())[:160]}"
    want = eager_topk_sum(y, w)
    differ = (got.view(torch.int32) != want.view(torch.int32)) & ~(got.isnan() & want.isnan())
    bad = int(differ.sum())
    return None if bad == 0 else f"the Triton top-k sum: {bad} of {want.numel()} values differ from the eager code (k={k})"


def status(device, k: int) -> str | None:
    """Why the one-pass top-k sum is not used on ``device`` for this top-k (None: it is used)."""
    key = (str(device), int(k))
    if key not in _STATE:
        _STATE[key] = _self_check(device, int(k))
    return _STATE[key]


def topk_sum(y: torch.Tensor, w: torch.Tensor, allow_fused: bool = True) -> torch.Tensor:
    """:func:`eager_topk_sum`, in one Triton pass on CUDA where its first-use check passed."""
    if allow_fused and y.is_cuda and y.dtype == torch.float32 and y.shape[1] and status(y.device, y.shape[1]) is None:
        return _launch(y, w)
    return eager_topk_sum(y, w)
