"""Case files: validation errors name file, case and field; grids; deterministic inputs."""

import textwrap

import pytest
import torch

from harness.cases import CaseError, case_to_yaml, load_case_file, load_cases, make_inputs, reference_output, validate_case


def case(**kw):
    return validate_case(kw, "test")


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


BASE = """
cases:
  - name: a
    tokens: 4
    hidden: 128
    intermediate: 64
    experts: 4
    topk: 2
"""


def test_project_case_files_load():
    cases = load_cases(["cases"])
    names = [c.name for c in cases]
    assert len(names) == len(set(names)) and len(cases) >= 10
    assert sum(c.name.startswith("sm90-w4a16-grid[") for c in cases) == 8  # 2 tokens x 2 top-k x 2 activations


def test_grid_expansion(tmp_path):
    p = write(tmp_path, BASE + "    grid:\n      tokens: [1, 128]\n      activation: [silu, gpt_oss]\n")
    cs = load_case_file(p)
    assert [c.name for c in cs] == ["a[tokens=1,activation=silu]", "a[tokens=1,activation=gpt_oss]",
                                    "a[tokens=128,activation=silu]", "a[tokens=128,activation=gpt_oss]"]
    assert cs[1].swiglu.limit == 7.0


@pytest.mark.parametrize("patch,expect", [
    ("    topk: nine\n", "case 'a': field 'topk': must be an integer, got 'nine'"),
    ("    weight_format: int3\n", "field 'weight_format': 'int3' is not one of"),
    ("    colour: red\n", "field 'colour': unknown field"),
    ("    hidden: 100\n", "field 'hidden': 100 is not a multiple of 32, the mxfp4 block size"),
    ("    topk: 9\n", "field 'topk': 9 exceeds experts=4"),
    ("    activation: {alpha: 1.0, gamma: 2}\n", "field 'activation': unknown activation key(s) ['gamma']"),
    ("    thresholds: loose\n", "field 'thresholds': unknown threshold set 'loose'"),
    ("    input_scale: -1\n", "field 'input_scale': must be a positive finite number"),
])
def test_validation_errors_name_file_case_field(tmp_path, patch, expect):
    text = BASE.replace("    topk: 2\n", "    topk: 2\n" + patch) if "topk" not in patch else BASE.replace("    topk: 2\n", patch)
    p = write(tmp_path, text)
    with pytest.raises(CaseError) as ei:
        load_case_file(p)
    msg = str(ei.value)
    assert str(p) in msg and expect in msg and "\n" not in msg


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "cases:\n  - name: a\n    tokens: [1,\n")
    with pytest.raises(CaseError, match=r"c\.yaml: line \d+ column \d+: not valid YAML"):
        load_case_file(p)


def test_missing_field_and_duplicates(tmp_path):
    with pytest.raises(CaseError, match="field 'experts': missing"):
        load_case_file(write(tmp_path, BASE.replace("    experts: 4\n", "")))
    with pytest.raises(CaseError, match="duplicate case name 'a'"):
        load_case_file(write(tmp_path, BASE + BASE.split("cases:\n")[1]))
    with pytest.raises(CaseError, match="no such case file"):
        load_cases([tmp_path / "nope.yaml"])
    with pytest.raises(CaseError, match="expected a mapping with a 'cases' list"):
        load_case_file(write(tmp_path, "- 1\n"))


def test_inputs_are_deterministic_and_seed_dependent():
    c = case(name="x", tokens=8, hidden=128, intermediate=64, experts=4, topk=2, bias=True, activation="gpt_oss")
    a, b = make_inputs(c), make_inputs(c)
    assert torch.equal(a.x, b.x) and torch.equal(a.experts.w1.data, b.experts.w1.data) and torch.equal(a.topk_ids, b.topk_ids)
    from dataclasses import replace
    d = make_inputs(replace(c, seed=1))
    assert not torch.equal(a.x, d.x) and not torch.equal(a.experts.w1.data, d.experts.w1.data)
    # weights do not depend on tokens: a grid over tokens reuses them
    e = make_inputs(replace(c, tokens=3))
    assert torch.equal(e.experts.w1.data, a.experts.w1.data)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "fp8_block", "bf16", "mxfp8"])
