"""The reference MoE forward: agrees with the naive per-expert loop, invariant to layout, chunking
and unrouted experts, dequantizes only routed experts."""

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from references import formats as F
from references.activations import GPT_OSS, SwigluParams
from references.formats import WEIGHT_FORMATS, ActQuant, QTensor, QuantRecipe
from references.layouts import GateUpOrder, convert_gate_up
from references.moe import Experts, MoEConfig, moe_forward, naive_moe_forward
from references.routing import softmax_topk


def _setup(seed, t=24, h=128, i=64, e=5, k=2, fmt="mxfp4"):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(t, h, generator=g) * 4).to(torch.bfloat16)
    w1 = torch.randn(e, 2 * i, h, generator=g) / h ** 0.5
    w2 = torch.randn(e, h, i, generator=g) / i ** 0.5
    w, ids = softmax_topk(torch.randn(t, e, generator=g), k)
    b1, b2 = torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g)
    f = WEIGHT_FORMATS[fmt]
    return x, ids, w, Experts(f, f.quantize(w1, QuantRecipe()), f.quantize(w2, QuantRecipe()), b1, b2)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["mxfp4", "fp8_block", "bf16"]),
       st.sampled_from([SwigluParams(), GPT_OSS, SwigluParams(1.0, 0.0, 3.0)]))
def test_matches_naive_loop(seed, fmt, act):
    x, ids, w, ex = _setup(seed, h=128, i=128, fmt=fmt)
    out = moe_forward(x, ids, w, ex, MoEConfig(activation=act))
    ref = naive_moe_forward(x, ids, w, ex.fmt.dequantize(ex.w1), ex.fmt.dequantize(ex.w2), b1=ex.b1, b2=ex.b2,
                            cfg=MoEConfig(activation=act))
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", [GateUpOrder.INTERLEAVED, GateUpOrder.UP_GATE])
def test_gate_up_order_invariance(order):
    x, ids, w, ex = _setup(1)
    cfg = MoEConfig(activation=GPT_OSS)
    base = moe_forward(x, ids, w, ex, cfg)
    conv = lambda t, dim=-2: convert_gate_up(t, GateUpOrder.GATE_UP, order, dim=dim)  # noqa: E731
    moved = replace(ex, w1=QTensor(conv(ex.w1.data), conv(ex.w1.scale)), b1=conv(ex.b1, -1), order=order)
    assert torch.equal(base, moe_forward(x, ids, w, moved, cfg))
    wrong = replace(moved, order=GateUpOrder.GATE_UP)
    assert not torch.allclose(base, moe_forward(x, ids, w, wrong, cfg), atol=1e-2)


def test_chunking_does_not_change_the_result():
    x, ids, w, ex = _setup(2, t=40)
    a = moe_forward(x, ids, w, ex)
    b = moe_forward(x, ids, w, ex, MoEConfig(chunk_rows=3))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)  # fp32 GEMM blocking order only


def test_only_routed_experts_are_dequantized():
    x, ids, w, ex = _setup(3, e=6)
    ids = ids.clamp(max=4)  # expert 5 gets no tokens
    s1 = ex.w1.scale.clone()
    s1[5, 0, 0] = 0xFF  # a NaN scale in the unrouted expert is never read
    moe_forward(x, ids, w, replace(ex, w1=QTensor(ex.w1.data, s1)))
    s1[2, 3, 1] = 0xFF
    with pytest.raises(ValueError, match=r"w1\[expert 2\] scales: E8M0 scale 0xFF \(NaN\) at index \(3, 1\)"):
        moe_forward(x, ids, w, replace(ex, w1=QTensor(ex.w1.data, s1)))


def test_empty_and_bad_inputs():
    x, ids, w, ex = _setup(4)
    assert moe_forward(x[:0], ids[:0], w[:0], ex).shape == (0, 128)
    with pytest.raises(ValueError, match="topk_ids outside"):
        moe_forward(x, ids + 10, w, ex)
    with pytest.raises(ValueError, match="unknown weight format 'int3'"):
        F.weight_format("int3")


def test_act_quant_changes_result_by_fp8_sized_amount():
    x, ids, w, ex = _setup(5, fmt="fp8_block", h=128, i=128)
    a16 = moe_forward(x, ids, w, ex)
    for aq in ActQuant:
        a8 = moe_forward(x, ids, w, ex, MoEConfig(act_quant=aq))
        rel = ((a8 - a16).norm() / a16.norm()).item()
        assert 1e-4 < rel < 0.08, aq


