"""The moeacc CLI: run writes the report and exits 1 on failure; check's bisect exit codes;
diagnose, merge, diff, list."""

import json
import textwrap

import pytest
from click.testing import CliRunner

from harness.cli import main

CASE = """
cases:
  - name: tiny
    tokens: 8
    hidden: 256
    intermediate: 128
    experts: 4
    topk: 2
    weight_format: mxfp4
    activation: gpt_oss
    bias: true
    input_scale: 8.0
"""


@pytest.fixture
def casefile(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(textwrap.dedent(CASE))
    return p


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_run_writes_report_and_passes(tmp_path, casefile):
    r = invoke("run", "--cases", casefile, "--backend", "emulated-sm90-w4a16,torch-naive", "--out", tmp_path / "rep",
               "--run-id", "t1", "--device", "cpu", "--quiet")
    assert r.exit_code == 0, r.output
    run = tmp_path / "rep" / "cpu" / "t1"
    doc = json.loads((run / "results.json").read_text())
    assert doc["complete"] and doc["summary"]["total"]["pass"] == 2
    assert (run / "report.md").read_text().startswith("## ✅")
    assert len((run / "rows.jsonl").read_text().splitlines()) == 2


def test_run_exits_1_on_a_fault_and_diagnoses(tmp_path, casefile):
    r = invoke("run", "--cases", casefile, "--backend", "zoo:weights-not-sm90-interleaved@emulated-sm90-w4a16",
               "--out", tmp_path, "--run-id", "t2", "--device", "cpu", "--quiet")
    assert r.exit_code == 1
    doc = json.loads((tmp_path / "cpu" / "t2" / "results.json").read_text())
    (row,) = doc["rows"]
    assert row["status"] == "fail" and row["diagnosis"]["best"] == "weights-not-sm90-interleaved"
    assert "weights were not SM90-interleaved" in (tmp_path / "cpu" / "t2" / "report.md").read_text()


def test_check_exit_codes_for_bisect(casefile):
    assert invoke("check", "--cases", casefile, "--backend", "emulated-sm90-w4a16", "--device", "cpu").exit_code == 0
    assert invoke("check", "--cases", casefile, "--backend", "zoo:gate-up-swapped@emulated-sm90-w4a16",
                  "--device", "cpu").exit_code == 1
    assert invoke("check", "--cases", casefile, "--backend", "flashinfer-sm90-w4a16", "--device", "cpu").exit_code == 125
    assert invoke("check", "--cases", casefile, "--backend", "no-such-backend", "--device", "cpu").exit_code == 125


def test_diagnose_command(casefile, tmp_path):
    r = invoke("diagnose", "--cases", casefile, "--backend", "zoo:scales-not-sm90-interleaved@emulated-sm90-w4a16",
               "--device", "cpu", "--heatmap", tmp_path / "h.png")
    assert r.exit_code == 0, r.output
    assert "output matches the reference if the block scales were not SM90-interleaved" in " ".join(r.output.split())
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_bad_case_file_is_one_clear_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(CASE.replace("topk: 2", "topk: two"))
    r = invoke("run", "--cases", p, "--out", tmp_path, "--device", "cpu", "--quiet")
    assert r.exit_code == 2
    assert "bad.yaml: case 'tiny': field 'topk': must be an integer" in " ".join(r.output.split())


def test_merge_and_diff_commands(tmp_path, casefile):
    for rid, backend in (("a", "emulated-sm90-w4a16"), ("b", "zoo:beta-dropped@emulated-sm90-w4a16")):
        invoke("run", "--cases", casefile, "--backend", backend, "--out", tmp_path, "--run-id", rid, "--device", "cpu",
               "--quiet", "--no-diagnose")
    # rename the zoo backend's rows so the diff sees the same (case, backend) key regress
    b = tmp_path / "cpu" / "b" / "results.json"
    d = json.loads(b.read_text())
    for r in d["rows"]:
        r["backend"] = "emulated-sm90-w4a16"
    b.write_text(json.dumps(d))
    r = invoke("diff", tmp_path / "cpu" / "a", tmp_path / "cpu" / "b")
    assert r.exit_code == 1 and "1 regressions" in r.output
    assert invoke("diff", tmp_path / "cpu" / "a", tmp_path / "cpu" / "a").exit_code == 0
    r = invoke("merge", tmp_path / "cpu" / "a", "reports/sm90-nvidia-h100-80gb-hbm3/h100-20261122", "--out", tmp_path / "m")
    assert r.exit_code == 0 and "| case · backend" in r.output and "sm90 NVIDIA H100 80GB HBM3" in r.output
    assert json.loads((tmp_path / "m" / "matrix.json").read_text())["devices"] == ["cpu", "sm90 NVIDIA H100 80GB HBM3"]


def test_list():
    r = invoke("list", "--device", "cpu")
    assert r.exit_code == 0 and "flashinfer-sm90-w4a16" in r.output and "needs sm90, found cpu" in r.output


def test_pytest_plugin_writes_report(pytester, casefile, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # the inner session is a controller
    pytester.makepyfile(test_acc=open(__file__.replace("test_cli.py", "test_accuracy.py")).read())
    rep = tmp_path / "pyrep"
    r = pytester.runpytest("-p", "no:cacheprovider", f"--moeacc-cases={casefile}", "--moeacc-device=cpu",
                           "--moeacc-backends=emulated-sm90-w4a16,zoo:beta-dropped@emulated-sm90-w4a16,flashinfer-sm90-w4a16",
                           f"--moeacc-report={rep}")
    r.assert_outcomes(passed=1, failed=1, skipped=1)
    doc = json.loads((rep / "results.json").read_text())
    assert sorted(x["status"] for x in doc["rows"]) == ["fail", "pass", "skipped"]
    assert (rep / "report.md").read_text().startswith("## ❌")


def test_run_heatmaps_are_written_and_linked(tmp_path, casefile):
    r = invoke("run", "--cases", casefile, "--backend", "zoo:fp4-nibbles-swapped@emulated-sm90-w4a16", "--out", tmp_path,
               "--run-id", "h", "--device", "cpu", "--quiet", "--no-diagnose", "--heatmaps")
    assert r.exit_code == 1
    run = tmp_path / "cpu" / "h"
    (png,) = run.glob("*.png")
    assert png.stat().st_size > 1000 and f"]({png.name})" in (run / "report.md").read_text()


def test_tables_print_kernel_text_verbatim():
    """Messages hold brackets (``[gate; up]``, ``[E, n, K/2]``): rich must not read them as markup."""
    from harness.cli.common import out_console
    from harness.cli.tables import print_rows
    from harness.results import ResultRow, Status
    row = ResultRow(case="c[tokens=1]", backend="zoo:gate-up-swapped@b", status=Status.FAIL,
                    message="fc1 fed [gate; up] where the kernel reads [up; gate]", diagnosis={"conclusion": "see [E, n, K/2]"})
    with out_console.capture() as cap:
        print_rows([row])
    text = "".join(cap.get().split())
    assert "[gate;up]" in text and "[up;gate]" in text and "[E,n,K/2]" in text and "c[tokens=1]" in text


def test_build_flashinfer_without_the_library_is_one_line_naming_it(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flashinfer" else real(name, *a))
    r = CliRunner().invoke(main, ["build-flashinfer"])
    assert r.exit_code == 2, r.output
    line = " ".join(r.output.split())
    assert "build-flashinfer: flashinfer-python is not installed" in line and len(r.output.strip().splitlines()) <= 2, r.output


def test_a_failed_flashinfer_build_names_the_first_compiler_error():
    from harness.cli.api import _first_compiler_error
    log = ("Ninja build failed. Ninja output: [1/58] /usr/local/cuda/bin/nvcc -c a.cu -o a.o\n"
           "/x/site-packages/flashinfer/data/csrc/nv_internal/include/tensorrt_llm/common/cudaUtils.h:19:10: "
           "fatal error: cublasLt.h: No such file or directory\ncompilation terminated.\n")
    assert _first_compiler_error(log) == "cudaUtils.h:19: fatal error: cublasLt.h: No such file or directory"
    assert _first_compiler_error("ninja: no work to do") is None


def test_rule_all_lists_each_rule_once():
    from harness.cli.common import parse_rules
    from harness.compare import RULE_NAMES
    assert parse_rules(("all",)) == ("moeacc", *[r for r in RULE_NAMES if r != "moeacc"])
    assert parse_rules(("vllm", "all"))[0] == "vllm" and sorted(parse_rules(("vllm", "all"))) == sorted(RULE_NAMES)


def test_fuzz_replay_path_outside_here_is_absolute_and_scrubbed(tmp_path, monkeypatch):
    from harness.fuzz.engine import _shown
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert _shown(tmp_path / "here" / "r.yaml") == "r.yaml"
    out = _shown(tmp_path / "elsewhere" / "r.yaml")
    assert not out.startswith("..") and out.endswith("elsewhere/r.yaml") and str(tmp_path) not in out
