"""The measured sm90 fast-math FP8 scale (references/formats/fast_math_sm90.py, Findings 7) as the FlashInfer FP8
twin uses it: the table's own values, the exponent, the zero group, and where it does not apply."""

import torch

from harness.backends.emulated_cutlass import EmulatedFp8BlockUpGate
from references.formats import TRTLLM, TRTLLM_SM90_FAST_MATH, Fp8Scale
from references.formats.fast_math_sm90 import _INV_BITS, _SCALE_BITS, sm90_fast_math_scale
from references.formats.fp8 import _fp8_scale, fp8_group_quantize


def _bits(t):
    return [int(b) & 0xFFFFFFFF for b in t.view(torch.int32)]


def test_amax_in_one_to_two_reads_the_table():
    a = torch.arange(0x3F80, 0x4000, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()   # [1, 2)
    applies, s, v = sm90_fast_math_scale(a)
    assert bool(applies.all()) and _bits(s) == list(_SCALE_BITS) and _bits(v) == list(_INV_BITS)
    assert _bits(s)[0] == 0x43E00000   # 448 / 1 is exact


def test_the_exponent_scales_exactly():
    m = torch.arange(0x3F80, 0x4000, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    _, s1, v1 = sm90_fast_math_scale(m)
    for e in (-100, -37, -1, 5, 99):
        applies, s, v = sm90_fast_math_scale(m * 2.0 ** e)
        assert bool(applies.all()) and torch.equal(s, s1 * 2.0 ** -e) and torch.equal(v, v1 * 2.0 ** e)


def test_outside_the_measured_range_or_off_bf16_it_does_not_apply():
    a = torch.tensor([2.0 ** -101, 2.0 ** 100, 1.0 + 2.0 ** -10, 0.0])
    assert not bool(sm90_fast_math_scale(a)[0].any())
    inv, stored = _fp8_scale(a, Fp8Scale.FP32, TRTLLM_SM90_FAST_MATH)
    inv0, stored0 = _fp8_scale(a, Fp8Scale.FP32, TRTLLM)
    assert torch.equal(inv, inv0) and torch.equal(stored, stored0) and float(inv[3]) == 1.0   # a zero group: scale 1


def test_it_moves_codes_the_reference_rule_does_not():
    """Values near e4m3 rounding midpoints (the Finding 7 case's kind) land on other codes under the measured
    scale: every bf16 x in (0, 2) against each amax in [1, 2)."""
    amax = torch.arange(0x3F80, 0x4000, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    xs = torch.arange(0x3000, 0x4000, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()   # 2^-31 .. 2
    xs = xs[:-(xs.numel() % 127) or None].view(-1, 127)
    rows = torch.cat([amax.repeat_interleave(xs.shape[0]).unsqueeze(-1),
                      (xs.repeat(128, 1) * 0.5)], -1)   # amax first, the rest at most 1 <= amax
    q_twin, s_twin = fp8_group_quantize(rows, 128, Fp8Scale.FP32, TRTLLM_SM90_FAST_MATH)
    q_ref, s_ref = fp8_group_quantize(rows, 128, Fp8Scale.FP32, TRTLLM)
    moved = int((q_twin.view(torch.uint8) != q_ref.view(torch.uint8)).sum())
    assert not torch.equal(s_twin, s_ref) and moved > 0


def test_the_flashinfer_fp8_twin_quantizes_by_it_and_its_reference_does_not():
    b = EmulatedFp8BlockUpGate()
    assert b.twin_act_rule is TRTLLM_SM90_FAST_MATH and b.reference_kw == {"act_rule": TRTLLM}
