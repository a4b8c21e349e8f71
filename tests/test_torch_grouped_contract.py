"""The torch grouped backends' twins (``harness.backends.torch_grouped``): the adapters' composition with
``torch._grouped_mm`` / ``torch._scaled_grouped_mm`` replaced by their arithmetic. The reference follows
the contract (fc1's GEMM writes bf16, so the reference rounds fc1's output to bf16 before the SwiGLU,
``reference_kw``): on the case fuzzing found on the H200 the twin reproduces the failure against the
fp32-fc1 reference and passes its own. The real kernels derive from the twins and change only ``gemm``."""

import torch

from harness.backends.torch_grouped import (EmulatedTorchGroupedBf16, EmulatedTorchScaledGroupedFp8, TorchGroupedMmBf16,
                                            TorchScaledGroupedMmFp8)
from harness.cases import load_cases
from harness.cases.inputs import make_inputs, reference_output
from harness.compare import THRESHOLDS, compute_metrics, judge


def test_the_fp8_rowwise_contract_passes_its_reference_and_not_the_fp32_fc1_one():
    case = load_cases(["cases/findings.yaml"], "torch-fp8-rowwise-bf16-fc1-output")[0]
    data = make_inputs(case, "cpu")
    b = EmulatedTorchScaledGroupedFp8()
    out = b.run(b.prepare(data, "cpu"), data).float()
    th = THRESHOLDS["w8a8"]
    ours = compute_metrics(out, reference_output(data, **b.reference_kw), th)
    fp32_fc1 = compute_metrics(out, reference_output(data), th)
    assert judge(ours, th).passed and ours.mismatch == 0 and ours.rel_l2 < 0.005, ours
    assert not judge(fp32_fc1, th).passed and 0.0102 < fp32_fc1.mismatch < 0.0104, fp32_fc1   # the H200 row: 1.03%


def test_the_bf16_contract_passes_its_reference_on_the_bf16_smoke_cases():
    b = EmulatedTorchGroupedBf16()
    cases = [c for c in load_cases(["cases/models.yaml", "cases/smoke.yaml"]) if b.case_gate(c) is None
             and c.tier.value == "smoke"]
    assert len(cases) >= 2
    for case in cases:
        data = make_inputs(case, "cpu")
        out = b.run(b.prepare(data, "cpu"), data).float()
        m = compute_metrics(out, reference_output(data, **b.reference_kw), THRESHOLDS["bf16"])
        assert judge(m, THRESHOLDS["bf16"]).passed and m.rel_l2 < 0.01, (case.name, m)


def test_the_real_backends_are_their_twins_but_for_the_gemm():
    import harness.families  # noqa: F401 - the families are attached to the twins on import
    for real, twin in [(TorchGroupedMmBf16, EmulatedTorchGroupedBf16), (TorchScaledGroupedMmFp8, EmulatedTorchScaledGroupedFp8)]:
        assert issubclass(real, twin) and real.family is twin.family is not None and real.budget_k
        overridden = {k for k, v in vars(real).items() if callable(v) and not k.startswith("__")}
        assert overridden == {"gemm"}, overridden
        assert real.reference_kw == twin.reference_kw
    assert torch.float8_e4m3fn   # the FP8 twin needs the dtype (torch >= 2.1)
