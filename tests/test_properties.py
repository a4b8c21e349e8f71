"""Property-based cases: correct emulated backends pass on any valid case (including skewed
routing, outliers, tiny scales, K > 128, padding); a layout fault fails whenever K > 128."""

from hypothesis import given, note, settings

from harness.backends.registry import select_backends
from harness.faults import FAULTS_BY_NAME
from harness.families import mutant
from harness.cases import CaseContext
from harness.runner import run_one
from harness.fuzz.strategies import cases, repro_yaml

SM90 = select_backends("emulated-sm90-w4a16")[0]


@settings(max_examples=30, deadline=None)
@given(case=cases("mxfp4"))
def test_correct_sm90_emulation_passes_any_case(case):
    note(repro_yaml(case))
    row = run_one(SM90, CaseContext(case, "cpu"), "cpu")
    assert row.status.value in ("pass", "skipped"), f"{row.message}\n{repro_yaml(case)}"


@settings(max_examples=20, deadline=None)
@given(case=cases("fp8_block", max_dim=512))
def test_correct_fp8_emulation_passes_any_case(case):
    note(repro_yaml(case))
    row = run_one(select_backends("emulated-fp8-block")[0], CaseContext(case, "cpu"), "cpu")
    assert row.status.value in ("pass", "skipped"), f"{row.message}\n{repro_yaml(case)}"


@settings(max_examples=20, deadline=None)
@given(case=cases("mxfp4"))
def test_weight_interleave_fault_fails_when_k_exceeds_128(case):
    if case.tokens == 0 or max(case.hidden, case.intermediate) <= 128 or case.weight_scale < 1e-3 or case.input_scale < 1e-2:
        return  # nothing to see: no tokens, K <= 128, or an output too small to carry the fault
    m = mutant(SM90, FAULTS_BY_NAME["weights-not-sm90-interleaved"])
    row = run_one(m, CaseContext(case, "cpu"), "cpu")
    assert row.status.value == "fail", f"fault not caught: {row.metrics}\n{repro_yaml(case)}"


def test_skew_puts_all_tokens_on_the_first_experts():
    from harness.cases import make_inputs, validate_case
    d = make_inputs(validate_case(dict(name="s", tokens=64, hidden=64, intermediate=64, experts=16, topk=2, skew=1000.0), "t"))
    assert set(d.topk_ids.flatten().tolist()) == {0, 1}
