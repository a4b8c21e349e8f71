"""A precision regression that no fault explains (Finding 14's kind): diagnose fails it as the row's budget
verdict does and says where the error beyond the twin's sits."""

import torch

from harness.backends.registry import load_backends
from harness.cases import CaseContext, load_cases
from harness.diagnose import diagnose, excess_over_twin


def test_excess_names_the_elements_that_carry_it():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(64, 32, generator=g)
    twin = ref + 1e-3 * torch.randn(64, 32, generator=g)
    out = twin.clone()
    out[5, 7] += 0.5
    out[40, 3] -= 0.4
    e = excess_over_twin(out, twin, ref)
    assert e["tokens"] == [5, 40] and e["channels"] == [3, 7] and e["elements"] == 2 and e["share"] > 0.99
    assert e["worst"]["token"] == 5 and e["worst"]["channel"] == 7 and "out[5, 7]" in e["sentence"]
    assert excess_over_twin(twin, twin, ref)["sentence"] == "no finite excess over the twin"


def test_diagnose_fails_a_budget_regression_and_localizes_it():
    """A real-kernel stand-in (budget_k 3) whose output is the twin's with two elements pushed off: past 3x the
    twin's rel L2, inside the thresholds' mismatch fraction."""
    backend = load_backends()["emulated-torch-scaled-grouped-fp8"]
    case = next(c for c in load_cases(["cases/findings.yaml"]) if c.name == "torch-fp8-rowwise-weight-scale-2e16")
    ctx = CaseContext(case, "cpu")
    data, _ = ctx.ensure()
    ref = ctx.reference_with(**backend.reference_kw)
    out = backend.run(backend.prepare(data, "cpu"), data)
    out = out.clone()
    scale = float(ref.float().abs().max())
    out[3, 10] += scale
    out[17, 200] -= scale
    real = type("RealStandIn", (type(backend),), {"name": "stand-in", "budget_k": 3.0})()
    d = diagnose(real, ctx, out)
    assert d.mismatch_vs_ref < case.limits.max_mismatch          # inside the thresholds
    assert d.status == "fail" and d.excess is not None and d.excess["tokens"] == [3, 17]
    assert "Precision: rel_l2" in d.conclusion and "out[" in d.conclusion
    assert diagnose(backend, ctx).excess is None                  # the twin itself: no budget, no excess
