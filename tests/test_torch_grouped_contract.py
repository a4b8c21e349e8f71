"""The torch grouped backends' reference follows their contract: fc1's GEMM writes bf16, so the
reference rounds fc1's output to bf16 before the SwiGLU (``reference_kw``). Run on the CPU with
``torch._scaled_grouped_mm`` replaced by its arithmetic (e4m3 products summed in fp32, times the
activation and weight scales, bf16 out; only the adapter's composition and the reference's choice
are under test here, the kernel itself ran on the H200). The case is the one fuzzing found there."""

import torch

from harness.backends.torch_grouped import TorchScaledGroupedMmFp8
from harness.cases import load_cases
from harness.cases.inputs import make_inputs, reference_output
from harness.compare import THRESHOLDS, compute_metrics, judge
from references import formats as F
from references.formats import Fp8Scale


def _emulated_gemm(self, a, w, s, offs):
    q, sa = F.fp8_group_quantize(a.float(), a.shape[-1], Fp8Scale.FP32)
    out, start = torch.empty(a.shape[0], w.shape[-1]), 0
    for e, end in enumerate(offs.tolist()):
        out[start:end] = (q[start:end].double() @ w[e].double()).float() * sa[start:end] * s[e]
        start = end
    return out.to(torch.bfloat16)


def test_the_fp8_rowwise_contract_passes_its_reference_and_not_the_fp32_fc1_one(monkeypatch):
    monkeypatch.setattr(TorchScaledGroupedMmFp8, "gemm", _emulated_gemm)
    case = load_cases(["cases/findings.yaml"], "torch-fp8-rowwise-bf16-fc1-output")[0]
    data = make_inputs(case, "cpu")
    b = TorchScaledGroupedMmFp8()
    out = b.run(b.prepare(data, "cpu"), data).float()
    th = THRESHOLDS["w8a8"]
    ours = compute_metrics(out, reference_output(data, **b.reference_kw), th)
    fp32_fc1 = compute_metrics(out, reference_output(data), th)
    assert judge(ours, th).passed and ours.mismatch == 0 and ours.rel_l2 < 0.005, ours
    assert not judge(fp32_fc1, th).passed and fp32_fc1.mismatch > 0.01, fp32_fc1   # what the H200 row showed


def _emulated_bf16_gemm(self, a, w, s, offs):
    out, start = torch.empty(a.shape[0], w.shape[-1]), 0
    for e, end in enumerate(offs.tolist()):
        out[start:end] = (a[start:end].to(torch.bfloat16).double() @ w[e].double()).float()
        start = end
    return out.to(torch.bfloat16)


def test_the_bf16_contract_passes_its_reference_on_the_bf16_model_cases(monkeypatch):
    from harness.backends.torch_grouped import TorchGroupedMmBf16
    monkeypatch.setattr(TorchGroupedMmBf16, "gemm", _emulated_bf16_gemm)
    b = TorchGroupedMmBf16()
    cases = [c for c in load_cases(["cases/models.yaml", "cases/smoke.yaml"]) if b.case_gate(c) is None
             and c.tier.value == "smoke"]
    assert cases
    for case in cases:
        data = make_inputs(case, "cpu")
        out = b.run(b.prepare(data, "cpu"), data).float()
        m = compute_metrics(out, reference_output(data, **b.reference_kw), THRESHOLDS["bf16"])
        assert judge(m, THRESHOLDS["bf16"]).passed and m.rel_l2 < 0.01, (case.name, m)
