"""OpenAI ``triton_kernels`` MXFP4 MoE on Hopper: ``matmul_ogs`` with a fused SwiGLU (the GPT-OSS
path vLLM and SGLang take on sm90), pinned at triton v3.6.0 ``python/triton_kernels``.

Source read: the copy vendored in the vLLM 0.20.0 wheel (``vllm/third_party/triton_kernels``, pinned
by the 0.20.0 sdist's ``cmake/external_projects/triton_kernels.cmake:3`` to tag v3.6.0); the call
sequence is vLLM 0.20.0's ``fused_moe/experts/gpt_oss_triton_kernels_moe.py`` (VG below).
``tools/fetch-triton-kernels.py`` extracts it from that wheel (the package index's
``triton-kernels`` is an unrelated project).

Contract (every line cites ``triton_kernels/<file>:<line>`` at v3.6.0):
- weights are ``(E, K, N)`` logical, K the reduction dim: the checkpoint codes ``(E, N, K/2)``
  transposed and wrapped as FP4 (``tensor.py:248-253``), swizzled to ``HopperMXValueLayout``;
  E8M0 scales ``(E, K/32, N)`` to ``HopperMXScaleLayout(num_warps=8)`` (``tensor_details/layout.py:21-39``;
  vLLM ``mxfp4_utils.py:84-90``);
- fc1 rows interleaved: output column 2j is gate, 2j+1 up (``swiglu_details/_swiglu.py:52``); gate
  clamped from above, up to +-limit, ``s * (up + 1)`` with the +1 built in (``_swiglu.py:38-53``);
- biases fp32 ``(E, N)`` added before the activation (``_matmul_ogs.py:410-415``; vLLM asserts fp32, VG:401-402);
- routing from the case's own top-k ids through a uint32 bitmatrix (``tensor.py:181-233``; VG:567-638),
  routing weights applied in fc2 as ``gammas`` after its bias (``_matmul_ogs.py:400-422``), the k
  rows of a token summed by ``reduce`` (``matmul_ogs.py:657-671``);
- activations bf16 only (``_matmul_ogs.py:359`` static_assert x_format == "bf16").
Only a run on the H100 settles the numerics; the layouts are checked against the library's own
swizzle/unswizzle on the CPU (tests/test_l1_triton_kernels.py).

The int16 finding (``harness/probes/triton_kernels_int16.py``): ``topk(..., y_indx=ids)`` with int16
ids packs the bitmatrix with ``1 << (ids % 32)`` computed in int16 (``topk_details/_topk_forward.py:140-149``;
triton 3.6.0 ``language/semantic.py:67-78`` lets the tensor's type win), losing experts 16-31 of each
word and sign-extending bit 15. This adapter never calls ``topk``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.backends.base import Level, Requirements, h100
from harness.backends.emulated import MXFP4, EmulatedInterleavedMx
from harness.backends.libapi import Library
from harness.cases import CaseData
from harness.compare import BUDGET_K

TK = Library("triton", "triton_kernels", ">=3.6,<3.7", ("triton_kernels-3.6.0",),
             "triton v3.6.0 python/triton_kernels, as vendored in the vllm 0.20.0 wheel")


@dataclass
class TritonKernelsWeights:
    w1: object          # triton_kernels Tensor, logical (E, H, 2I), HopperMXValueLayout
    w2: object          # (E, I, H)
    pc1: object         # PrecisionConfig with the swizzled fc1 scales
    pc2: object
    b1: torch.Tensor | None   # (E, 2I) fp32, interleaved like fc1
    b2: torch.Tensor | None   # (E, H) fp32


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class TritonKernelsMxfp4(EmulatedInterleavedMx):
    name = "triton-kernels-mxfp4"
    description = "OpenAI triton_kernels matmul_ogs MXFP4 MoE, fused GPT-OSS SwiGLU, Hopper layouts (bf16 x MXFP4)"
    # sm90 only: on sm100 the Blackwell layouts and is_persistent apply (vLLM mxfp4_utils.py:72-77), not verified here
    requirements = Requirements(devices=("sm90",), libraries=(TK,), formats=(MXFP4,), act_quants=(None,), k_multiple=64)
    verified = Level("L2", ("tests/fixtures/api/triton_kernels-3.6.0.json", "tests/test_l1_triton_kernels.py",
                            "reports/l1/triton-kernels-3.6.0.log") + h100("h100-tk", "h100-tk-smoke", "fuzz-20261123-tk"))
    kernel = "triton_kernels.matmul_ogs.matmul_ogs(fused_activation=swiglu_fn)"
    budget_k = BUDGET_K

    def case_gate(self, case):
        why = super().case_gate(case)
        if why is None and case.dtype != torch.bfloat16:
            why = "bf16 activations only (_matmul_ogs.py:359 static_assert x_format == 'bf16')"
        if why is None and case.swiglu.beta != 1.0:
            why = "swiglu_fn adds 1 to up itself (_swiglu.py:53 fma(s, linear, s)): beta must be 1.0"
        if why is None and not _is_pow2(case.topk):
            why = f"top-k {case.topk} is not a power of two (bitmatrix.py:46-53 tl.arange over 32*k)"
        return why

    def prepare(self, data: CaseData, device: str) -> TritonKernelsWeights:
        TK.attr("triton_kernels.matmul_ogs_details.opt_flags", "update_opt_flags_constraints")({"split_k": 1})  # vLLM sm90
        ex = super().prepare(data, device)            # fc1 rows in self.fc1_order (interleaved)
        w1, pc1 = self._swizzle(ex.w1.data, ex.w1.scale)
        w2, pc2 = self._swizzle(ex.w2.data, ex.w2.scale)
        f32 = lambda b: None if b is None else b.to(torch.float32).contiguous()  # noqa: E731 - VG:401-402
        return TritonKernelsWeights(w1, w2, pc1, pc2, f32(ex.b1), f32(ex.b2))

    def _swizzle(self, codes: torch.Tensor, scales: torch.Tensor):
        """Checkpoint ``(E, N, K/2)`` codes and ``(E, N, K/32)`` scales into the Hopper layouts (on the GPU)."""
        wrap = TK.attr("triton_kernels.tensor", "wrap_torch_tensor")
        convert = TK.attr("triton_kernels.tensor", "convert_layout")
        fp4 = TK.attr("triton_kernels.tensor", "FP4")
        value = TK.attr("triton_kernels.tensor_details.layout", "HopperMXValueLayout")
        scale = TK.attr("triton_kernels.tensor_details.layout", "HopperMXScaleLayout")
        w = convert(wrap(codes.transpose(-2, -1), dtype=fp4), value, mx_axis=1)
        s = convert(wrap(scales.transpose(-2, -1)), scale, mx_axis=1, num_warps=8)
        flex_ctx = TK.attr("triton_kernels.matmul_ogs", "FlexCtx")
        flex = flex_ctx(rhs_data=TK.attr("triton_kernels.numerics", "InFlexData")())  # vLLM oracle/mxfp4.py:888-893
        return w, TK.attr("triton_kernels.matmul_ogs", "PrecisionConfig")(weight_scale=s, flex_ctx=flex)

    def routing(self, data: CaseData):
        """RoutingData, GatherIndx, ScatterIndx from the case's top-k (VG:567-638, ids kept int32)."""
        ids = data.topk_ids.to(torch.int32).contiguous()
        m, k = ids.shape
        e = data.case.experts
        words = (e + 31) // 32
        bits = torch.zeros(m, words, dtype=torch.int32, device=ids.device)   # topk_torch packs the same (topk.py:159-176)
        bits.scatter_add_(1, (ids // 32).long(), torch.ones_like(ids) << (ids % 32))   # distinct ids: add == or
        bitmatrix = TK.attr("triton_kernels.tensor", "Bitmatrix")
        bm = bitmatrix(bits.view(torch.uint32), dtype=TK.attr("triton_kernels.tensor", "BIT"),
                       shape=[m, words * 32], shape_max=[m, None])
        sparse = TK.attr("triton_kernels.tensor", "SparseMatrix")
        sm = sparse(indx=ids, vals=data.topk_weights.to(torch.float32).contiguous(), mask=bm)
        combine, dispatch = sm.mask_metadata.col_sorted_indx, sm.mask_metadata.row_sorted_indx
        ragged = TK.attr("triton_kernels.tensor", "make_ragged_tensor_metadata")(sm.mask_metadata.col_sum,
                                                                                dispatch.shape[0])
        routing_data = TK.attr("triton_kernels.matmul_ogs", "RoutingData")
        rd = routing_data(gate_scal=sm.vals.flatten()[combine], expt_hist=ragged.slice_sizes, n_expts_tot=e,
                          n_expts_act=k, expt_data=ragged)
        gather = TK.attr("triton_kernels.matmul_ogs", "GatherIndx")(src_indx=combine, dst_indx=dispatch)
        scatter = TK.attr("triton_kernels.matmul_ogs", "ScatterIndx")(src_indx=dispatch, dst_indx=combine)
        return rd, gather, scatter

    def run(self, p: TritonKernelsWeights, data: CaseData) -> torch.Tensor:
        matmul_ogs = TK.attr("triton_kernels.matmul_ogs", "matmul_ogs")
        act = data.case.swiglu
        rd, gi, si = self.routing(data)
        fn_specs = TK.attr("triton_kernels.matmul_ogs", "FnSpecs")
        spec = fn_specs("swiglu", TK.attr("triton_kernels.swiglu", "swiglu_fn"), ("alpha", "limit"), reduction_n=2)
        fused_activation = TK.attr("triton_kernels.matmul_ogs", "FusedActivation")
        fused = fused_activation(spec, (act.alpha, act.limit if act.limit is not None else float("inf")))
        x = data.x.to(torch.bfloat16).contiguous()
        h = matmul_ogs(x, p.w1, p.b1, rd, gather_indx=gi, precision_config=p.pc1, fused_activation=fused)
        out = matmul_ogs(h, p.w2, p.b2, rd, scatter_indx=si, precision_config=p.pc2, gammas=rd.gate_scal)
        return self.combine(out.float(), data).to(data.case.dtype)

    def notes(self) -> dict:
        return {"triton": TK.installed() or "?", "triton_kernels": "v3.6.0 (vllm 0.20.0 third_party)"}
