"""The fast-math FP8 scale probe (Findings 7) on the CPU: its comparison tells the division models
apart (the measured sm90 table the twin uses, the reference's 448 * RN(1 / amax), correctly rounded), notices a reciprocal that does not scale with the exponent and codes that do not follow the
scale, and nvcc emits the approximate instructions under FlashInfer's flags (where nvcc is here)."""

from __future__ import annotations

import pytest
import torch

from harness.probes import all_probes
from harness.probes import fast_math as fm


@pytest.fixture(scope="module")
def data():
    return fm.inputs()


def _measured(a, x, name):
    s, v = fm.model(a, name)
    return s.clone(), v.clone(), fm.codes(x, s)


def test_a_kernel_with_the_twins_arithmetic_passes(data):
    """A GPU that computes the measured sm90 table (references/formats/fast_math_sm90.py) passes; 448 * RN(1/amax),
    the reference's arithmetic, differs from it in 3600 of the 25600 amax the table covers."""
    a, x = data
    st = fm.compare(a, x, *_measured(a, x, "twin"))
    assert st["amax_values"] == 32512 and st["twin_table_values"] == 25600   # 200 exponents x 128 mantissas
    assert st["twin"] == {"scale_differs": 0, "inv_differs": 0, "codes_differ": 0}
    assert st["rn-reciprocal"]["scale_differs"] == 3600 and st["correctly-rounded"]["scale_differs"] == 9058
    assert st["exponent_invariant"] and st["codes_follow_scale_by_rn"]
    r = fm.verdict(st, "sm_90")
    assert r.status == "pass" and "all 25600 amax" in r.message and "differs in 3600 of 32512 scales" in r.message


def test_a_kernel_that_divides_like_the_reference_fails_the_twin(data):
    """What the twin assumed before the H200 measurement (448 * RN(1 / amax)) is now a failing kernel."""
    a, x = data
    st = fm.compare(a, x, *_measured(a, x, "rn-reciprocal"))
    assert st["twin"]["scale_differs"] == 3600 and st["rn-reciprocal"]["scale_differs"] == 0
    r = fm.verdict(st, "sm_90")
    assert r.status == "fail" and "3600 of 25600 scales" in r.message


def test_a_kernel_that_divides_correctly_fails_the_twin(data):
    a, x = data
    st = fm.compare(a, x, *_measured(a, x, "correctly-rounded"))
    assert st["correctly-rounded"] == {"scale_differs": 0, "inv_differs": 0, "codes_differ": 0}
    r = fm.verdict(st, "sm_90")
    assert r.status == "fail" and "7400 of 25600 scales" in r.message


def test_one_scale_off_by_an_ulp_is_seen(data):
    a, x = data
    s, v, q = _measured(a, x, "twin")
    i = int(((a.float() > 3) & (a.float() < 4)).nonzero()[5])
    s[i] = torch.nextafter(s[i], torch.tensor(0.0))
    st = fm.compare(a, x, s, v, q)
    assert st["twin"]["scale_differs"] == 1 and fm.verdict(st, "sm_90").status == "fail"
    assert not st["exponent_invariant"]


def test_a_wrong_code_is_seen(data):
    a, x = data
    s, v, q = _measured(a, x, "twin")
    i = int((x.float().abs() > 1).nonzero()[0])
    q[i] ^= 1
    st = fm.compare(a, x, s, v, q)
    assert st["twin"]["codes_differ"] == 1 and not st["codes_follow_scale_by_rn"]
    assert st["codes_off_rn"] == 1 and st["codes_off_rn_examples"][0]["x"] == float(x[i])   # and shown
    assert "1 off, e.g. amax" in fm.verdict(st, "sm_90").message


def test_the_probe_is_gated_to_cuda():
    p = {q.name: q for q in all_probes()}["nvcc-fast-math-fp8-scale"]
    assert p.device_gate("cpu") == "needs cuda, found cpu" and p.device_gate("sm90") is None


