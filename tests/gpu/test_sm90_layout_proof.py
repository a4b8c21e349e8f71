"""On an sm90 GPU with flashinfer-python: the pure-PyTorch SM90 W4A16 layout of the installed
version (``references.sm90_mixed.LAYOUTS``: v1 for 0.6.12, v2 for 0.7.2.post1) equals FlashInfer's
own helpers byte for byte, over many shapes (hypothesis), and its inverse reads them back."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.device import device_info

pytestmark = [pytest.mark.gpu, pytest.mark.sm90]


def _require_sm90_flashinfer():
    if not torch.cuda.is_available():
        pytest.skip("needs an sm90 GPU, found cpu (torch sees no CUDA device)")
    kind = device_info("cuda")["kind"]
    if kind != "sm90":
        pytest.skip(f"needs sm90, found {kind}")
    pytest.importorskip("flashinfer", reason="flashinfer-python not installed")
    from harness.backends.flashinfer import FI, sm90_layout
    from harness.backends.flashinfer.build import import_flashinfer
    from references.sm90_mixed import LAYOUTS
    why = FI.gate()
    if why:
        pytest.skip(why)
    return import_flashinfer(), LAYOUTS[sm90_layout(FI.installed())]


# weights: rows % 16 and K % 64 are what both versions' CUDA helper accepts
shapes = st.tuples(st.integers(1, 3), st.integers(1, 24).map(lambda r: 16 * r), st.integers(1, 24).map(lambda c: 64 * c))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_weight_interleave_matches_flashinfer(shape, seed):
    fm, layout = _require_sm90_flashinfer()
    e, n, k = shape
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 256, (e, n, k // 2), dtype=torch.uint8, generator=g).cuda()
    theirs = fm.interleave_moe_weights_for_sm90_mixed_gemm(w, "fp4")
    ours = layout.interleave_weights(w)
    assert torch.equal(ours, theirs), f"{layout.name} {shape}: {(ours != theirs).sum().item()} bytes differ"
    assert torch.equal(layout.deinterleave_weights(theirs), w)


@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)), seed=st.integers(0, 2**31 - 1))
def test_scale_interleave_matches_flashinfer(shape, seed):
    fm, layout = _require_sm90_flashinfer()
    e, rows, kg = shape[0], shape[1] * layout.row_multiple, shape[2] * 4
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, 256, (e, rows, kg), dtype=torch.uint8, generator=g).cuda()
    theirs = fm.interleave_moe_scales_for_sm90_mixed_gemm(s, group_size=32)
    assert torch.equal(layout.interleave_scales(s), theirs)
    assert torch.equal(layout.read_scales(theirs, rows, kg), s)


def test_inputs_bit_identical_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU, found cpu (torch sees no CUDA device)")
    from harness.cases import make_inputs, validate_case
    c = validate_case(dict(name="x", tokens=9, hidden=256, intermediate=128, experts=4, topk=2, weight_format="mxfp4",
                           bias=True, activation="gpt_oss"), "test")
    a, b = make_inputs(c, "cpu"), make_inputs(c, "cuda")
    for name in ("x", "topk_ids", "topk_weights"):
        assert torch.equal(getattr(a, name), getattr(b, name).cpu())
    for ta, tb in ((a.experts.w1.data, b.experts.w1.data), (a.experts.w1.scale, b.experts.w1.scale),
                   (a.experts.w2.data, b.experts.w2.data), (a.experts.w2.scale, b.experts.w2.scale),
                   (a.experts.b1, b.experts.b1), (a.experts.b2, b.experts.b2)):
        assert torch.equal(ta, tb.cpu())


def test_exact_bf16_reference_path_matches_fp32_path():
    """The fast reference (bf16 GEMM, fp32 accumulate/output) equals the fp32 path up to summation order."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU, found cpu (torch sees no CUDA device)")
    from harness.cases import make_inputs, validate_case
    from references.moe import MoEConfig, moe_forward
    c = validate_case(dict(name="x", tokens=64, hidden=512, intermediate=256, experts=8, topk=2, weight_format="mxfp4",
                           bias=True, activation="gpt_oss", input_scale=4.0), "test")
    d = make_inputs(c, "cuda")
    fast = moe_forward(d.x, d.topk_ids, d.topk_weights, d.experts, MoEConfig(activation=c.swiglu))
    slow = moe_forward(d.x, d.topk_ids, d.topk_weights, d.experts, MoEConfig(activation=c.swiglu, exact_bf16=False))
    rel = ((fast - slow).norm() / slow.norm()).item()
    assert rel < 1e-5, rel
