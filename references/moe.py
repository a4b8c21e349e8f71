"""A full MoE forward: routed experts (quantized weights), activation, combine, shared expert.

Tokens are grouped by expert (one sort); only routed experts are dequantized, a batch of experts at
a time, so the extra memory stays bounded at model sizes (MXFP4 on CUDA is not dequantized at all);
each batch is one batched GEMM per layer (no Python loop over tokens or over experts inside a
batch). ``references.gold`` is the slow fp64 path that checks this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from references import act_fused, combine
from references.activations import Precision, SwigluParams, swiglu
from references.formats.fp8 import DEEPGEMM_TEST, Fp8Rule
from references.formats.registry import ActQuant, QTensor, WeightFormat, fake_quant_activation
from references.gemm import GemmPlan, PackedMx, plan_for
from references.grouped import batches
from references.layouts import GateUpOrder, split_gate_up


@dataclass(frozen=True)
class Experts:
    """Routed experts: fused fc1 ``[E, 2I, H]`` (rows in ``order``) and fc2 ``[E, H, I]`` in ``fmt``."""

    fmt: WeightFormat
    w1: QTensor
    w2: QTensor
    b1: torch.Tensor | None = None   # [E, 2I], same row order as w1
    b2: torch.Tensor | None = None   # [E, H]
    order: GateUpOrder = GateUpOrder.GATE_UP

    @property
    def num_experts(self) -> int:
        return self.w1.data.shape[0]


@dataclass(frozen=True)
class MoEConfig:
    """What the kernel computes between the GEMMs, and how the reference bounds its memory."""

    activation: SwigluParams = SwigluParams()
    precision: Precision = Precision.FP32
    act_quant: ActQuant | None = None
    act_rule: Fp8Rule = DEEPGEMM_TEST                        # how the FP8 activation quantizer rounds (formats.fp8)
    intermediate_dtype: torch.dtype | None = torch.bfloat16  # the activation output's dtype before fc2
    act_fn: Callable | None = None                           # replaces swiglu (activation variants)
    chunk_rows: int = 8192
    dequant_budget: int = 2 << 30                            # bytes of dequantized experts at a time
    exact_bf16: bool = True                                  # allow the exact bf16 GEMM on CUDA
    packed_mxfp4: bool = True                                # allow the fused MXFP4 GEMM on CUDA (gemm_fused)
    fused_activation: bool = True                            # allow the one-pass SwiGLU on CUDA (act_fused)
    overlap_decode: bool = False                             # on CUDA, decode the next batch beside this one's GEMMs
    # (off: on the H200 it measured slower than one stream at every size, 1-8%, with a higher peak;
    # benchmarks/results-h200.json, variant "overlap")
    fused_combine: bool = True                               # allow the one-pass top-k sum on CUDA (combine)


def moe_forward(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, experts: Experts,
                cfg: MoEConfig = MoEConfig()) -> torch.Tensor:
    """Routed-expert MoE: ``sum_k w_k * fc2_e(act(fc1_e(x) + b1_e)) + b2_e`` in fp32, ``[T, H]``.

    ``x [T, H]``; ``topk_ids``/``topk_weights [T, k]``. The activation output is rounded to
    ``cfg.intermediate_dtype`` before fc2, and re-quantized if ``cfg.act_quant``.
    Source: vLLM ``torch_moe`` test reference / FlashInfer ``cutlass_fused_moe`` docs (per-expert
    GEMM1, activation, GEMM2, weighted sum over top-k).

    How: the (token, slot) rows are sorted by expert; experts with similar row counts form a batch
    (rows zero-padded to a common count, see :func:`references.grouped.batches`), and each batch is
    one batched GEMM per layer (on CUDA, MXFP4 experts are multiplied from their codes by
    ``references.gemm_fused``; elsewhere dequantized a budget at a time). Every output row depends
    only on its own input row and expert, so batching changes the GEMM kernel, not the math (the
    fp64 gold path checks it).
    """
    ids = topk_ids.to("cpu")   # the forward's one wait on the device: the range check and the batch plan read it
    _check_routing(x, ids, topk_weights, experts.num_experts)
    if ids.shape[0] == 0:
        return torch.zeros(0, x.shape[1], dtype=torch.float32, device=x.device)
    plan = plan_for(x, experts.fmt, cfg.act_quant, cfg.exact_bf16, (experts.w1, experts.w2), cfg.packed_mxfp4)
    out = _routed(x, ids, topk_weights, experts, cfg, plan)
    again = plan.redo()   # the MXFP4 scales were taken as good: read the device's check once, here
    return out if again is None else _routed(x, ids, topk_weights, experts, cfg, again)


def _routed(x, topk_ids, topk_weights, experts: Experts, cfg: MoEConfig, plan: GemmPlan) -> torch.Tensor:
    t, k = topk_ids.shape
    # one row per (token, slot): every row below t * k is written exactly once (grouped.batches), so no fill
    slots = torch.empty(t * k + 1, x.shape[1], dtype=torch.float32, device=x.device)
    xq = x if plan.exact_bf16 else fake_quant_activation(x, cfg.act_quant, cfg.act_rule)
    xq = torch.cat([xq, xq.new_zeros(1, x.shape[1])])                  # row t: the zeros padding rows read
    work = batches(topk_ids, experts.num_experts, cfg.chunk_rows, _batch_bound(experts, cfg, plan), x.device)
    for b, (w1g, w2g) in _with_weights(work, experts, plan, x.device if cfg.overlap_decode and x.is_cuda else None):
        xe = xq.index_select(0, b.tokens.view(-1)).view(*b.tokens.shape, -1)    # [B, P, H]; padding reads row t
        y = _expert_ffn(xe, w1g, w2g, experts, b.experts, cfg, plan)
        slots.index_copy_(0, b.slots.view(-1), y.view(-1, y.shape[-1]))        # and lands in the last slot (never read)
        del w1g, w2g, y
    rows = slots[:t * k].view(t, k, -1)
    if cfg.precision is Precision.TRITON_KERNELS and cfg.intermediate_dtype is not None:
        # triton_kernels v3.6.0: fc2's epilogue multiplies each row by its gamma (routing weight) and stores it
        # in the output dtype (_matmul_ogs.py:420-421, 472); reduce sums the k rows in fp32 (reduce.py:55-79)
        rows = _stored(rows * topk_weights.to(torch.float32).unsqueeze(-1), cfg.intermediate_dtype)
        return combine.topk_sum(rows, torch.ones_like(topk_weights, dtype=torch.float32), cfg.fused_combine)
    return combine.topk_sum(rows, topk_weights, cfg.fused_combine)


def _stored(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as a kernel writes it in ``dtype``, read back in fp32."""
    return t.to(dtype).to(torch.float32)


