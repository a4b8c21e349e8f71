"""The nightly workflow's steps are commands the CLI really has, with options it accepts."""

import re
import shlex
from pathlib import Path

import yaml

from harness.cli import main

WF = Path(__file__).parents[1] / ".github" / "workflows" / "nightly.yml"


def test_workflow_moeacc_calls_exist():
    doc = yaml.safe_load(WF.read_text())
    runs = [s["run"] for job in doc["jobs"].values() for s in job["steps"] if "run" in s]
    calls = [m for r in runs for m in re.findall(r"moeacc [^|;&\n]+", r)]
    assert len(calls) >= 4
    for call in calls:
        argv = shlex.split(re.sub(r"\$\{\{[^}]*\}\}|\$\([^)]*\)|\"\$[^\"]*\"|\$\w+", "X", call))[1:]
        cmd = main.commands.get(argv[0])
        assert cmd is not None, f"workflow calls unknown command: {call}"
        known = {o for p in cmd.params for o in getattr(p, "opts", [])}
        for tok in argv[1:]:
            if tok.startswith("--"):
                assert tok.split("=")[0] in known, f"{argv[0]} has no option {tok} (workflow: {call})"


def test_workflow_matrix_covers_three_device_kinds():
    doc = yaml.safe_load(WF.read_text())
    names = {m["name"] for m in doc["jobs"]["run"]["strategy"]["matrix"]["include"]}
    assert names == {"sm90", "sm100", "rocm"}


def test_nightly_fuzzes_each_runner_and_publishes_repros():
    doc = yaml.safe_load(WF.read_text())
    steps = doc["jobs"]["run"]["steps"]
    fuzz = next(s["run"] for s in steps if "moeacc fuzz" in s.get("run", ""))
    assert "--profile nightly" in fuzz and "--db .fuzz-db" in fuzz and "${{ matrix.fuzz }}" in fuzz
    assert all(m.get("fuzz") for m in doc["jobs"]["run"]["strategy"]["matrix"]["include"])
    assert any(s.get("with", {}).get("path") == "reports-ci/fuzz-*/repro-*.yaml" for s in steps)
