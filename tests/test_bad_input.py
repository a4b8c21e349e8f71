"""Bad input gets a one-line error naming what and where, and nothing else is lost; reports hold
no absolute path of the machine."""

import json
import math
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cases import CaseError, load_case_file
from harness.cli import main
from harness.report.paths import absolute_paths

ROOT = Path(__file__).resolve().parents[1]
GOOD = """
cases:
  - name: a
    tokens: 4
    hidden: 128
    intermediate: 128
    experts: 4
    topk: 2
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    msg = r.output.strip()
    assert msg.startswith("moeacc:") and "\n" not in msg and "Traceback" not in msg, msg
    for n in needles:
        assert n in msg, msg


@pytest.mark.parametrize("field,value", [("input_scale", ".nan"), ("weight_scale", ".inf"), ("routed_scaling_factor", "-.inf"),
                                         ("skew", ".nan"), ("activation", "{alpha: .nan}"), ("thresholds", "{base: w4a16, max_rel_l2: .nan}")])
def test_nan_and_inf_in_case_parameters(tmp_path, field, value):
    p = tmp_path / "c.yaml"
    p.write_text(GOOD + f"    {field}: {value}\n")
    with pytest.raises(CaseError) as e:
        load_case_file(p)
    assert f"case 'a': field '{field}'" in str(e.value) and "\n" not in str(e.value)


def test_malformed_yaml_unknown_backend_and_no_case(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  - name: a\n    tokens: [1,\n")
    one_line_error(invoke("run", "--cases", bad, "--device", "cpu"), "bad.yaml: line", "not valid YAML")
    good = tmp_path / "good.yaml"
    good.write_text(textwrap.dedent(GOOD))
    one_line_error(invoke("run", "--cases", good, "--backend", "no-such-*", "--device", "cpu"), "'no-such-*' matches no backend")
    one_line_error(invoke("run", "--cases", good, "--case", "zzz", "--device", "cpu"), "no case matches")
    one_line_error(invoke("run", "--cases", tmp_path / "missing.yaml", "--device", "cpu"), "no such case file")


def test_unwritable_report_directory(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(textwrap.dedent(GOOD))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line_error(invoke("run", "--cases", good, "--backend", "torch-naive", "--device", "cpu", "--out", blocker),
                   "cannot write the report here")


def test_merge_and_diff_refuse_another_schema_version(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"schema": "moe-accuracy/results", "schema_version": 2, "rows": []}))
    one_line_error(invoke("merge", run), "schema_version 2", "reads version 1")
    one_line_error(invoke("diff", run, run), "schema_version 2")
    (run / "results.json").write_text("{not json")
    one_line_error(invoke("report", run), "not valid JSON")


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["mxfp4", "gpt_oss", "interleaved", "fp8_group", "w4a16"]))
_keys = st.sampled_from(["name", "tokens", "hidden", "intermediate", "experts", "topk", "weight_format", "activation",
                         "grid", "thresholds", "cases", "defaults", "tier", "backends", "act_quant", "colour"])
_doc = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.one_of(_keys, st.text(max_size=5)), inner, max_size=6)),
                    max_leaves=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=st.one_of(_doc, st.dictionaries(st.just("cases"), st.lists(_doc, max_size=3))), raw=st.text(max_size=40))
def test_random_yaml_documents_never_raise_anything_but_a_case_error(tmp_path_factory, doc, raw):
    for text in (yaml.safe_dump(doc), raw):
        p = tmp_path_factory.mktemp("fuzz") / "c.yaml"
        p.write_text(text)
        try:
            load_case_file(p)
        except CaseError as e:
            assert "\n" not in str(e) and str(p) in str(e)


def test_reports_hold_no_absolute_paths(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(textwrap.dedent(GOOD))
    invoke("run", "--cases", good, "--backend", "torch-naive,emulated-sm90-w4a16,flashinfer-*", "--device", "cpu",
           "--out", tmp_path / "rep", "--run-id", "r", "--quiet")
    run = tmp_path / "rep" / "cpu" / "r"
    for f in ("results.json", "rows.jsonl", "report.md"):
        assert not absolute_paths((run / f).read_text()), f
    assert json.loads((run / "results.json").read_text())["rows"][0]["case_file"] == "good.yaml"


def test_committed_reports_hold_no_absolute_paths():
    found = {str(p.relative_to(ROOT)): absolute_paths(p.read_text()) for p in (ROOT / "reports").rglob("*")
             if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".log")}
    assert not {k: v for k, v in found.items() if v}
