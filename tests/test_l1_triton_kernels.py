"""The triton_kernels MXFP4 adapter: its gates on any machine, and (L1) its preprocessing against the
library's own layout code on the CPU where triton and triton_kernels v3.6.0 import.

L1: ``prepare`` runs the real ``wrap_torch_tensor`` / ``convert_layout`` into ``HopperMXValueLayout``
and ``HopperMXScaleLayout`` (plain torch, ``tensor.py:248-263``, ``layout_details/hopper_*.py``); the
library's own ``unswizzle_data`` reads the buffers back, and its own dequantizer
``upcast_from_mxfp_torch`` (``numerics_details/mxfp.py:324``) turns them into the weights the kernel
multiplies by, which must equal the case's weights with fc1 rows interleaved (gate at column 2j,
``swiglu_details/_swiglu.py:52``). The routing metadata needs a GPU (``make_bitmatrix_metadata``
is a Triton kernel) and is checked on the H100; its first step, the uint32 bitmatrix the adapter packs
itself, is checked here bit by bit (the int16 regression ids included). The library's torch twin of its
fused SwiGLU (``swiglu.py:89-100``) applied to the fc1 output in the kernel's column order must equal the
harness reference in the case's order. Logs of runs: ``reports/l1/triton-kernels-3.6.0.log``.
"""

import sys

import pytest
import torch

import harness.backends.libapi as L
import harness.backends.triton_kernels as TKB
from harness.cases import make_inputs, validate_case
from references.layouts import GateUpOrder, convert_gate_up

BACKEND = TKB.TritonKernelsMxfp4()


def case(**kw):
    raw = {"name": "t", "tokens": 5, "hidden": 128, "intermediate": 192, "experts": 3, "topk": 2,
           "weight_format": "mxfp4", "activation": "gpt_oss", "bias": True} | kw
    return validate_case(raw, "test")


# ---- gates (no library needed) ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cpu", "sm100", "gfx942"])
def test_device_gate_needs_sm90(kind):
    assert BACKEND.device_gate(kind) == f"needs sm90, found {kind}"


def test_library_gate_messages(monkeypatch):
    monkeypatch.delitem(sys.modules, "triton_kernels", raising=False)
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None)
    assert BACKEND.device_gate("sm90") == "triton not installed"
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(L.importlib.metadata, "version", lambda dist: "3.7.0")
    assert BACKEND.device_gate("sm90") == "written for triton>=3.6,<3.7, found 3.7.0 (--force to run anyway)"
    monkeypatch.setattr(L.importlib.metadata, "version", lambda dist: "3.6.0")
    assert BACKEND.device_gate("sm90") is None


@pytest.mark.parametrize("kw,why", [
    ({"activation": {"alpha": 1.702, "beta": 0.0, "limit": 7.0}}, "beta must be 1.0"),
    ({"topk": 3}, "top-k 3 is not a power of two"),
    ({"dtype": "float16"}, "bf16 activations only"),
    ({"hidden": 96}, "hidden=96 is not a multiple of 64"),
    ({"weight_format": "bf16"}, "weight format bf16 not supported"),
    ({"topk": 2048, "experts": 4096}, "top-k 2048 is not a power of two <= 1024"),
    ({"experts": 70000}, "the metadata sort keys an expert id in 16 bits"),
    ({"tokens": TKB.MAX_TOKENS + 1}, "numbered in 15 bits"),
    ({"tokens": 0}, "needs at least 1 tokens"),
])
def test_case_gates(kw, why):
    assert why in (BACKEND.case_gate(case(**kw)) or "")


def test_gpt_oss_case_passes_the_gate():
    assert BACKEND.case_gate(case()) is None


