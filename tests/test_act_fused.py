"""The one-pass SwiGLU of the CUDA reference (``references.act_fused``): its first-use check has teeth,
and the kernel, run by triton's interpreter on the CPU, reads gate and up from the right columns in
every order, clamps, keeps NaN, rounds to bf16 to nearest even and writes the tail of a row.
Bit-equality with the eager code on the GPU: tests/gpu/test_gold_cuda.py."""

import importlib.util

import pytest
import torch

from references import act_fused
from references.activations import GPT_OSS, SwigluParams
from references.layouts import GateUpOrder
from references.moe import MoEConfig, _fused_between, between_gemms
from tests.interpreter import run_interpreted

CFG = MoEConfig(activation=GPT_OSS)


def _eager(order, cfg=CFG):
    return lambda h: between_gemms(h, order, cfg)


def _eager_launch(cfg=CFG):
    """A stand-in kernel that is the eager code: what a correct kernel returns."""
    def run(h, order, alpha, beta, limit, b1=None, ids=None):
        if b1 is not None:
            h = h + b1.index_select(0, ids).to(torch.float32).unsqueeze(-2)
        return between_gemms(h, order, cfg).to(torch.bfloat16)
    return run


def test_a_kernel_equal_to_the_eager_code_passes(monkeypatch):
    monkeypatch.setattr(act_fused, "_STATE", {})
    monkeypatch.setattr(act_fused, "_launch", _eager_launch())
    p = GPT_OSS
    assert act_fused.status("cpu", GateUpOrder.INTERLEAVED, p.alpha, p.beta, p.limit, _eager(GateUpOrder.INTERLEAVED),
                            ) is None


def test_one_bit_off_is_caught_and_named(monkeypatch):
    def one_ulp_high(h, order, alpha, beta, limit, b1=None, ids=None):
        out = _eager_launch()(h, order, alpha, beta, limit, b1, ids)
        bits = out.view(torch.int16).clone()
        bits.view(-1)[12345] += 1
        return bits.view(torch.bfloat16)
    monkeypatch.setattr(act_fused, "_STATE", {})
    monkeypatch.setattr(act_fused, "_launch", one_ulp_high)
    p = GPT_OSS
    why = act_fused.status("cpu", GateUpOrder.GATE_UP, p.alpha, p.beta, p.limit, _eager(GateUpOrder.GATE_UP))
    assert why is not None and why.startswith("the Triton SwiGLU: 1 of ") and "gate " in why, why


def test_a_kernel_equal_to_the_eager_code_passes_with_a_bias(monkeypatch):
    monkeypatch.setattr(act_fused, "_STATE", {})
    monkeypatch.setattr(act_fused, "_launch", _eager_launch())
    p = GPT_OSS
    assert act_fused.status("cpu", GateUpOrder.GATE_UP, p.alpha, p.beta, p.limit, _eager(GateUpOrder.GATE_UP),
                            torch.bfloat16) is None


def test_a_bias_from_the_wrong_expert_is_caught(monkeypatch):
    def first_row(h, order, alpha, beta, limit, b1=None, ids=None):
        return _eager_launch()(h, order, alpha, beta, limit, b1, torch.zeros_like(ids))
    monkeypatch.setattr(act_fused, "_STATE", {})
    monkeypatch.setattr(act_fused, "_launch", first_row)
    p = GPT_OSS
    why = act_fused.status("cpu", GateUpOrder.GATE_UP, p.alpha, p.beta, p.limit, _eager(GateUpOrder.GATE_UP), torch.float32)
    assert why is not None and "+ bias" in why, why


def test_a_missing_clamp_is_caught(monkeypatch):
    """The probe holds values past the limit: a kernel that forgets swiglu_limit differs."""
    monkeypatch.setattr(act_fused, "_STATE", {})
    monkeypatch.setattr(act_fused, "_launch", _eager_launch(MoEConfig(activation=SwigluParams(GPT_OSS.alpha, GPT_OSS.beta))))
    p = GPT_OSS
    assert "differ" in (act_fused.status("cpu", GateUpOrder.GATE_UP, p.alpha, p.beta, p.limit,
                                         _eager(GateUpOrder.GATE_UP), ) or "")


