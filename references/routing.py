"""Routing (softmax top-k, DeepSeek-V3 grouped top-k) and the shared-expert combine."""

from __future__ import annotations

import torch


def softmax_topk(logits: torch.Tensor, k: int, renormalize: bool = True):
    """Softmax over experts in fp32, top-k, optionally renormalised to sum to 1.

    Returns ``(weights fp32 [T, k], ids int64 [T, k])``.
    Source: vLLM ``fused_topk`` / HF Mixtral & GPT-OSS routers (softmax then top-k, renormalise).
    """
    _check_k(logits, k)
    probs = torch.softmax(logits.to(torch.float32), dim=-1)
    w, ids = probs.topk(k, dim=-1)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w, ids


def topk_softmax(logits: torch.Tensor, k: int):
    """Top-k of the logits, then softmax over the k chosen (GPT-OSS router order).

    Source: HF ``modeling_gpt_oss.py`` ``GptOssTopKRouter.forward`` (topk, then softmax over top-k).
    """
    _check_k(logits, k)
    vals, ids = logits.to(torch.float32).topk(k, dim=-1)
    return torch.softmax(vals, dim=-1), ids


def grouped_topk(logits: torch.Tensor, k: int, n_group: int, topk_group: int,
                 bias: torch.Tensor | None = None, norm_topk_prob: bool = True,
                 routed_scaling_factor: float = 1.0):
    """DeepSeek-V3 sigmoid routing with score-correction bias and group-limited top-k.

    scores = sigmoid(logits); choice = scores + bias; group score = sum of the top-2 choices per
    group; keep ``topk_group`` groups; top-k of choice inside them; weights = scores at the ids
    (without bias), renormalised if ``norm_topk_prob``, times ``routed_scaling_factor``.
    Source: HF transformers ``models/deepseek_v3/modeling_deepseek_v3.py`` ``DeepseekV3TopkRouter``.
    """
    t, e = logits.shape
    _check_k(logits, k)
    if e % n_group or topk_group > n_group:
        raise ValueError(f"grouped_topk: {e} experts do not split into {n_group} groups (topk_group={topk_group})")
    scores = torch.sigmoid(logits.to(torch.float32))
    choice = scores if bias is None else scores + bias.to(torch.float32)
    group_scores = choice.view(t, n_group, e // n_group).topk(2, dim=-1).values.sum(-1)
    group_idx = group_scores.topk(topk_group, dim=-1, sorted=False).indices
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0)
    expert_mask = group_mask.unsqueeze(-1).expand(t, n_group, e // n_group).reshape(t, e)
    masked = choice.masked_fill(expert_mask == 0, 0.0)
    ids = masked.topk(k, dim=-1, sorted=False).indices
    w = scores.gather(1, ids)
    if norm_topk_prob:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return w * routed_scaling_factor, ids


def combine_shared(routed: torch.Tensor, shared: torch.Tensor | None, routed_scaling_factor: float = 1.0) -> torch.Tensor:
    """``rsf * routed + shared`` in fp32 (the known fault is ``rsf * (routed + shared)``).

    Source: HF ``modeling_deepseek_v3.py`` ``DeepseekV3MoE.forward`` (rsf inside the router weights,
    shared expert output added afterwards, unscaled).
    """
    out = routed.to(torch.float32) * routed_scaling_factor
    return out if shared is None else out + shared.to(torch.float32)


def _check_k(logits: torch.Tensor, k: int) -> None:
    if logits.dim() != 2:
        raise ValueError(f"routing: logits must be [tokens, experts], got shape {tuple(logits.shape)}")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"routing: top-k {k} is not in [1, {logits.shape[1]}] experts")