def _with_weights(work, experts: Experts, plan: GemmPlan, overlap: torch.device | None):
    """Each batch with its fc1/fc2 weights: packed (``references.gemm_fused`` multiplies them from
    their codes) or dequantized. With ``overlap`` (a CUDA device), batch b+1 is decoded on a side stream
    while batch b's GEMMs run on the caller's: the decode is memory-bound, the GEMMs are not. The
    side stream waits for the caller's work enqueued so far (the plan's copy, batch b-1), so at most
    two batches' weights are being decoded or used at a time; tensors crossing streams are recorded
    on the stream that uses them, so the caching allocator does not hand them out early. Only the
    order of independent kernels changes, not one value."""
    def weights(b):
        if plan.packs(b.rows_per_expert):
            return PackedMx(experts.w1, b.experts), PackedMx(experts.w2, b.experts)
        return _dequant(experts, b.experts, plan)
    if overlap is None:
        for b in work:
            yield b, weights(b)
        return
    main = torch.cuda.current_stream(overlap)
    side = _side_stream(overlap)

    def launch(b):
        side.wait_stream(main)
        with torch.cuda.stream(side):
            w = weights(b)
        b.experts.record_stream(side)   # the plan's device copy (one storage for every batch)
        done = torch.cuda.Event()
        done.record(side)
        return b, w, done
    ahead = None
    for b in work:
        nxt = launch(b)
        if ahead is not None:
            yield _taken(main, *ahead)
        ahead = nxt
    if ahead is not None:
        yield _taken(main, *ahead)


def _taken(main, b, w, done):
    main.wait_event(done)
    for t in w:
        if isinstance(t, torch.Tensor):   # decoded on the side stream (packed weights are views of experts)
            t.record_stream(main)
    return b, w


