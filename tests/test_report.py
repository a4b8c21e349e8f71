"""Results schema round trip, interrupted runs, merge, diff and markdown rendering (golden)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report import (RunWriter, ReportError, diff_runs, load_run, merge_runs, new_document,
                            render_diff_markdown, render_markdown, render_matrix_markdown)

GOLDEN = Path(__file__).parent / "golden"


def row(case, backend, status, mismatch=0.0, rel=0.001, msg=""):
    return {"case": case, "case_file": "cases/x.yaml", "backend": backend, "status": status, "message": msg or status,
            "metrics": None if status in ("skipped", "error") else {"mismatch": mismatch, "rel_l2": rel, "cosine": 0.9999,
                                                                     "snr_db": 50.0},
            "thresholds": None, "repro": f"moeacc check --case {case} --backend {backend}", "shape": "", "tags": [],
            "duration_s": 0.1, "diagnosis": None}


def doc(kind, name, rows, run_id="r1"):
    d = new_document({"kind": kind, "name": name, "device": "x", "driver": None, "cuda": None}, {"torch": "2.13.0"}, run_id)
    d["git"]["harness"] = "abc123"
    d["created"] = "2026-11-22T00:00:00+00:00"
    d["rows"] = rows
    d["complete"] = True
    return d


def test_schema_round_trip(tmp_path):
    w = RunWriter(tmp_path / "run", new_document({"kind": "cpu", "name": "cpu"}, {"torch": "x"}, "r"))
    w.add(row("a", "b", "pass"))
    w.add(row("a", "c", "fail", 0.5, 0.9))
    w.close()
    d = load_run(tmp_path / "run")
    assert d["schema"] == "moe-accuracy/results" and d["schema_version"] == 1 and d["complete"]
    assert d["summary"]["total"] == {"pass": 1, "fail": 1, "error": 0, "skipped": 0}
    assert (tmp_path / "run" / "report.md").read_text().startswith("## ❌ moe-accuracy: 1 passed, 1 failed")


def test_killed_process_keeps_finished_rows(tmp_path):
    script = f"""
import os, signal
from harness.report import RunWriter, new_document
w = RunWriter({str(tmp_path / 'run')!r}, new_document({{'kind': 'cpu'}}, {{}}, 'k'))
for i in range(3):
    w.add({{'case': f'c{{i}}', 'backend': 'b', 'status': 'pass', 'message': '', 'metrics': None}})
w._rows.write('{{"case": "half-writ')
w._rows.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""
    p = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    assert p.returncode != 0
    d = load_run(tmp_path / "run")
    assert d["interrupted"] and [r["case"] for r in d["rows"]] == ["c0", "c1", "c2"]
    assert "interrupted: partial results" in render_markdown(d)


def test_load_errors(tmp_path):
    with pytest.raises(ReportError, match="no results.json"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ReportError, match="not a moe-accuracy results document"):
        load_run(tmp_path)


def _pair():
    base = doc("sm90", "H100", [row("grid", "fi", "pass", 0.0, 0.004), row("small", "fi", "pass", 0.0, 0.004),
                                row("fp8", "fi", "fail", 0.3, 0.2), row("gone", "fi", "pass")])
    new = doc("sm90", "H100", [row("grid", "fi", "fail", 0.89, 1.4, "mismatch 89.00% > 1.00%"),
                               row("small", "fi", "pass", 0.0, 0.009), row("fp8", "fi", "pass", 0.0, 0.01),
                               row("new", "fi", "pass")], "r2")
    return base, new


def test_diff_flags_regressions_and_fixes():
    base, new = _pair()
    d = diff_runs(base, new)
    assert [(r["case"], r["why"][:12]) for r in d["regressions"]] == [("grid", "pass -> fail"), ("small", "rel_l2 0.004")]
    assert [r["case"] for r in d["fixes"]] == ["fp8"]
    assert d["summary"] == {"regressions": 2, "fixes": 1, "unchanged": 0, "new": 1, "gone": 1}
    assert diff_runs(base, base)["summary"]["regressions"] == 0
    # within margin: a 20% worse rel_l2 is not a regression at the default 25% margin
    b2 = doc("sm90", "H100", [row("x", "fi", "pass", 0.0, 0.010)])
    n2 = doc("sm90", "H100", [row("x", "fi", "pass", 0.0, 0.012)])
    assert diff_runs(b2, n2)["summary"]["regressions"] == 0


def test_merge_matrix_columns_per_device():
    cpu = doc("cpu", "cpu", [row("a", "emu", "pass"), row("a", "fi", "skipped")])
    h100 = doc("sm90", "NVIDIA H100", [row("a", "emu", "pass"), row("a", "fi", "fail", 0.9, 1.4)])
    m = merge_runs([cpu, h100])
    assert m["devices"] == ["cpu", "sm90 NVIDIA H100"]
    assert m["cells"]["a · fi"]["sm90 NVIDIA H100"]["status"] == "fail"
    md = render_matrix_markdown(m)
    assert "| `a · fi`" in md and "❌ 90.00%" in md and "⏭" in md


def test_merge_one_device_two_library_versions_gives_two_columns():
    old = doc("sm90", "NVIDIA H100", [row("a", "fi", "fail", 0.2, 0.05)]) | {"packages": {"flashinfer-python": "0.6.12", "torch": "2.11"}}
    new = doc("sm90", "NVIDIA H100", [row("a", "fi", "pass")]) | {"packages": {"flashinfer-python": "0.7.2.post1", "torch": "2.11"}}
    m = merge_runs([old, new])
    assert m["devices"] == ["sm90 NVIDIA H100 · flashinfer-python 0.6.12", "sm90 NVIDIA H100 · flashinfer-python 0.7.2.post1"]
    assert m["cells"]["a · fi"]["sm90 NVIDIA H100 · flashinfer-python 0.6.12"]["status"] == "fail"
    assert m["cells"]["a · fi"]["sm90 NVIDIA H100 · flashinfer-python 0.7.2.post1"]["status"] == "pass"


def test_markdown_golden():
    base, new = _pair()
    got = {"report.md": render_markdown(new), "diff.md": render_diff_markdown(diff_runs(base, new)),
           "matrix.md": render_matrix_markdown(merge_runs([base, new]))}
    for name, text in got.items():
        path = GOLDEN / name
        if os.environ.get("MOEACC_UPDATE_GOLDEN") == "1":  # regenerate, then review the diff
            path.write_text(text)
        assert text == path.read_text(), f"{name} differs from its golden file"
    # GitHub-flavoured: tables have a header separator line, no raw pipes inside cells
    for line in got["report.md"].splitlines():
        if line.startswith("| `grid`"):
            assert line.count("|") == 8
