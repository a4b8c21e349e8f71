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


BF16_EXACT_FORMATS = ("bf16", "mxfp4", "mxfp8")  # dequantized values are exactly representable in bf16


def dequantize_weight(fmt: str, data: torch.Tensor, scale: torch.Tensor | None = None,
                      global_scale: torch.Tensor | None = None, *, name: str = "weight",
                      scale_block: tuple[int, int] = (128, 128), dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantize ``[..., N, K]`` expert weights of format ``fmt`` to fp32 (or bf16 where exact).

    Source: the format references in ``references.formats`` (OCP MX v1.0, NVFP4, DeepGEMM FP8 block).
    """
    if dtype != torch.float32 and fmt not in BF16_EXACT_FORMATS:
        raise ValueError(f"{fmt} weights are not exactly representable in {dtype}")
    if fmt == "bf16":
        return data.to(dtype)
    if fmt == "mxfp4":
        return F.mx_dequantize(data, scale, "e2m1", name=name, dtype=dtype)
    if fmt == "mxfp8":
        return F.mx_dequantize(data, scale, "e4m3", name=name, dtype=dtype)
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
    dequant_budget: int = 2 << 30,
    exact_bf16: bool = True,
) -> torch.Tensor:
    """Routed-expert MoE: ``sum_k w_k * fc2_e(act(fc1_e(x) + b1_e)) + b2_e`` in fp32.

    ``x [T, H]``; ``topk_ids``/``topk_weights [T, k]``; ``w1 [E, 2I, H]`` (fused gate/up in
    ``gate_up_order``; packed/quantized per ``fmt`` with its scales); ``w2 [E, H, I]``;
    ``b1 [E, 2I]`` (same order), ``b2 [E, H]``. The activation output is rounded to
    ``intermediate_dtype`` (the kernel's dtype) before fc2, and re-quantized if ``act_quant``.
    ``act_fn(gate, up, activation, precision)`` replaces :func:`swiglu` (for activation variants).
    Routed experts are dequantized in groups of at most ``dequant_budget`` bytes.
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
    starts = [0]
    for n in counts:
        starts.append(starts[-1] + n)
    weights_flat = topk_weights.reshape(-1).to(torch.float32)
    # Exact bf16 path (CUDA): x is bf16 and the weights dequantize exactly to bf16, so a bf16 GEMM
    # with fp32 accumulation and fp32 output computes the same exact products as fp32 GEMM.
    fast = (exact_bf16 and x.is_cuda and x.dtype == torch.bfloat16 and act_quant is None and fmt in BF16_EXACT_FORMATS
            and _mm_out_fp32_available(x.device))
    wdt = torch.bfloat16 if fast else torch.float32
    xq = x if fast else fake_quant_activation(x, act_quant)
    active = [e for e, n in enumerate(counts) if n]
    per_expert = w1[0].numel() * (2 if fmt in ("mxfp4", "nvfp4") else 1) + w2[0].numel() * (2 if fmt in ("mxfp4", "nvfp4") else 1)
    group = max(1, int(dequant_budget // max(1, per_expert * (2 if fast else 4))))
    for g0 in range(0, len(active), group):
        ids = active[g0:g0 + group]
        w1g, w2g = _dequant_group(fmt, ids, w1, w2, w1_scale, w2_scale, w1_global_scale, w2_global_scale, wdt)
        for j, e in enumerate(ids):
            rows = order[starts[e]:starts[e + 1]]
            for c in range(0, len(rows), chunk_rows):
                r = rows[c:c + chunk_rows]
                tok = r // k
                h = _mm(xq.index_select(0, tok), w1g[j], fast)
                if b1 is not None:
                    h = h + b1[e].to(torch.float32)
                gate, up = split_gate_up(h, gate_up_order, dim=-1)
                if precision == "kernel" and intermediate_dtype is not None:
                    gate, up = gate.to(intermediate_dtype), up.to(intermediate_dtype)
                a = (act_fn or swiglu)(gate, up, activation, precision)
                if intermediate_dtype is not None:
                    a = a.to(intermediate_dtype)
                a = fake_quant_activation(a, act_quant)
                y = _mm(a.to(torch.bfloat16) if fast and intermediate_dtype == torch.bfloat16 else a, w2g[j],
                        fast and intermediate_dtype == torch.bfloat16)
                if b2 is not None:
                    y = y + b2[e].to(torch.float32)
                out.index_add_(0, tok, y * weights_flat.index_select(0, r).unsqueeze(-1))
        del w1g, w2g
    return out


_MM_OUT_FP32: dict = {}


def _mm_out_fp32_available(device) -> bool:
    key = str(device)
    if key not in _MM_OUT_FP32:
        try:
            a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
            _MM_OUT_FP32[key] = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, TypeError):
            _MM_OUT_FP32[key] = False
    return _MM_OUT_FP32[key]


def _mm(a: torch.Tensor, w: torch.Tensor, fast: bool) -> torch.Tensor:
    if fast:
        return torch.mm(a, w.T, out_dtype=torch.float32)
    return a.to(torch.float32) @ w.T.to(torch.float32)


def _dequant_group(fmt, ids, w1, w2, s1, s2, g1, g2, dtype):
    """Dequantize a group of experts in one call; on a bad scale, name the exact expert."""
    def one(w, s, g, name):
        sel = torch.tensor(ids, device=w.device)
        pick = lambda t: None if t is None else (t if t.dim() == 0 or t.numel() == 1 else t.index_select(0, sel))  # noqa: E731
        try:
            return dequantize_weight(fmt, w.index_select(0, sel), pick(s), pick(g), name=name, dtype=dtype)
        except ValueError:
            for e in ids:  # re-raise with the expert's own index
                dequantize_weight(fmt, w[e], _expert_slice(s, e), _expert_slice(g, e), name=f"{name}[expert {e}]", dtype=dtype)
            raise
    return one(w1, s1, g1, "w1"), one(w2, s2, g2, "w2")


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
