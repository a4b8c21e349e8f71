"""Activations (clamp branches exercised far past the limit) and routing/combine semantics."""

import pytest
import torch
import torch.nn.functional as NF
from hypothesis import given
from hypothesis import strategies as st

from references.activations import GPT_OSS, SwigluParams, silu_and_mul, swiglu, swiglu_clamp_only
from references.routing import combine_shared, grouped_topk, softmax_topk, topk_softmax


def hf_gpt_oss(gate, up, alpha=1.702, limit=7.0):
    # the HF modeling_gpt_oss.py formula, written out independently
    gate = gate.clamp(min=None, max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


def test_gpt_oss_matches_hf_formula_with_clamps_firing():
    g = torch.tensor([-30.0, -7.5, 0.3, 6.9, 7.1, 50.0])
    u = torch.tensor([-50.0, -7.1, 0.2, 6.0, 7.5, 40.0])
    assert torch.allclose(swiglu(g, u, GPT_OSS), hf_gpt_oss(g, u), rtol=0, atol=0)
    # both clamps fired: gate 50 -> 7, up 40 -> 7, up -50 -> -7
    assert swiglu(torch.tensor([50.0]), torch.tensor([40.0]), GPT_OSS).item() == pytest.approx(8 * 7 * torch.sigmoid(torch.tensor(7 * 1.702)).item())
    assert swiglu(torch.tensor([1.0]), torch.tensor([-50.0]), GPT_OSS).item() == pytest.approx(-6 * torch.sigmoid(torch.tensor(1.702)).item())


def test_gate_is_clamped_from_above_only():
    p = SwigluParams(1.0, 0.0, 2.0)
    # gate far below -limit stays (silu(-30) ~ 0), gate above is cut to 2
    assert swiglu(torch.tensor([-30.0]), torch.tensor([1.0]), p).item() == pytest.approx(NF.silu(torch.tensor(-30.0)).item())
    assert swiglu(torch.tensor([30.0]), torch.tensor([1.0]), p).item() == pytest.approx(NF.silu(torch.tensor(2.0)).item())


def test_silu_and_mul_and_clamp_only():
    x = torch.randn(4, 16) * 10
    assert torch.allclose(silu_and_mul(x), NF.silu(x[:, :8]) * x[:, 8:])
    g, u = x[:, :8], x[:, 8:]
    assert torch.allclose(swiglu_clamp_only(g, u, 3.0), NF.silu(g.clamp(max=3.0)) * u.clamp(-3.0, 3.0))


def test_kernel_precision_rounds_to_input_dtype():
    g = (torch.randn(256) * 8).to(torch.bfloat16)
    u = (torch.randn(256) * 8).to(torch.bfloat16)
    k = swiglu(g, u, GPT_OSS, "kernel")
    f = swiglu(g, u, GPT_OSS, "fp32")
    assert k.dtype == torch.bfloat16 and f.dtype == torch.float32
    rel = ((k.float() - f).norm() / f.norm()).item()
    assert 0 < rel < 0.01  # different rounding, same function
    with pytest.raises(ValueError, match="'fp16' is not a valid Precision"):
        swiglu(g, u, GPT_OSS, "fp16")


@given(st.integers(1, 32), st.integers(2, 16), st.integers(0, 2**31 - 1))
def test_softmax_topk(t, e, seed):
    k = max(1, e // 3)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, e, generator=g)
    w, ids = softmax_topk(logits, k, renormalize=True)
    assert torch.allclose(w.sum(-1), torch.ones(t), atol=1e-6)
    assert torch.equal(ids, logits.topk(k, -1).indices)
    w2, _ = softmax_topk(logits, k, renormalize=False)
    assert (w2.sum(-1) <= 1 + 1e-6).all()
    w3, ids3 = topk_softmax(logits, k)
    assert torch.equal(ids3, ids) and torch.allclose(w3, w, atol=1e-6)  # same weights once renormalised


def test_grouped_topk_respects_groups_bias_and_rsf():
    g = torch.Generator().manual_seed(0)
    t, e, ng, kg, k = 16, 16, 4, 2, 4
    logits = torch.randn(t, e, generator=g)
    bias = torch.zeros(e)
    bias[12:] = 10.0  # bias pulls group 3 in, but weights must not include it
    w, ids = grouped_topk(logits, k, ng, kg, bias, True, 2.5)
    assert torch.allclose(w.sum(-1), torch.full((t,), 2.5), atol=1e-5)
    groups = ids // (e // ng)
    assert all(len(set(r.tolist())) <= kg for r in groups)
    assert (groups == 3).any(-1).all()
    scores = torch.sigmoid(logits).gather(1, ids)
    assert torch.allclose(w, scores / scores.sum(-1, keepdim=True) * 2.5, atol=1e-6)


def test_shared_combine_order():
    routed, shared = torch.tensor([1.0]), torch.tensor([10.0])
    assert combine_shared(routed, shared, 2.5).item() == 2.5 + 10.0
    assert combine_shared(routed, None, 2.5).item() == 2.5
    assert combine_shared(routed, shared, 2.5).item() != 2.5 * (1.0 + 10.0)  # the known fault