def test_naive_loop_takes_zero_tokens():
    x, ids, w, ex = _setup(6)
    out = naive_moe_forward(x[:0], ids[:0], w[:0], ex.fmt.dequantize(ex.w1), ex.fmt.dequantize(ex.w2))
    assert out.shape == (0, 128)


def test_cutlass_precision_rounds_fc1_then_adds_the_bias_and_rounds_the_activation_once():
    """Precision.CUTLASS is FlashInfer's cutlass MoE: fc1 written as bf16, bias and SwiGLU in fp32, one
    rounding (doActivationKernel), fc2 written as bf16 (finalize sums it in fp32); KERNEL (vLLM's
    silu_and_mul) rounds the SiLU and the product apiece and keeps fc2's output in fp32."""
    from references.activations import Precision, swiglu
    g = torch.Generator().manual_seed(4)
    t, h, i = 64, 128, 64
    x = torch.randn(t, h, generator=g).to(torch.bfloat16)
    w1 = (torch.randn(1, 2 * i, h, generator=g) / 8).to(torch.bfloat16)
    w2 = (torch.randn(1, h, i, generator=g) / 8).to(torch.bfloat16)
    b1 = torch.randn(1, 2 * i, generator=g) / 3           # fp32 bias: its bits below bf16's matter
    ex = Experts(WEIGHT_FORMATS["bf16"], QTensor(w1), QTensor(w2), b1=b1)
    ids, wts = torch.zeros(t, 1, dtype=torch.int64), torch.ones(t, 1)
    out = {p: moe_forward(x, ids, wts, ex, MoEConfig(activation=GPT_OSS, precision=p)) for p in Precision}
    # by hand: bf16(x @ w1^T), + b1 in fp32, SwiGLU in fp32, bf16 once, then bf16(fc2)
    fc1 = (x.float() @ w1[0].float().T).to(torch.bfloat16).float() + b1[0]
    a = swiglu(fc1[:, :i], fc1[:, i:], GPT_OSS, Precision.FP32).to(torch.bfloat16).float()
    assert torch.equal(out[Precision.CUTLASS], (a @ w2[0].float().T).to(torch.bfloat16).float())   # fc2 writes bf16
    assert not torch.equal(out[Precision.CUTLASS], out[Precision.KERNEL])
    assert not torch.equal(out[Precision.CUTLASS], out[Precision.FP32])


def test_triton_kernels_precision_weights_then_rounds_each_row():
    """Precision.TRITON_KERNELS is matmul_ogs: fc1 + bias and the SwiGLU (s = g / (1 + exp(-alpha g)),
    fma(s, up, s)) in fp32, rounded once; fc2 rows times their routing weight, rounded, summed in fp32."""
    from references.activations import Precision
    g = torch.Generator().manual_seed(5)
    t, h, i, e, k = 32, 128, 64, 4, 2
    x = torch.randn(t, h, generator=g).to(torch.bfloat16)
    w1 = (torch.randn(e, 2 * i, h, generator=g) / 8).to(torch.bfloat16)
    w2 = (torch.randn(e, h, i, generator=g) / 8).to(torch.bfloat16)
    b1, b2 = torch.randn(e, 2 * i, generator=g) / 3, torch.randn(e, h, generator=g) / 3
    ex = Experts(WEIGHT_FORMATS["bf16"], QTensor(w1), QTensor(w2), b1=b1, b2=b2)
    wts, ids = softmax_topk(torch.randn(t, e, generator=g), k)
    got = moe_forward(x, ids, wts, ex, MoEConfig(activation=GPT_OSS, precision=Precision.TRITON_KERNELS))
    want = torch.zeros(t, h, dtype=torch.float64)
    for tok in range(t):
        for slot in range(k):
            ee = int(ids[tok, slot])
            fc1 = x[tok].float() @ w1[ee].float().T + b1[ee]
            gate, up = fc1[:i].clamp(max=7.0), fc1[i:].clamp(-7.0, 7.0)
            s = gate / (1 + torch.exp(-1.702 * gate))
            a = (s.double() * up.double() + s.double()).float().to(torch.bfloat16).float()
            y = a @ w2[ee].float().T + b2[ee]
            want[tok] += (y * wts[tok, slot]).to(torch.bfloat16).double()
    # the same roundings; only the fp32 GEMM sums' order differs (x @ w per row here, batched there), which
    # moves a rare bf16 rounding: nearly every element is the same number, and the other precisions are not
    same = lambda out: float((out.double() == want).double().mean())  # noqa: E731
    assert same(got) >= 0.99
    for other in (Precision.CUTLASS, Precision.KERNEL, Precision.FP32):
        assert same(moe_forward(x, ids, wts, ex, MoEConfig(activation=GPT_OSS, precision=other))) < 0.9