# ---- the adapter's own bitmatrix (pure torch; the library's metadata kernels need a GPU) -------------
@pytest.mark.parametrize("experts", [40, 64, 65])
def test_bitmatrix_words_set_one_bit_per_selected_expert(experts):
    ids = torch.tensor([[1, 3, 7, 17], [1, 3, 7, 15], [0, 14, 16, 31], [33, 39, 32, 0]])   # the int16 finding's rows
    words = TKB.bitmatrix_words(ids, experts)
    assert words.dtype == torch.uint32 and words.shape == (4, (experts + 31) // 32)
    got = [[w & 0xFFFFFFFF for w in row] for row in words.view(torch.int32).to(torch.int64).tolist()]
    want = [[sum(1 << (e % 32) for e in row if e // 32 == j) for j in range(words.shape[1])] for row in ids.tolist()]
    assert got == want


# ---- L1: the library's own layout code --------------------------------------------------------------
def _library():
    pytest.importorskip("triton", reason="triton not installed (the L1 checks need triton_kernels v3.6.0)")
    tk = pytest.importorskip("triton_kernels.numerics_details.mxfp", reason="triton_kernels not on the path "
                             "(tools/fetch-triton-kernels.py)")
    if TKB.TK.gate():
        pytest.skip(TKB.TK.gate())
    return tk


@pytest.mark.parametrize("hidden,inter,experts", [(128, 192, 3), (64, 320, 2), (2880 // 45 * 2, 128, 2)])
def test_prepared_weights_read_back_through_the_library(hidden, inter, experts):
    mxfp = _library()
    data = make_inputs(case(hidden=hidden, intermediate=inter, experts=experts), "cpu")
    p = BACKEND.prepare(data, "cpu")
    assert type(p.w1.storage.layout).__name__ == "HopperMXValueLayout"
    assert type(p.pc1.weight_scale.storage.layout).__name__ == "HopperMXScaleLayout"
    assert p.b1.dtype == p.b2.dtype == torch.float32
    ex = data.experts
    for w, s, canon, name in ((p.w1, p.pc1.weight_scale, ex.w1, "w1"), (p.w2, p.pc2.weight_scale, ex.w2, "w2")):
        codes = w.storage.layout.unswizzle_data(w.storage.data)                # (E, K/2, N)
        n, k = canon.data.shape[1], canon.data.shape[2] * 2
        scales = s.storage.layout.unswizzle_data(s.storage.data)[..., : k // 32, :n]   # (E, K/32, N), padding cropped
        kernel_w = mxfp.upcast_from_mxfp_torch(codes.transpose(-2, -1).contiguous(),
                                               scales.transpose(-2, -1).contiguous(), torch.float32, axis=-1)
        want = ex.fmt.dequantize(canon)
        if name == "w1":   # the kernel's fc1 columns: gate_j at 2j, up_j at 2j+1
            want = convert_gate_up(want, ex.order, GateUpOrder.INTERLEAVED, dim=-2)
        assert torch.equal(kernel_w, want), f"{name}: the library reads back different weights"
    assert torch.equal(p.b1, convert_gate_up(ex.b1.float(), ex.order, GateUpOrder.INTERLEAVED, dim=-1))


def test_the_check_sees_a_wrong_row_order():
    """Not vacuous: with the halves order the library reads back other fc1 weights."""
    mxfp = _library()
    data = make_inputs(case(), "cpu")

    class Halves(TKB.TritonKernelsMxfp4):
        def fc1_order(self, data):
            return GateUpOrder.GATE_UP

    p = Halves().prepare(data, "cpu")
    codes = p.w1.storage.layout.unswizzle_data(p.w1.storage.data)
    n, k = data.experts.w1.data.shape[1], data.experts.w1.data.shape[2] * 2
    scales = p.pc1.weight_scale.storage.layout.unswizzle_data(p.pc1.weight_scale.storage.data)[..., : k // 32, :n]
    got = mxfp.upcast_from_mxfp_torch(codes.transpose(-2, -1).contiguous(), scales.transpose(-2, -1).contiguous(),
                                      torch.float32, axis=-1)
    want = convert_gate_up(data.experts.fmt.dequantize(data.experts.w1), data.experts.order, GateUpOrder.INTERLEAVED, dim=-2)
    assert not torch.equal(got, want)


@pytest.mark.parametrize("beta,same", [(1.0, True), (0.0, False)])
def test_library_swiglu_on_the_kernel_columns_is_the_reference(beta, same):
    """fc1 in the kernel's columns (read back through the library) + the library's swiglu_torch == the
    reference on the case's order, for GPT-OSS (beta 1); beta 0 differs: the +1 is the library's own."""
    mxfp = _library()
    swiglu = pytest.importorskip("triton_kernels.swiglu")
    from references.activations import swiglu as ref_swiglu
    from references.layouts import split_gate_up
    data = make_inputs(case(activation={"alpha": 1.702, "beta": beta, "limit": 7.0}), "cpu")
    p, ex, act = BACKEND.prepare(data, "cpu"), data.experts, data.case.swiglu
    codes = p.w1.storage.layout.unswizzle_data(p.w1.storage.data)
    n, k = ex.w1.data.shape[1], ex.w1.data.shape[2] * 2
    scales = p.pc1.weight_scale.storage.layout.unswizzle_data(p.pc1.weight_scale.storage.data)[..., : k // 32, :n]
    kernel_w = mxfp.upcast_from_mxfp_torch(codes.transpose(-2, -1).contiguous(), scales.transpose(-2, -1).contiguous(),
                                           torch.float32, axis=-1)
    x, w = data.x.float(), ex.fmt.dequantize(ex.w1)
    for e in range(data.case.experts):
        got = swiglu.swiglu_torch(x @ kernel_w[e].T + p.b1[e], act.alpha, swiglu.PrecisionConfig(limit=act.limit))
        gate, up = split_gate_up(x @ w[e].T + ex.b1[e].float(), ex.order, dim=-1)
        assert torch.allclose(got, ref_swiglu(gate, up, act), rtol=1e-5, atol=1e-5) == same