_SIDE: dict = {}


def _side_stream(device: torch.device):
    if device not in _SIDE:
        _SIDE[device] = torch.cuda.Stream(device)
    return _SIDE[device]


def _expert_ffn(xe, w1e, w2e, experts: Experts, ids: torch.Tensor, cfg: MoEConfig, plan: GemmPlan) -> torch.Tensor:
    """A batch of experts on their routed rows ``xe [B, P, H]``: fc1 (+b1), activation,
    rounding/re-quantization, fc2 (+b2)."""
    h = plan.mm(xe, w1e)
    if cfg.precision is Precision.CUTLASS and cfg.intermediate_dtype is not None:
        # TRT-LLM / FlashInfer cutlass MoE: the fc1 GEMM writes bf16; doActivationKernel adds the bias and
        # computes the activation in fp32, rounding once (FlashInfer 0.7.2.post1 cutlass_fused_moe_kernels.cuh:2480-2589)
        h = _stored(h, cfg.intermediate_dtype)
    a = _fused_between(h, experts, ids, cfg)   # b1 added inside
    if a is None:
        if experts.b1 is not None:
            h = h + experts.b1.index_select(0, ids).to(torch.float32).unsqueeze(-2)
        a = between_gemms(h, experts.order, cfg)
    bf16_in = plan.exact_bf16 and cfg.intermediate_dtype == torch.bfloat16
    y = plan.mm(a.to(torch.bfloat16) if bf16_in else a, w2e, bf16_in)
    if cfg.precision is Precision.CUTLASS and cfg.intermediate_dtype is not None:
        # the fc2 GEMM writes bf16 too; finalizeMoeRoutingKernel adds the bias and sums the top-k in fp32
        # (FlashInfer 0.7.2.post1 cutlass_fused_moe_kernels.cuh:1965-2040, 3411)
        y = _stored(y, cfg.intermediate_dtype)
    if experts.b2 is not None:
        y = y + experts.b2.index_select(0, ids).to(torch.float32).unsqueeze(-2)
    return y


def between_gemms(h: torch.Tensor, order: GateUpOrder, cfg: MoEConfig) -> torch.Tensor:
    """fc1's output (bias added) to fc2's input: split gate/up, the activation, the rounding to the
    intermediate dtype and the FP8 re-quantization the config names (fp32 out)."""
    gate, up = split_gate_up(h, order, dim=-1)
    if cfg.precision is Precision.KERNEL and cfg.intermediate_dtype is not None:
        gate, up = gate.to(cfg.intermediate_dtype), up.to(cfg.intermediate_dtype)
    a = (cfg.act_fn or swiglu)(gate, up, cfg.activation, cfg.precision)
    if cfg.intermediate_dtype is not None:
        a = a.to(cfg.intermediate_dtype)
    return fake_quant_activation(a, cfg.act_quant, cfg.act_rule)


def _fused_between(h: torch.Tensor, experts: Experts, ids: torch.Tensor, cfg: MoEConfig) -> torch.Tensor | None:
    """fc1's bias and :func:`between_gemms` in one pass on CUDA (``references.act_fused``) where its
    first-use check found the same bits as this code for these parameters; None elsewhere."""
    if not (cfg.fused_activation and h.is_cuda and h.dtype == torch.float32 and cfg.act_fn is None
            and cfg.act_quant is None and cfg.precision is Precision.FP32 and cfg.intermediate_dtype == torch.bfloat16):
        return None
    p, order, b1 = cfg.activation, experts.order, experts.b1
    if b1 is not None and not (b1.is_floating_point() and b1.device == h.device):
        return None
    eager = lambda fc1: between_gemms(fc1, order, cfg)  # noqa: E731
    if act_fused.status(h.device, order, p.alpha, p.beta, p.limit, eager, None if b1 is None else b1.dtype) is not None:
        return None
    return act_fused.swiglu_to_bf16(h, order, p.alpha, p.beta, p.limit, b1, None if b1 is None else ids)


