"""Formats: E2M1, E8M0, MX block quantization and scale modes, NVFP4, FP8 block scales."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from references import formats as F

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def test_e2m1_table_matches_ocp():
    t = F.e2m1_table()
    assert t[:8].tolist() == E2M1
    assert t[8:].tolist() == [-v for v in E2M1]


def test_e2m1_encode_decode_round_trip_all_codes():
    codes = torch.tensor([c for c in range(16) if c != 8], dtype=torch.uint8)  # 8 is -0
    assert torch.equal(F.e2m1_encode(F.e2m1_decode(codes)), codes)


@pytest.mark.parametrize("x,expected", [
    (0.25, 0.0), (0.26, 0.5), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0), (5.0, 4.0),
    (5.01, 6.0), (7.0, 6.0), (1e6, 6.0), (-2.5, -2.0), (-100.0, -6.0), (0.1, 0.0),
])
def test_e2m1_rne_ties_and_saturation(x, expected):
    assert F.e2m1_decode(F.e2m1_encode(torch.tensor([x]))).item() == expected


@given(st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=1, max_size=64))
def test_e2m1_encode_is_nearest_even(xs):
    x = torch.tensor(xs, dtype=torch.float32)
    got = F.e2m1_decode(F.e2m1_encode(x))
    table = torch.tensor(E2M1)
    for xi, gi in zip(x.tolist(), got.tolist()):
        a = min(abs(xi), 6.0)
        d = [abs(a - v) for v in E2M1]
        best = min(d)
        cands = [i for i, di in enumerate(d) if di == best]
        code = cands[0] if len(cands) == 1 else [c for c in cands if c % 2 == 0][0]
        assert abs(gi) == table[code].item()
        if gi != 0:
            assert math.copysign(1, gi) == math.copysign(1, xi)


def test_fp4_packing_low_nibble_is_even_element():
    codes = torch.tensor([[1, 2, 15, 7]], dtype=torch.uint8)
    packed = F.pack_fp4(codes)
    assert packed.tolist() == [[0x21, 0x7F]]
    assert torch.equal(F.unpack_fp4(packed), codes)


def test_fp4_packing_matches_torch_float4_storage_order():
    # torch.float4_e2m1fn_x2 stores two codes per byte; a byte built by pack_fp4 viewed as it
    # must keep its bits (the dtype is a bit container: the even element is the low nibble).
    codes = torch.tensor([[3, 12]], dtype=torch.uint8)
    b = F.pack_fp4(codes).view(torch.float4_e2m1fn_x2)
    assert b.view(torch.uint8).item() == (12 << 4) | 3


@given(st.integers(1, 8), st.integers(1, 16), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(rows, half, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, 16, (rows, 2 * half), dtype=torch.uint8, generator=g)
    assert torch.equal(F.unpack_fp4(F.pack_fp4(c)), c)


def test_e8m0_matches_torch_float8_e8m0fnu():
    codes = torch.arange(0, 255, dtype=torch.uint8)
    ours = F.e8m0_decode(codes)
    theirs = codes.view(torch.float8_e8m0fnu).to(torch.float32)
    assert torch.equal(ours, theirs)
    assert torch.isnan(torch.tensor([255], dtype=torch.uint8).view(torch.float8_e8m0fnu).float()).all()


def test_e8m0_nan_scale_raises_with_index():
    s = torch.full((2, 3), 127, dtype=torch.uint8)
    s[1, 2] = 0xFF
    with pytest.raises(ValueError, match=r"0xFF \(NaN\) at index \(1, 2\)"):
        F.e8m0_decode(s, name="w1 scales")
    with pytest.raises(ValueError, match="w1 scales"):
        F.mx_dequantize(torch.zeros(2, 48, dtype=torch.uint8), s, "e2m1", name="w1")


@pytest.mark.parametrize("amax,mode,elem,exp", [
    # OCP MX v1.0 6.3: X = 2^(floor(log2 amax) - emax_elem)
    (6.0, "floor", "e2m1", 0), (7.0, "floor", "e2m1", 0), (1.0, "floor", "e2m1", -2), (0.75, "floor", "e2m1", -3),
    (7.0, "ceil", "e2m1", 1), (4.0, "ceil", "e2m1", 0), (7.0, "rceil", "e2m1", 1), (6.0, "rceil", "e2m1", 0),
    (6.01, "rceil", "e2m1", 1), (7.0, "even", "e2m1", 1), (5.0, "even", "e2m1", 0), (5.9, "even", "e2m1", 0), (7.5, "even", "e2m1", 1),
    (448.0, "floor", "e4m3", 0), (500.0, "floor", "e4m3", 0), (500.0, "rceil", "e4m3", 1), (1.0, "floor", "e4m3", -8),
    (0.0, "floor", "e2m1", -127), (2.0 ** -149, "floor", "e2m1", -127), (2.0 ** 127, "floor", "e2m1", 125),
])
def test_mx_scale_exponent_examples(amax, mode, elem, exp):
    assert F.mx_scale_exponent(torch.tensor([amax]), elem, mode).item() == exp


def test_mx_quantize_ocp_example_saturates():
    x = torch.zeros(32)
    x[0], x[1], x[2] = 7.0, 1.0, -0.3
    q, s = F.mx_quantize(x, "e2m1", "floor")
    assert s.item() == 127  # 2^0
    d = F.mx_dequantize(q, s, "e2m1")
    assert d[0].item() == 6.0 and d[1].item() == 1.0 and d[2].item() == -0.5


@given(st.sampled_from(list(F.ScaleMode)), st.sampled_from(list(F.Element)), st.integers(0, 2**31 - 1))
def test_mx_quantize_is_idempotent(mode, elem, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 64, generator=g) * torch.exp2(torch.randint(-20, 20, (4, 1), generator=g).float())
    d1 = F.mx_dequantize(*F.mx_quantize(x, elem, mode), elem)
    d2 = F.mx_dequantize(*F.mx_quantize(d1, elem, mode), elem)
    if mode is not F.ScaleMode.CEIL:
        assert torch.equal(d1, d2)
    # error bound: each element within half a step of its block's grid (saturation aside)
    assert torch.isfinite(d1).all()


def test_mx_scale_modes_differ_as_documented():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g)
    amax = x.unflatten(-1, (-1, 32)).abs().amax(-1)
    e = {m.value: F.mx_scale_exponent(amax, F.Element.E2M1, m) for m in F.ScaleMode}
    assert (e["ceil"] >= e["floor"]).all() and (e["ceil"] - e["floor"] <= 1).all()
    assert (e["even"] >= e["floor"]).all() and (e["rceil"] >= e["floor"]).all()
    assert (e["ceil"] != e["floor"]).any() and (e["rceil"] != e["ceil"]).any()


def test_mxfp8_elements_are_torch_e4m3_casts():
    x = torch.randn(8, 64)
    q, s = F.mx_quantize(x, "e4m3", "floor")
    sc = F.e8m0_decode(s).repeat_interleave(32, -1)
    assert torch.equal(q.view(torch.uint8), (x / sc).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8))


def test_unaligned_k_raises_naming_block():
    with pytest.raises(ValueError, match="K=100 is not a multiple of the block size 32"):
        F.mx_quantize(torch.randn(2, 100))
    with pytest.raises(ValueError, match="multiple of the block size 128"):
        F.fp8_group_quantize(torch.randn(2, 96))
    with pytest.raises(ValueError, match=r"not a multiple of block \(128, 128\)"):
        F.fp8_block_quantize(torch.randn(100, 128))


def test_nan_input_raises():
    x = torch.randn(2, 32)
    x[1, 5] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite value nan at index \(1, 5\)"):
        F.mx_quantize(x)


def test_nvfp4_round_trip_and_scale_dtype():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 128, generator=g)
    q, sf, gs = F.nvfp4_quantize(x)
    assert sf.dtype == torch.float8_e4m3fn and sf.shape == (16, 8) and q.shape == (16, 64)
    d = F.nvfp4_dequantize(q, sf, gs)
    rel = (d - x).norm() / x.norm()
    assert 0.02 < rel < 0.15  # 4-bit elements: visible but bounded error
    assert gs.item() == pytest.approx(448 * 6 / x.abs().max().item(), rel=1e-6)


def test_fp8_ue8m0_scales_are_powers_of_two_and_cover_fp32():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 512, generator=g) * 3
    _, s32 = F.fp8_group_quantize(x, 128, "fp32")
    q8, s8 = F.fp8_group_quantize(x, 128, "ue8m0")
    m, e = torch.frexp(s8)
    assert (m == 0.5).all()
    assert (s8 >= s32).all() and (s8 < 2 * s32).all()
    assert s32.flatten()[0].item() == pytest.approx(x[0, :128].abs().max().item() / 448, rel=1e-6)
    assert torch.equal(F.ceil_to_ue8m0(torch.tensor([1.0, 1.5, 0.25, 3.0])), torch.tensor([1.0, 2.0, 0.25, 4.0]))


def test_fp8_block_round_trip_error_is_fp8_sized():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(256, 384, generator=g)
    for fmt in F.Fp8Scale:
        q, s = F.fp8_block_quantize(w, (128, 128), fmt)
        assert s.shape == (2, 3)
        rel = (F.fp8_block_dequantize(q, s) - w).norm() / w.norm()
        assert 0.005 < rel < 0.05


def test_ulp_ordering():
    a = torch.tensor([1.0, 3.0, 0.0], dtype=torch.bfloat16)
    b = (a.view(torch.int16) + 1).view(torch.bfloat16)  # next representable up
    assert (F.float_to_ordered_int(b) - F.float_to_ordered_int(a)).tolist() == [1, 1, 1]
    neg = torch.tensor([-0.0, 0.0], dtype=torch.bfloat16)
    assert (F.float_to_ordered_int(neg[1:]) - F.float_to_ordered_int(neg[:1])).item() == 0  # -0 == +0
    tiny = torch.tensor([-1.0, 1.0], dtype=torch.bfloat16)
    assert (F.float_to_ordered_int(tiny[1:]) - F.float_to_ordered_int(tiny[:1])).item() > 30000


def test_fp8_group_amax_floor_is_the_contracts():
    """DeepGEMM's tests clamp the amax at 1e-4; TRT-LLM/FlashInfer's scale_1x128_kernel has no floor (scale 1 for zeros)."""
    x = torch.zeros(2, 128)
    x[0, :4] = torch.tensor([1e-10, -2e-10, 1.5e-10, 0.5e-10])
    _, s_floor = F.fp8_group_quantize(x, 128)
    q0, s0 = F.fp8_group_quantize(x, 128, rule=F.TRTLLM)
    assert s_floor[0].item() == pytest.approx(1e-4 / 448) and s0[0].item() == pytest.approx(2e-10 / 448)
    assert s0[1].item() == 1.0 and not q0[1].float().any()
    back = F.fp8_group_dequantize(q0, s0)
    assert torch.allclose(back[0, :4], x[0, :4], rtol=0.07)
    assert not F.fp8_group_dequantize(*F.fp8_group_quantize(x, 128))[0, :4].any()  # the 1e-4 floor flushes them


def test_fp8_reciprocal_rule_moves_midpoints():
    """bf16 inputs land exactly on e4m3 midpoints: 0.59765625 / (3.9375 / 448) = 68.0 (between 64 and 72,
    rounds to even 64), while 0.59765625 * (448 / 3.9375) = 68.0000076 in fp32 rounds to 72. TRT-LLM's
    quantizer multiplies (the FP8 fuzz finding on the H100: 0.1% of N(0,1) codes move a whole step)."""
    x = torch.zeros(1, 128)
    x[0, 0], x[0, 1] = 3.9375, 0.59765625
    q_div, _ = F.fp8_group_quantize(x, 128, rule=F.VLLM)
    q_rec, _ = F.fp8_group_quantize(x, 128, rule=F.TRTLLM)
    assert q_div[0, 1].float().item() == 64.0 and q_rec[0, 1].float().item() == 72.0
    assert q_div[0, 0].float().item() == q_rec[0, 0].float().item() == 448.0
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(512, 128, generator=g).to(torch.bfloat16).float()
    moved = (F.fp8_group_quantize(xs, 128, rule=F.VLLM)[0].float() != F.fp8_group_quantize(xs, 128, rule=F.TRTLLM)[0].float())
    assert 0 < moved.float().mean() < 0.01


def test_findings_case_separates_the_amax_floors():
    """The fuzz finding on the H100 (kept in cases/findings.yaml): the two floors' references differ by ~40%,
    and FlashInfer's twin passes against the reference of its own contract."""
    from harness.backends.registry import select_backends
    from harness.cases import CaseContext, load_cases
    from harness.compare import compute_metrics
    from harness.runner import run_one
    (c,) = load_cases(["cases/findings.yaml"], "fp8-block-tiny-activations")
    ctx = CaseContext(c, "cpu")
    _, ref = ctx.ensure()
    assert compute_metrics(ctx.reference_with(act_rule=F.TRTLLM), ref, c.limits).mismatch > 0.3
    (twin,) = select_backends("emulated-fp8-block-up-gate")
    assert twin.reference_kw == {"act_rule": F.TRTLLM}
    assert run_one(twin, ctx, "cpu").status.value == "pass"
