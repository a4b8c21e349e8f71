"""OpenAI ``triton_kernels`` MXFP4 MoE on Hopper: ``matmul_ogs`` with a fused SwiGLU (the GPT-OSS
path vLLM and SGLang take on sm90), pinned at triton v3.6.0 ``python/triton_kernels``.

Source read: the copy vendored in the vLLM 0.20.0 wheel (``vllm/third_party/triton_kernels``, 41 .py
files; the 0.20.0 sdist's ``cmake/external_projects/triton_kernels.cmake:3`` pins tag v3.6.0). The call
sequence follows vLLM 0.20.0's ``model_executor/layers/fused_moe/experts/gpt_oss_triton_kernels_moe.py``
(VG below). ``tools/fetch-triton-kernels.py`` extracts the package from that wheel (the package index's
``triton-kernels`` is an unrelated project). Paths below are ``triton_kernels/<file>.py:<line>`` at v3.6.0.

Contract:
- weights are logical ``(E, K, N)``, K the reduction dim: the checkpoint codes ``(E, N, K/2)`` transposed
  (a stride-1 K view) and wrapped as FP4, which doubles the stride-1 dim (tensor.py:248-253), then
  swizzled by ``convert_layout`` (tensor.py:256-263) to ``HopperMXValueLayout(mx_axis=1)``; E8M0 scales
  transposed to ``(E, K/32, N)`` and swizzled to ``HopperMXScaleLayout(mx_axis=1, num_warps=8)``, what
  ``make_default_matmul_mxfp4_w_*layout`` pick on sm90 (tensor_details/layout.py:24-25,36-37; vLLM
  ``quantization/utils/mxfp4_utils.py:84-90``); the kernel reads them back in a bf16 ``tl.dot``
  (matmul_ogs_details/_matmul_ogs.py:357-367) and the matmul takes ``num_warps``/``block_n`` from the
  scale layout (matmul_ogs_details/opt_flags_details/opt_flags_nvidia.py:21-25,66-67);
- fc1 columns interleaved: column 2j is the gate, 2j+1 the up (swiglu_details/_swiglu.py:52); the gate is
  clamped from above, up to +-limit (_swiglu.py:41-45, clip :7-12) and the result is ``s * (up + 1)``,
  the +1 hard-wired (_swiglu.py:47);
- biases ``(E, N)`` (fc1 interleaved like its columns), loaded per expert and added in fp32 before the
  activation (_matmul_ogs.py:388-391,411,414-415); fp32 as vLLM asserts (VG:401-402);
- routing from the case's own top-k ids and weights, never the library's ``topk``: a uint32 bitmatrix
  (bitmatrix_details/sum_bitmatrix_rows.py:19) -> ``SparseMatrix`` metadata (tensor.py:226-233) ->
  ``make_ragged_tensor_metadata`` -> ``RoutingData``/``GatherIndx``/``ScatterIndx`` (VG:567-638); fc1
  gathers row ``src // k`` of x (matmul_ogs.py:564-565); fc2 multiplies each expert-sorted row by
  ``gammas`` after its bias (_matmul_ogs.py:400-403,422), scatters it to ``token*k+slot`` and sums the
  k rows of a token in ``reduce`` (matmul_ogs.py:657-671) from a scratchpad in the output dtype
  (matmul_ogs.py:256-258), so each expert's fc2 row is rounded to bf16 before the k-sum;
- activations bf16 only (_matmul_ogs.py:359 ``static_assert(x_format == "bf16")``; VG:400).
Checked on the CPU (tests/test_l1_triton_kernels.py): the swizzled weights, read back with the library's
own ``unswizzle_data`` and ``upcast_from_mxfp_torch``, are the case's weights with fc1 interleaved. Only a
run on the H100 settles the numerics, the routing metadata (``make_bitmatrix_metadata`` and
``make_ragged_tensor_metadata`` are Triton kernels) and ``limit=None`` passed as ``inf``.

The int16 finding (probe: harness/probes/triton_kernels_int16.py): ``topk(..., y_indx=ids)`` loads the
given ids in their own dtype (topk_details/_topk_forward.py:116-119) and packs ``1 << (ids % 32)`` in it
(:140-149); triton 3.6.0 lets the tensor's type win over a Python int (language/semantic.py:67-78), so
int16 ids lose experts 16-31 of each word and expert 15 sign-extends to 0xFFFF8000 on the uint32 store.
int16 is the library's own index dtype (topk.py:44) and the docstring sets no dtype (topk.py:123-125):
a library bug, not API misuse. This adapter never calls ``topk`` and packs the bits in int32 itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.backends.base import Level, Requirements, h100, h200
from harness.backends.emulated import MXFP4, EmulatedInterleavedMx
from harness.backends.libapi import Library
from harness.cases import CaseData
from harness.compare import BUDGET_K

TK = Library("triton", "triton_kernels", ">=3.6,<3.7", ("triton_kernels-3.6.0",),
             "triton v3.6.0 python/triton_kernels, as vendored in the vllm 0.20.0 wheel")
MAX_TOKENS = 16 << 15   # ragged block schedule: block index << 16 in an int32, 16-row blocks (see case_gate)
MAX_EXPERTS = 0xFFFF    # stage-2 sort key: expert id in 16 bits, 0xffff the sentinel (see case_gate)


@dataclass
class TritonKernelsWeights:
    w1: object          # triton_kernels Tensor, logical (E, H, 2I), HopperMXValueLayout
    w2: object          # (E, I, H)
    pc1: object         # matmul_ogs PrecisionConfig holding the swizzled fc1 scales
    pc2: object
    b1: torch.Tensor | None   # (E, 2I) fp32, interleaved like fc1
    b2: torch.Tensor | None   # (E, H) fp32


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def bitmatrix_words(ids: torch.Tensor, experts: int) -> torch.Tensor:
    """(M, ceil(E/32)) uint32: bit ``e % 32`` of word ``e // 32`` set for each expert of a row, the packing
    of ``topk_torch`` (triton_kernels/topk.py:170-175 (triton v3.6.0)), shifted in int32, never int16."""
    ids = ids.to(torch.int32)
    words = torch.zeros(ids.shape[0], (experts + 31) // 32, dtype=torch.int32, device=ids.device)
    words.scatter_add_(1, (ids // 32).long(), torch.ones_like(ids) << (ids % 32))   # ids distinct per row: add == or
    return words.view(torch.uint32)   # the bits vpopc needs (triton_kernels/tensor_details/bitmatrix_details/sum_bitmatrix_rows.py:19 (triton v3.6.0))


class TritonKernelsMxfp4(EmulatedInterleavedMx):
    name = "triton-kernels-mxfp4"
    description = "OpenAI triton_kernels matmul_ogs MXFP4 MoE, fused GPT-OSS SwiGLU, Hopper layouts (bf16 x MXFP4)"
    # sm90 only: on sm100 the Blackwell layouts apply (triton_kernels/tensor_details/layout.py:22-23,34-35
    # (triton v3.6.0)) and vLLM sets is_persistent (mxfp4_utils.py:72-77): not read here.
    # k_multiple=64: hidden and intermediate as vLLM pads them for this backend (oracle/mxfp4.py:532); the
    # value layout pads to 64 itself (triton_kernels/tensor_details/layout_details/hopper_value.py:128-134
    # (triton v3.6.0)), other sizes are not exercised.
    requirements = Requirements(devices=("sm90",), libraries=(TK,), formats=(MXFP4,), act_quants=(None,),
                                k_multiple=64, min_tokens=1)
    # L2 on the H200 at this adapter (smoke, grid, GPT-OSS-20B/120B, fuzz, int16 probe); the H100 runs were of
    # the adapter before its re-read (same calls, keyword-bound since)
    verified = Level("L2", ("tests/fixtures/api/triton_kernels-3.6.0.json", "tests/test_api_snapshots.py",
                            "tests/test_l1_triton_kernels.py", "reports/l1/triton-kernels-3.6.0.log")
                     + h200("h200-tk-smoke", "h200-tk-models", "fuzz-h200-tk", "h200-tk-probes.log")
                     + h100("h100-tk", "h100-tk-smoke", "fuzz-20261123-tk"))
    kernel = "triton_kernels.matmul_ogs.matmul_ogs(fused_activation=swiglu_fn)"
    budget_k = BUDGET_K

    def case_gate(self, case):
        why = super().case_gate(case)
        if why is None and case.dtype != torch.bfloat16:   # triton_kernels/matmul_ogs_details/_matmul_ogs.py:359 (triton v3.6.0)
            why = "bf16 activations only (_matmul_ogs.py:359 static_assert x_format == 'bf16' on the Hopper MX path)"
        if why is None and case.swiglu.beta != 1.0:   # triton_kernels/swiglu_details/_swiglu.py:47 (triton v3.6.0)
            why = "swiglu_fn adds 1 to up itself (_swiglu.py:47 fma(s, linear, s)): beta must be 1.0"
        if why is None and not (_is_pow2(case.topk) and case.topk <= 1024):   # triton_kernels/tensor_details/bitmatrix.py:46-47,53 (triton v3.6.0)
            why = f"top-k {case.topk} is not a power of two <= 1024 (bitmatrix.py:46-53 tl.arange over 32*k <= 32768)"
        if why is None and case.experts > MAX_EXPERTS:   # triton_kernels/tensor_details/bitmatrix.py:58-62 (triton v3.6.0)
            why = f"{case.experts} experts: the metadata sort keys an expert id in 16 bits (bitmatrix.py:58-62)"
        if why is None and case.tokens > MAX_TOKENS:   # triton_kernels/tensor_details/ragged_tensor.py:73,162 (triton v3.6.0)
            why = (f"{case.tokens} tokens: an expert's 16-row blocks are numbered in 15 bits "
                   "(ragged_tensor.py:162 (block << 16) + slice in an int32)")
        return why

    def prepare(self, data: CaseData, device: str) -> TritonKernelsWeights:
        # vLLM's sm90 setting (mxfp4_utils.py:72-77); process-global (triton_kernels/matmul_ogs_details/opt_flags.py:300-302
        # (triton v3.6.0)) and redundant for MX weights, which never split K (triton_kernels/matmul_ogs.py:428 (triton v3.6.0))
        TK.attr("triton_kernels.matmul_ogs_details.opt_flags", "update_opt_flags_constraints")(constraints={"split_k": 1})
        ex = super().prepare(data, device)            # fc1 rows in self.fc1_order(data): interleaved
        w1, pc1 = self._swizzle(ex.w1.data, ex.w1.scale)
        w2, pc2 = self._swizzle(ex.w2.data, ex.w2.scale)
        f32 = lambda b: None if b is None else b.to(torch.float32).contiguous()  # noqa: E731 - VG:401-402
        return TritonKernelsWeights(w1, w2, pc1, pc2, f32(ex.b1), f32(ex.b2))

    def _swizzle(self, codes: torch.Tensor, scales: torch.Tensor):
        """Checkpoint ``(E, N, K/2)`` codes and ``(E, N, K/32)`` scales into the Hopper layouts, on their device."""
        wrap = TK.attr("triton_kernels.tensor", "wrap_torch_tensor")
        convert = TK.attr("triton_kernels.tensor", "convert_layout")
        value = TK.attr("triton_kernels.tensor_details.layout", "HopperMXValueLayout")
        scale = TK.attr("triton_kernels.tensor_details.layout", "HopperMXScaleLayout")
        # logical (E, K, N): the stride-1 K/2 bytes become K FP4 values (triton_kernels/tensor.py:248-253 (triton v3.6.0))
        fp4 = wrap(torch_tensor=codes.transpose(-2, -1), dtype=TK.attr("triton_kernels.tensor", "FP4"))
        # mx_axis=1 (K), num_warps=8: make_default_matmul_mxfp4_w_*layout on sm90 (triton_kernels/tensor_details/layout.py:24-25,36-37 (triton v3.6.0))
        w = convert(tensor=fp4, layout_cls=value, mx_axis=1)
        s = convert(tensor=wrap(torch_tensor=scales.transpose(-2, -1)), layout_cls=scale, mx_axis=1, num_warps=8)
        flex = TK.attr("triton_kernels.matmul_ogs", "FlexCtx")(rhs_data=TK.attr("triton_kernels.numerics", "InFlexData")())
        return w, TK.attr("triton_kernels.matmul_ogs", "PrecisionConfig")(weight_scale=s, flex_ctx=flex)  # vLLM oracle/mxfp4.py:888-893

    def routing(self, data: CaseData):
        """RoutingData, GatherIndx, ScatterIndx from the case's top-k (VG:567-638, ids kept int32)."""
        ids = data.topk_ids.to(torch.int32).contiguous()   # SparseMatrix loads indx .to(uint32) (triton_kernels/tensor_details/bitmatrix.py:56 (triton v3.6.0))
        m, k = ids.shape
        words = bitmatrix_words(ids, data.case.experts)
        bm = TK.attr("triton_kernels.tensor", "Bitmatrix")(storage=words, dtype=TK.attr("triton_kernels.tensor", "BIT"),
                                                          shape=[m, words.shape[1] * 32], shape_max=[m, None])  # VG:596-601
        sm = TK.attr("triton_kernels.tensor", "SparseMatrix")(indx=ids, vals=data.topk_weights.to(torch.float32).contiguous(),
                                                             mask=bm)   # metadata in __post_init__ (triton_kernels/tensor.py:232-233 (triton v3.6.0))
        combine, dispatch = sm.mask_metadata.col_sorted_indx, sm.mask_metadata.row_sorted_indx   # triton_kernels/tensor_details/bitmatrix.py:20-25 (triton v3.6.0)
        ragged = TK.attr("triton_kernels.tensor", "make_ragged_tensor_metadata")(slice_sizes=sm.mask_metadata.col_sum,
                                                                                n_total_rows=dispatch.shape[0])  # VG:624-627
        # expt_hist: the per-expert counts (VG passes the staticmethod block_sizes; matmul_ogs only tests it
        # for None, triton_kernels/matmul_ogs.py:391 (triton v3.6.0))
        rd = TK.attr("triton_kernels.matmul_ogs", "RoutingData")(gate_scal=sm.vals.flatten()[combine], expt_hist=ragged.slice_sizes,
                                                                 n_expts_tot=data.case.experts, n_expts_act=k, expt_data=ragged)
        gather = TK.attr("triton_kernels.matmul_ogs", "GatherIndx")(src_indx=combine, dst_indx=dispatch)    # VG:636
        scatter = TK.attr("triton_kernels.matmul_ogs", "ScatterIndx")(src_indx=dispatch, dst_indx=combine)  # VG:637
        return rd, gather, scatter

    def swiglu(self, data: CaseData):
        """The GPT-OSS SwiGLU as matmul_ogs's fused epilogue (VG:429-438): two fc1 columns per output."""
        act = data.case.swiglu
        specs = TK.attr("triton_kernels.matmul_ogs", "FnSpecs")(
            name="swiglu", fn=TK.attr("triton_kernels.swiglu", "swiglu_fn"), fn_arg_names=("alpha", "limit"),
            reduction_n=2)   # triton_kernels/specialize.py:67-72, output N // 2 (triton_kernels/matmul_ogs.py:250 (triton v3.6.0))
        limit = act.limit if act.limit is not None else float("inf")   # clip(x, inf) is x (triton_kernels/swiglu_details/_swiglu.py:7-12 (triton v3.6.0))
        return TK.attr("triton_kernels.matmul_ogs", "FusedActivation")(specs=specs, fn_args=(act.alpha, limit))

    def run(self, p: TritonKernelsWeights, data: CaseData) -> torch.Tensor:
        matmul_ogs = TK.attr("triton_kernels.matmul_ogs", "matmul_ogs")
        rd, gi, si = self.routing(data)
        x = data.x.to(torch.bfloat16).contiguous()
        # fc1: (M*k, I) bf16 in expert-sorted rows; fc2: gammas, scatter and the k-sum (VG:460-469)
        h = matmul_ogs(x=x, w=p.w1, bias=p.b1, routing_data=rd, gather_indx=gi, precision_config=p.pc1,
                       fused_activation=self.swiglu(data))
        out = matmul_ogs(x=h, w=p.w2, bias=p.b2, routing_data=rd, scatter_indx=si, precision_config=p.pc2,
                         gammas=rd.gate_scal)
        return self.combine(out.float(), data).to(data.case.dtype)

    def notes(self) -> dict:
        return {"triton": TK.installed() or "?", "triton_kernels": "v3.6.0 (vllm 0.20.0 third_party)"}