def test_every_format_builds_and_has_a_reference(fmt):
    c = case(name="x", tokens=5, hidden=128, intermediate=128, experts=3, topk=2, weight_format=fmt,
             act_quant="fp8_group" if fmt == "fp8_block" else None, shared_expert=True, routed_scaling_factor=2.0)
    d = make_inputs(c)
    r = reference_output(d)
    assert r.shape == (5, 128) and torch.isfinite(r).all() and r.abs().sum() > 0


def test_the_shared_expert_is_computed_once_per_case_data(monkeypatch):
    """Repeated runs differ only in what the backend computed: the harness's own shared-expert GEMMs run
    once per case data (a changed case, e.g. a localization experiment's, computes its own)."""
    from dataclasses import replace
    from harness.cases import inputs as I
    c = case(name="x", tokens=5, hidden=128, intermediate=64, experts=2, topk=1, shared_expert=True)
    d = make_inputs(c)
    calls = []
    real = I.dense_mlp
    monkeypatch.setattr(I, "dense_mlp", lambda *a, **k: calls.append(1) or real(*a, **k))
    routed = torch.zeros(5, 128)
    first, again = I.layer_output(routed, d), I.layer_output(routed, d)
    assert len(calls) == 1 and torch.equal(first, again) and first.abs().sum() > 0
    limited = replace(d, case=case(name="x", tokens=5, hidden=128, intermediate=64, experts=2, topk=1, shared_expert=True,
                                   activation={"alpha": 1.0, "beta": 0.0, "limit": 0.01}))
    assert not torch.equal(I.layer_output(routed, limited), first) and len(calls) == 2
    assert I.layer_output(routed, replace(d, shared=None)).abs().sum() == 0


def test_checkpoint_layout_interleaved_rows():
    c = case(name="x", tokens=5, hidden=128, intermediate=64, experts=2, topk=1, checkpoint_layout="interleaved")
    g = case(name="x", tokens=5, hidden=128, intermediate=64, experts=2, topk=1, checkpoint_layout="gate_up")
    a, b = make_inputs(c), make_inputs(g)
    assert torch.equal(a.experts.w1.data[:, 0::2], b.experts.w1.data[:, :64])
    assert torch.allclose(reference_output(a), reference_output(b))


@pytest.mark.parametrize("name", ["w4a16-gptoss-small", "w8a8-fp8-block-ue8m0-small", "w4a16-dsv4-small", "nvfp4-small"])
def test_case_yaml_round_trip(name):
    """A case written back as YAML (repro files) validates to the same case."""
    from dataclasses import replace
    (c,) = load_cases(["cases"], name)
    assert replace(validate_case(case_to_yaml(c), "round trip"), file=c.file) == c


def test_twins_combine_the_routed_sum_as_the_kernel_returns_it():
    """A kernel returns its routed sum in bf16 and the caller adds rsf and the shared expert after:
    the twins' combine rounds there too (as_returned); on a kernel's bf16 output it changes nothing."""
    from harness.backends.emulated import Combines
    from harness.cases import as_returned, layer_output
    c = case(name="x", tokens=5, hidden=128, intermediate=64, experts=2, topk=1, shared_expert=True,
             routed_scaling_factor=2.5)
    d = make_inputs(c)
    routed = torch.randn(5, 128, generator=torch.Generator().manual_seed(2))   # fp32 bits below bf16's
    got = Combines().combine(routed, d)
    assert torch.equal(got, layer_output(routed.to(torch.bfloat16).float(), d))
    assert not torch.equal(got, layer_output(routed, d))
    kernel_out = routed.to(torch.bfloat16).float()
    assert torch.equal(as_returned(kernel_out, d), kernel_out)
