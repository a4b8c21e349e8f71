"""The slow gold path that checks :func:`references.moe.moe_forward`: one expert at a time, a mask
over all (token, slot) rows, GEMMs in fp64, everything else (activation, roundings, the top-k sum)
exactly as the fast path does it.

What the fast path promises against it:
- **bit-equal** whenever its fp32 (or bf16 x bf16 -> fp32) GEMMs are exact, which holds for inputs
  whose products and partial sums fit fp32's 24-bit significand (small integers times powers of
  two): the batching, padding, sorting and scatter add no error of their own;
- otherwise the difference is fp32 accumulation of exact products: with no rounding of the
  intermediate (``intermediate_dtype=None``) relative L2 within ``FAST_PATH_REL_L2 = 1e-5`` for K up
  to 8192 (a random-order sum of K products errs about ``sqrt(K) * 2^-24`` relative, 5e-6 at
  K = 8192). Where the intermediate is rounded to bf16 (or re-quantized to FP8), an accumulation
  difference can flip one rounding, which moves that element a whole bf16 (FP8) step: no useful
  bound holds per element, so that path is checked bit for bit on exact inputs instead.

Weights are their fp32 dequantization in both paths (exact for bf16, MXFP4 and MXFP8; for fp32
block scales and NVFP4's scale / global scale the product rounds once in fp32, relative 2^-24 per
weight). Source of the math: the same contract as ``moe_forward`` (vLLM ``torch_moe``).
"""

from __future__ import annotations

import torch

from references.formats.registry import fake_quant_activation
from references.moe import Experts, MoEConfig, between_gemms

FAST_PATH_REL_L2 = 1e-5


def gold_moe_forward(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, experts: Experts,
                     cfg: MoEConfig = MoEConfig()) -> torch.Tensor:
    """The routed experts of :func:`references.moe.moe_forward`, one expert at a time, fp64 GEMMs."""
    t, k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    xq = fake_quant_activation(x, cfg.act_quant, cfg.act_rule).repeat_interleave(k, dim=0)
    slots = torch.zeros(t * k, x.shape[1], dtype=torch.float32, device=x.device)
    for e in range(experts.num_experts):
        m = flat == e
        if not bool(m.any()):
            continue
        one = torch.tensor([e], device=x.device)
        w1 = experts.fmt.dequantize(experts.w1.experts(one), name="w1")[0].double()
        w2 = experts.fmt.dequantize(experts.w2.experts(one), name="w2")[0].double()
        h = (xq[m].double() @ w1.T).float()
        if experts.b1 is not None:
            h = h + experts.b1[e].to(torch.float32)
        a = between_gemms(h, experts.order, cfg)   # the same elementwise code as the fast path
        y = (a.double() @ w2.T).float()
        if experts.b2 is not None:
            y = y + experts.b2[e].to(torch.float32)
        slots[m] = y
    return (slots.view(t, k, -1) * topk_weights.to(torch.float32).unsqueeze(-1)).sum(1)
