"""The reference MoE forward: agrees with the naive per-expert loop, invariant to layout, chunking
and unrouted experts, dequantizes only routed experts."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from references import formats as F
from references.activations import GPT_OSS, SwigluParams
from references.layouts import convert_gate_up
from references.moe import dequantize_weight, moe_forward, naive_moe_forward
from references.routing import softmax_topk


def _setup(seed, t=24, h=128, i=64, e=5, k=2, fmt="mxfp4", order="gate_up"):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(t, h, generator=g) * 4).to(torch.bfloat16)
    w1 = torch.randn(e, 2 * i, h, generator=g) / h ** 0.5
    w2 = torch.randn(e, h, i, generator=g) / i ** 0.5
    w, ids = softmax_topk(torch.randn(t, e, generator=g), k)
    b1, b2 = torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g)
    if fmt == "mxfp4":
        (q1, s1), (q2, s2) = F.mx_quantize(w1), F.mx_quantize(w2)
    elif fmt == "fp8_block":
        (q1, s1), (q2, s2) = F.fp8_block_quantize(w1), F.fp8_block_quantize(w2)
    else:
        q1, s1, q2, s2 = w1.to(torch.bfloat16), None, w2.to(torch.bfloat16), None
    return x, ids, w, q1, s1, q2, s2, b1, b2


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["mxfp4", "fp8_block", "bf16"]),
       st.sampled_from([SwigluParams(), GPT_OSS, SwigluParams(1.0, 0.0, 3.0)]))
def test_matches_naive_loop(seed, fmt, act):
    h = 128
    x, ids, w, q1, s1, q2, s2, b1, b2 = _setup(seed, h=h, i=128, fmt=fmt)
    out = moe_forward(x, ids, w, q1, q2, fmt=fmt, w1_scale=s1, w2_scale=s2, b1=b1, b2=b2, activation=act)
    ref = naive_moe_forward(x, ids, w, dequantize_weight(fmt, q1, s1), dequantize_weight(fmt, q2, s2),
                            b1=b1, b2=b2, activation=act)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["interleaved", "up_gate"])
def test_gate_up_order_invariance(order):
    x, ids, w, q1, s1, q2, s2, b1, b2 = _setup(1)
    base = moe_forward(x, ids, w, q1, q2, fmt="mxfp4", w1_scale=s1, w2_scale=s2, b1=b1, b2=b2, activation=GPT_OSS)
    other = moe_forward(x, ids, w, convert_gate_up(q1, "gate_up", order), q2, fmt="mxfp4",
                        w1_scale=convert_gate_up(s1, "gate_up", order), w2_scale=s2,
                        b1=convert_gate_up(b1, "gate_up", order, dim=-1), b2=b2, gate_up_order=order, activation=GPT_OSS)
    assert torch.equal(base, other)
    wrong = moe_forward(x, ids, w, convert_gate_up(q1, "gate_up", order), q2, fmt="mxfp4",
                        w1_scale=convert_gate_up(s1, "gate_up", order), w2_scale=s2, b1=b1, b2=b2, activation=GPT_OSS)
    assert not torch.allclose(base, wrong, atol=1e-2)


def test_chunking_does_not_change_the_result():
    x, ids, w, q1, s1, q2, s2, b1, b2 = _setup(2, t=40)
    a = moe_forward(x, ids, w, q1, q2, fmt="mxfp4", w1_scale=s1, w2_scale=s2)
    b = moe_forward(x, ids, w, q1, q2, fmt="mxfp4", w1_scale=s1, w2_scale=s2, chunk_rows=3)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)  # fp32 GEMM blocking order only


def test_only_routed_experts_are_dequantized():
    x, ids, w, q1, s1, q2, s2, b1, b2 = _setup(3, e=6)
    ids = ids.clamp(max=4)  # expert 5 gets no tokens
    s1 = s1.clone()
    s1[5, 0, 0] = 0xFF  # a NaN scale in the unrouted expert is never read
    moe_forward(x, ids, w, q1, q2, fmt="mxfp4", w1_scale=s1, w2_scale=s2)
    s1[2, 3, 1] = 0xFF
    with pytest.raises(ValueError, match=r"w1\[expert 2\] scales: E8M0 scale 0xFF \(NaN\) at index \(3, 1\)"):
        moe_forward(x, ids, w, q1, q2, fmt="mxfp4", w1_scale=s1, w2_scale=s2)


def test_empty_and_bad_inputs():
    x, ids, w, q1, s1, q2, s2, b1, b2 = _setup(4)
    assert moe_forward(x[:0], ids[:0], w[:0], q1, q2, fmt="mxfp4", w1_scale=s1, w2_scale=s2).shape == (0, 128)
    with pytest.raises(ValueError, match="topk_ids outside"):
        moe_forward(x, ids + 10, w, q1, q2, fmt="mxfp4", w1_scale=s1, w2_scale=s2)
    with pytest.raises(ValueError, match="unknown weight format"):
        moe_forward(x, ids, w, q1, q2, fmt="int3", w1_scale=s1, w2_scale=s2)


def test_act_quant_changes_result_by_fp8_sized_amount():
    x, ids, w, q1, s1, q2, s2, b1, b2 = _setup(5, fmt="fp8_block", h=128, i=128)
    a16 = moe_forward(x, ids, w, q1, q2, fmt="fp8_block", w1_scale=s1, w2_scale=s2)
    for aq in ("fp8_group", "fp8_group_ue8m0", "mxfp8"):
        a8 = moe_forward(x, ids, w, q1, q2, fmt="fp8_block", w1_scale=s1, w2_scale=s2, act_quant=aq)
        rel = ((a8 - a16).norm() / a16.norm()).item()
        assert 1e-4 < rel < 0.08, aq