@pytest.mark.skipif(fm.nvcc() is None, reason="needs nvcc (CUDA_HOME/bin/nvcc or on PATH), found none")
def test_flashinfers_flags_make_the_division_approximate():
    """nvcc emits div.approx / rcp.approx for the kernel's lines under -use_fast_math, the IEEE ones without."""
    fast = fm.ptx_ops(fm.nvcc())
    assert {"div.approx.ftz.f32", "rcp.approx.ftz.f32", "mul.ftz.f32", "cvt.rn.satfinite.e4m3x2.f32"} <= set(fast)
    assert "ex2.approx.ftz.f32" in fast   # the SwiGLU's expf
    exact = fm.ptx_ops(fm.nvcc(), flags=tuple(f for f in fm.FLAGS if f != "-use_fast_math"))
    assert {"div.rn.f32", "rcp.rn.f32"} <= set(exact) and not {"div.approx.ftz.f32", "rcp.approx.ftz.f32"} & set(exact)


@pytest.mark.skipif(fm.nvcc() is None, reason="needs nvcc (CUDA_HOME/bin/nvcc or on PATH), found none")
def test_the_probe_program_builds_once(tmp_path, monkeypatch):
    """It compiles and links here (no GPU needed to build), and a second call reuses the binary."""
    monkeypatch.setenv("MOEACC_CACHE_DIR", str(tmp_path))
    exe, error = fm.binary(fm.nvcc(), (9, 0))
    assert exe is not None and exe.exists(), error
    stamp = exe.stat().st_mtime_ns
    assert fm.binary(fm.nvcc(), (9, 0)) == (exe, "") and exe.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("name", list(fm.SWIGLU))
def test_swiglu_comparison_bounds_the_kernel_at_one_ulp(name):
    """A kernel equal to the twin passes; one 1-ULP away in places passes and is counted; 2 ULP or a NaN fails."""
    params = fm.SWIGLU[name]
    g, u = fm.swiglu_inputs()
    twin = fm.twin_swiglu(g, u, params)
    st = fm.swiglu_compare(g, u, twin.clone(), params)
    assert st["outputs"] == 65280 and st["differ"] == 0 and fm.swiglu_verdict(st, name, "x").status == "pass"
    nudged = twin.clone()
    bits = nudged.view(torch.int16)
    finite = torch.isfinite(twin.float()) & (twin.float().abs() > 1)
    idx = finite.nonzero().flatten()[::97]
    bits[idx] += 1
    st = fm.swiglu_compare(g, u, nudged, params)
    assert st["differ"] == st["differ_by_1_ulp"] == len(idx) and st["max_ulp"] == 1
    assert fm.swiglu_verdict(st, name, "x").status == "pass"
    bits[idx[:1]] += 1
    assert fm.swiglu_verdict(fm.swiglu_compare(g, u, nudged, params), name, "x").status == "fail"
    nan = twin.clone()
    nan[idx[:1]] = float("nan")
    assert fm.swiglu_verdict(fm.swiglu_compare(g, u, nan, params), name, "x").status == "fail"


def test_ulp_distance_crosses_zero():
    v = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 1.0], dtype=torch.bfloat16)
    w = torch.tensor([-0.0, 0.0, -1e-40, 1e-40, 1.0078125], dtype=torch.bfloat16)
    assert fm.ulp_distance(v, w).tolist() == [0, 0, 2 * int(v[2:3].view(torch.int16)), 2 * int(v[2:3].view(torch.int16)), 1]


