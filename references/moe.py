"""A full MoE forward: routed experts (quantized weights), activation, combine, shared expert.

Tokens are grouped by expert (one sort), only routed experts are dequantized, one expert at a
time, and each expert's rows are processed in chunks, so the extra memory stays bounded at model
sizes. There is no Python loop over tokens; the loop runs over routed experts.
"""

from __future__ import annotations

import torch

from references import formats as F
from references.activations import SwigluParams, swiglu
from references.layouts import split_gate_up

WEIGHT_FORMATS = ("bf16", "fp8_block", "mxfp4", "nvfp4", "mxfp8")
ACT_QUANTS = (None, "fp8_group", "fp8_group_ue8m0", "mxfp8")


def dequantize_weight(fmt: str, data: torch.Tensor, scale: torch.Tensor | None = None,
                      global_scale: torch.Tensor | None = None, *, name: str = "weight",
                      scale_block: tuple[int, int] = (128, 128)) -> torch.Tensor:
    """Dequantize ``[..., N, K]`` expert weights of format ``fmt`` to fp32.

    Source: the format references in ``references.formats`` (OCP MX v1.0, NVFP4, DeepGEMM FP8 block).
    """
    if fmt == "bf16":
        return data.to(torch.float32)
    if fmt == "mxfp4":
        return F.mx_dequantize(data, scale, "e2m1", name=name)
    if fmt == "mxfp8":
        return F.mx_dequantize(data, scale, "e4m3", name=name)
    if fmt == "nvfp4":
        return F.nvfp4_dequantize(data, scale, global_scale)
    if fmt == "fp8_block":
        return F.fp8_block_dequantize(data, scale, scale_block)
    raise ValueError(f"unknown weight format {fmt!r}; expected one of {WEIGHT_FORMATS}")


def fake_quant_activation(x: torch.Tensor, act_quant: str | None) -> torch.Tensor:
    """Quantize-dequantize activations the way an A8 kernel sees them (fp32 out).

    Source: DeepGEMM ``per_token_cast_to_fp8`` (1x128, fp32 or UE8M0 scales); OCP MX v1.0 (MXFP8).
    """
    if act_quant is None:
        return x.to(torch.float32)
    if act_quant in ("fp8_group", "fp8_group_ue8m0"):
        q, s = F.fp8_group_quantize(x, 128, "ue8m0" if act_quant.endswith("ue8m0") else "fp32")
        return F.fp8_group_dequantize(q, s, 128)
    if act_quant == "mxfp8":
        q, s = F.mx_quantize(x, "e4m3", "floor")
        return F.mx_dequantize(q, s, "e4m3", name="activation")
    raise ValueError(f"unknown activation quantization {act_quant!r}; expected one of {ACT_QUANTS}")


def _expert_slice(t: torch.Tensor | None, e: int) -> torch.Tensor | None:
    if t is None:
        return None
    return t if t.dim() == 0 or t.numel() == 1 else t[e]


