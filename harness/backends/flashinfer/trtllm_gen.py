"""FlashInfer trtllm-gen MXFP4 x bf16 fused MoE on sm100 (``trtllm_fp4_block_scale_routed_moe``).

Read in the flashinfer-python 0.7.2.post1 and 0.6.12 wheels (paths inside the package; "(0.6.12)"
marks the older one; ``launcher.cu`` is ``data/csrc/trtllm_fused_moe_kernel_launcher.cu``):

- Call: ``fused_moe/core.py:6606`` (0.7.2.post1), ``:3239`` (0.6.12): the same 24 leading parameters,
  all passed by keyword here; 0.7.2.post1 only adds defaulted ones at the end. Returns ``[out]``,
  ``out [T, H]`` bf16 = sum_k w_k * (FC2(act(FC1 x + b1)) + b2); the shared expert and the routed
  scaling factor are the caller's (``layer_output``).
- Routing: pre-computed ``(ids int32 [T, k], weights [T, k])``. Weights bf16 in 0.6.12 (docstring
  ``core.py:3285``, unchecked in C++); bf16 or fp32 in 0.7.2.post1 (``launcher.cu:5044``, "consumed
  at their native dtype" ``core.py:6661``), so fp32 there: the reference's weights exactly. With
  pre-computed ids the routing method is not applied (routingCustom hands them to the post-top-k
  pipeline, ``data/csrc/fused_moe/trtllm_backend/trtllm_fused_moe_routing_custom.cuh:1533-1545`` (0.7.2.post1)).
- Hidden states ``[T, H]`` bf16, no scale (``launcher.cu:6074-6076``; ``:2208-2210`` (0.6.12)).
- fc1 ``[E, 2I, H/2]`` uint8, rows ``[up; gate]`` (``fused_moe/prepare.py:491``; FlashInfer's test
  reference computes ``act(x1) * x0`` with x0 the first half, tests/moe/test_trtllm_gen_fused_moe.py:2224-2226
  @v0.6.12) put through ``reorder_rows_for_gated_act_gemm`` then ``shuffle_matrix_a(., 128)``; its
  E8M0 scales ``[E, 2I, H/32]`` through the same reorder then ``shuffle_matrix_sf_a(., 128)`` (the same
  row permutation, ``utils.py:1111-1127``, plus the 128x4 interleave), handed over as a
  ``float8_e4m3fn`` view of the bytes (``launcher.cu:5116-5120`` "must be fp8"; ``prepare.py:651-654``);
  MXFP4 vs NVFP4 is told from the scale count (``launcher.cu:6038-6055``). fc2 ``[E, H, I/2]`` and
  ``[E, H, I/32]``: the shuffle only. This is FlashInfer's own test recipe
  (``prepare_static_weights_for_kernel``, tests/moe/test_trtllm_gen_fused_moe.py:402-533 @v0.6.12),
  whose permute-index helpers compose exactly these two steps (``fused_moe/core.py:475-511``).
- Biases float32 (read as ``float*``, unchecked: ``launcher.cu:5173-5176``; ``:1642-1654`` (0.6.12)),
  each permuted like its rows: fc1 bias reorder + shuffle, fc2 bias shuffle (FlashInfer's test since
  ebad465f, tests/moe/trtllm_gen_fused_moe_utils.py:669-720 @fb28d724).
- SwiGLU alpha/beta/limit: float32 ``[E]`` or None (``launcher.cu:5164-5171``): gate = min(x1, limit),
  up = clamp(x0, +-limit), out = gate * sigmoid(alpha * gate) * (up + beta). The three output scale
  scalars are ones ``[E]`` float32, as FlashInfer's own MXFP4 x bf16 prep (``prepare.py:644, 660-662``).
- H and I padded to 128 (MXFP4 needs both divisible by 128, ``prepare.py:533-540``): zero codes and
  zero bias, scale byte 127 (2^0), gate and up halves each, so padded rows and columns add exactly 0.
- 0.7.2.post1 warns (DeprecationWarning) that ``hidden_states_scale_layout`` was omitted; 0.6.12
  has no such keyword, and with bf16 hidden states there is no scale for it to describe.

Checked on the CPU (L1, tests/test_adapter_trtllm_gen.py): the prepared buffers equal FlashInfer's
helpers applied in its test's order, in 0.6.12 and 0.7.2.post1 (the CUDA-only 128x4 interleave stood in
for by the library's torch equivalent in 0.7.2.post1, left out in 0.6.12). Only a hardware run settles the
numerics (the kernel's bf16 rounding of the FC1 output and activation, its accumulation order),
that bias and alpha/beta/limit act as read (no FlashInfer test runs bias with MXFP4 x bf16),
whether zero tokens are accepted, and the routing tier for unusual (experts, top-k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from packaging.version import InvalidVersion, Version

from harness.backends.base import Backend, Level, Requirements
from harness.backends.common import experts_in_order, first_output, pad_mx_experts, pad_tokens_hidden
from harness.backends.emulated import MXFP4
from harness.backends.flashinfer import FI
from harness.backends.flashinfer.build import import_flashinfer
from harness.cases import Case, CaseData, layer_output
from references.layouts import GateUpOrder
from references.moe import Experts

# tests/moe/test_trtllm_gen_fused_moe.py:415 @v0.6.12 (epilogue_tile_m = 128);
# data/csrc/trtllm_fused_moe_runner.cu:185 (flashinfer-python 0.7.2.post1): epilogueTileM 128 unless DeepSeek fp8
EPILOGUE_TILE_M = 128
# fused_moe/prepare.py:533-540 (flashinfer-python 0.7.2.post1): MXFP4 needs hidden and intermediate divisible by 128
PAD = 128
# data/include/flashinfer/trtllm/fused_moe/RoutingCustomPolicy.cuh:855 (flashinfer-python 0.7.2.post1), :710 (0.6.12):
# the post-top-k routing tiers end at Tier<2048, 32>
MAX_EXPERTS, MAX_TOPK = 2048, 32
MX_BLOCK = 32


def routing_weights_dtype(version: str | None) -> torch.dtype:
    """float32 where the launcher takes it (read in 0.7.2.post1: ``launcher.cu:5044``), else bfloat16,
    which every version takes (0.6.12 reads the buffer as bf16 without a check; 0.6.13-0.7.1 not read)."""
    try:
        v = Version(version) if version and version != "unknown" else None
    except InvalidVersion:
        v = None
    return torch.float32 if v is not None and v >= Version("0.7.2") else torch.bfloat16


@dataclass
class TrtllmGenBuffers:
    """The kernel's operands, in FlashInfer's layouts."""

    x: torch.Tensor                # [T, H_pad] bf16
    w1: torch.Tensor               # [E, 2I_pad, H_pad/2] uint8, rows reordered + shuffled
    s1: torch.Tensor               # [E, 2I_pad, H_pad/32] float8_e4m3fn view of E8M0 bytes, 128x4 interleaved
    b1: torch.Tensor | None        # [E, 2I_pad] float32, rows as w1
    w2: torch.Tensor               # [E, H_pad, I_pad/2] uint8, rows shuffled
    s2: torch.Tensor               # [E, H_pad, I_pad/32] float8_e4m3fn view, 128x4 interleaved
    b2: torch.Tensor | None        # [E, H_pad] float32, rows as w2
    alpha: torch.Tensor | None     # [E] float32
    beta: torch.Tensor | None
    limit: torch.Tensor | None
    ones: torch.Tensor             # [E] float32: the three output scale scalars
    ip: int                        # the padded intermediate size


class FlashInferTrtllmGenMxfp4(Backend):
    name = "flashinfer-trtllm-gen-mxfp4"
    description = "FlashInfer trtllm-gen MXFP4 x bf16 fused MoE (sm100)"
    # k_multiple: the MX block; H and I are padded to 128 in prepare
    requirements = Requirements(devices=("sm100",), libraries=(FI,), formats=(MXFP4,), act_quants=(None,),
                                k_multiple=MX_BLOCK)
    verified = Level("L1", ("tests/fixtures/api/flashinfer-python-0.6.12.json", "-0.7.2.post1.json",
                            "tests/test_adapter_trtllm_gen.py", "reports/l1/flashinfer-trtllm-gen-0.6.12.log",
                            "reports/l1/flashinfer-trtllm-gen-0.7.2.post1.log"))
    kernel = "flashinfer.fused_moe.trtllm_fp4_block_scale_routed_moe"

    def case_gate(self, case: Case) -> str | None:
        why = super().case_gate(case)
        if why:
            return why
        if case.dtype != torch.bfloat16:
            # data/csrc/trtllm_fused_moe_kernel_launcher.cu:6074-6076 (flashinfer-python 0.7.2.post1)
            return (f"hidden states must be bfloat16 (case dtype {str(case.dtype).removeprefix('torch.')}): the "
                    "MXFP4 x bf16 path takes bf16 activations only, and a cast would change the inputs the reference uses")
        if case.experts > MAX_EXPERTS or case.topk > MAX_TOPK:
            return (f"experts={case.experts}, topk={case.topk}: pre-computed routing has compiled tiers up to "
                    f"{MAX_EXPERTS} experts and top-{MAX_TOPK} (RoutingCustomPolicy.cuh Tier<2048, 32>)")
        return None

    # ---- the layouts (each a FlashInfer helper; tests/test_adapter_trtllm_gen.py checks them on the CPU) ----
    def kernel_experts(self, data: CaseData) -> Experts:
        """fc1 in ``[up; gate]`` (fused_moe/prepare.py:491 (flashinfer-python 0.7.2.post1)), H and I padded to 128."""
        return pad_mx_experts(experts_in_order(data.experts, GateUpOrder.UP_GATE), PAD)

    def fc1_rows(self, t: torch.Tensor) -> torch.Tensor:
        """One expert's fc1 rows (``[2I, ...]``, ``[up; gate]``): gated-act row reorder, then the shuffle."""
        reorder = FI.attr("flashinfer.fused_moe", "reorder_rows_for_gated_act_gemm")
        shuffle_matrix_a = FI.attr("flashinfer", "shuffle_matrix_a")
        return shuffle_matrix_a(input_tensor=reorder(x=t), epilogue_tile_m=EPILOGUE_TILE_M)

    def fc2_rows(self, t: torch.Tensor) -> torch.Tensor:
        shuffle_matrix_a = FI.attr("flashinfer", "shuffle_matrix_a")
        return shuffle_matrix_a(input_tensor=t, epilogue_tile_m=EPILOGUE_TILE_M)

    def fc1_scales(self, s: torch.Tensor) -> torch.Tensor:
        """One expert's linear E8M0 bytes ``[2I, H/32]``: the fc1 row reorder, then shuffle + 128x4 interleave."""
        reorder = FI.attr("flashinfer.fused_moe", "reorder_rows_for_gated_act_gemm")
        shuffle_matrix_sf_a = FI.attr("flashinfer", "shuffle_matrix_sf_a")
        # num_elts_per_sf: the MX block; the row permutation does not depend on it (utils.py:1111-1127 (0.7.2.post1))
        return shuffle_matrix_sf_a(input_tensor=reorder(x=s), epilogue_tile_m=EPILOGUE_TILE_M, num_elts_per_sf=MX_BLOCK)

    def fc2_scales(self, s: torch.Tensor) -> torch.Tensor:
        shuffle_matrix_sf_a = FI.attr("flashinfer", "shuffle_matrix_sf_a")
        return shuffle_matrix_sf_a(input_tensor=s, epilogue_tile_m=EPILOGUE_TILE_M, num_elts_per_sf=MX_BLOCK)

    def kernel_weights(self, ex: Experts) -> dict:
        """w1/s1/b1 and w2/s2/b2 as the kernel reads them, per expert then stacked (as FlashInfer's test does)."""
        e, rows1, kh1 = ex.w1.data.shape
        _, rows2, kh2 = ex.w2.data.shape
        each = lambda fn, t: torch.stack([fn(t[j]) for j in range(e)])  # noqa: E731
        bias = lambda fn, b: None if b is None else each(lambda r: fn(r.float().reshape(-1, 1)).reshape(-1), b)  # noqa: E731
        # tests/moe/trtllm_gen_fused_moe_utils.py:722-746 @fb28d724: scales .view(float8_e4m3fn).reshape(E, M, K/32)
        fp8 = lambda s, rows, kh: s.view(torch.float8_e4m3fn).reshape(e, rows, kh * 2 // MX_BLOCK)  # noqa: E731
        return {"w1": each(self.fc1_rows, ex.w1.data.view(torch.uint8)),
                "s1": fp8(each(self.fc1_scales, ex.w1.scale.view(torch.uint8)), rows1, kh1),
                "b1": bias(self.fc1_rows, ex.b1),
                "w2": each(self.fc2_rows, ex.w2.data.view(torch.uint8)),
                "s2": fp8(each(self.fc2_scales, ex.w2.scale.view(torch.uint8)), rows2, kh2),
                "b2": bias(self.fc2_rows, ex.b2)}

    def prepare(self, data: CaseData, device: str) -> TrtllmGenBuffers:
        ex = self.kernel_experts(data)
        e, dev = ex.num_experts, ex.w1.data.device
        p = data.case.swiglu
        full = lambda v: torch.full((e,), float(v), dtype=torch.float32, device=dev)  # noqa: E731
        alpha, beta = (None, None) if p.is_plain else (full(p.alpha), full(p.beta))
        limit = None if p.limit is None else full(p.limit)
        x = pad_tokens_hidden(data.x, PAD).to(torch.bfloat16).contiguous()
        return TrtllmGenBuffers(x=x, **self.kernel_weights(ex), alpha=alpha, beta=beta, limit=limit,
                                ones=full(1.0), ip=ex.w2.data.shape[2] * 2)

    def run(self, p: TrtllmGenBuffers, data: CaseData) -> torch.Tensor:
        import_flashinfer()
        moe = FI.attr("flashinfer.fused_moe", "trtllm_fp4_block_scale_routed_moe")
        act = FI.attr("flashinfer.fused_moe", "ActivationType")
        c = data.case
        routing = (data.topk_ids.to(torch.int32).contiguous(),
                   data.topk_weights.to(routing_weights_dtype(FI.installed())).contiguous())
        out = moe(topk_ids=routing, routing_bias=None, hidden_states=p.x, hidden_states_scale=None,
                  gemm1_weights=p.w1, gemm1_weights_scale=p.s1, gemm1_bias=p.b1, gemm1_alpha=p.alpha,
                  gemm1_beta=p.beta, gemm1_clamp_limit=p.limit, gemm2_weights=p.w2, gemm2_weights_scale=p.s2,
                  gemm2_bias=p.b2, output1_scale_scalar=p.ones, output1_scale_gate_scalar=p.ones,
                  output2_scale_scalar=p.ones, num_experts=c.experts, top_k=c.topk, n_group=None, topk_group=None,
                  intermediate_size=p.ip, local_expert_offset=0, local_num_experts=c.experts,
                  routed_scaling_factor=None, do_finalize=True, activation_type=act.Swiglu.value)
        return layer_output(first_output(out)[:, : c.hidden].float(), data).to(c.dtype)

    def notes(self) -> dict:
        v = FI.installed()
        return {"flashinfer": v or "?", "routing_weights": str(routing_weights_dtype(v)).removeprefix("torch.")}
