"""Crash isolation and resume, through a real entry-point plugin (tests/plugin_pkg: a package whose
``.dist-info`` registers backends in the ``moe_accuracy.backends`` group, as a kernel library would
ship one) whose kernels segfault, abort, hang, raise and poison the CUDA context."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugin_pkg"
CASES = """
cases:
  - name: tiny
    tokens: 8
    hidden: 256
    intermediate: 128
    experts: 4
    topk: 2
    activation: gpt_oss
    bias: true
    input_scale: 8.0
    grid: {seed: SEEDS}
"""


def env():
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGIN), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    e.pop("PYTEST_XDIST_WORKER", None)
    return e


def moeacc(*args, **kw):
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=kw.pop("cwd"), env=env(),
                          capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)


def casefile(tmp_path, seeds):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(CASES).replace("SEEDS", json.dumps(seeds)))
    return p


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rows.jsonl").read_text().splitlines() if line.strip()]


def test_every_crash_costs_only_its_own_row(tmp_path):
    r = moeacc("run", "--cases", casefile(tmp_path, [0]), "--backend", "crashy-*,emulated-sm90-w4a16", "--device", "cpu",
               "--isolate", "--timeout", "5", "--no-diagnose", "--out", tmp_path / "rep", "--run-id", "x", "--quiet",
               cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    got = {x["backend"]: x for x in rows(tmp_path / "rep" / "cpu" / "x")}
    assert {b: x["status"] for b, x in got.items()} == {
        "crashy-segv": "error", "crashy-abort": "error", "crashy-lookup": "error", "crashy-hang": "error", "crashy-raise": "error",
        "crashy-poison": "error", "crashy-healthy": "pass", "crashy-slow": "pass", "emulated-sm90-w4a16": "pass"}
    assert got["crashy-segv"]["message"] == "worker died: signal 11 (SIGSEGV)"
    assert got["crashy-abort"]["message"] == "worker died: signal 6 (SIGABRT)"
    assert got["crashy-lookup"]["message"] == ("worker exited with code 127: python3: symbol lookup error: mod.so: "
                                               "undefined symbol: cuLibraryLoadData")   # the loader's line, not just the code
    assert "undefined symbol: cuLibraryLoadData" in r.stderr     # and the worker's stderr still reaches ours
    assert got["crashy-hang"]["message"] == "timeout after 5 s"
    assert got["crashy-raise"]["message"] == "ValueError: kernel rejected the input"
    assert got["crashy-poison"]["message"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    # a poisoned context is not reused: the next backend of the case ran in a fresh worker
    assert got["crashy-raise"]["attempt"]["worker_pid"] != got["crashy-poison"]["attempt"]["worker_pid"]
    assert "\n" not in "".join(x["message"] for x in got.values())
    assert "crashy-hang: timeout after 5 s" not in r.stdout and "timeout after 5 s" in r.stdout


def test_killed_run_resumes_to_the_same_statuses(tmp_path):
    cases = casefile(tmp_path, list(range(6)))
    args = ["--cases", cases, "--backend", "crashy-slow,crashy-raise,emulated-sm90-w4a16", "--device", "cpu",
            "--no-diagnose", "--quiet", "--out", tmp_path / "rep"]
    whole = moeacc("run", *args, "--run-id", "whole", cwd=tmp_path)
    assert whole.returncode == 1 and len(rows(tmp_path / "rep" / "cpu" / "whole")) == 18
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", *map(str, args), "--run-id", "cut"], cwd=tmp_path,
                         env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cut = tmp_path / "rep" / "cpu" / "cut"
    deadline = time.time() + 120
    while time.time() < deadline and not ((cut / "rows.jsonl").exists() and len(rows(cut)) >= 4):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    kept = len(rows(cut))
    assert 4 <= kept < 18, kept
    assert not json.loads((cut / "results.json").read_text())["complete"]
    again = moeacc("run", "--resume", cut, cwd=tmp_path)
    assert again.returncode == 1, again.stderr[-2000:]
    assert f"resuming ({kept} rows kept)" in again.stderr
    status = lambda d: sorted((x["case"], x["backend"], x["status"]) for x in rows(d))  # noqa: E731
    assert status(cut) == status(tmp_path / "rep" / "cpu" / "whole")
    doc = json.loads((cut / "results.json").read_text())
    assert doc["complete"] and doc["summary"]["total"] == {"pass": 12, "fail": 0, "error": 6, "skipped": 0}


def test_pytest_plugin_survives_crashes_with_xdist_and_timeout(tmp_path):
    pytest.importorskip("xdist")
    pytest.importorskip("pytest_timeout")
    (tmp_path / "test_acc.py").write_text((ROOT / "tests" / "test_accuracy.py").read_text())
    rep = tmp_path / "rep"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "1", "--timeout", "20",
                        "--timeout-method=thread", f"--moeacc-cases={casefile(tmp_path, [0])}", "--moeacc-device=cpu",
                        "--moeacc-backends=crashy-segv,crashy-hang,crashy-healthy,emulated-sm90-w4a16",
                        f"--moeacc-report={rep}", "test_acc.py"], cwd=tmp_path, env=env(), capture_output=True,
                       text=True, timeout=300)
    assert "2 failed, 2 passed" in r.stdout, r.stdout[-3000:]
    got = {x["backend"]: x for x in json.loads((rep / "results.json").read_text())["rows"]}
    assert {b: x["status"] for b, x in got.items()} == {"crashy-segv": "error", "crashy-hang": "error",
                                                          "crashy-healthy": "pass", "emulated-sm90-w4a16": "pass"}
    assert got["crashy-segv"]["message"].startswith("worker died (pytest-xdist replaced it")