def _check_routing(x, topk_ids, topk_weights, num_experts: int) -> None:
    if x.dim() != 2:
        raise ValueError(f"moe_forward: x must be [tokens, hidden], got shape {tuple(x.shape)}")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"moe_forward: topk_ids {tuple(topk_ids.shape)} / topk_weights "
                         f"{tuple(topk_weights.shape)} do not match x {tuple(x.shape)}")
    flat = topk_ids.reshape(-1).to("cpu").numpy()   # the host copy (no wait): numpy's reductions, no dispatch
    if flat.size and not 0 <= int(flat.min()) <= int(flat.max()) < num_experts:   # no wait on the device
        raise ValueError(f"moe_forward: topk_ids outside [0, {num_experts})")


def _batch_bound(experts: Experts, cfg: MoEConfig, plan: GemmPlan) -> Callable[[int], int]:
    """How many experts a batch of ``p`` rows each may hold within ``cfg.dequant_budget``: their
    dequantized fc1 + fc2, or, with packed weights, the fp32 activations of the rows (fc1 out,
    activation, fc2 out)."""
    w1, w2 = experts.w1.data, experts.w2.data
    per_row = 4 * (w1.shape[1] * 2 + w2.shape[1] * 2)
    per_byte = 2 if experts.fmt.element == "e2m1" else 1
    per_expert = max(1, (w1[0].numel() + w2[0].numel()) * per_byte * plan.weight_dtype.itemsize)
    return lambda p: max(1, cfg.dequant_budget // (p * per_row if plan.packs(p) else per_expert))


def _dequant(experts: Experts, ids: torch.Tensor, plan: GemmPlan):
    """Dequantize the experts ``ids`` in one call; on a bad scale, name the exact expert."""
    dtype = plan.weight_dtype

    def one(q: QTensor, name: str):
        try:
            return experts.fmt.dequantize_experts(q, ids, name=name, dtype=dtype, scales_checked=plan.scales_checked)
        except ValueError:
            for e in ids.tolist():  # re-raise with the expert's own index
                one_e = q.experts(torch.tensor([e], device=q.data.device))
                experts.fmt.dequantize(one_e.map(lambda t: t[0] if t.dim() and t.shape[0] == 1 else t),
                                       name=f"{name}[expert {e}]", dtype=dtype)
            raise
    return one(experts.w1, "w1"), one(experts.w2, "w2")


@dataclass(frozen=True)
class SharedExpert:
    """A dense gated MLP beside the routed experts: ``w1 [2Is, H]`` in gate_up order, ``w2 [H, Is]``."""

    w1: torch.Tensor
    w2: torch.Tensor


def dense_mlp(x: torch.Tensor, shared: SharedExpert, activation: SwigluParams = SwigluParams(),
              intermediate_dtype: torch.dtype | None = torch.bfloat16) -> torch.Tensor:
    """The shared expert in fp32: ``w2 @ act(w1 @ x)``.

    Source: HF ``modeling_deepseek_v3.py`` ``DeepseekV3MLP`` (down(act(gate(x)) * up(x))).
    """
    h = x.to(torch.float32) @ shared.w1.to(torch.float32).T
    gate, up = split_gate_up(h, GateUpOrder.GATE_UP, dim=-1)
    a = swiglu(gate, up, activation)
    if intermediate_dtype is not None:
        a = a.to(intermediate_dtype).to(torch.float32)
    return a @ shared.w2.to(torch.float32).T


def naive_moe_forward(x, topk_ids, topk_weights, w1_f32, w2_f32, *, b1=None, b2=None,
                      order: GateUpOrder = GateUpOrder.GATE_UP, cfg: MoEConfig = MoEConfig()) -> torch.Tensor:
    """The kernel libraries' test reference: every expert pre-dequantized, a loop over experts
    with a boolean mask over all (token, slot) pairs. Used as the benchmark baseline and as an
    independent cross-check of :func:`moe_forward` (reads ``cfg.activation`` and
    ``cfg.intermediate_dtype``).

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
        g, u = split_gate_up(h, order, dim=-1)
        a = swiglu(g, u, cfg.activation)
        if cfg.intermediate_dtype is not None:
            a = a.to(cfg.intermediate_dtype).to(torch.float32)
        y = a @ w2_f32[e].T
        if b2 is not None:
            y = y + b2[e].to(torch.float32)
        out[m] = y
    return (out.view(t, k, out.shape[-1]) * topk_weights.to(torch.float32).unsqueeze(-1)).sum(1)
