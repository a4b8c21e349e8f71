"""The fast-math FP8 scale probe (Findings 7) on the CPU: its comparison tells the two division models
apart, notices a reciprocal that does not scale with the exponent and codes that do not follow the
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
    """A GPU whose reciprocal is correctly rounded computes what the twin computes: 448 * RN(1 / amax)."""
    a, x = data
    st = fm.compare(a, x, *_measured(a, x, "twin"))
    assert st["amax_values"] == 32512   # 0x0001-0x7F7F less the 127 subnormal bf16 values
    assert st["twin"] == {"scale_differs": 0, "inv_differs": 0, "codes_differ": 0}
    assert st["correctly-rounded"]["scale_differs"] == 8258 and st["correctly-rounded"]["codes_differ"] > 0
    assert st["exponent_invariant"] and st["codes_follow_scale_by_rn"]
    r = fm.verdict(st, "sm_90")
    assert r.status == "pass" and "8258 scales" in r.message


def test_a_kernel_that_divides_correctly_fails_the_twin(data):
    a, x = data
    st = fm.compare(a, x, *_measured(a, x, "correctly-rounded"))
    assert st["correctly-rounded"] == {"scale_differs": 0, "inv_differs": 0, "codes_differ": 0}
    r = fm.verdict(st, "sm_90")
    assert r.status == "fail" and "8258 of 32512 scales" in r.message


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


def test_the_probe_is_gated_to_cuda():
    p = {q.name: q for q in all_probes()}["nvcc-fast-math-fp8-scale"]
    assert p.device_gate("cpu") == "needs cuda, found cpu" and p.device_gate("sm90") is None


@pytest.mark.skipif(fm.nvcc() is None, reason="needs nvcc (CUDA_HOME/bin/nvcc or on PATH), found none")
def test_flashinfers_flags_make_the_division_approximate():
    """nvcc emits div.approx / rcp.approx for the kernel's lines under -use_fast_math, the IEEE ones without."""
    fast = fm.ptx_ops(fm.nvcc())
    assert {"div.approx.ftz.f32", "rcp.approx.ftz.f32", "mul.ftz.f32", "cvt.rn.satfinite.e4m3x2.f32"} <= set(fast)
    exact = fm.ptx_ops(fm.nvcc(), flags=tuple(f for f in fm.FLAGS if f != "-use_fast_math"))
    assert "div.rn.f32" in exact and not any("approx" in op for op in exact)


@pytest.mark.skipif(fm.nvcc() is None, reason="needs nvcc (CUDA_HOME/bin/nvcc or on PATH), found none")
def test_the_probe_program_builds_once(tmp_path, monkeypatch):
    """It compiles and links here (no GPU needed to build), and a second call reuses the binary."""
    monkeypatch.setenv("MOEACC_CACHE_DIR", str(tmp_path))
    exe, error = fm.binary(fm.nvcc(), (9, 0))
    assert exe is not None and exe.exists(), error
    stamp = exe.stat().st_mtime_ns
    assert fm.binary(fm.nvcc(), (9, 0)) == (exe, "") and exe.stat().st_mtime_ns == stamp