def test_probe_glue_with_a_stand_in_program(monkeypatch, tmp_path):
    """The payloads the probe writes, read back the way the C program reads them (n, then for swiglu the
    mode and alpha/beta/limit, then the bf16 arrays), answered with the twin's arithmetic: every row passes."""
    import numpy as np

    def stand_in(exe, mode, payload, device):
        n = int(np.frombuffer(payload[:4], np.int32)[0])
        if mode == "scale":
            a = torch.frombuffer(bytearray(payload[4:4 + 2 * n]), dtype=torch.int16).view(torch.bfloat16)
            x = torch.frombuffer(bytearray(payload[4 + 2 * n:]), dtype=torch.int16).view(torch.bfloat16)
            s, v = fm.model(a, "twin")
            return s.numpy().tobytes() + v.numpy().tobytes() + fm.codes(x, s).numpy().tobytes()
        bias = int(np.frombuffer(payload[4:8], np.int32)[0])
        alpha, beta, limit = np.frombuffer(payload[8:20], np.float32).tolist()
        g = torch.frombuffer(bytearray(payload[20:20 + 2 * n]), dtype=torch.int16).view(torch.bfloat16)
        u = torch.frombuffer(bytearray(payload[20 + 2 * n:]), dtype=torch.int16).view(torch.bfloat16)
        p = fm.SwigluParams(alpha, beta, None if limit == float("inf") else limit) if bias else fm.SwigluParams()
        return fm.twin_swiglu(g, u, p).view(torch.int16).numpy().tobytes()

    monkeypatch.setattr(fm, "nvcc", lambda: "/usr/bin/true")
    monkeypatch.setattr(fm, "binary", lambda compiler, cap: (tmp_path / "prog", ""))
    monkeypatch.setattr(fm, "ptx_ops", lambda compiler, cap: [])
    monkeypatch.setattr(fm, "_run", stand_in)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    rows = fm.fast_math_probe("cuda:0")
    assert [r.status for r in rows] == ["pass", "pass", "pass"], [r.message for r in rows]
    assert "gpt-oss" in rows[2].case and rows[1].metrics["outputs"] == 65280


def test_nan_codes_of_either_sign_follow_the_scale(data):
    """Below amax = 448 / FLT_MAX the scale is inf and x = 0 makes a NaN code whose sign the CPU and the GPU
    choose differently (x86's default NaN is negative): not a rounding difference."""
    a, x = data
    s, v, q = _measured(a, x, "twin")
    nan = fm.is_nan_code(q)
    assert int(nan.sum()) > 0 and int((~torch.isfinite(s) & (a.float() >= torch.finfo(torch.float32).tiny)).sum()) > 0
    q[nan] ^= 0x80
    st = fm.compare(a, x, s, v, q)
    assert st["codes_follow_scale_by_rn"] and st["codes_off_rn"] == 0 and st["infinite_scales"] > 0


@pytest.mark.parametrize("name", list(fm.SWIGLU))
def test_flushed_tiny_outputs_are_counted_apart(name):
    """What -use_fast_math flushes (outputs from fp32-subnormal inputs, and below about 1e-35) is counted, not failed;
    a 2-ULP difference on an output above the floor still fails."""
    params = fm.SWIGLU[name]
    g, u = fm.swiglu_inputs()
    twin = fm.twin_swiglu(g, u, params)
    flushed = twin.clone()
    tiny = (twin.float().abs() < fm.FLUSH_FLOOR) & (twin.float() != 0)
    flushed[tiny] = 0.0
    st = fm.swiglu_compare(g, u, flushed, params)
    assert st["differ_below_floor"] == int(tiny.sum()) > 100 and st["max_ulp"] > 100 and st["max_ulp_above_floor"] == 0
    assert fm.swiglu_verdict(st, name, "x").status == "pass"
    i = int(((twin.float().abs() > 1) & torch.isfinite(twin.float())).nonzero()[0])
    flushed.view(torch.int16)[i] += 2
    st = fm.swiglu_compare(g, u, flushed, params)
    assert st["max_ulp_above_floor"] == 2 and fm.swiglu_verdict(st, name, "x").status == "fail"


def test_a_flushed_negative_subnormal_is_a_negative_zero_code():
    """mul.ftz flushes a subnormal x to a zero of its sign, and e4m3 keeps it: 0x80 (the H200 run's one code off)."""
    x = torch.tensor([-8.44887e-39, 8.44887e-39]).to(torch.bfloat16)
    assert fm.codes(x, torch.tensor([3.2e38, 3.2e38])).tolist() == [0x80, 0x00]