def test_a_kernel_that_cannot_run_sends_the_reference_to_the_eager_code(monkeypatch):
    def broken(*a):
        raise RuntimeError("no kernel image is available\nfor execution")
    monkeypatch.setattr(act_fused, "_STATE", {})
    monkeypatch.setattr(act_fused, "_launch", broken)
    why = act_fused.status("cpu", GateUpOrder.GATE_UP, 1.0, 0.0, None, _eager(GateUpOrder.GATE_UP, MoEConfig()))
    assert why == "the Triton SwiGLU cannot run: RuntimeError: no kernel image is available for execution"


def test_the_probe_holds_the_edges():
    v = act_fused._probe(GPT_OSS.limit, GPT_OSS.alpha, 1 << 10)
    assert v.isnan().any() and v.isposinf().any() and v.isneginf().any()
    assert (v == GPT_OSS.limit).any() and (v == -GPT_OSS.limit).any() and (v > GPT_OSS.limit).any()
    assert ((v.abs() > 0) & (v.abs() < torch.finfo(torch.float32).tiny)).any()       # subnormals
    assert ((GPT_OSS.alpha * v).abs() > 88.8).any()                                   # exp overflows


def test_the_cpu_reference_keeps_the_eager_code():
    from references.formats import WEIGHT_FORMATS, QuantRecipe
    from references.moe import Experts
    f = WEIGHT_FORMATS["bf16"]
    ex = Experts(f, f.quantize(torch.randn(2, 8, 32), QuantRecipe()), f.quantize(torch.randn(2, 32, 4), QuantRecipe()))
    assert _fused_between(torch.randn(2, 3, 8), ex, torch.tensor([1, 0]), CFG) is None


_SCRIPT = r"""
import torch
from references import act_fused as A
from references.activations import SwigluParams
from references.layouts import GateUpOrder, fuse_gate_up
from references.moe import MoEConfig, between_gemms
for order in GateUpOrder:
    for p, bias in [(SwigluParams(1.702, 1.0, 7.0), None), (SwigluParams(), None), (SwigluParams(1.702, 1.0, 7.0), torch.bfloat16)]:
        cfg = MoEConfig(activation=p)
        v = A._probe(p.limit, p.alpha, 1 << 14)
        gate = torch.cat([v, v[:-v.numel() % (A.COLS * 3)]]).view(-1, 3, A.COLS)
        up = gate.flip(0)
        h = fuse_gate_up(gate, up, order, dim=-1)
        b1 = ids = None
        if bias is not None:
            b1, ids = torch.randn(4, h.shape[-1]).to(bias) * 3, torch.randint(0, 4, (h.shape[0],))
        got = A._launch(h, order, p.alpha, p.beta, p.limit, b1, ids)
        want = between_gemms(h if b1 is None else h + b1[ids].float().unsqueeze(-2), order, cfg).to(torch.bfloat16)
        assert torch.equal(got.isnan(), want.isnan()), (order, p)
        d = (got.view(torch.int16).int() - want.view(torch.int16).int()).abs()[~want.isnan()]
        # numpy's exp stands in for libdevice's here: at most a last-bit difference, rarely
        assert int(d.max()) <= 1 and int((d > 0).sum()) <= want.numel() // 1000, (order, p, int(d.max()), int((d > 0).sum()))
        for wrong in GateUpOrder:                         # the same data read in another order is far off
            if wrong is not order:
                bad = A._launch(h, wrong, p.alpha, p.beta, p.limit, b1, ids)
                assert int((bad.view(torch.int16) != want.view(torch.int16)).sum()) > want.numel() // 4, (order, wrong)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_kernel_under_the_interpreter():
    run_interpreted(_SCRIPT, timeout=600)