def moe_forward(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    *,
    fmt: str = "bf16",
    w1_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    w1_global_scale: torch.Tensor | None = None,
    w2_global_scale: torch.Tensor | None = None,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    gate_up_order: str = "gate_up",
    activation: SwigluParams = SwigluParams(),
    precision: str = "fp32",
    act_quant: str | None = None,
    intermediate_dtype: torch.dtype | None = torch.bfloat16,
    chunk_rows: int = 8192,
    act_fn=None,
) -> torch.Tensor:
    """Routed-expert MoE: ``sum_k w_k * fc2_e(act(fc1_e(x) + b1_e)) + b2_e`` in fp32.

    ``x [T, H]``; ``topk_ids``/``topk_weights [T, k]``; ``w1 [E, 2I, H]`` (fused gate/up in
    ``gate_up_order``; packed/quantized per ``fmt`` with its scales); ``w2 [E, H, I]``;
    ``b1 [E, 2I]`` (same order), ``b2 [E, H]``. The activation output is rounded to
    ``intermediate_dtype`` (the kernel's dtype) before fc2, and re-quantized if ``act_quant``.
    ``act_fn(gate, up, activation, precision)`` replaces :func:`swiglu` (for activation variants).
    Source: vLLM ``torch_moe`` test reference / FlashInfer ``cutlass_fused_moe`` docs (per-expert
    GEMM1, activation, GEMM2, weighted sum over top-k).
    """
    if x.dim() != 2:
        raise ValueError(f"moe_forward: x must be [tokens, hidden], got shape {tuple(x.shape)}")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"moe_forward: topk_ids {tuple(topk_ids.shape)} / topk_weights "
                         f"{tuple(topk_weights.shape)} do not match x {tuple(x.shape)}")
    t, k = topk_ids.shape
    num_experts = w1.shape[0]
    out = torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device)
    if t == 0:
        return out
    flat = topk_ids.reshape(-1).to(torch.int64)
    if bool((flat < 0).any()) or bool((flat >= num_experts).any()):
        raise ValueError(f"moe_forward: topk_ids outside [0, {num_experts})")
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    weights_flat = topk_weights.reshape(-1).to(torch.float32)
    xq = fake_quant_activation(x, act_quant)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        rows = order[start:start + n]
        start += n
        w1e = dequantize_weight(fmt, w1[e], _expert_slice(w1_scale, e), _expert_slice(w1_global_scale, e),
                                name=f"w1[expert {e}]")
        w2e = dequantize_weight(fmt, w2[e], _expert_slice(w2_scale, e), _expert_slice(w2_global_scale, e),
                                name=f"w2[expert {e}]")
        for c in range(0, n, chunk_rows):
            r = rows[c:c + chunk_rows]
            tok = r // k
            h = xq.index_select(0, tok) @ w1e.T
            if b1 is not None:
                h = h + b1[e].to(torch.float32)
            gate, up = split_gate_up(h, gate_up_order, dim=-1)
            if precision == "kernel" and intermediate_dtype is not None:
                gate, up = gate.to(intermediate_dtype), up.to(intermediate_dtype)
            a = (act_fn or swiglu)(gate, up, activation, precision)
            if intermediate_dtype is not None:
                a = a.to(intermediate_dtype)
            a = fake_quant_activation(a, act_quant)
            y = a @ w2e.T
            if b2 is not None:
                y = y + b2[e].to(torch.float32)
            out.index_add_(0, tok, y * weights_flat.index_select(0, r).unsqueeze(-1))
    return out


def dense_mlp(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, *, gate_up_order: str = "gate_up",
              activation: SwigluParams = SwigluParams(), intermediate_dtype: torch.dtype | None = torch.bfloat16) -> torch.Tensor:
    """A dense gated MLP (the shared expert) in fp32: ``w2 @ act(w1 @ x)``.

    Source: HF ``modeling_deepseek_v3.py`` ``DeepseekV3MLP`` (down(act(gate(x)) * up(x))).
    """
    h = x.to(torch.float32) @ w1.to(torch.float32).T
    gate, up = split_gate_up(h, gate_up_order, dim=-1)
    a = swiglu(gate, up, activation)
    if intermediate_dtype is not None:
        a = a.to(intermediate_dtype).to(torch.float32)
    return a @ w2.to(torch.float32).T


def naive_moe_forward(x, topk_ids, topk_weights, w1_f32, w2_f32, *, b1=None, b2=None, gate_up_order="gate_up",
                      activation: SwigluParams = SwigluParams(), intermediate_dtype=torch.bfloat16) -> torch.Tensor:
    """The kernel libraries' test reference: every expert pre-dequantized, a loop over experts
    with a boolean mask over all (token, slot) pairs. Used as the benchmark baseline and as an
    independent cross-check of :func:`moe_forward`.

    Source: vLLM ``tests/kernels/moe`` ``torch_moe`` (mask per expert over the flattened top-k).
    """
    t, k = topk_ids.shape
    xr = x.to(torch.float32).repeat_interleave(k, dim=0)
    out = torch.zeros_like(xr)
    flat = topk_ids.reshape(-1)
    for e in range(w1_f32.shape[0]):
        m = flat == e
        if not bool(m.any()):
            continue
        h = xr[m] @ w1_f32[e].T
        if b1 is not None:
            h = h + b1[e].to(torch.float32)
        g, u = split_gate_up(h, gate_up_order, dim=-1)
        a = swiglu(g, u, activation)
        if intermediate_dtype is not None:
            a = a.to(intermediate_dtype).to(torch.float32)
        y = a @ w2_f32[e].T
        if b2 is not None:
            y = y + b2[e].to(torch.float32)
        out[m] = y
    return (out.view(t, k, -1) * topk_weights.to(torch.float32).unsqueeze(-1)).sum(1)
