"""The fused MXFP4 GEMM of the CUDA reference (``references.gemm_fused``): its first-use check has
teeth, bad scales send the reference to the dequantizing path, and, run by triton's interpreter on
the CPU, the kernel passes that check in both of its variants and makes ``moe_forward`` bit-equal to
the fp64 gold path on exact inputs (row tiles 16..128, N and K tails, experts gathered out of order).
On the GPU: tests/gpu/test_gold_cuda.py."""

import importlib.util

import numpy as np
import pytest
import torch

from references import gemm_fused
from references.formats.mx import mx_dequantize
from references.gemm import GemmPlan, PackedMx, plan_for
from references.formats import WEIGHT_FORMATS, QuantRecipe
from tests.interpreter import run_interpreted


def test_self_check_rejects_a_kernel_off_by_one_scale(monkeypatch):
    def off_by_one(x, packed, scales, ids):
        w = mx_dequantize(packed[ids], (scales[ids].clamp(max=253) + 1).to(torch.uint8))
        return (x.double() @ w.double().transpose(-2, -1)).float()
    monkeypatch.setattr(gemm_fused, "_STATE", {})
    monkeypatch.setattr(gemm_fused, "_launch", off_by_one)
    why = gemm_fused.status("cpu", mx_dequantize)
    assert why is not None and "differ from the eager decode" in why


def test_self_check_rejects_a_kernel_that_ignores_the_expert_ids(monkeypatch):
    def first_expert(x, packed, scales, ids):
        w = mx_dequantize(packed[:1], scales[:1]).expand(ids.numel(), -1, -1)
        return (x.double() @ w.double().transpose(-2, -1)).float()
    monkeypatch.setattr(gemm_fused, "_STATE", {})
    monkeypatch.setattr(gemm_fused, "_launch", first_expert)
    assert "differ" in (gemm_fused.status("cpu", mx_dequantize) or "")


def test_a_correct_kernel_passes_the_self_check(monkeypatch):
    """The check's own expectations are right: the exact product of the eager decode passes it."""
    def exact(x, packed, scales, ids):
        w = mx_dequantize(packed[ids], scales[ids])
        return (x.double() @ w.double().transpose(-2, -1)).float()
    monkeypatch.setattr(gemm_fused, "_STATE", {})
    monkeypatch.setattr(gemm_fused, "_launch", exact)
    assert gemm_fused.status("cpu", mx_dequantize) is None


@pytest.mark.parametrize("code,usable", [(127, True), (4, True), (254, True), (3, False), (0, False), (255, False)])
def test_scales_the_fused_gemm_takes(code, usable):
    s = torch.full((2, 8, 4), 127, dtype=torch.uint8)
    s[1, 3, 2] = code
    assert gemm_fused.scales_usable(torch.full((1, 2), 120, dtype=torch.uint8), s) is usable


def test_the_cpu_reference_never_packs():
    f = WEIGHT_FORMATS["mxfp4"]
    q = f.quantize(torch.randn(2, 64, 64), QuantRecipe())
    assert plan_for(torch.zeros(1, 64, dtype=torch.bfloat16), f, None, True, (q, q)) == GemmPlan(False, False)


def test_packed_experts_dequantize_to_their_own_experts():
    f = WEIGHT_FORMATS["mxfp4"]
    q = f.quantize(torch.randn(4, 32, 64), QuantRecipe())
    ids = torch.tensor([3, 1])
    assert torch.equal(PackedMx(q, ids).dequantize(torch.float32), f.dequantize(q.experts(ids), name="w"))


_SCRIPT = r"""
import torch
from references import gemm_fused as G
from references.formats.mx import mx_dequantize
from references.gold import gold_moe_forward
import references.moe as M
from tests.test_gold import _int_act, _integer_case
G.TILE.mode, G.TILE.swap = {mode}, {swap}
G.PACKED_MAX_ROWS = 1 << 30                             # every batch through the kernel
assert G.status("cpu", mx_dequantize) is None, G.status("cpu", mx_dequantize)
M.plan_for = lambda *a, **k: M.GemmPlan(True, True)      # the CUDA plan, on the CPU
for seed, t, e, k, h, i in [(1, 40, 5, 2, 160, 96), (2, 300, 3, 3, 128, 64)]:
    x, ids, w, ex = _integer_case(seed, t, e, k, h, i, "mxfp4", seed == 2)
    cfg = M.MoEConfig(act_fn=_int_act)
    fast, gold = M.moe_forward(x, ids, w, ex, cfg), gold_moe_forward(x, ids, w, ex, cfg)
    assert torch.equal(fast, gold), (seed, (fast - gold).abs().max())
print("ok")
"""


def _interpreter_ready():
    if importlib.util.find_spec("triton") is None:
        return "triton not installed (the fused GEMM is checked on the GPU by tests/gpu/test_gold_cuda.py)"
    if tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 4):
        return f"triton's interpreter calls int() on 1-element arrays, which numpy {np.__version__} refuses (needs numpy < 2.4)"
    return None


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("swap", [False, True])
def test_kernel_under_the_interpreter_is_exact(mode, swap):
    why = _interpreter_ready()
    if why:
        pytest.skip(why)
    run_interpreted(_SCRIPT.format(mode=mode, swap=swap), timeout=900)


def test_a_plan_whose_scales_were_bad_is_redone_without_them():
    assert GemmPlan(True, True, True, torch.tensor(False)).redo() is None
    assert GemmPlan(True, True, True, None).redo() is None
    again = GemmPlan(True, True, True, torch.tensor(True)).redo()
    assert again == GemmPlan(True, False, False) and again.scales_bad is None


def test_the_scale_check_is_kept_per_tensor_and_redone_after_a_write():
    from references.gemm_fused import scales_flag
    s1 = torch.full((2, 3, 4), 127, dtype=torch.uint8)
    s2 = torch.full((2, 5, 4), 127, dtype=torch.uint8)
    first = scales_flag(s1, s2)
    assert not bool(first) and scales_flag(s1, s2) is first           # kept: no kernel the second time
    s2[1, 4, 3] = 0xFF                                                # a NaN code written in place
    assert bool(scales_flag(s1, s2))
    s3 = s1.clone()
    s3[0, 0, 0] = 1                                                   # another tensor, a subnormal-making code
    assert bool(scales_flag(s3, s2.clone()))
