"""Backend API: registry, gates, and the FlashInfer SM90 backend's plumbing against a fake."""

import importlib.metadata
from pathlib import Path

import pytest
import torch

import harness.backends.base as B
import harness.backends.registry as R
from harness.backends.emulated_cutlass import EmulatedSm90W4A16
from harness.backends.flashinfer.build import select_sources, trim_spec
from harness.backends.flashinfer.sm90_w4a16 import FlashInferSm90W4A16
from harness.cases import CaseContext, load_cases
from harness.runner import run_one
from tests.fakes import FakeJitSpec, install_fake_flashinfer


def test_builtins_register_through_entry_points():
    reg = R.load_backends(refresh=True)
    for name in ("torch-naive", "emulated-sm90-w4a16", "emulated-fp8-block", "flashinfer-sm90-w4a16"):
        assert name in reg
    eps = {ep.name for ep in importlib.metadata.entry_points(group=R.ENTRY_POINT_GROUP)}
    assert "flashinfer-sm90-w4a16" in eps


def test_broken_plugin_is_reported_not_fatal(monkeypatch):
    real = importlib.metadata.entry_points
    bad = importlib.metadata.EntryPoint(name="vendor-x", value="no_such_module_xyz:Backend", group=R.ENTRY_POINT_GROUP)

    def fake(group=None, **kw):
        eps = list(real(group=group, **kw))
        return eps + [bad] if group == R.ENTRY_POINT_GROUP else eps

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    reg = R.load_backends(refresh=True)
    assert "torch-naive" in reg
    why = reg["broken:vendor-x"].device_gate("sm90")
    assert "failed to load" in why and "no_such_module_xyz" in why
    R.load_backends(refresh=True)


def test_device_and_package_gates(monkeypatch):
    fb = FlashInferSm90W4A16()
    assert fb.device_gate("cpu") == "needs sm90, found cpu"
    assert fb.device_gate("sm100") == "needs sm90, found sm100"
    import harness.backends.libapi as L
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: None)
    assert fb.device_gate("sm90") == "flashinfer-python not installed"
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(L.importlib.metadata, "version", lambda dist: "0.8.0")
    assert fb.device_gate("sm90") == "written for flashinfer-python>=0.6.12,<0.7.3, found 0.8.0 (--force to run anyway)"
    monkeypatch.setenv(L.FORCE_ENV, "1")
    assert fb.device_gate("sm90") is None


def test_case_gates():
    (case,) = load_cases(["cases"], "w8a8-fp8-block-small")
    assert "weight format fp8_block not supported" in FlashInferSm90W4A16().case_gate(case)


def test_gated_backend_is_skipped_with_reason_on_cpu():
    (case,) = load_cases(["cases"], "w4a16-gptoss-small")
    row = run_one(FlashInferSm90W4A16(), CaseContext(case, "cpu"), "cpu")
    assert row.status.value == "skipped" and row.message == "needs sm90, found cpu"


class _FakeSm90(FlashInferSm90W4A16):
    """The real backend class with the device gate opened for the fake library."""

    def device_gate(self, kind):
        return None


