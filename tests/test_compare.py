"""Metrics on known pairs and verdict messages."""

import math

import pytest
import torch

from harness.compare import THRESHOLDS, Thresholds, compare_bits, compute_metrics, judge


def test_identical():
    r = torch.randn(64, 32)
    m = compute_metrics(r.clone(), r)
    assert m.mismatch == 0 and m.rel_l2 == 0 and m.cosine == pytest.approx(1.0) and m.snr_db == math.inf
    assert m.bit_exact and m.max_ulp == 0
    assert judge(m, THRESHOLDS["exact"]).passed


def test_scaled_output():
    r = torch.randn(1000, dtype=torch.float64).abs() + 1.0
    m = compute_metrics(r * 1.1, r)
    assert m.rel_l2 == pytest.approx(0.1, rel=1e-6)
    assert m.snr_db == pytest.approx(20.0, abs=1e-6)
    assert m.cosine == pytest.approx(1.0)
    assert m.max_rel == pytest.approx(0.1, rel=1e-6)
    v = judge(m, Thresholds(max_rel_l2=0.05))
    assert not v.passed and "rel_l2 0.1 > 0.05" in v.message


def test_sign_flip_and_nonfinite():
    r = torch.randn(100)
    assert compute_metrics(-r, r).cosine == pytest.approx(-1.0)
    o = r.clone()
    o[3] = float("nan")
    m = compute_metrics(o, r)
    assert m.nonfinite == 1 and m.mismatch == pytest.approx(0.01)
    v = judge(m, THRESHOLDS["default"])
    assert not v.passed and "1 non-finite outputs" in v.message


def test_mismatch_rule_boundary_is_exact():
    ref = torch.ones(4, dtype=torch.float64)  # rms = 1
    th = Thresholds(rtol=0.1, atol=0.1)  # allowed |diff| <= 0.1*1 + 0.1*1 = 0.2
    out = ref + torch.tensor([0.0, 0.19, 0.2, 0.21], dtype=torch.float64)
    m = compute_metrics(out, ref, th)
    assert m.mismatch == 0.25
    th_abs = Thresholds(rtol=0.0, atol=0.5, atol_abs=True)
    assert compute_metrics(out, ref, th_abs).mismatch == 0.0
    # scale-aware atol: multiplying both by 1000 gives the same verdict
    assert compute_metrics(out * 1000, ref * 1000, th).mismatch == 0.25


def test_judge_names_metric_value_and_limit():
    m = compute_metrics(torch.zeros(10), torch.ones(10))
    msg = judge(m, THRESHOLDS["w4a16"]).message
    assert "mismatch 100.00% > 1.00%" in msg and "|out-ref| > 0.1*rms(ref) + 0.1*|ref|" in msg


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"output shape \(2,\) != reference shape \(3,\)"):
        compute_metrics(torch.zeros(2), torch.zeros(3))


def test_compare_bits():
    a = torch.tensor([1, 2, 3], dtype=torch.uint8)
    b = torch.tensor([1, 9, 3], dtype=torch.uint8)
    r = compare_bits(a, b)
    assert r == {"bit_exact": False, "differing": 1, "first_diff_index": [1]}
    f = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    g = (f.view(torch.int16) + torch.tensor([0, 3], dtype=torch.int16)).view(torch.bfloat16)
    assert compare_bits(f, g)["max_ulp"] == 3
    assert compare_bits(f, f)["bit_exact"]


def test_threshold_overrides_validate():
    assert THRESHOLDS["w4a16"].with_overrides(max_mismatch=0.5).max_mismatch == 0.5
    with pytest.raises(ValueError, match="unknown threshold field"):
        THRESHOLDS["w4a16"].with_overrides(max_mistmatch=0.5)


def test_vllm_rule_is_relative_to_the_output_and_counts_20_percent():
    from harness.compare import RULES
    ref = torch.ones(10)
    out = torch.ones(10)
    out[:1] = 0.5  # |ref-out| = 0.5 > 0.3*0.5: 1 of 10 mismatch
    assert RULES["vllm"](out, ref).passed
    out[1] = 0.5  # exactly 20%: vLLM's float32 quotient 0.2f exceeds 1 - 0.8 in Python, so it fails
    v = RULES["vllm"](out, ref)
    assert not v.passed and "20.00%" in v.detail
    # relative to |out|, not |ref|: out = 1.35 passes (|ref-out| = 0.35 <= 0.3*1.35, though > 0.3*|ref|)
    assert RULES["vllm"](torch.full((4,), 1.35), torch.ones(4)).passed
    nan = ref.clone()
    nan[0] = float("nan")
    assert not RULES["vllm"](out, nan).passed  # NaN in the reference raises in vLLM


def test_flashinfer_bench_rule_needs_both_tolerances_and_95_percent():
    from harness.compare import RULES
    ref = torch.full((100,), 1.0)
    out = ref.clone()
    out[:5] += 0.5  # 5% exceed both atol and rtol
    assert RULES["flashinfer-bench"](out, ref).passed
    out[5] += 0.5
    assert not RULES["flashinfer-bench"](out, ref).passed
    small = torch.full((100,), 1e-3)
    assert RULES["flashinfer-bench"](small * 5, small).passed  # abs error 4e-3 < atol: fine whatever rel
    inf = ref.clone()
    inf[0] = float("inf")
    assert not RULES["flashinfer-bench"](inf, ref).passed
    assert RULES["flashinfer-bench"](ref, inf).passed  # a NaN/Inf in the reference is not checked (as the source)


def test_rules_recorded_and_disagreement_flagged():
    from harness.backends.emulated_cutlass import EmulatedSm90W4A16
    from harness.cases import CaseContext, load_cases
    from harness.runner import run_one
    (case,) = load_cases(["cases"], "w4a16-gptoss-small")
    row = run_one(EmulatedSm90W4A16(), CaseContext(case, "cpu"), "cpu", rules=("moeacc", "vllm", "flashinfer-bench"))
    assert set(row.verdicts) >= {"moeacc", "vllm", "flashinfer-bench"} and row.status.value == "pass"
    # flashinfer-bench's 1e-2 absolute tolerance rejects a correct MXFP4 kernel against an fp32 reference
    assert row.verdicts["disagree"] == ["flashinfer-bench"]
    decided = run_one(EmulatedSm90W4A16(), CaseContext(case, "cpu"), "cpu", rules=("flashinfer-bench", "moeacc"))
    assert decided.status.value == "fail" and decided.message.startswith("[flashinfer-bench]")
