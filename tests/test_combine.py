"""The top-k combine of the reference (``references.combine``): the sum is in slot order, the first-use
check of the one-pass kernel has teeth (a fused multiply-add, another order, a wrong weight are caught),
and the kernel, run by triton's interpreter on the CPU, equals the eager code bit for bit at every top-k.
On the GPU: tests/gpu/test_gold_cuda.py."""

import importlib.util

import pytest
import torch

from references import combine
from tests.interpreter import run_interpreted


def test_the_sum_is_in_slot_order():
    y = torch.tensor([[[1e8], [-1e8], [1.0]]])
    w = torch.ones(1, 3)
    assert combine.eager_topk_sum(y, w).item() == 1.0                   # (1e8 - 1e8) + 1
    assert combine.eager_topk_sum(y.flip(1), w).item() == 0.0           # (1 + -1e8) + 1e8 in fp32


def test_the_sum_equals_the_plain_formula_on_exact_values():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(-64, 64, (33, 6, 70), generator=g).float()
    w = torch.randint(0, 8, (33, 6), generator=g).float() / 8
    assert torch.equal(combine.eager_topk_sum(y, w), (y * w.unsqueeze(-1)).sum(1))


def test_a_kernel_equal_to_the_eager_code_passes(monkeypatch):
    monkeypatch.setattr(combine, "_STATE", {})
    monkeypatch.setattr(combine, "_launch", combine.eager_topk_sum)
    assert all(combine.status("cpu", k) is None for k in (1, 2, 4, 8))


@pytest.mark.parametrize("wrong", ["fma", "reversed", "weight-dropped"])
def test_a_wrong_kernel_is_caught(monkeypatch, wrong):
    kernels = {
        "fma": lambda y, w: (y.double() * w.double().unsqueeze(-1)).sum(1).float(),   # one rounding
        "reversed": lambda y, w: combine.eager_topk_sum(y.flip(1), w.flip(1)),
        "weight-dropped": lambda y, w: combine.eager_topk_sum(y, torch.ones_like(w)),
    }
    monkeypatch.setattr(combine, "_STATE", {})
    monkeypatch.setattr(combine, "_launch", kernels[wrong])
    why = combine.status("cpu", 4)
    assert why is not None and why.startswith("the Triton top-k sum: ") and "(k=4)" in why, why


def test_a_kernel_that_cannot_run_leaves_the_eager_code(monkeypatch):
    def broken(y, w):
        raise RuntimeError("no kernel image is available")
    monkeypatch.setattr(combine, "_STATE", {})
    monkeypatch.setattr(combine, "_launch", broken)
    assert combine.status("cpu", 4).startswith("the Triton top-k sum cannot run: RuntimeError")
    y, w = torch.randn(3, 4, 5), torch.rand(3, 4)
    assert torch.equal(combine.topk_sum(y, w), combine.eager_topk_sum(y, w))   # the CPU never takes the kernel


_SCRIPT = r"""
import torch
from references import combine as C
for k in (1, 2, 3, 4, 6, 8):
    y, w = C._probe(5, k, C.BLOCK + 37)
    got, want = C._launch(y, w), C.eager_topk_sum(y, w)
    same = (got.view(torch.int32) == want.view(torch.int32)) | (got.isnan() & want.isnan())
    assert bool(same.all()), (k, int((~same).sum()))
    if k > 2:                                      # slots read in another order are caught (a + b is b + a)
        bad = C._launch(y.flip(1), w.flip(1))
        assert not bool(((bad.view(torch.int32) == want.view(torch.int32)) | (bad.isnan() & want.isnan())).all()), k
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_kernel_under_the_interpreter():
    run_interpreted(_SCRIPT, timeout=600)


def test_no_slots_sum_to_zero():
    assert torch.equal(combine.topk_sum(torch.ones(3, 0, 5), torch.ones(3, 0)), torch.zeros(3, 5))