@pytest.mark.parametrize("case_name", ["w4a16-gptoss-small", "w4a16-plain-unaligned", "w4a16-dsv4-small"])
def test_flashinfer_sm90_plumbing_with_fake(monkeypatch, case_name):
    calls = install_fake_flashinfer(monkeypatch, sources=[])
    (case,) = load_cases(["cases"], case_name)
    row = run_one(_FakeSm90(), CaseContext(case, "cpu"), "sm90")
    assert row.status.value == "pass", row.message
    kw = next(c[1] for c in calls if c[0] == "cutlass_fused_moe")
    hp = -(-case.hidden // 128) * 128
    ip = -(-case.intermediate // 128) * 128
    assert kw["use_w4_group_scaling"] is True and kw["output_dtype"] == torch.bfloat16
    assert kw["input"].shape == (case.tokens, hp)
    assert kw["fc1_expert_weights"].shape == (case.experts, 2 * ip, hp // 2)
    assert kw["fc2_expert_weights"].shape == (case.experts, hp, ip // 2)
    assert all(s.dtype == torch.int32 for s in kw["quant_scales"])
    assert kw["quant_scales"][0].shape == (case.experts, hp // 128, 2 * ip)
    assert kw["token_selected_experts"].dtype == torch.int32 and kw["token_final_scales"].dtype == torch.float32
    if case.swiglu.is_plain:
        assert kw["swiglu_alpha"] is None and kw["swiglu_limit"] is None
    else:
        assert kw["swiglu_limit"].shape == (case.experts,) and kw["swiglu_limit"].dtype == torch.float32
        assert float(kw["swiglu_limit"][0]) == case.swiglu.limit
    assert [c[0] for c in calls].count("interleave_weights") == 2


def test_flashinfer_fault_mutants_fail_with_fake(monkeypatch):
    install_fake_flashinfer(monkeypatch)
    from harness.faults import FAULTS_BY_NAME
    from harness.families import mutant
    (case,) = load_cases(["cases"], "w4a16-gptoss-small")
    for f in ("weights-not-sm90-interleaved", "scales-not-sm90-interleaved", "gate-up-swapped", "swiglu-limit-dropped"):
        m = mutant(_FakeSm90(), FAULTS_BY_NAME[f])
        row = run_one(m, CaseContext(case, "cpu"), "sm90")
        assert row.status.value == "fail", f


def _gen(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_trimmed_source_selection(tmp_path):
    """Generated files are kept by what they instantiate, in both generators' spellings (0.6.12
    writes __nv_fp4_e2m1, 0.7.2.post1 writes SafeFP4); fixed type-pair files by name."""
    w4_old = _gen(tmp_path, "a.generated.cu", "sm90_generic_mixed_moe_gemm_kernelLauncher<__nv_bfloat16, __nv_fp4_e2m1, __nv_bfloat16,")
    w4_new = _gen(tmp_path, "b.generated.cu", "sm90_generic_mixed_moe_gemm_kernelLauncher<__nv_bfloat16, SafeFP4, __nv_bfloat16,")
    drop = _gen(tmp_path, "c.generated.cu", "sm90_generic_mixed_moe_gemm_kernelLauncher<__nv_bfloat16, cutlass::uint4b_t,")
    bf16 = _gen(tmp_path, "d.generated.cu", "INSTANTIATE_TMA_WARP_SPECIALIZED_MOE_GEMM(Sm90, __nv_bfloat16, __nv_bfloat16, x")
    sm80 = _gen(tmp_path, "e.generated.cu", "sm80_generic_fused_moe_gemm_kernelLauncher<cutlass::bfloat16_t, 128")
    fixed = [Path("moe_gemm_kernels_bf16_fp4.cu"), Path("moe_gemm_kernels_fp8_fp8.cu"), Path("moe_gemm_kernels_bf16_fp8.cu"),
             Path("fp8_blockscale_gemm.cu"), Path("flashinfer_cutlass_fused_moe_binding.cu")]
    got = [p.name for p in select_sources(fixed + [w4_old, w4_new, drop, bf16, sm80])]
    assert got == ["moe_gemm_kernels_bf16_fp4.cu", "moe_gemm_kernels_bf16_fp8.cu", "fp8_blockscale_gemm.cu",
                   "flashinfer_cutlass_fused_moe_binding.cu", "a.generated.cu", "b.generated.cu", "d.generated.cu", "e.generated.cu"]
    with pytest.raises(RuntimeError, match="found no generated w4a16 kernels.*MOEACC_FLASHINFER_FULL_BUILD"):
        select_sources(fixed + [drop, bf16, sm80])


def test_trimmed_spec_name_and_prebuilt(tmp_path, monkeypatch):
    srcs = [_gen(tmp_path, "k.generated.cu", "sm90_generic_mixed_moe_gemm_kernelLauncher<__nv_bfloat16, SafeFP4, x"),
            _gen(tmp_path, "l.generated.cu", "INSTANTIATE_TMA_WARP_SPECIALIZED_MOE_GEMM(Sm90, __nv_bfloat16, __nv_bfloat16, x"),
            _gen(tmp_path, "m.generated.cu", "sm80_generic_fused_moe_gemm_kernelLauncher<cutlass::bfloat16_t, x")]
    spec = FakeJitSpec("fused_moe_90", srcs + [Path("moe_gemm_kernels_fp16_fp16.cu")])
    monkeypatch.delenv("MOEACC_FLASHINFER_PREBUILT", raising=False)
    t = trim_spec(spec)
    assert t.name == "fused_moe_90_moeacc" and t.sources == srcs and t.aot_path == "stock-aot-path"
    monkeypatch.setenv("MOEACC_FLASHINFER_PREBUILT", str(tmp_path))
    t2 = trim_spec(spec)
    assert t2.aot_path == tmp_path / "fused_moe_90_moeacc" / "fused_moe_90_moeacc.so"


def test_emulated_sm90_buffers_follow_contract():
    (case,) = load_cases(["cases"], "w4a16-plain-unaligned")
    ctx = CaseContext(case, "cpu")
    data, _ = ctx.ensure()
    p = EmulatedSm90W4A16().prepare(data, "cpu")
    assert p.w1.shape == (5, 256, 128) and p.s1.shape == (5, 2, 1024) and p.x.shape == (17, 256)
